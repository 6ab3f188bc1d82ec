"""LI6xx: trainable tokens (trainable_token_indices and their saved deltas)."""

from __future__ import annotations

from collections.abc import Iterator

from inspector.binding import Binding
from inspector.checks.registry import check
from inspector.findings import Code, Hit


@check(Code.TOKEN_INDICES)
def token_indices(b: Binding) -> Iterator[Hit]:
    rows = b.vocab.rows
    for key, indices in b.config.trainable_token_indices.items():
        if not indices or rows is None or max(indices) < rows:
            continue
        top = max(indices)
        yield Hit(f"trainable_token_indices for {key or 'the input embedding'} reach token {top} but the base has {rows} rows: the merged model needs {top + 1} rows.",
                  f"Run `{b.merge_cmd}` (grows to {max(top + 1, b.target.rows or 0)} rows; rows no index covers get --init), or resize the base first.",
                  tensor=b.vocab.embeddings[0] if b.vocab.embeddings else None, base_shape=(rows, b.vocab.width) if b.vocab.width else None,
                  repair="resize")  # fmt: skip


@check(Code.TOKEN_DELTA_ROWS)
def token_delta_rows(b: Binding) -> Iterator[Hit]:
    indices_by = b.config.trainable_token_indices
    for module, delta in b.adapter.trainable_tokens.items():
        indices = indices_by.get(module.rpartition(".")[2], indices_by.get(None))
        if indices is not None and delta.info.shape and delta.info.shape[0] != len(indices):
            yield Hit(f"{delta.key} has {delta.info.shape[0]} rows but trainable_token_indices lists {len(indices)} tokens.",
                      "Re-save the adapter; the delta and the config disagree.", adapter_key=delta.key, adapter_shape=delta.info.shape)  # fmt: skip
