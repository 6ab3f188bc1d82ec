"""LI2xx: tokenizer length, config.vocab_size and embedding rows agree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from inspector.binding import Binding, shell_command
from inspector.checks.registry import check
from inspector.findings import Code, Hit


def _rows(b: Binding) -> tuple[int | None, str]:
    """The rows token ids index, and how messages say where they come from. A target grown to the
    tokenizer's length is what merge would do about it, not rows anybody has: token ids index the
    base's rows then (a tokenizer larger than the embedding is an error, LI201)."""
    target = b.target
    by_adapter = target.grows and target.basis != "tokenizer"
    return (target.rows if by_adapter else target.base_rows), (f" after the adapter ({target.source})" if by_adapter else "")


def _embedding(b: Binding) -> str | None:
    return b.vocab.embeddings[0] if b.vocab.embeddings else None


@check(Code.CONFIG_VOCAB)
def config_vocab(b: Binding) -> Iterator[Hit]:
    v = b.vocab
    if isinstance(v.config_vocab, int) and v.rows is not None and v.config_vocab != v.rows:
        yield Hit(f"config.json says vocab_size {v.config_vocab} but {_embedding(b) or 'the embedding'} has {v.rows} rows.",
                  f"Set vocab_size to {v.rows} in {b.base.root / 'config.json'}, or resize with `lora-inspector resize`.",
                  tensor=_embedding(b))  # fmt: skip


@check(Code.TOKENIZER_LARGER)
def tokenizer_larger(b: Binding) -> Iterator[Hit]:
    tok, (rows, after) = b.tokenizer, _rows(b)
    if tok is None or rows is None or tok.size <= rows:
        return
    resize = shell_command("lora-inspector", "resize", b.base.path, "--tokenizer", tok.directory, "--out", "base-resized")
    yield Hit(
        f"the tokenizer in {tok.directory} has {tok.size} tokens but the embedding has {rows} rows{after}: token ids {rows}..{tok.size - 1} are out of range.",
        f"Run `{resize}`, or use the tokenizer the adapter was trained with (--tokenizer DIR).",
        tensor=_embedding(b),
        base_shape=(rows, b.vocab.width) if b.vocab.width else None,
        repair="resize" if (b.target.rows or 0) >= tok.size else None,  # merge grows to the tokenizer only when nothing larger-ranked sets the size
    )


@check(Code.TOKENIZER_NOT_EXTENDED)
def tokenizer_not_extended(b: Binding) -> Iterator[Hit]:
    tok, target, (rows, _) = b.tokenizer, b.target, _rows(b)
    by_adapter = target.grows and target.basis != "tokenizer"
    if tok is None or rows is None or not by_adapter or tok.size > rows or tok.size > (target.base_rows or 0):
        return
    if Path(tok.directory).resolve() != b.base.root.resolve():
        return
    # The adapter's new rows have no tokens: the extended tokenizer was not saved with the adapter.
    yield Hit(
        f"the adapter grows the vocabulary to {rows} rows ({target.source}) but the only tokenizer found is the base's ({tok.size} tokens, in {tok.directory}): "
        f"probably the one from before the extension; a merged model would ship it, and rows {tok.size}..{rows - 1} would have no token.",
        "Pass the extended tokenizer training used with --tokenizer DIR (check and merge take it), or save it into the adapter directory.",
        tensor=_embedding(b),
    )


@check(Code.EMBEDDING_LARGER)
def embedding_larger(b: Binding) -> Iterator[Hit]:
    tok, (rows, after) = b.tokenizer, _rows(b)
    if tok is None or rows is None or tok.size >= rows:
        return
    if any(True for _ in tokenizer_not_extended(b)):
        return  # the padding rows are the adapter's new rows: LI204 says why they have no token
    yield Hit(
        f"the embedding has {rows} rows{after} and the tokenizer in {tok.directory} has {tok.size} tokens: {rows - tok.size} rows are padding no token uses.",
        "Nothing to do unless the tokenizer is the wrong one; pass --tokenizer DIR to check another.",
        tensor=_embedding(b),
    )
