"""LI1xx: full tensors the adapter carries (modules_to_save, saved embedding layers) against the base."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from inspector.adapter import FullTensor
from inspector.binding import Binding, empty
from inspector.checks import hints
from inspector.checks.registry import check
from inspector.findings import Code, Hit
from inspector.units import shape_str


@dataclass(frozen=True)
class Reshaped:
    """A full tensor whose shape differs from the base tensor it replaces."""

    full: FullTensor
    name: str  # the base tensor
    label: str  # how messages name it (a tied head says what it shares)
    adapter_shape: tuple[int, ...]
    base_shape: tuple[int, ...]
    vocab: bool  # a vocabulary matrix or bias
    rows_only: bool  # only the vocabulary dimension differs

    def fields(self) -> dict:
        tied = self.label != self.name
        return dict(tensor=self.full.target if tied else self.name, adapter_key=self.full.chosen.key,
                    adapter_shape=self.adapter_shape, base_shape=self.base_shape)  # fmt: skip


def reshaped(b: Binding) -> Iterator[Reshaped]:
    """Full tensors with another shape than the base's (new task heads with other label counts excepted: LI405)."""
    for full in b.adapter.full.values():
        if full.chosen.copy == "original_module" or full in b.reheaded:
            continue
        name = b.resolve(full.target)
        if name is None or empty(full.chosen):
            continue  # an orphan (LI401) or an empty tensor (LI801)
        a_shape, b_shape = full.chosen.info.shape, b.base.by_name[name].shape
        if a_shape == b_shape:
            continue
        # A tied head is not stored in the base: name it as the adapter does, and say what it shares.
        tied_head = b.is_tied_head(full.target) or b.is_tied_alias(full.target)
        label = f"{full.target} (tied to {name})" if tied_head else name
        bias = name in b.vocab.biases
        rows_only = len(a_shape) == len(b_shape) and (a_shape[1:] == b_shape[1:] if not bias else a_shape[:-1] == b_shape[:-1])
        yield Reshaped(full, name, label, a_shape, b_shape, b.vocab.is_vocab(name), rows_only)


@check(Code.VOCAB_ROWS)
def vocab_rows(b: Binding) -> Iterator[Hit]:
    for r in reshaped(b):
        if not (r.vocab and r.rows_only):
            continue
        a_rows, b_rows = (r.adapter_shape[-1], r.base_shape[-1]) if r.name in b.vocab.biases else (r.adapter_shape[0], r.base_shape[0])
        # Fewer rows: usually resize_token_embeddings(len(tokenizer)) dropped padding rows (Qwen2 keeps ~270).
        fewer = " (fewer rows: resized to the tokenizer's length, dropping padding rows?)" if a_rows < b_rows else ""
        rows = b.target.rows or a_rows
        yield Hit(
            f"{r.label}: the adapter carries {shape_str(r.adapter_shape)}, the base has {shape_str(r.base_shape)}{fewer}; "
            f"PEFT's merge fails here with 'size mismatch'.",
            f"Run `{b.merge_cmd}` ({'shrinks' if rows < b_rows else 'grows'} the model to the adapter's {rows} rows), or `{b.resize_like_cmd}` first.",
            **r.fields(),
            repair="resize",
        )


@check(Code.VOCAB_DISAGREE)
def vocab_disagree(b: Binding) -> Iterator[Hit]:
    target = b.target
    rows = set(target.carried.values()) | set(target.lora_rows.values())
    if len(rows) > 1:
        detail = ", ".join(f"{n}: {r}" for n, r in {**target.lora_rows, **target.carried}.items())
        yield Hit(
            f"the adapter's vocabulary-sized tensors imply different vocabulary sizes ({detail}).",
            f"Check which tokenizer the adapter was trained with; `lora-inspector merge` would use the largest ({max(rows)}).",
        )


@check(Code.FULL_SHAPE)
def full_shape(b: Binding) -> Iterator[Hit]:
    for r in reshaped(b):
        if not r.vocab:
            yield Hit(f"{r.name}: the adapter replaces it with {shape_str(r.adapter_shape)}, the base has {shape_str(r.base_shape)}.",
                      hints.TRAINED_BASE_SEE_CONFIG, **r.fields())  # fmt: skip
