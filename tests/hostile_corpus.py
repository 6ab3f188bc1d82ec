"""The broken-file corpus of HOSTILE.md, generated at test time, and the checks every case shares.

Each ``BrokenFile`` is the complete bytes of one broken safetensors file (HOSTILE.md 1-8) with the
words its ``Error:`` line must contain. Builders here write the rest of the corpus (sharded indexes,
pickle payloads, symlink and FIFO layouts) into a test's ``tmp_path``; nothing is committed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from inspector.io.header import MAX_HEADER_BYTES


def st_bytes(header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A safetensors-shaped file from a header (dict or raw JSON bytes) and a data region, unchecked."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


@dataclass(frozen=True)
class BrokenFile:
    id: str
    case: int  # the HOSTILE.md number
    blob: bytes
    why: str  # words the Error: line must contain


F32_1 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
_F32_1 = json.dumps(F32_1).encode()
Z4, Z8, Z12 = b"\0" * 4, b"\0" * 8, b"\0" * 12

BROKEN_FILES = [
    BrokenFile("empty", 1, b"", "file is 0 bytes, shorter than the 8-byte header length"),
    BrokenFile("seven-bytes", 1, b"\1" * 7, "file is 7 bytes, shorter than the 8-byte header length"),
    BrokenFile("header-past-end", 2, st_bytes(b"{}", length=1000), "header length 1000 is larger than the file (10 bytes)"),
    BrokenFile("header-over-limit", 2, st_bytes(b"{}", length=MAX_HEADER_BYTES + 1), f"header length {MAX_HEADER_BYTES + 1} exceeds the {MAX_HEADER_BYTES}-byte limit"),
    BrokenFile("header-2-to-64", 2, st_bytes(b"{}", length=2**64 - 1), "exceeds the"),
    BrokenFile("not-utf8", 3, st_bytes(b'{"a\xff": 1}'), "header is not UTF-8"),
    BrokenFile("not-json", 3, st_bytes(b"{nope"), "header is not JSON"),
    BrokenFile("json-list", 3, st_bytes(b"[1, 2]"), "header is a JSON list, not an object"),
    BrokenFile("lone-surrogate", 3, st_bytes(b'{"\\ud800": ' + _F32_1 + b"}", Z4), "contains a lone surrogate escape"),
    BrokenFile("duplicate", 4, st_bytes(b'{"a": ' + _F32_1 + b', "a": ' + _F32_1 + b"}", Z4), "'a' appears twice"),
    BrokenFile("duplicate-escaped", 4, st_bytes(b'{"a": ' + _F32_1 + b', "\\u0061": ' + _F32_1 + b"}", Z4), "'a' appears twice"),
    BrokenFile("unknown-dtype", 5, st_bytes({"a": {**F32_1, "dtype": "F33"}}, Z4), "unknown dtype 'F33'"),
    BrokenFile("negative-dim", 5, st_bytes({"a": {**F32_1, "shape": [-1]}}, Z4), "has shape [-1]"),
    BrokenFile("float-dim", 5, st_bytes({"a": {**F32_1, "shape": [1.0]}}, Z4), "has shape [1.0]"),
    BrokenFile("shape-overflow", 5, st_bytes({"a": {"dtype": "F64", "shape": [2**62, 2**62], "data_offsets": [0, 8]}}, Z8), "needs 170141183460469231731687303715884105728"),
    BrokenFile("one-offset", 6, st_bytes({"a": {**F32_1, "data_offsets": [4]}}, Z4), "expected two non-negative integers"),
    BrokenFile("negative-offset", 6, st_bytes({"a": {**F32_1, "data_offsets": [-4, 0]}}, Z4), "expected two non-negative integers"),
    BrokenFile("reversed", 6, st_bytes({"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}}, Z4), "reversed data_offsets [4, 0]"),
    BrokenFile("overlap", 6, st_bytes({"a": {**F32_1, "shape": [2], "data_offsets": [0, 8]}, "b": {**F32_1, "shape": [2], "data_offsets": [4, 12]}}, Z12), "overlaps the previous tensor"),
    BrokenFile("gap", 6, st_bytes({"a": F32_1, "b": {**F32_1, "data_offsets": [8, 12]}}, Z12), "leaves a gap (expected offset 4)"),
    BrokenFile("not-at-zero", 6, st_bytes({"a": {**F32_1, "data_offsets": [4, 8]}}, Z8), "leaves a gap (expected offset 0)"),
    BrokenFile("span-mismatch", 6, st_bytes({"a": {**F32_1, "shape": [2]}}, Z4), "spans 4 bytes but F32 [2] needs 8"),
    BrokenFile("truncated", 7, st_bytes({"a": {**F32_1, "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 10), "data is 10 bytes but the header describes 16"),
    BrokenFile("trailing", 7, st_bytes({"a": F32_1}, b"\0" * 7), "3 trailing bytes after the last tensor"),
    BrokenFile("metadata-int", 8, st_bytes({"__metadata__": {"format": 1}}), "__metadata__ is not a map of strings to strings"),
    BrokenFile("metadata-list", 8, st_bytes({"__metadata__": ["pt"]}), "__metadata__ is not a map of strings to strings"),
    BrokenFile("metadata-surrogate", 8, st_bytes(b'{"__metadata__": {"format": "\\udfff"}}'), "__metadata__ holds a lone surrogate escape"),
]


# ---- snapshots: "nothing written or changed" -----------------------------------------------------


def snapshot(*roots: Path) -> dict[str, object]:
    """Every entry under ``roots`` (hidden ones included) with its content, links as link targets."""
    out: dict[str, object] = {}
    for root in roots:
        root = Path(root)
        if not os.path.lexists(root):
            out[str(root)] = None
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.is_symlink():
                    out[str(p)] = ("link", os.readlink(p))
                elif p.is_dir():
                    out[str(p)] = "dir"
                elif p.is_file():
                    out[str(p)] = p.read_bytes()
                else:
                    out[str(p)] = "special"  # FIFOs: never opened
    return out


# ---- checkpoints built from the session fixtures -------------------------------------------------


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)


def adapter_with_file(src: Path, dst: Path, name: str, blob: bytes) -> Path:
    """A copy of adapter ``src`` (its adapter_config.json only) plus ``name`` holding ``blob``."""
    dst.mkdir(parents=True)
    shutil.copy(src / "adapter_config.json", dst / "adapter_config.json")
    (dst / name).write_bytes(blob)
    return dst


def model_with_file(config_src: Path, dst: Path, name: str, blob: bytes) -> Path:
    """A model directory: ``config_src``'s config.json plus ``name`` holding ``blob``."""
    dst.mkdir(parents=True)
    shutil.copy(config_src / "config.json", dst / "config.json")
    (dst / name).write_bytes(blob)
    return dst


