"""LI12xx: the same matrix stored several times (plain + modules_to_save + original_module)."""

from __future__ import annotations

from collections.abc import Iterator

from inspector.binding import Binding
from inspector.checks.registry import check
from inspector.findings import Code, Hit
from inspector.units import human_bytes


@check(Code.BLOAT)
def adapter_bloat(b: Binding) -> Iterator[Hit]:
    for full in b.adapter.full.values():
        waste = sum(c.info.nbytes for c in full.copies) - full.chosen.info.nbytes
        if len(full.copies) < 2 or waste <= 0:  # no bytes to save: empty copies are LI801's
            continue
        kinds = ", ".join(c.copy for c in full.copies)
        yield Hit(f"{full.target} is stored {len(full.copies)} times ({kinds}); {human_bytes(waste)} are copies PEFT does not use (it loads the {full.chosen.copy} one).",
                  f"Harmless: PEFT loads the {full.chosen.copy} copy; the others only take disk space.",
                  tensor=b.resolve(full.target), adapter_key=full.chosen.key, adapter_shape=full.chosen.info.shape)  # fmt: skip
