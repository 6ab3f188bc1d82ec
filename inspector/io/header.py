"""Strict safetensors header reader: 8 bytes, a bounded JSON header, nothing else.

Follows the reference Rust parser's rules and also rejects what it lets through (duplicate names,
trailing bytes). Never reads tensor data, so a 140 GB checkpoint made of sparse holes scans instantly.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

from inspector.errors import InvalidInputError
from inspector.io.stamp import FileStamp
from inspector.io.tensor import DTYPE_BITS, TensorInfo, data_bytes

MAX_HEADER_BYTES = 100_000_000  # the Rust crate's limit; checked before allocating

_HINT = "The file is not a valid safetensors file; re-download or re-save it with safetensors."


def _fail(path: Path, why: str, hint: str = _HINT) -> InvalidInputError:
    return InvalidInputError("Cannot read safetensors header", path, why, hint)


def is_unicode(text: str) -> bool:
    # "\ud800" is valid JSON but not Unicode: the Rust parser refuses it, and no report could print it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_duplicates(path: Path):
    # JSON escapes are decoded before this hook runs, so "a" and "\u0061" collide here as they should.
    def hook(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if not is_unicode(key):
                raise _fail(path, f"name {key!r} contains a lone surrogate escape (not valid Unicode)")
            if key in out:
                raise _fail(path, f"tensor name {key!r} appears twice in the header (names compared after JSON unescaping)")
            out[key] = value
        return out

    return hook


def _shape(path: Path, name: str, raw: object) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(type(d) is int and d >= 0 for d in raw):
        raise _fail(path, f"tensor {name!r} has shape {raw!r}; a shape is a list of non-negative integers")
    return tuple(raw)


def _offsets(path: Path, name: str, raw: object) -> tuple[int, int]:
    if not (isinstance(raw, list) and len(raw) == 2 and all(type(o) is int and o >= 0 for o in raw)):
        raise _fail(path, f"tensor {name!r} has data_offsets {raw!r}; expected two non-negative integers")
    begin, end = raw
    if end < begin:
        raise _fail(path, f"tensor {name!r} has reversed data_offsets [{begin}, {end}]")
    return begin, end


def read_metadata(path: Path, raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise _fail(path, "__metadata__ is not a map of strings to strings")
    if not all(is_unicode(v) for v in raw.values()):
        raise _fail(path, "__metadata__ holds a lone surrogate escape (not valid Unicode)")
    return dict(raw)


def read_header(path: Path, rel: str | None = None, *, stamps: dict[Path, FileStamp] | None = None) -> tuple[list[TensorInfo], dict[str, str]]:
    """Parse and validate ``path``'s header; return its tensors (in data order) and ``__metadata__``.

    ``rel`` is the name recorded in ``TensorInfo.file`` (defaults to the file name). ``stamps``
    receives the identity of the file whose header this is, for later data reads to compare against.
    """
    path = Path(path)
    blob, size = _read_blob(path, stamps)
    header = _parse_json(path, blob)
    metadata = read_metadata(path, header.pop("__metadata__", None))
    entries = sorted((_entry(path, name, value) for name, value in header.items()), key=lambda e: (e[0], e[1]))
    data_start = 8 + len(blob)
    _check_tiling(path, entries, size - data_start)
    tensors = [TensorInfo(name, dtype, shape, rel or path.name, data_start + b, data_start + e) for b, e, name, dtype, shape in entries]
    return tensors, metadata


def _read_blob(path: Path, stamps: dict[Path, FileStamp] | None) -> tuple[bytes, int]:
    """The header's JSON bytes (length bound-checked before reading) and the file's size."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _fail(path, "not a regular file", "Point lora-inspector at a file or a checkpoint directory.")
        with open(path, "rb") as fh:
            # The open file is what the header describes (the path may be replaced meanwhile).
            st = os.fstat(fh.fileno())
            if stamps is not None:
                stamps[path] = FileStamp.of(path, st)
            size = st.st_size
            if size < 8:
                raise _fail(path, f"file is {size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > MAX_HEADER_BYTES:
                raise _fail(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
            if n > size - 8:
                raise _fail(path, f"header length {n} is larger than the file ({size} bytes)", "The file looks truncated; re-download it.")
            return fh.read(n), size
    except OSError as exc:
        raise InvalidInputError("Cannot read", path, exc.strerror or str(exc), "Check that the file exists and is readable.") from exc


def _parse_json(path: Path, blob: bytes) -> dict:
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"header is not UTF-8 (byte {exc.start})") from exc
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicates(path))
    except json.JSONDecodeError as exc:
        raise _fail(path, f"header is not JSON ({exc.msg} at character {exc.pos})") from exc
    except ValueError as exc:  # not a JSONDecodeError: an integer literal past Python's 4,300-digit limit
        raise _fail(path, f"header is not JSON ({exc})") from exc
    except RecursionError as exc:
        raise _fail(path, "header JSON is nested too deeply") from exc
    if not isinstance(header, dict):
        raise _fail(path, f"header is a JSON {type(header).__name__}, not an object")
    return header


def _entry(path: Path, name: str, entry: object) -> tuple[int, int, str, str, tuple[int, ...]]:
    """One tensor's (begin, end, name, dtype, shape), its span matching dtype x shape."""
    if not isinstance(entry, dict):
        raise _fail(path, f"tensor {name!r} is described by a {type(entry).__name__}, not an object")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:  # a list or dict here is unhashable
        raise _fail(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    shape = _shape(path, name, entry.get("shape"))
    begin, end = _offsets(path, name, entry.get("data_offsets"))
    expected = data_bytes(dtype, shape)
    if expected is None:
        raise _fail(path, f"tensor {name!r} ({dtype} {list(shape)}) does not fill a whole number of bytes")
    if end - begin != expected:
        raise _fail(path, f"tensor {name!r} spans {end - begin} bytes but {dtype} {list(shape)} needs {expected}")
    return begin, end, name, dtype, shape


def _check_tiling(path: Path, entries: list[tuple], data_size: int) -> None:
    """Data regions must tile [0, data_size) exactly: no gaps, no overlaps, nothing after (the Rust parser's rule, and more)."""
    cursor = 0
    for begin, end, name, _, _ in entries:
        if begin != cursor:
            kind = "overlaps the previous tensor" if begin < cursor else f"leaves a gap (expected offset {cursor})"
            raise _fail(path, f"tensor {name!r} at data_offsets [{begin}, {end}] {kind}")
        cursor = end
    if cursor > data_size:
        raise _fail(path, f"data is {data_size} bytes but the header describes {cursor}", "The file is truncated (an interrupted download?); re-download it.")
    if cursor < data_size:
        raise _fail(path, f"{data_size - cursor} trailing bytes after the last tensor")
