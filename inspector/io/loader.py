"""Read one tensor's bytes at a time from a checkpoint (safetensors or legacy .bin zip).

Plain ``readinto`` of the exact byte span the header gave, not mmap: pages of a mapped file stay
in the process's resident set, so mapping a 10 GB model and touching every tensor would make the
"streaming" merge hold the whole model. Here peak memory is the tensor being read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from inspector.errors import InvalidInputError
from inspector.io.stamp import FileStamp, changed
from inspector.io.tensor import TensorInfo

# safetensors dtype -> torch attribute name; the writer inverts it.
TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "C64": "complex64",
}


def torch_dtype(st_dtype: str):
    import torch

    name = TORCH_DTYPES.get(st_dtype)
    if name is None or not hasattr(torch, name):
        raise InvalidInputError("Cannot load tensor", None, f"dtype {st_dtype} has no torch equivalent here", "Convert the checkpoint to a standard dtype (F32, F16, BF16).")
    return getattr(torch, name)


class TensorReader:
    """Open files of one checkpoint lazily and read tensors by their header facts.

    ``stamps`` (``Checkpoint.stamps``) say which version of each file the headers came from: a file
    that differs when its data is first read, or when the reader closes, is refused.
    """

    def __init__(self, root: Path, stamps: Iterable[FileStamp] = ()) -> None:
        self.root = Path(root)
        self._files: dict[str, object] = {}
        self._header_stamps = {s.path: s for s in stamps}
        self._stamps: dict[str, FileStamp] = {}
        self._view: tuple[TensorInfo, object] | None = None  # the last strided view read, for its row blocks

    def _open(self, rel: str):
        fh = self._files.get(rel)
        if fh is None:
            path = self.root / rel
            fh = open(path, "rb")  # noqa: SIM115 - closed in close()
            st = os.fstat(fh.fileno())
            stamp = self._header_stamps.get(path)
            error = changed(stamp, st) if stamp is not None else None
            if error is not None:
                fh.close()
                raise error
            self._files[rel], self._stamps[rel] = fh, stamp or FileStamp.of(path, st)
        return fh

    def read(self, info: TensorInfo):
        """The tensor ``info`` describes, on the CPU, in its stored dtype."""
        return self._read(info, None)

    def _read(self, info: TensorInfo, into):
        """``read``; ``into``: a uint8 CPU tensor of at least its bytes to read into and view (the
        merge reuses one: no allocation per block), ignored for a strided view."""
        import torch

        try:
            dtype = torch_dtype(info.dtype)
        except InvalidInputError as exc:  # name the file and the tensor, not just the dtype
            raise InvalidInputError("Cannot load tensor", self.root / info.file, f"{info.name} is {info.dtype}, which has no torch dtype here", exc.hint) from exc
        fh = self._open(info.file)
        size = info.span
        buf = into[:size] if into is not None and info.stride is None else torch.empty(size, dtype=torch.uint8)
        fh.seek(info.start)
        got = fh.readinto(memoryview(buf.numpy())) if size else 0
        if got != size:
            raise InvalidInputError("Cannot read tensor", self.root / info.file, f"{info.name} ends early ({got} of {size} bytes)", "The file is truncated or changed while reading; re-download it.")
        if info.stride is not None:  # a view (w.T): its elements from the storage bytes it spans, made contiguous
            return torch.as_strided(buf.view(dtype), info.shape, info.stride).contiguous()
        return buf.view(dtype).reshape(info.shape)

    def read_rows(self, info: TensorInfo, start: int, stop: int, into=None):
        """Rows [start, stop) of a tensor (dim 0), reading only their bytes (into ``into``, as ``read``)."""
        if not info.shape or (start == 0 and stop >= info.shape[0]):
            return self.read(info) if into is None else self._read(info, into)
        if info.stride is not None:
            # A view's rows are spread over its storage (w.T: every block spans nearly all of it):
            # read it whole once, then slice each block from that.
            if self._view is None or self._view[0] != info:
                self._view = (info, self.read(info))
            return self._view[1][start:stop].clone()
        rows = info.shape[0]
        start, stop = max(0, start), max(start, min(stop, rows))
        row_bytes = info.nbytes // rows
        begin = info.start + start * row_bytes
        part = TensorInfo(info.name, info.dtype, (stop - start, *info.shape[1:]), info.file, begin, begin + (stop - start) * row_bytes)
        return self.read(part) if into is None else self._read(part, into)

    def close(self) -> None:
        """Close every file, refusing results when a file changed while it was read (the open file
        rewritten, or the path replaced by another file)."""
        files, self._files = self._files, {}
        self._view = None
        errors = []
        for rel, fh in files.items():
            try:
                st = os.fstat(fh.fileno())
            finally:
                fh.close()  # every file, even when one cannot be examined
            errors += [changed(self._stamps[rel], st), changed(self._stamps[rel])]
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise error

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            for fh in self._files.values():
                fh.close()
            self._files.clear()

