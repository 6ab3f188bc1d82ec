"""LI15xx: serving an adapter unmerged (``check --target NAME``): the targets' rule tables, run.

One registered check per LI15xx code, as for every other family; each runs the rules of that
code in the tables of the targets asked for (inspector/targets/). Without --target, none fires.
"""

from __future__ import annotations

from collections.abc import Iterator

from inspector.binding import Binding
from inspector.checks.registry import check
from inspector.findings import Code, Hit
from inspector.targets import TARGETS

SERVING_CODES = tuple(c for c in Code if c.code.startswith("LI15"))


def _runner(code: Code):
    def run(b: Binding) -> Iterator[Hit]:
        if not b.targets:
            return
        facts = b.serving_facts
        for name in b.targets:
            target = TARGETS[name]
            for rule in target.rules:
                if rule.code is not code:
                    continue
                values = rule.when(facts)
                if values is None:
                    continue
                yield Hit(f"{target.title}: {rule.message.format(**values)}", rule.fix.format(**values, base=b.base.path, adapter=b.adapter.checkpoint.path),
                          severity=rule.severity, target=name, outcome=rule.outcome)  # fmt: skip

    run.__qualname__ = f"serving[{code.code}]"
    return run


for _code in SERVING_CODES:
    check(_code, always=True)(_runner(_code))
