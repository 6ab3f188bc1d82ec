"""``resize``: write a copy of BASE whose vocabulary matrices have N rows, streaming one tensor at a time."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from inspector import interrupts
from inspector.errors import InvalidInputError, RefusedError, UsageError
from inspector.io.checkpoint import Checkpoint, read_checkpoint
from inspector.io.loader import TensorReader
from inspector.io.paths import locate
from inspector.io.shards import OutputTensor
from inspector.io.sidefiles import copy_side, output_side_files, output_side_folders, side_bytes, tokenizer_from
from inspector.io.tensor import FLOAT_DTYPES
from inspector.io.tokenizer import read_tokenizer
from inspector.io.writer import CheckpointWriter
from inspector.repair import MatrixResult, ResizePlan, ResizeResult, SubwordPlan, grow, initializer_range, padded, plan_resize, subword_pieces, updated_config

Progress = Callable[[int, int], None]  # (bytes done now, total bytes)


def output_plan(base: Checkpoint, plan: ResizePlan, dtype: str | None = None) -> list[OutputTensor]:
    return [OutputTensor(t.name, dtype or t.dtype, plan.new_shape(t.shape, t.name) if plan.touches(t.name) else t.shape) for t in base.tensors]


def _target_rows(base: Checkpoint, vocab: int | None, tokenizer: str | None, like: str | None) -> tuple[int, str]:
    given = [x for x in (vocab, tokenizer, like) if x is not None]
    if len(given) != 1:
        raise UsageError("Invalid options", None, "give exactly one of --vocab, --tokenizer and --like", "e.g. `lora-inspector resize BASE --out DIR --like ADAPTER`.")
    if vocab is not None:
        return vocab, f"--vocab {vocab}"
    if tokenizer is not None:
        folder = locate(tokenizer)
        facts = read_tokenizer(folder) if folder.is_dir() else None
        if facts is None:
            raise UsageError("Cannot read tokenizer", tokenizer, "no tokenizer files in this directory", "Pass the directory tokenizer.save_pretrained() wrote.")
        return facts.size, f"--tokenizer {tokenizer}: {facts.length} tokens"
    from inspector.check import run_check

    diagnosis = run_check(base, like, command="resize")
    if diagnosis.target.rows is None:
        raise UsageError("Cannot resize", like, "the adapter implies no vocabulary size", "Pass --vocab N instead.")
    return diagnosis.target.rows, f"--like {like}: {diagnosis.target.source}"


def resize_checkpoint(
    base_path: str,
    out: str,
    *,
    vocab: int | None = None,
    tokenizer: str | None = None,
    like: str | None = None,
    init: str | None = None,
    pad_to: int | None = None,
    seed: int = 0,
    force: bool = False,
    max_shard_size: int = 5_000_000_000,
    progress: Progress | None = None,
) -> ResizeResult:
    """Write BASE with its vocabulary matrices resized into OUT (safe writer: staging, verify, rename)."""
    interrupts.heavy_import("torch")  # stop signals held while it loads (see inspector/interrupts.py)
    base = read_checkpoint(base_path)
    if base.kind != "model":
        raise UsageError("Not a base model", base_path, "this is a PEFT adapter", "Pass the base model directory; use --like ADAPTER to take the size from the adapter.")
    rows, reason = _target_rows(base, vocab, tokenizer, like)
    if like is not None and pad_to is not None and padded(rows, pad_to) != rows:
        raise UsageError("Invalid options", None, f"--pad-to-multiple-of {pad_to} would make {padded(rows, pad_to)} rows, but the adapter needs exactly {rows}",
                         "Leave --pad-to-multiple-of out with --like: PEFT loads the adapter only onto its own row count.")
    like_dir = locate(like) if like else None
    # The new tokenizer: --tokenizer, or the extended one training saved beside the adapter (--like).
    new_tok = locate(tokenizer) if tokenizer else (like_dir if like_dir and read_tokenizer(like_dir) else None)
    plan = _plan(base, rows, reason, init, pad_to, new_tok)
    plan, subword, notes = _subwords(base, plan, new_tok, init_given=init is not None)
    # Tokenizer files travel with the result: the new tokenizer if given, else the adapter's
    # (--like: the one training used), else the base's own.
    tok_source = new_tok or base.root
    extras, folders = output_side_files(base.root, tok_source), output_side_folders(base.root, tok_source)
    result = ResizeResult(Path(out), plan, subword=subword, tokenizer_from=tokenizer_from(extras, tok_source), warnings=notes)
    written = read_tokenizer(tok_source) if result.tokenizer_from else None
    if written is not None and written.size > plan.rows:
        result.warnings.append(f"the tokenizer written with the model ({written.length} tokens, from {tok_source}) needs {written.size} rows but the model "
                               f"has {plan.rows}: token ids {plan.rows}..{written.size - 1} are out of range (check reports LI201)")
    inputs = [base.root] + [p for p in (new_tok, like_dir) if p]
    with CheckpointWriter(out, inputs=inputs, tensors=output_plan(base, plan), max_shard_size=max_shard_size, force=force,
                          extra_bytes=side_bytes(extras, folders), stamps=base.stamps) as writer:
        _stream(base, plan, subword, writer, result, seed=seed, progress=progress)
        writer.add_file("config.json", json.dumps(updated_config(base.config, plan.rows), indent=2) + "\n")
        copy_side(writer, extras, folders)
        writer.commit()
    return result


def _plan(base: Checkpoint, rows: int, reason: str, init: str | None, pad_to: int | None, new_tok: Path | None) -> ResizePlan:
    """The resize plan, with the init chosen: --init, else subword_mean when both tokenizers are known, else mean."""
    both_known = new_tok is not None and base.tokenizer is not None
    chosen = init or ("subword_mean" if both_known else "mean")
    if chosen == "subword_mean" and not both_known:
        raise UsageError("Cannot use --init subword_mean", base.path, "it needs the old tokenizer (in BASE) and the new one (--tokenizer DIR, or in the --like adapter)",
                         "Pass --tokenizer DIR, or choose --init mean.")
    plan = plan_resize(base, rows, reason, chosen, pad_to)
    packed = [n for n in plan.matrices + plan.biases if base.by_name[n].dtype not in FLOAT_DTYPES]
    if packed:  # new rows need arithmetic on the old ones; packed or FP8 values (with their scales) have none
        raise RefusedError("Resize refused", base.path, f"{packed[0]} is {base.by_name[packed[0]].dtype}, a quantized vocabulary matrix",
                           "Resize the full-precision base the quantized copy was made from.")
    if both_known and base.tokenizer.size < min(plan.old_rows, plan.requested):
        # Padding rows past the old tokenizer (Qwen2 keeps ~270) that new tokens now take: never
        # trained as tokens, so they are initialized like new rows instead of kept.
        plan = dataclasses.replace(plan, fresh_from=base.tokenizer.size)
    return plan


def _subwords(base: Checkpoint, plan: ResizePlan, new_tok: Path | None, *, init_given: bool) -> tuple[ResizePlan, SubwordPlan | None, list[str]]:
    """The old-tokenizer pieces of each new token, for subword_mean. When the default init cannot
    have them (transformers cannot load a tokenizer: a sentencepiece model without protobuf, ...)
    it falls back to mean, saying why; an explicit --init subword_mean fails with the reason."""
    if plan.init != "subword_mean" or plan.requested <= plan.kept:
        return plan, None, []
    try:
        return plan, subword_pieces(base.root, new_tok, plan.kept, plan.rows), []
    except InvalidInputError as exc:
        if init_given:
            raise
        return dataclasses.replace(plan, init="mean"), None, [f"subword_mean (the default here) fell back to mean: {exc.message}"]


def _stream(base: Checkpoint, plan: ResizePlan, subword: SubwordPlan | None, writer: CheckpointWriter, result: ResizeResult, *,
            seed: int, progress: Progress | None) -> None:
    """Every base tensor through the writer, one at a time; vocabulary tensors grown on the way."""
    init_range = initializer_range(base.config)
    with TensorReader(base.root, base.stamps) as reader:  # refuses files changed since their headers were read
        for info in base.tensors:
            tensor = reader.read(info)
            if plan.touches(info.name):
                tensor = grow(tensor, plan, info.name, seed=seed, init_range=init_range, subword=subword)
                result.matrices.append(MatrixResult(info.name, info.shape, tuple(tensor.shape), "zero" if info.name in plan.zero_biases else plan.init))
            writer.write(info.name, tensor)
            if progress:
                progress(info.nbytes, base.total_bytes)
            del tensor
