"""LI13xx: what the standard PEFT merge needs in RAM against the streaming merge."""

from __future__ import annotations

from collections.abc import Iterator

from inspector.binding import Binding
from inspector.checks.registry import check
from inspector.checks.unsupported import unmergeable
from inspector.findings import Code, Hit
from inspector.io.tensor import STREAM_BLOCK_BYTES
from inspector.units import human_bytes


def _peft_bytes(b: Binding) -> int:
    """The model twice (loaded, then merged copies) plus the adapter, grown rows included."""
    base_bytes = b.base.total_bytes
    if b.target.grows and b.vocab.rows:
        per_row = sum(b.base.by_name[n].nbytes // max(b.base.by_name[n].shape[0], 1) for n in b.vocab.matrices)
        base_bytes += per_row * (b.target.rows - b.vocab.rows)
    return 2 * base_bytes + b.adapter.checkpoint.total_bytes


def _stream_bytes(b: Binding) -> tuple[int, bool]:
    """A row block (STREAM_BLOCK_BYTES of fp32 at most) a few times over, the LoRA pair of the module at hand,
    and, when grown rows nobody carries must be invented, that matrix in fp32; and whether it must."""
    largest = max([t.numel for t in b.base.tensors] + [0])
    block = min(4 * largest, STREAM_BLOCK_BYTES)
    lora = max([4 * (lm.A.info.numel + lm.B.info.numel) for lm, _ in b.lora_targets.values() if lm.A and lm.B] + [0])
    invented = 0
    if b.target.grows and b.vocab.width and any(n not in b.target.carried for n in b.vocab.matrices):
        # the old matrix, its fp32 copy for the statistics, and the grown copy (at most 4 + 2 x 4 bytes a value)
        invented = 12 * b.target.rows * b.vocab.width
    return 3 * block + lora + invented, bool(invented)


@check(Code.MEMORY_PLAN)
def memory_plan(b: Binding) -> Iterator[Hit]:
    peft, (stream, invented) = _peft_bytes(b), _stream_bytes(b)
    grown = ", plus one grown vocabulary matrix and its fp32 statistics" if invented else ""
    why_not = unmergeable(b)
    if why_not is not None:  # no streaming merge to offer (IA3, PiSSA, aLoRA, ...): say so, not "merge"
        yield Hit(f"the standard PEFT merge holds about {human_bytes(peft)} of tensors (the model twice plus the adapter), on top of the Python/torch runtime.",
                  f"lora-inspector cannot merge this adapter ({why_not}; see the LI14xx finding); plan for PEFT's memory if PEFT can merge it.")  # fmt: skip
        return
    yield Hit(f"the standard PEFT merge holds about {human_bytes(peft)} of tensors (the model twice plus the adapter); "
              f"lora-inspector's streaming merge about {human_bytes(stream)} (row blocks of at most {human_bytes(STREAM_BLOCK_BYTES)} in fp32{grown}), "
              "both on top of the Python/torch runtime.",
              f"`{b.merge_cmd}` streams one row block at a time." if stream < peft else
              f"Either fits easily at this size; `{b.merge_cmd}` also repairs what PEFT's path cannot.")  # fmt: skip
