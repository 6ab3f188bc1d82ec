"""Statistics of one tensor for ``explore``, computed when the user opens it (in a worker thread).

The tensor is streamed in blocks through the project's reader (``TensorReader.read_rows`` over a flat
view of it, in ``values._blocks``' steps): memory stays one block however large the tensor or its rows
(a 70,840 x 8,192 vocabulary matrix, an [8, 14336, 4096] stack of experts). Two passes: moments, extremes and counts first, then the histogram over
the range the first pass found. A vocabulary matrix the adapter grows also gets its old rows' norms
against its new rows' (``values._RowStats``, what LI1603 reads). torch is imported here only.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inspector.io.loader import TORCH_DTYPES, TensorReader
from inspector.io.stamp import FileStamp
from inspector.io.tensor import STREAM_BLOCK_BYTES, TensorInfo
from inspector.values import RowValues, _blocks, _RowStats

BINS = 28  # one character each: the histogram fits the detail panel at 80 columns


class Cancelled(Exception):
    """The user opened another tensor (or quit) while this one was being read."""


@dataclass(frozen=True)
class Stats:
    name: str
    dtype: str
    shape: tuple[int, ...]
    numel: int
    min: float | None  # of the finite values; None when there are none
    max: float | None
    mean: float | None
    std: float | None
    nan: int
    inf: int
    zeros: int
    edges: tuple[float, ...]  # BINS + 1 edges over [min, max]
    counts: tuple[int, ...]
    rows: RowValues | None = None  # old vs new row norms of a grown vocabulary matrix
    bytes_read: int = 0


def tensor_stats(root: Path, stamps: tuple[FileStamp, ...], info: TensorInfo, *, old_rows: int | None = None,
                 block_bytes: int = STREAM_BLOCK_BYTES, progress: Callable[[float], None] | None = None,
                 cancelled: Callable[[], bool] = lambda: False) -> Stats:
    """Stream ``info`` (a tensor of the checkpoint at ``root``) twice, block by block. ``old_rows``: the
    base's vocabulary rows, for a matrix the adapter carries grown (its rows past them are the new ones)."""
    from inspector.interrupts import heavy_import

    refuse_remote(root)
    if info.dtype not in TORCH_DTYPES or info.dtype == "C64":
        raise ValueError(f"{info.dtype} values have no statistics here")
    torch = heavy_import("torch")
    # One intra-op thread: the UI's threads share the cores, and on a loaded machine torch's pool
    # spinning for cores it cannot get made each block 3-6x slower (measured on 2 cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _stats(torch, root, stamps, info, old_rows, block_bytes, progress, cancelled)
    finally:
        torch.set_num_threads(threads)  # process-wide: a caller in the same process keeps its own


@dataclass(frozen=True)
class NotDownloaded:
    """In place of a tensor's Stats: its checkpoint was read from the Hub, headers only (a sparse stub
    whose data region is a hole, which would read as zeros); nothing of it is read."""

    name: str
    repo: str  # the Hub id as given (org/name[@rev])
    hint: str  # refuse_data's: the `hf download` command


def not_downloaded(ckpt, info: TensorInfo) -> NotDownloaded | None:
    """A ``NotDownloaded`` when ``ckpt`` was read from the Hub without its tensor data, else None."""
    remote = getattr(ckpt, "remote", None)
    if remote is None:
        return None
    from inspector.io.hub import download_hint

    return NotDownloaded(info.name, remote.shown, download_hint(remote))


def refuse_remote(root: Path) -> None:
    """Refuse (Error/Hint) to compute statistics from the stub of a remote read: never stream its hole."""
    hub = sys.modules.get("inspector.io.hub")  # not loaded: nothing was read remotely, no stub exists
    remote = hub.remote_of(Path(root)) if hub is not None else None
    if remote is not None:
        from inspector.errors import InvalidInputError

        raise InvalidInputError("Cannot run statistics", remote.shown, "it reads tensor data, and this checkpoint's headers were read from the Hub without it",
                                hub.download_hint(remote))


