"""Will a server load this adapter unmerged, and compute what PEFT computes? (``check --target``)

Each server is a table of ``Rule``s (one module per server: vllm, sglang, llamacpp, lorax, tgi,
ollama), data rather than branches: a condition on the adapter's facts (``facts.py``), the finding
code (LI15xx, one per kind of problem), the severity, the server's own message, the fix, and where
in the server's source the behaviour was read, at which version. ``inspector/checks/serving.py``
runs the tables of the targets asked for; docs/targets.md is the same tables for people.

Severity: "error" when the server refuses the adapter, and also when it loads it but computes
something else than PEFT would (silent divergence is worse than a refusal); "warning" when it
works only with a non-default server flag (the fix names the flag and its value).
"""

from __future__ import annotations

from collections.abc import Iterable

from inspector.targets.rule import Rule, Target

__all__ = ["TARGETS", "TARGET_NAMES", "Rule", "Target", "resolve"]

def _load() -> dict[str, Target]:
    from inspector.targets import llamacpp, lorax, ollama, sglang, tgi, vllm

    return {t.name: t for t in (vllm.TARGET, sglang.TARGET, llamacpp.TARGET, lorax.TARGET, tgi.TARGET, ollama.TARGET)}


TARGETS: dict[str, Target] = _load()
TARGET_NAMES = (*TARGETS, "all")


def resolve(names: Iterable[str]) -> tuple[str, ...]:
    """--target values -> target names, in table order ("all" expands); unknown names raise KeyError."""
    wanted = set()
    for name in names:
        key = name.lower()
        if key == "all":
            wanted |= set(TARGETS)
        elif key in TARGETS:
            wanted.add(key)
        else:
            raise KeyError(name)
    return tuple(n for n in TARGETS if n in wanted)
