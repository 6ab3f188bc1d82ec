"""LI3xx: LoRA tensors (lora_A/B, embedding LoRA, DoRA magnitude, lora_bias, rank) against the base weight."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from inspector.adapter import AdapterTensor, LoraModule, is_transposed
from inspector.binding import Binding, empty
from inspector.checks import hints
from inspector.checks.registry import check
from inspector.findings import Code, Hit
from inspector.io.tensor import TensorInfo
from inspector.units import shape_str


def adapted(b: Binding) -> Iterator[tuple[LoraModule, TensorInfo]]:
    """LoRA modules on a base weight, with no empty tensor among them (those are LI801's)."""
    for lm, weight in b.lora_targets.values():
        if weight is not None and not empty(lm.A, lm.B, lm.B_bias, lm.magnitude):
            yield lm, weight


def pairs(b: Binding) -> Iterator[tuple[LoraModule, TensorInfo]]:
    """Complete 2-D LoRA pairs (a Conv LoRA's are LI1402's, a missing half LI307's)."""
    for lm, weight in adapted(b):
        if lm.A is not None and lm.B is not None and len(lm.A.info.shape) == 2 and len(lm.B.info.shape) == 2:
            yield lm, weight


@dataclass(frozen=True)
class Layout:
    """How a LoRA pair meets its 2-D base weight."""

    out_dim: int  # what lora_B's rows must be
    in_dim: int | None  # what lora_A's columns must be (None for embedding LoRA)
    extra_dim: int  # what a magnitude vector or lora_B.bias must be (lora_B's rows on a growing vocabulary matrix)
    note: str  # " (fan_in_fan_out: ...)" for messages
    grows: bool  # a vocabulary matrix: its rows are judged against the vocabulary target (LI5xx)


def layout(b: Binding, lm: LoraModule, weight: TensorInfo) -> Layout | None:
    if len(weight.shape) != 2:
        return None
    grows = weight.name in b.vocab.matrices  # its rows are judged against the vocabulary target (LI5xx)
    extra_dim = lm.B.info.shape[0] if grows else None
    if lm.embedding:
        return Layout(weight.shape[1], None, extra_dim or weight.shape[1], "", grows)
    fits = is_transposed(weight.shape, lm.A.info.shape, lm.B.info.shape, b.fan_in_fan_out, rows_may_differ=grows)
    fan = b.fan_in_fan_out if fits is None else fits
    out_dim, in_dim = weight.shape[::-1] if fan else weight.shape
    if grows and not fan:
        out_dim = lm.B.info.shape[0]
    return Layout(out_dim, in_dim, extra_dim or out_dim, " (fan_in_fan_out: the base stores [in, out])" if fan else "", grows)


def _fields(weight: TensorInfo, t: AdapterTensor) -> dict:
    return dict(tensor=weight.name, adapter_key=t.key, adapter_shape=t.info.shape, base_shape=weight.shape)


@check(Code.LORA_PAIR)
def lora_pair(b: Binding) -> Iterator[Hit]:
    for lm, weight in adapted(b):
        a, bb = lm.A, lm.B
        if a is None or bb is None:
            present = a or bb or lm.B_bias or lm.magnitude
            missing = "lora_B" if bb is None else "lora_A"
            yield Hit(f"{lm.module}: {missing} is missing; PEFT would merge a zero or random delta.", hints.RESAVE_INCOMPLETE,
                      tensor=weight.name, adapter_key=present.key, adapter_shape=present.info.shape)  # fmt: skip
    for lm, weight in pairs(b):
        r_a, r_b = lm.A.info.shape[0], lm.B.info.shape[1]
        if r_a != r_b:
            yield Hit(f"{lm.module}: lora_A has rank {r_a} but lora_B has rank {r_b}.", "Re-save the adapter; A and B must come from the same layer.",
                      **_fields(weight, lm.B))  # fmt: skip


@check(Code.LORA_RANK)
def lora_rank(b: Binding) -> Iterator[Hit]:
    for lm, weight in pairs(b):
        r_a, expected = lm.A.info.shape[0], b.config.rank_for(lm.module)
        if r_a != expected:
            pattern = " (rank_pattern)" if expected != b.config.r else ""
            yield Hit(f"{lm.module}: the tensors have rank {r_a} but the config says r={expected}{pattern}; PEFT fails to load it.",
                      f"Set r (or rank_pattern for {lm.module}) to {r_a} in adapter_config.json.", **_fields(weight, lm.A))  # fmt: skip


def _not_a_matrix(lm: LoraModule, weight: TensorInfo) -> Hit:
    # A LoRA pair merges into a 2-D weight; PEFT's merge would fail to broadcast, or reshape silently.
    return Hit(f"{lm.module}: the base weight {weight.name} is {shape_str(weight.shape)}, not the 2-D matrix a LoRA pair "
               f"({shape_str(lm.A.info.shape)} x {shape_str(lm.B.info.shape)}) merges into.", hints.TRAINED_BASE, **_fields(weight, lm.A))  # fmt: skip


@check(Code.EMBEDDING_LORA)
def embedding_lora(b: Binding) -> Iterator[Hit]:
    for lm, weight in pairs(b):
        shape = layout(b, lm, weight)
        if lm.embedding and shape is None:
            yield _not_a_matrix(lm, weight)
        if shape is None or not lm.embedding:
            continue
        rows, hidden = weight.shape
        if lm.B.info.shape[0] != hidden:
            yield Hit(f"{lm.module}: lora_embedding_B is {shape_str(lm.B.info.shape)} but the embedding is {shape_str(weight.shape)} (hidden {hidden}).",
                      hints.TRAINED_BASE, **_fields(weight, lm.B))  # fmt: skip
        if lm.A.info.shape[1] != rows and not shape.grows:
            yield Hit(f"{lm.module}: lora_embedding_A is {shape_str(lm.A.info.shape)} but the embedding has {rows} rows.",
                      hints.TRAINED_BASE, **_fields(weight, lm.A))  # fmt: skip


@check(Code.LORA_A_SHAPE)
def lora_a_shape(b: Binding) -> Iterator[Hit]:
    for lm, weight in pairs(b):
        shape = layout(b, lm, weight)
        if shape is None and not lm.embedding:
            yield _not_a_matrix(lm, weight)
        if shape is not None and shape.in_dim is not None and lm.A.info.shape[1] != shape.in_dim:
            yield Hit(f"{lm.module}: lora_A is {shape_str(lm.A.info.shape)}, expected [{lm.A.info.shape[0]}, {shape.in_dim}] "
                      f"for the base weight {shape_str(weight.shape)}{shape.note}.", hints.TRAINED_BASE, **_fields(weight, lm.A))  # fmt: skip


@check(Code.LORA_B_SHAPE)
def lora_b_shape(b: Binding) -> Iterator[Hit]:
    for lm, weight in pairs(b):
        shape = layout(b, lm, weight)
        if shape is None or lm.embedding or lm.B.info.shape[0] == shape.out_dim:
            continue
        yield Hit(f"{lm.module}: lora_B is {shape_str(lm.B.info.shape)}, expected [{shape.out_dim}, {lm.B.info.shape[1]}] "
                  f"for the base weight {shape_str(weight.shape)}{shape.note}.", hints.TRAINED_BASE, **_fields(weight, lm.B))  # fmt: skip


def _extra(b: Binding, lm: LoraModule, weight: TensorInfo, extra: AdapterTensor, enabled: bool, field_name: str) -> Hit | None:
    """A magnitude vector or lora_B.bias: saved while its config flag is off, or of the wrong length."""
    shape = layout(b, lm, weight)
    if shape is None:
        return None
    if not enabled:
        return Hit(f"{extra.key} is saved but {field_name} is false in adapter_config.json: PEFT ignores it and the merge differs from training.",
                   f"Set {field_name}: true in adapter_config.json.", tensor=weight.name, adapter_key=extra.key, adapter_shape=extra.info.shape)  # fmt: skip
    if extra.info.shape != (shape.extra_dim,):
        return Hit(f"{extra.key} is {shape_str(extra.info.shape)}, expected [{shape.extra_dim}] for the base weight {shape_str(weight.shape)}.",
                   hints.TRAINED_BASE, **_fields(weight, extra))  # fmt: skip
    return None


@check(Code.DORA_MAGNITUDE)
def dora_magnitude(b: Binding) -> Iterator[Hit]:
    for lm, weight in pairs(b):
        if lm.magnitude is not None:
            hit = _extra(b, lm, weight, lm.magnitude, b.config.use_dora, "use_dora")
            if hit is not None:
                yield hit
        elif b.config.use_dora and layout(b, lm, weight) is not None:
            yield Hit(f"{lm.module}: use_dora is true but no lora_magnitude_vector is saved; PEFT would re-initialize it from the base weight.",
                      "Re-save the adapter with PEFT >= 0.9, or set use_dora: false if the adapter is plain LoRA.", tensor=weight.name, adapter_key=lm.A.key)  # fmt: skip


@check(Code.LORA_BIAS)
def lora_bias(b: Binding) -> Iterator[Hit]:
    for lm, weight in pairs(b):
        if lm.B_bias is None:
            continue
        hit = _extra(b, lm, weight, lm.B_bias, b.config.lora_bias, "lora_bias")
        if hit is not None:
            yield hit
        elif layout(b, lm, weight) is not None and b.resolve(f"{lm.module}.bias") is None:
            yield Hit(f"{lm.B_bias.key}: lora_bias is true but the base layer {lm.module} has no bias; PEFT refuses to merge it "
                      "('Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias') and the merged model has no bias there to hold it.",
                      "Use the adapter unmerged (PeftModel.from_pretrained), or retrain with lora_bias: false.",
                      tensor=weight.name, adapter_key=lm.B_bias.key, adapter_shape=lm.B_bias.info.shape)  # fmt: skip
