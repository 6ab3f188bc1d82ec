"""LI8xx: empty tensors (ZeRO-3 / FSDP saves without gathering) and adapters with no tensors."""

from __future__ import annotations

from collections.abc import Iterator

from inspector.binding import Binding
from inspector.checks.registry import check
from inspector.findings import Code, Hit
from inspector.units import shape_str


@check(Code.EMPTY_TENSOR, always=True)
def empty_tensor(b: Binding) -> Iterator[Hit]:
    for t in b.adapter.tensors:
        if 0 in t.info.shape:
            yield Hit(f"{t.key} is empty {shape_str(t.info.shape)}: saved from a sharded (ZeRO-3 / FSDP) model without gathering.",
                      "Re-save with the parameters gathered (DeepSpeed: stage3_gather_16bit_weights_on_model_save=true, or zero_to_fp32.py).",
                      adapter_key=t.key, adapter_shape=t.info.shape)  # fmt: skip
    for t in b.base.tensors:
        if 0 in t.shape:
            yield Hit(f"base tensor {t.name} is empty {shape_str(t.shape)}.", "Re-save the base model with its parameters gathered.", tensor=t.name, base_shape=t.shape)


@check(Code.EMPTY_ADAPTER, always=True)
def empty_adapter(b: Binding) -> Iterator[Hit]:
    if not b.adapter.tensors:
        files = ", ".join(b.adapter.checkpoint.files)
        yield Hit(f"the adapter's {files} holds no tensors: merging it would change nothing.",
                  "The training script saved an empty state dict (e.g. alpaca-lora's 443-byte adapter_model.bin, from overriding "
                  "model.state_dict): save again with the trained PeftModel's save_pretrained(DIR).")  # fmt: skip
