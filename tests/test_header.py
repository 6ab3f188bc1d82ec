"""The strict safetensors header reader: real files from the safetensors library, every hostile case
of HOSTILE.md 1-9 with the reason named, and fuzzing that only ever yields InvalidInputError."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from inspector.errors import InvalidInputError
from inspector.io.header import MAX_HEADER_BYTES, read_header
from inspector.io.tensor import DTYPE_BITS, data_bytes
from tests.hostile import write_raw

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


SAMPLE = {
    "f64": torch.arange(6, dtype=torch.float64).reshape(2, 3),
    "f32": torch.linspace(-1, 1, 12).reshape(3, 4),
    "f16": torch.ones(5, dtype=torch.float16),
    "bf16": torch.full((2, 2, 2), 0.5, dtype=torch.bfloat16),
    "i64": torch.tensor([1, -2, 3]),
    "i32": torch.tensor([[7]], dtype=torch.int32),
    "i16": torch.tensor([1, 2], dtype=torch.int16),
    "i8": torch.tensor([-1, 1, -1], dtype=torch.int8),
    "u8": torch.tensor([255, 0, 7, 9], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "f8_e4m3": torch.ones(3).to(torch.float8_e4m3fn),
    "f8_e5m2": torch.ones(2).to(torch.float8_e5m2),
    "scalar": torch.tensor(3.5),  # HOSTILE 9: shape [] is legal
    "empty": torch.zeros(0, 4),  # HOSTILE 9: a 0 in the shape is legal for the reader
}
SAMPLE_DTYPES = {
    "f64": "F64", "f32": "F32", "f16": "F16", "bf16": "BF16", "i64": "I64", "i32": "I32", "i16": "I16",
    "i8": "I8", "u8": "U8", "bool": "BOOL", "f8_e4m3": "F8_E4M3", "f8_e5m2": "F8_E5M2", "scalar": "F32", "empty": "F32",
}  # fmt: skip


@pytest.fixture
def sample_file(tmp_path: Path) -> Path:
    path = tmp_path / "sample.safetensors"
    save_file(SAMPLE, str(path), metadata={"format": "pt", "note": "x"})
    return path


def test_real_file_matches_torch_and_the_reference_parser(sample_file: Path) -> None:
    tensors, metadata = read_header(sample_file)
    assert metadata == {"format": "pt", "note": "x"}
    assert {t.name for t in tensors} == set(SAMPLE)
    raw = sample_file.read_bytes()
    with safe_open(str(sample_file), "pt") as fh:
        for t in tensors:
            assert t.shape == tuple(SAMPLE[t.name].shape)
            assert t.dtype == SAMPLE_DTYPES[t.name] == fh.get_slice(t.name).get_dtype()
            assert list(t.shape) == fh.get_slice(t.name).get_shape()
            assert t.file == "sample.safetensors"
            # The byte span must hold exactly the tensor's data: later merges read through it.
            assert raw[t.start : t.end] == tensor_bytes(SAMPLE[t.name])
            assert t.nbytes == SAMPLE[t.name].numel() * SAMPLE[t.name].element_size()
    by_name = {t.name: t for t in tensors}
    assert by_name["scalar"].shape == () and by_name["scalar"].numel == 1 and by_name["scalar"].nbytes == 4
    assert by_name["empty"].shape == (0, 4) and by_name["empty"].numel == 0 and by_name["empty"].nbytes == 0
    # Returned in data order, tiling the data region with no gaps.
    starts = [t.start for t in tensors]
    assert starts == sorted(starts)
    assert all(a.end == b.start for a, b in zip(tensors, tensors[1:]))
    assert tensors[-1].end == sample_file.stat().st_size


def test_rel_name_is_recorded(sample_file: Path) -> None:
    tensors, _ = read_header(sample_file, "sub/shard.safetensors")
    assert {t.file for t in tensors} == {"sub/shard.safetensors"}


def test_no_tensors_and_no_metadata(tmp_path: Path) -> None:
    assert read_header(write_raw(tmp_path / "e.safetensors", {})) == ([], {})


def test_sub_byte_dtype_that_fills_whole_bytes(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "f4.safetensors", {"q": {"dtype": "F4", "shape": [2, 2], "data_offsets": [0, 2]}}, b"\0\0")
    (t,), _ = read_header(path)
    assert (t.dtype, t.shape, t.nbytes, t.numel) == ("F4", (2, 2), 2, 4)


F32_1 = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}

# (id, header, data, words the reason must contain): HOSTILE.md 3-9.
HOSTILE_HEADERS = [
    ("not-utf8", b'{"a\xff": 1}', b"", "not UTF-8"),
    ("not-json", b"{nope", b"", "not JSON"),
    ("json-list", b"[1, 2]", b"", "JSON list, not an object"),
    ("json-string", b'"hello"', b"", "JSON str, not an object"),
    ("huge-int-literal", b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}', b"\0" * 4, "not JSON"),
    ("deep-nesting", b"[" * 50_000 + b"]" * 50_000, b"", "nested too deeply"),
    ("duplicate", b'{"a": ' + json.dumps(F32_1).encode() + b', "a": ' + json.dumps(F32_1).encode() + b"}", b"\0" * 4, "'a' appears twice"),
    ("duplicate-escaped", b'{"a": ' + json.dumps(F32_1).encode() + b', "\\u0061": ' + json.dumps(F32_1).encode() + b"}", b"\0" * 4, "'a' appears twice"),
    ("entry-not-object", {"a": [1, 2]}, b"", "described by a list"),
    ("unknown-dtype", {"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype 'F33'"),
    ("lowercase-dtype", {"a": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype 'f32'"),
    ("list-dtype", {"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
    ("dict-dtype", {"a": {"dtype": {}, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
    ("missing-dtype", {"a": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype None"),
    ("negative-dim", {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "has shape [-1]"),
    ("string-dim", {"a": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}}, b"\0" * 4, "has shape ['1']"),
    ("bool-dim", {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "has shape [True]"),
    ("float-dim", {"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, b"\0" * 4, "has shape [1.0]"),
    ("shape-not-list", {"a": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}}, b"\0" * 4, "has shape 1"),
    ("shape-overflow", {"a": {"dtype": "F64", "shape": [2**62, 2**62], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 170141183460469231731687303715884105728"),
    ("one-offset", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}, b"\0" * 4, "expected two non-negative integers"),
    ("negative-offset", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, b"\0" * 4, "expected two non-negative integers"),
    ("float-offset", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}, b"\0" * 4, "expected two non-negative integers"),
    ("missing-offsets", {"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "data_offsets None"),
    ("reversed", {"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}}, b"\0" * 4, "reversed data_offsets [4, 0]"),
    ("span-mismatch", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "spans 4 bytes but F32 [2] needs 8"),
    ("sub-byte-partial", {"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, b"\0" * 2, "whole number of bytes"),
    (
        "overlap",
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
        b"\0" * 12,
        "'b' at data_offsets [4, 12] overlaps",
    ),
    (
        "gap",
        {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}},
        b"\0" * 12,
        "leaves a gap (expected offset 4)",
    ),
    ("not-at-zero", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "leaves a gap (expected offset 0)"),
    ("truncated-data", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 10, "data is 10 bytes but the header describes 16"),
    ("trailing-bytes", {"a": F32_1}, b"\0" * 7, "3 trailing bytes after the last tensor"),
    ("metadata-int-value", {"__metadata__": {"format": 1}}, b"", "__metadata__ is not a map of strings to strings"),
    ("metadata-list", {"__metadata__": ["pt"]}, b"", "__metadata__ is not a map of strings to strings"),
]


@pytest.mark.parametrize(("header", "data", "reason"), [c[1:] for c in HOSTILE_HEADERS], ids=[c[0] for c in HOSTILE_HEADERS])
def test_hostile_header_is_rejected_with_its_reason(tmp_path: Path, header: dict | bytes, data: bytes, reason: str) -> None:
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(InvalidInputError) as info:
        read_header(path)
    err = info.value
    assert err.exit_code == 2
    assert err.path == str(path)
    assert reason in err.why
    assert err.message.startswith(f"Cannot read safetensors header for '{path}': ")
    assert err.hint


@pytest.mark.parametrize("size", [0, 1, 7])
def test_shorter_than_eight_bytes(tmp_path: Path, size: int) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\1" * size)
    with pytest.raises(InvalidInputError, match=f"file is {size} bytes, shorter than the 8-byte header length"):
        read_header(path)


def test_header_length_beyond_file(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "h.safetensors", b"{}", length=1000)
    with pytest.raises(InvalidInputError, match=r"header length 1000 is larger than the file \(10 bytes\)"):
        read_header(path)


def test_header_length_beyond_limit_is_refused_before_reading(tmp_path: Path) -> None:
    # The file is sparse and as large as the claimed header: only the limit can stop a 100 MB read.
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        fh.truncate(MAX_HEADER_BYTES + 16)
    with pytest.raises(InvalidInputError, match=f"header length {MAX_HEADER_BYTES + 1} exceeds the {MAX_HEADER_BYTES}-byte limit"):
        read_header(path)


def test_header_length_of_2_to_the_64(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "h.safetensors", b"{}", length=2**64 - 1)
    with pytest.raises(InvalidInputError, match="exceeds"):
        read_header(path)


def test_truncated_real_file(sample_file: Path) -> None:
    blob = sample_file.read_bytes()
    sample_file.write_bytes(blob[:-5])
    with pytest.raises(InvalidInputError) as info:
        read_header(sample_file)
    assert "truncated" in info.value.hint.lower()
    assert "but the header describes" in info.value.why


def test_directory_fifo_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not a regular file"):
        read_header(tmp_path)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInputError, match="not a regular file"):  # must not block on open()
        read_header(fifo)
    with pytest.raises(InvalidInputError, match="No such file"):
        read_header(tmp_path / "missing.safetensors")


# ---- fuzzing: anything but InvalidInputError (or a hang) is a bug -------------------------------------


def _read_or_reject(path: Path):
    try:
        return read_header(path)
    except InvalidInputError:
        return None


@FUZZ
@given(blob=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(blob)
    result = _read_or_reject(path)
    if result is not None:  # only a well-formed file passes: re-check the tiling invariant
        tensors, _ = result
        assert sum(t.nbytes for t in tensors) == len(blob) - 8 - struct.unpack("<Q", blob[:8])[0]


_dtype = st.sampled_from(sorted(DTYPE_BITS)) | st.sampled_from(["F33", "", "f32"]) | st.integers() | st.none() | st.lists(st.none(), max_size=1)
_shape = st.lists(st.integers(-1, 5) | st.booleans() | st.text(max_size=1), max_size=3) | st.none() | st.integers()
_offsets = st.lists(st.integers(-1, 40), max_size=3) | st.none() | st.text(max_size=2)
_entry = st.fixed_dictionaries({"dtype": _dtype, "shape": _shape, "data_offsets": _offsets}) | st.integers() | st.lists(st.integers(), max_size=2)
_metadata = st.none() | st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(), max_size=2)


@FUZZ
@given(entries=st.dictionaries(st.text(max_size=3), _entry, max_size=4), metadata=_metadata, data=st.binary(max_size=48))
def test_fuzz_structured_headers(tmp_path: Path, entries: dict, metadata: dict | None, data: bytes) -> None:
    header = dict(entries)
    if metadata is not None:
        header["__metadata__"] = metadata
    path = write_raw(tmp_path / "fuzz.safetensors", header, data)
    result = _read_or_reject(path)
    if result is not None:
        tensors, meta = result
        assert {t.name for t in tensors} == set(entries)
        assert all(t.nbytes == data_bytes(t.dtype, t.shape) for t in tensors)
        assert sum(t.nbytes for t in tensors) == len(data)
        assert meta == (metadata or {})


@st.composite
def _valid_file(draw: st.DrawFn) -> tuple[dict, bytes]:
    names = draw(st.lists(st.text(min_size=1, max_size=6), unique=True, max_size=5))
    header: dict = {}
    cursor = 0
    for name in names:
        dtype = draw(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "I8"]))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = data_bytes(dtype, tuple(shape))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [cursor, cursor + size]}
        cursor += size
    return header, bytes(cursor)


@FUZZ
@given(case=_valid_file())
def test_fuzz_valid_files_round_trip_and_agree_with_the_reference_parser(tmp_path: Path, case: tuple[dict, bytes]) -> None:
    header, data = case
    path = write_raw(tmp_path / "ok.safetensors", header, data)
    tensors, _ = read_header(path)
    assert {t.name: (t.dtype, list(t.shape)) for t in tensors} == {n: (e["dtype"], e["shape"]) for n, e in header.items()}
    data_start = 8 + len(json.dumps(header).encode())
    assert {t.name: [t.start - data_start, t.end - data_start] for t in tensors} == {n: e["data_offsets"] for n, e in header.items()}
    with safe_open(str(path), "pt") as fh:
        assert set(fh.keys()) == set(header)
        for t in tensors:
            assert fh.get_slice(t.name).get_shape() == list(t.shape)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4), cut=st.integers(0, 10_000))
def test_fuzz_mutated_real_file(tmp_path: Path, flips: list[tuple[int, int]], cut: int) -> None:
    source = tmp_path / "src.safetensors"
    if not source.exists():
        save_file({k: SAMPLE[k] for k in ("f32", "bf16", "i64", "scalar")}, str(source), metadata={"format": "pt"})
    blob = bytearray(source.read_bytes())
    for pos, value in flips:
        blob[pos % len(blob)] = value
    blob = bytes(blob[: max(cut, len(blob) // 2)])
    path = tmp_path / "mut.safetensors"
    path.write_bytes(blob)
    result = _read_or_reject(path)
    if result is not None:
        # Whatever the strict reader accepts, the reference parser must accept with the same facts.
        with safe_open(str(path), "pt") as fh:
            assert {t.name: list(t.shape) for t in result[0]} == {k: fh.get_slice(k).get_shape() for k in fh.keys()}
