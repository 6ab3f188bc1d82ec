"""LI16xx: the adapter's tensor values (``check --values``). Without --values, none fires.

The streaming pass runs once per binding (``Binding.value_scan``, inspector/values.py); the checks
read its results. Messages carry the measured numbers, and each hit's ``data`` the same for JSON.
"""

from __future__ import annotations

from collections.abc import Iterator

from inspector.binding import Binding
from inspector.checks.registry import check
from inspector.findings import Code, Hit


@check(Code.VALUE_NONFINITE, always=True)
def value_nonfinite(b: Binding) -> Iterator[Hit]:
    scan = b.value_scan
    if scan is None:
        return
    for t in scan.tensors:
        if not (t.nan or t.inf):
            continue
        why = " (|x| > 65504 does not fit fp16: an overflow when it was cast?)" if t.inf and t.dtype == "F16" else ""
        yield Hit(f"{t.key} ({t.dtype}) holds {t.nan} NaN and {t.inf} Inf of {t.numel} values{why}: a merge spreads them into every output.",
                  "Re-save from the last checkpoint whose values are finite; cast to bf16 or fp32 rather than fp16 for large values.",
                  adapter_key=t.key, data={"nan": t.nan, "inf": t.inf, "numel": t.numel, "dtype": t.dtype})  # fmt: skip


@check(Code.LORA_B_ZERO)
def lora_b_zero(b: Binding) -> Iterator[Hit]:
    scan = b.value_scan
    if scan is None:
        return
    zero = {t.key for t in scan.tensors if t.zero}
    keys = [lm.B.key for lm in b.adapter.lora.values() if lm.B is not None and lm.B.key in {t.key for t in scan.tensors}]
    zeros = [k for k in keys if k in zero]
    if not zeros:
        return
    data = {"zero": len(zeros), "lora_b": len(keys)}
    if len(zeros) == len(keys):
        # Full copies, trainable tokens, a DoRA magnitude or a non-zero lora_B.bias still change the
        # model; the LoRA products alone then do nothing.
        acting = any(lm.magnitude is not None or (lm.B_bias is not None and lm.B_bias.key not in zero) for lm in b.adapter.lora.values())
        others = bool(b.adapter.full) or bool(b.adapter.trainable_tokens) or acting
        what = "the LoRA products change nothing (the adapter's other tensors still do)" if others else "the adapter is a no-op: merged or not, it changes nothing"
        yield Hit(f"every lora_B ({len(keys)} modules) is all zeros: {what}.",
                  "Was it saved before training, or from the wrong process / step? PEFT initialises lora_B to zeros.",
                  severity="warning" if others else "", data=data)  # fmt: skip
        return
    for key in zeros:
        yield Hit(f"{key} is all zeros ({len(zeros)} of {len(keys)} lora_B): that module's LoRA changes nothing.",
                  "Check that this module was trainable and received gradients (a frozen or unused layer).",
                  severity="warning", adapter_key=key, data=data)  # fmt: skip


@check(Code.NEW_ROWS_UNTRAINED)
def new_rows_untrained(b: Binding) -> Iterator[Hit]:
    scan = b.value_scan
    if scan is None:
        return
    for r in scan.rows:
        if not r.untrained:
            continue
        how = "all identical" if r.identical else f"{r.mean} equal to the old rows' mean, {r.zero} all zeros"
        yield Hit(f"{r.tensor}: {r.untrained} of {r.new_rows} new rows ({r.old_rows}..{r.old_rows + r.new_rows - 1}) were never trained ({how}).",
                  "Train with the embedding (and lm_head) in modules_to_save or trainable_token_indices, or the new tokens keep their init.",
                  tensor=r.tensor, adapter_key=r.key, data=r.as_json())  # fmt: skip


@check(Code.NEW_ROW_NORMS)
def new_row_norms(b: Binding) -> Iterator[Hit]:
    scan = b.value_scan
    if scan is None:
        return
    for r in scan.rows:
        if not r.outliers:
            continue
        o, n = r.old_percentiles, r.new_percentiles
        yield Hit(f"{r.tensor}: {r.outliers} of {r.new_rows} new rows have norms far from the old rows' "
                  f"(old p1 {o['p1']:.4g}, p50 {o['p50']:.4g}, p99 {o['p99']:.4g}; new min {n['min']:.4g}, p50 {n['p50']:.4g}, max {n['max']:.4g}).",
                  "Check the new rows' init and learning rate: rows far larger or smaller than the old dominate or vanish in the logits.",
                  tensor=r.tensor, adapter_key=r.key, data=r.as_json())  # fmt: skip
