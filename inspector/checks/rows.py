"""LI5xx: grown vocabulary rows that LoRA changes but nobody carries, or that nobody carries at all."""

from __future__ import annotations

from collections.abc import Iterator

from inspector.adapter_config import HEAD_TASKS
from inspector.binding import Binding
from inspector.checks.registry import check
from inspector.findings import Code, Hit
from inspector.repair import DEFAULT_MERGE_INIT, MERGE_INITS
from inspector.units import shape_str


def _new_rows(b: Binding) -> str:
    target = b.target
    return f"rows {target.base_rows}..{target.rows - 1}" if target.rows > target.base_rows else "the rows"


@check(Code.ROWS_NOT_CARRIED)
def rows_not_carried(b: Binding) -> Iterator[Hit]:
    target = b.target
    if not target.grows:
        return
    for name, rows in target.lora_rows.items():
        if rows == target.base_rows or target.carried.get(name) == rows:
            continue
        key = next(lm.A.key for lm, w in b.lora_targets.values() if w is not None and w.name == name and lm.A)
        base_shape = b.base.by_name[name].shape
        yield Hit(f"{name}: LoRA was trained on {rows} rows but the base has {target.base_rows} and the adapter does not carry {_new_rows(b)} "
                  "(saved with save_embedding_layers=False?): the rows training saw are lost.",
                  f"Re-save the adapter with the resized embedding, or accept new rows by merging with an explicit --init: `{b.merge_cmd} --init mean`.",
                  tensor=name, adapter_key=key, adapter_shape=(rows, base_shape[1]), base_shape=base_shape, repair="init")  # fmt: skip


@check(Code.ROWS_UNCARRIED)
def rows_uncarried(b: Binding) -> Iterator[Hit]:
    target, vocab = b.target, b.vocab
    if not target.grows:
        return
    changed_by_tokens = {w.name for w in b.token_embedding_for.values() if w is not None}
    candidates = [n for n in vocab.matrices + vocab.biases if n not in target.carried and n not in target.lora_rows and n not in changed_by_tokens]
    if b.config.task_type in HEAD_TASKS:  # a classification / QA model has no lm_head to grow
        candidates = [n for n in candidates if n not in vocab.heads and n not in vocab.biases]
    for name in candidates:
        base_shape = b.base.by_name[name].shape
        bias = name in vocab.biases
        grown = (target.rows, *base_shape[1:]) if not bias else (*base_shape[:-1], target.rows)
        what = _new_rows(b).replace("rows", "entries") if bias else _new_rows(b)
        if name.endswith("final_logits_bias"):
            how = f"the merge fills {what} with zeros, as transformers' resize_token_embeddings pads final_logits_bias."
            hint = "Nothing to do: zeros are what training saw (whatever --init says)."
        else:
            how = f"the merge fills {what} with --init (default {DEFAULT_MERGE_INIT}, as transformers' resize_token_embeddings)."
            others = ", ".join(i for i in MERGE_INITS if i != DEFAULT_MERGE_INIT)
            hint = f"Nothing to do if that is intended; pick the init with `{b.merge_cmd} --init {DEFAULT_MERGE_INIT}` (or {others})."
        yield Hit(f"{name} must grow from {shape_str(base_shape)} to {shape_str(grown)} ({target.source}) but the adapter does not carry it: {how}",
                  hint, tensor=name, base_shape=base_shape, adapter_shape=grown)  # fmt: skip
