"""Every finding code has exactly one check, registered here with ``@check(Code.X)``.

A check reads a ``Binding`` and yields ``Hit``s; the registry stamps the code on them, so a code
cannot be raised from two places, and ``--select`` / ``--ignore`` simply choose which checks run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from inspector.binding import Binding
from inspector.findings import Code, Finding, Hit

CheckFunction = Callable[[Binding], Iterable[Hit]]


@dataclass(frozen=True)
class Check:
    code: Code
    run: CheckFunction
    always: bool  # also for adapters that are not LoRA (the rest read LoRA layouts)

    def findings(self, binding: Binding) -> list[Finding]:
        return [Finding.of(self.code, hit) for hit in self.run(binding)]


REGISTRY: dict[Code, Check] = {}


def check(code: Code, *, always: bool = False) -> Callable[[CheckFunction], CheckFunction]:
    """Register the one check of ``code``."""

    def register(func: CheckFunction) -> CheckFunction:
        if code in REGISTRY:
            raise ValueError(f"{code.code} already has a check: {REGISTRY[code].run.__qualname__}")
        REGISTRY[code] = Check(code, func, always)
        return func

    return register