def edit_json_file(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def set_tensor(path: Path, key: str, edit) -> None:
    """Rewrite safetensors file ``path`` with ``edit`` applied to tensor ``key`` (metadata kept)."""
    tensors = load_file(str(path))
    tensors[key] = edit(tensors[key].clone())
    save_file(tensors, str(path), metadata={"format": "pt"})


def torch_save_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def with_payload(model_file: Path, dst: Path, payload: bytes) -> Path:
    """``model_file``'s tensors plus a U8 tensor ``payload`` holding ``payload`` (the smallest
    alignment, so safetensors stores it last: the file *ends* with it, as a zip's directory does)."""
    tensors = load_file(str(model_file))
    tensors["payload"] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    save_file(tensors, str(dst), metadata={"format": "pt"})
    return dst


def hf_cache_layout(src: Path, cache: Path, repo: str) -> Path:
    """``src``'s files laid out as huggingface_hub caches them: ``models--<repo>/blobs/<name>`` and
    ``snapshots/<rev>/<name> -> ../../blobs/<name>``. Returns the snapshot directory."""
    top = cache / f"models--{repo}"
    blobs, snap = top / "blobs", top / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        blob = f"sha-{f.name}"
        shutil.copy(f, blobs / blob)
        (snap / f.name).symlink_to(Path("../../blobs") / blob)
    return snap


# ---- time bound for cases that could block or backtrack --------------------------------------------


class Hung(BaseException):
    """Raised by ``deadline`` when the code under test runs past its bound (a BaseException, so the
    CLI's catch-all for internal errors cannot turn it into an ordinary exit 2)."""


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``. SIGALRM
    interrupts a blocking open() of a FIFO and the regex engine's backtracking alike."""

    def expire(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def add_raw_tensor(path: Path, name: str, dtype: str, shape: list[int], data: bytes) -> None:
    """Append a tensor to safetensors file ``path`` by editing its header (dtypes torch cannot write)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, body = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + len(data)]}
    path.write_bytes(st_bytes(json.dumps(header).encode(), body + data))
