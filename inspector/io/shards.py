"""The shard plan of a written checkpoint: transformers' names and sizes, headers known up front.

Every output tensor is planned before any data exists (name, dtype, shape), so each shard's header
can be written first and the tensors streamed after it. Sizes count tensor data only, as
transformers' ``max_shard_size`` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from inspector.errors import UsageError
from inspector.io.tensor import DTYPE_BITS, data_bytes

SINGLE_FILE = "model.safetensors"  # transformers' name for an unsharded checkpoint (no index)
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = 5_000_000_000  # transformers' default shard size, decimal GB


def shard_name(index: int, count: int) -> str:
    """transformers' shard naming: 1-based, both numbers zero-padded to 5 digits."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


# ----------------------------------------------------------------------------------------- sizes

_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40,
}  # fmt: skip
_SIZE_RE = re.compile(r"\s*(\d+(?:_\d+)*(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str | int) -> int:
    """Parse a byte size: ``5GB`` -> 5,000,000,000, ``2GiB`` -> 2 * 1024**3, ``500MB``, plain integers.

    Units are case-insensitive and always mean bytes (``5gb`` is 5 GB, not gigabits); the result
    must be a positive whole number of bytes. Raises ``UsageError`` on anything else.
    """

    def junk(why: str) -> UsageError:
        return UsageError("Invalid size", None, why, "Give bytes or a number with a unit: 500MB, 5GB, 2GiB.")

    if isinstance(text, bool):  # bool is an int subclass; True is not a size
        raise junk(f"{text!r} is not a size")
    if isinstance(text, int):
        value = text
    elif isinstance(text, str):
        match = _SIZE_RE.fullmatch(text)
        if match is None or match.group(2).lower() not in _UNITS:
            raise junk(f"{text!r} is not a size")
        scaled = Decimal(match.group(1).replace("_", "")) * _UNITS[match.group(2).lower()]
        if scaled != scaled.to_integral_value():
            raise junk(f"{text!r} is not a whole number of bytes")
        value = int(scaled)
    else:
        raise junk(f"{text!r} is not a size")
    if value <= 0:
        raise junk(f"{text!r} is not a positive size")
    return value


# ------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class OutputTensor:
    """One tensor the writer will receive: what its header entry says before any data exists."""

    name: str
    dtype: str  # safetensors dtype string, e.g. "BF16", "F32"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Shard:
    file: str
    first: int  # index into the plan of its first tensor
    stop: int  # one past its last tensor
    header: bytes  # 8-byte length + padded JSON
    data_size: int

    @property
    def file_size(self) -> int:
        return len(self.header) + self.data_size


def check_plan(tensors: Sequence[OutputTensor]) -> list[int]:
    """Validate the plan (a bad plan is a programming error) and return each tensor's byte size."""
    seen: set[str] = set()
    sizes = []
    for t in tensors:
        if not isinstance(t.name, str) or not t.name or t.name == "__metadata__":
            raise ValueError(f"invalid tensor name {t.name!r}")
        if t.name in seen:
            raise ValueError(f"tensor {t.name!r} is planned twice")
        seen.add(t.name)
        if t.dtype not in DTYPE_BITS:
            raise ValueError(f"tensor {t.name!r} has unknown safetensors dtype {t.dtype!r}")
        if not all(type(d) is int and d >= 0 for d in t.shape):
            raise ValueError(f"tensor {t.name!r} has invalid shape {t.shape!r}")
        nbytes = data_bytes(t.dtype, tuple(t.shape))
        if nbytes is None:
            raise ValueError(f"tensor {t.name!r} ({t.dtype} {list(t.shape)}) does not fill whole bytes")
        sizes.append(nbytes)
    return sizes


def split(sizes: list[int], max_shard_size: int) -> list[tuple[int, int]]:
    """Greedy in-order split: a new shard starts when the next tensor would pass the limit.

    A tensor larger than the limit gets a shard of its own. Sizes count tensor data only, as
    transformers does.
    """
    bounds: list[tuple[int, int]] = []
    first, used = 0, 0
    for i, size in enumerate(sizes):
        if i > first and used + size > max_shard_size:
            bounds.append((first, i))
            first, used = i, 0
        used += size
    bounds.append((first, len(sizes)))  # an empty plan still makes one (empty) model.safetensors
    return bounds


def encode_header(tensors: Sequence[OutputTensor], sizes: list[int], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for t, size in zip(tensors, sizes):
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # safetensors pads with spaces so the data starts 8-byte aligned
    return len(blob).to_bytes(8, "little") + blob


def plan_shards(tensors: Sequence[OutputTensor], max_shard_size: int | None, metadata: dict[str, str], *, single_file: str = SINGLE_FILE) -> list[Shard]:
    """Validate the plan and split it into shards (``single_file`` alone when one shard). A
    ``max_shard_size`` of None: never split (an adapter, which PEFT loads from one file only)."""
    sizes = check_plan(tensors)
    bounds = split(sizes, max_shard_size) if max_shard_size is not None else [(0, len(sizes))]
    return [
        Shard(
            file=single_file if len(bounds) == 1 else shard_name(i, len(bounds)),
            first=a,
            stop=b,
            header=encode_header(tensors[a:b], sizes[a:b], metadata),
            data_size=sum(sizes[a:b]),
        )
        for i, (a, b) in enumerate(bounds)
    ]
