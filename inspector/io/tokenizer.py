"""Tokenizer facts read from files alone (no ``tokenizers``/``transformers`` import).

``length`` is what ``len(tokenizer)`` gives in transformers: the distinct tokens of the model
vocabulary plus added tokens; ``max_id`` is the largest id any file assigns. Sources, in order:
``tokenizer.json`` (fast tokenizers), else ``tokenizer.model`` (sentencepiece) plus
``added_tokens.json`` / ``tokenizer_config.json``'s ``added_tokens_decoder``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from inspector.errors import InvalidInputError
from inspector.io.paths import resolves_inside

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
# What else tokenizer.save_pretrained writes (chat templates, other vocabulary formats): they travel
# with the tokenizer when merge and resize take it from another directory than the base.
TOKENIZER_COMPANIONS = ("chat_template.jinja", "chat_template.json", "spiece.model", "sentencepiece.bpe.model")
MAX_TOKENIZER_BYTES = 512_000_000
MAX_TOKEN_ID = 2**63 - 1  # torch indexes embedding rows with int64; a larger id is no row of any model


@dataclass(frozen=True)
class TokenizerFacts:
    directory: str
    source: str  # the file the base vocabulary came from
    length: int  # len(tokenizer) as transformers counts it
    max_id: int
    added: int  # added tokens beyond the model vocabulary

    @property
    def size(self) -> int:
        """The rows an embedding needs for every id this tokenizer can produce."""
        return max(self.length, self.max_id + 1)

    def as_json(self) -> dict:
        return {"directory": self.directory, "source": self.source, "length": self.length, "max_id": self.max_id, "added": self.added}


def _fail(path: Path, why: str) -> InvalidInputError:
    return InvalidInputError("Cannot read tokenizer", path, why, "Re-save the tokenizer with tokenizer.save_pretrained(), or pass --tokenizer DIR.")


def _read_bytes(path: Path) -> bytes:
    # Every tokenizer file is bounded: a sparse 100 GB "tokenizer.model" must not be read into memory.
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise _fail(path, "file is larger than 512 MB")
    return path.read_bytes()


def _load_json(path: Path) -> object:
    try:
        return json.loads(_read_bytes(path).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, bad JSON, huge int literals
        raise _fail(path, f"not readable JSON ({exc})") from exc


def _ids(path: Path, mapping: dict[str, int]) -> dict[str, int]:
    """``mapping`` (token -> id from ``path``), refused when an id is past any embedding's reach: sizes
    computed from it would overflow every float that reports them."""
    big = max((i for i in mapping.values() if i > MAX_TOKEN_ID), default=None)
    if big is not None:
        shown = str(big) if big.bit_length() <= 128 else f"of {len(str(big))} digits"
        raise _fail(path, f"token id {shown} is larger than {MAX_TOKEN_ID}, the largest row index an embedding can have")
    return mapping


def _model_vocab(path: Path, data: object) -> dict[str, int]:
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict) and all(isinstance(v, int) for v in vocab.values()):
        return _ids(path, {str(k): v for k, v in vocab.items()})
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
        return {str(p[0]) if isinstance(p, list) and p else str(p): i for i, p in enumerate(vocab)}
    raise _fail(path, "model.vocab is missing or not a token -> id map")


def _sentencepiece_pieces(path: Path) -> list[str]:
    """Piece strings of a sentencepiece ModelProto: field 1 (repeated SentencePiece), its field 1 the piece."""
    try:
        data = _read_bytes(path)
    except OSError as exc:
        raise _fail(path, f"not readable ({exc.strerror or exc})") from exc

    def varint(buf: bytes, i: int) -> tuple[int, int]:
        shift = value = 0
        while True:
            if i >= len(buf) or shift > 63:
                raise _fail(path, "malformed sentencepiece model")
            b = buf[i]
            value |= (b & 0x7F) << shift
            i += 1
            if b < 0x80:
                return value, i
            shift += 7

    def fields(buf: bytes):
        i = 0
        while i < len(buf):
            key, i = varint(buf, i)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, i = varint(buf, i)
            elif wire == 1:
                value, i = buf[i : i + 8], i + 8
            elif wire == 5:
                value, i = buf[i : i + 4], i + 4
            elif wire == 2:
                n, i = varint(buf, i)
                value, i = buf[i : i + n], i + n
            else:
                raise _fail(path, f"malformed sentencepiece model (wire type {wire})")
            if i > len(buf):
                raise _fail(path, "malformed sentencepiece model (truncated)")
            yield field, wire, value

    pieces = []
    for field, wire, value in fields(data):
        if field == 1 and wire == 2:
            piece = next((v for f, w, v in fields(value) if f == 1 and w == 2), b"")
            pieces.append(piece.decode("utf-8", "replace"))
    if not pieces:
        raise _fail(path, "no pieces found in the sentencepiece model")
    return pieces


def _is_id(key: object) -> bool:
    # ASCII only: "²".isdigit() is True, yet int("²") raises.
    return isinstance(key, str) and key.isascii() and key.isdigit()


def _added_tokens(directory: Path) -> dict[str, int]:
    added: dict[str, int] = {}
    config = directory / "tokenizer_config.json"
    if config.is_file():
        data = _load_json(config)
        decoder = data.get("added_tokens_decoder") if isinstance(data, dict) else None
        if isinstance(decoder, dict):
            found = {tok["content"]: int(idx) for idx, tok in decoder.items() if isinstance(tok, dict) and isinstance(tok.get("content"), str) and _is_id(idx)}
            added.update(_ids(config, found))
    extra = directory / "added_tokens.json"
    if extra.is_file():
        data = _load_json(extra)
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise _fail(extra, "expected a map of token -> id")
        added.update(_ids(extra, data))
    return added


def read_tokenizer(directory: Path) -> TokenizerFacts | None:
    """Facts about the tokenizer saved in ``directory``, or None when it holds none."""
    directory = Path(directory)
    for name in TOKENIZER_FILES + TOKENIZER_COMPANIONS:  # merge and resize copy these files into their output: none may link out
        path = directory / name
        if os.path.lexists(path) and not resolves_inside(directory, path):
            raise _fail(path, f"it is a symlink to '{path.resolve()}', outside the tokenizer directory")
    fast = directory / "tokenizer.json"
    if fast.is_file():
        return TokenizerFacts(str(directory), fast.name, *_fast_counts(fast))
    if (directory / "tokenizer.model").is_file():
        vocab = {p: i for i, p in enumerate(_sentencepiece_pieces(directory / "tokenizer.model"))}
        added = _added_tokens(directory)
        source = directory / "tokenizer.model"
    elif (directory / "vocab.txt").is_file():  # WordPiece (BERT) slow-tokenizer files
        try:
            text = _read_bytes(directory / "vocab.txt").decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(directory / "vocab.txt", f"not readable UTF-8 text ({exc})") from exc
        # transformers' load_vocab reads lines with universal newlines only; str.splitlines() would also
        # split inside tokens at U+0085, U+2028 and friends and over-count.
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if lines[-1] == "":
            lines.pop()
        vocab = {tok: i for i, tok in enumerate(lines)}
        added = _added_tokens(directory)
        source = directory / "vocab.txt"
    elif (directory / "vocab.json").is_file():  # byte-level BPE (GPT-2) slow-tokenizer files
        data = _load_json(directory / "vocab.json")
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise _fail(directory / "vocab.json", "expected a map of token -> id")
        vocab, added, source = _ids(directory / "vocab.json", data), _added_tokens(directory), directory / "vocab.json"
    else:
        return None
    return TokenizerFacts(str(directory), source.name, *_counts(vocab, added))


def _counts(vocab: dict[str, int], added: dict[str, int]) -> tuple[int, int, int]:
    """(length, max_id, added beyond the vocabulary), as TokenizerFacts holds them."""
    tokens = dict(vocab)
    extra = {t: i for t, i in added.items() if t not in vocab}
    tokens.update(extra)
    ids = list(tokens.values())
    return len(tokens), max(ids) if ids else -1, len(extra)


# tokenizer.json content -> its counts. Training scripts save a copy of the base's tokenizer beside
# every adapter: `check BASE A1 ... A500` parses each distinct file once (a 2 MB one takes ~15 ms).
_FAST_SEEN: dict[bytes, tuple[int, int, int]] = {}
_FAST_SEEN_MAX, _FAST_SEEN_BYTES = 8, 64_000_000


def _fast_counts(path: Path) -> tuple[int, int, int]:
    try:
        blob = _read_bytes(path)
        known = _FAST_SEEN.get(blob)
        if known is not None:
            return known
        data = json.loads(blob.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # as _load_json: ValueError is bad UTF-8, bad JSON, huge int literals
        raise _fail(path, f"not readable JSON ({exc})") from exc
    vocab = _model_vocab(path, data)
    added_list = data.get("added_tokens") or []
    if not isinstance(added_list, list):
        raise _fail(path, "added_tokens is not a list")
    added = _ids(path, {t["content"]: t["id"] for t in added_list if isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int)})
    counts = _counts(vocab, added)
    if len(blob) <= _FAST_SEEN_BYTES:  # a few ordinary tokenizers kept, never a huge one
        if len(_FAST_SEEN) >= _FAST_SEEN_MAX:
            _FAST_SEEN.pop(next(iter(_FAST_SEEN)))
        _FAST_SEEN[blob] = counts
    return counts