def _stats(torch, root, stamps, info, old_rows, block_bytes, progress, cancelled) -> Stats:
    wide = torch.float64 if info.dtype in ("F64", "I64", "U64", "I32", "U32") else torch.float32  # exact for these integers
    rows = _RowStats(torch, info.name, old_rows) if old_rows is not None and len(info.shape) == 2 and info.shape[0] > old_rows else None
    n = nan = inf = zeros = 0
    shift = total_sum = total_sq = 0.0
    lo, hi = math.inf, -math.inf
    read = 0
    total = 2 * max(1, info.span)
    # Blocks are whole rows (dim 0), and a row can be huge (a stack of experts [8, 14336, 4096]: 117 MB
    # each): the statistics of the values alone need no rows, so they stream a flat view of the tensor.
    # Row norms need rows (of a vocabulary matrix: kilobytes); a strided view is read whole anyway.
    flat = info if rows is not None or not info.contiguous or len(info.shape) < 2 else dataclasses.replace(info, shape=(info.numel,))
    with TensorReader(root, stamps) as reader:
        for block in _stream(reader, flat, block_bytes, cancelled):
            read += block.numel() * block.element_size()
            x = block.to(wide).reshape(-1)
            b_lo, b_hi = torch.aminmax(x) if x.numel() else (x.new_zeros(()), x.new_zeros(()))
            if not (math.isfinite(float(b_lo)) and math.isfinite(float(b_hi))):  # NaN and Inf reach min or max
                nan += int(torch.isnan(x).sum())
                inf += int(torch.isinf(x).sum())
                x = x[torch.isfinite(x)]
                b_lo, b_hi = torch.aminmax(x) if x.numel() else (b_lo, b_hi)
            if not x.numel():
                continue
            zeros += x.numel() - int(torch.count_nonzero(x))
            lo, hi = min(lo, float(b_lo)), max(hi, float(b_hi))
            if not n:
                shift = float(x[0])  # sums of x - shift: no cancellation when the mean dwarfs the spread (norm weights ~1.0)
            d = x - shift
            total_sum += float(d.sum())
            total_sq += float(torch.dot(d, d))
            n += x.numel()
            if rows is not None:
                rows.add(torch.nan_to_num(block.to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0).reshape(block.shape[0], -1))
            _tell(progress, read, total)
        counts = [0] * BINS
        edges: tuple[float, ...] = ()
        if n:
            top = hi if hi > lo else lo + 1.0
            edges = tuple(lo + (top - lo) * i / BINS for i in range(BINS + 1))
            for block in _stream(reader, flat, block_bytes, cancelled):
                read += block.numel() * block.element_size()
                x = block.to(wide).reshape(-1)
                if nan or inf:
                    x = x[torch.isfinite(x)]
                if x.numel():
                    counts = [a + int(b) for a, b in zip(counts, torch.histc(x, bins=BINS, min=lo, max=top))]
                _tell(progress, read, total)
    mean = shift + total_sum / n if n else None
    std = math.sqrt(max(0.0, total_sq / n - (total_sum / n) ** 2)) if n else None
    return Stats(info.name, info.dtype, info.shape, info.numel, lo if n else None, hi if n else None, mean, std, nan, inf,
                 zeros, edges, tuple(counts) if n else (), rows.result(info.name) if rows is not None else None, read)


def _stream(reader: TensorReader, info: TensorInfo, block_bytes: int, cancelled: Callable[[], bool]):
    if 0 in info.shape:
        return
    for block in _blocks(reader, info, block_bytes):
        if cancelled():
            raise Cancelled
        yield block


def _tell(progress: Callable[[float], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(min(1.0, done / total))


SPARKS = " ▁▂▃▄▅▆▇█"


def sparkline(counts: tuple[int, ...] | list[int], top: int | None = None) -> str:
    """Counts as one line of block characters (the tallest bin full height; any non-zero bin visible)."""
    top = max(counts, default=0) if top is None else top
    if not top:
        return " " * len(counts)
    return "".join(SPARKS[0] if not c else SPARKS[max(1, round(c / top * (len(SPARKS) - 1)))] for c in counts)
