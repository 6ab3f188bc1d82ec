"""Header-level facts about one tensor, and the dtype table shared by every reader."""

from __future__ import annotations

import math
from dataclasses import dataclass

# safetensors dtype string -> bits per element (the reference Rust crate's table, sub-byte types included).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
}

FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})

# fp32 bytes of one row block when tensors are streamed (merge, diff --values); check's memory plan uses it.
# 4 MiB, measured: the merge's blocks stay in the CPU caches between the steps of the pipeline (3.76 GB
# case on 2 cores, 2-64 MiB blocks: 4 and 8 MiB fastest, 64 MiB 1.3-1.4x their wall time and 2.7x the page faults).
STREAM_BLOCK_BYTES = 4 << 20


def data_bytes(dtype: str, shape: tuple[int, ...]) -> int | None:
    """Bytes a tensor of this dtype and shape occupies, or None when the bits do not fill whole bytes."""
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    return bits // 8 if bits % 8 == 0 else None


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its header describes it: no data is ever read to build this."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str  # file name relative to the checkpoint root
    start: int  # absolute byte offset of the data in ``file``
    end: int
    # A strided view saved as is in a legacy .bin (w.T, w[:, 1]): its element strides within the storage
    # from ``start``; None for the usual contiguous block of ``end - start`` bytes.
    stride: tuple[int, ...] | None = None

    @property
    def contiguous(self) -> bool:
        return self.stride is None

    @property
    def span(self) -> int:
        """Bytes from ``start`` that hold the tensor's elements (a strided view reaches further)."""
        if self.stride is None or not self.numel:
            return self.nbytes
        item = self.nbytes // self.numel
        return (sum((s - 1) * d for s, d in zip(self.shape, self.stride)) + 1) * item

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def as_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "file": self.file}
