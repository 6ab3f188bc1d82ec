"""LI9xx: a quantized base cannot be merged into without dequantizing."""

from __future__ import annotations

import re
from collections.abc import Iterator

from inspector.binding import Binding
from inspector.checks.registry import check
from inspector.findings import Code, Hit

_QUANT_KEYS = re.compile(r"\.(absmax|quant_map|quant_state(\..*)?|nested_absmax|nested_quant_map|SCB|weight_format|qweight|qzeros|scales|g_idx|weight_scale|weight_scale_inv|input_scale)$")
# Dtypes quantized weights are stored in (packed nibbles, int8, FP8/FP4/FP6, GPTQ's int32 words).
_QUANT_DTYPES = frozenset({"U8", "I8", "I32", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"})
# What a quantized base's packed tensors (U8 [n/2, 1], GPTQ qweight) make meaningless to compare:
# with LI901 as an error, these codes are not reported (diagnose drops them).
PACKED_NOISE = frozenset({Code.LORA_A_SHAPE, Code.LORA_B_SHAPE, Code.LORA_RANK, Code.DORA_MAGNITUDE, Code.EMBEDDING_LORA, Code.LORA_BIAS,
                          Code.ORPHAN, Code.TARGET_UNMATCHED, Code.NOT_TARGETED, Code.HIDDEN_SIZE, Code.FULL_SHAPE})  # fmt: skip


@check(Code.QUANTIZED_BASE)
def quantized_base(b: Binding) -> Iterator[Hit]:
    quant = b.base.config.get("quantization_config")
    keys = [t.name for t in b.base.tensors if _QUANT_KEYS.search(t.name)]
    packed = [t.name for t in b.base.tensors if t.name.endswith(".weight") and len(t.shape) == 2 and t.dtype in _QUANT_DTYPES]
    if not (quant or keys or packed):
        return
    method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
    # With a quantization_config, any tensor of a packed dtype counts (MXFP4 *_blocks, quanto ._data,
    # HQQ W_q are no 2-D ".weight"); only a base with none at all is full precision under a stale config.
    packed = packed or [t.name for t in b.base.tensors if t.dtype in _QUANT_DTYPES] if quant else packed
    if not (keys or packed):
        # Full-precision weights under a config that still says quantized (saved after dequantizing).
        yield Hit(f"config.json carries a quantization_config ({method}) but every weight is full precision "
                  "(no packed tensors, no quant-state keys): a leftover of an earlier save.",
                  "Nothing blocks the merge, which leaves quantization_config out of the merged config.json; remove it from BASE's too, "
                  "or transformers tries to quantize the model when it loads it.", severity="warning")  # fmt: skip
        return
    evidence = f"quantization_config ({method})" if quant else f"quantized tensors such as {(keys or packed)[0]}"
    yield Hit(f"the base is quantized ({evidence}); merging into packed weights would corrupt them (LoRA shapes and targets are not checked against packed weights).",
              "Merge into the original full-precision base model (the one the quantized copy was made from).", tensor=(keys or packed or [None])[0])
