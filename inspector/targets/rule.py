"""The shape of a serving rule and of a server's table (inspector/targets/)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from inspector.findings import Code
from inspector.targets.facts import AdapterFacts

# A condition returns None when the rule does not apply, else the values its message and fix
# quote (``{rank}``, ``{flag}``, ``{modules}``...): what makes the finding precise.
Condition = Callable[[AdapterFacts], "dict[str, object] | None"]


# What the server does with such an adapter: refuses to load it, loads it but computes something
# else than PEFT would (silently), or serves it only with a non-default flag (the fix names it).
Outcome = Literal["refused", "diverges", "flag"]


@dataclass(frozen=True)
class Rule:
    code: Code  # an LI15xx code: the kind of problem
    when: Condition
    outcome: Outcome
    message: str  # what happens, quoting the server's own message; str.format()ed with the condition's values
    fix: str  # what to do instead (a flag and its value, `lora-inspector convert --for ...`, `lora-inspector merge ...`)
    source: str  # where the behaviour is in the server's source: "vllm/lora/models.py (v0.11.0)"

    @property
    def severity(self) -> str:
        """A refusal and a silent divergence are errors (the latter is worse); a needed flag is a warning."""
        return "warning" if self.outcome == "flag" else "error"


@dataclass(frozen=True)
class Target:
    name: str  # as given to --target
    title: str  # as written in reports: "vLLM"
    checked: str  # the versions the rules were read from
    rules: tuple[Rule, ...]
