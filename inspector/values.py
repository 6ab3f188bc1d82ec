"""``check --values``: one streaming pass over the adapter's tensor values (LI16xx read its results).

Every float tensor is read in row blocks (``TensorReader.read_rows``), so memory is one block plus
a few vectors: per tensor, whether it holds NaN / Inf and whether it is all zeros; per vocabulary
matrix the adapter carries grown, the old rows' sum and every row's norm, which say whether the new
rows (past the base's rows) were ever trained. torch is imported only when the pass runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inspector.io.tensor import FLOAT_DTYPES, STREAM_BLOCK_BYTES, TensorInfo

if TYPE_CHECKING:
    from inspector.binding import Binding

# The float dtypes whose values are scanned: FP8 is widened to fp32 first (torch has no isfinite for it).
SCANNED_DTYPES = FLOAT_DTYPES | {"F8_E4M3", "F8_E5M2"}
# A new row within this relative distance of the old rows' mean (or of the first new row) is that
# vector: bf16 rounding of a mean-initialised row stays far below it, a trained row far above.
SAME_ROW_RTOL = 1e-2
# New-row norms outside [p1 / NORM_FACTOR, p99 * NORM_FACTOR] of the old rows' norms are outliers.
NORM_FACTOR = 2.0
HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class TensorValues:
    key: str  # the adapter key
    dtype: str
    numel: int
    nan: int
    inf: int
    zero: bool  # every element is 0


@dataclass(frozen=True)
class RowValues:
    """The new rows of a vocabulary matrix the adapter carries grown, against its old rows."""

    tensor: str  # the base tensor it replaces
    key: str  # the adapter key
    old_rows: int
    new_rows: int
    zero: int  # new rows that are all zeros
    mean: int  # new rows equal to the old rows' mean
    identical: bool  # every new row equals the first (two or more new rows)
    outliers: int  # trained-looking new rows whose norm is far outside the old rows'
    old_percentiles: dict[str, float]  # p1 / p50 / p99 of the old rows' norms
    new_percentiles: dict[str, float]
    histogram: dict  # {"edges": [...], "old": [counts], "new": [counts]} over one range of norms

    @property
    def untrained(self) -> int:
        return self.new_rows if self.identical else self.zero + self.mean

    def as_json(self) -> dict:
        return {"tensor": self.tensor, "adapter_key": self.key, "old_rows": self.old_rows, "new_rows": self.new_rows,
                "zero_rows": self.zero, "mean_rows": self.mean, "identical": self.identical, "untrained": self.untrained,
                "norm_outliers": self.outliers, "old_norms": self.old_percentiles, "new_norms": self.new_percentiles,
                "histogram": self.histogram}  # fmt: skip


@dataclass(frozen=True)
class ValueScan:
    tensors: tuple[TensorValues, ...]
    rows: tuple[RowValues, ...]

    def as_json(self) -> dict:
        bad = [t for t in self.tensors if t.nan or t.inf]
        return {"tensors": len(self.tensors), "nonfinite": [{"adapter_key": t.key, "dtype": t.dtype, "nan": t.nan, "inf": t.inf} for t in bad],
                "zero": [t.key for t in self.tensors if t.zero], "rows": [r.as_json() for r in self.rows]}  # fmt: skip


def grown_matrices(b: Binding) -> dict[str, tuple[str, int]]:
    """adapter key -> (base tensor, the base's rows) for the vocabulary matrices the adapter carries with more rows."""
    base_rows = b.vocab.rows
    out: dict[str, tuple[str, int]] = {}
    if base_rows is None:
        return out
    for full in b.adapter.full.values():
        name = b.resolve(full.target) if full.chosen.copy != "original_module" else None
        shape = full.chosen.info.shape
        if name in b.vocab.matrices and len(shape) == 2 and shape[0] > base_rows:
            out[full.chosen.key] = (name, base_rows)
    return out


def scan_values(b: Binding, block_bytes: int = STREAM_BLOCK_BYTES) -> ValueScan:
    from inspector.interrupts import heavy_import
    from inspector.io.loader import TensorReader

    torch = heavy_import("torch")  # stop signals held while it loads (see inspector/interrupts.py)
    grown = grown_matrices(b)
    ckpt = b.adapter.checkpoint
    tensors, rows = [], []
    with TensorReader(ckpt.root, ckpt.stamps) as reader:
        for t in b.adapter.tensors:
            info = t.info
            if info.dtype not in SCANNED_DTYPES or 0 in info.shape:
                continue
            stats = _RowStats(torch, *grown[t.key]) if t.key in grown else None
            nan = inf = 0
            zero = True
            for block in _blocks(reader, info, block_bytes):
                x = block.to(torch.float64 if info.dtype == "F64" else torch.float32)
                # One vectorized pass in the common case: min and max say "finite" and "all zero"
                # (NaN propagates into them); the counts are taken only when something is off.
                lo, hi = torch.aminmax(x) if x.numel() else (x.new_zeros(()), x.new_zeros(()))
                finite = bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))
                if not finite:
                    nan += int(torch.isnan(x).sum())
                    inf += int(torch.isinf(x).sum())
                    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
                zero = zero and (float(lo) == 0.0 and float(hi) == 0.0 if finite else not bool((x != 0).any()))
                if stats is not None:
                    stats.add(x)
            tensors.append(TensorValues(t.key, info.dtype, info.numel, nan, inf, zero))
            if stats is not None:
                rows.append(stats.result(t.key))
    return ValueScan(tuple(tensors), tuple(rows))


def _blocks(reader, info: TensorInfo, block_bytes: int):
    rows = info.shape[0] if info.shape else 1
    row_bytes = max(1, info.nbytes // max(1, rows))
    step = max(1, block_bytes // row_bytes)
    for r0 in range(0, rows, step):
        yield reader.read_rows(info, r0, r0 + step)


class _RowStats:
    """Row norms and the old rows' sum, fed one block of rows at a time (old rows come first)."""

    def __init__(self, torch, tensor: str, old_rows: int) -> None:
        self.torch, self.tensor, self.old_rows = torch, tensor, old_rows
        self.seen = 0
        self.sum = None
        self.mean = self.first = None
        self.norms: list = []
        self.zero = self.same_mean = self.same_first = 0

    def add(self, x) -> None:
        torch = self.torch
        x = x.reshape(x.shape[0], -1)
        self.norms.append(x.norm(dim=1, dtype=torch.float64))
        old = x[: max(0, self.old_rows - self.seen)]
        new = x[old.shape[0]:].double()  # few rows: compared exactly
        self.seen += x.shape[0]
        if old.shape[0]:
            s = old.sum(dim=0, dtype=torch.float64)  # accumulated in float64: the mean of 70,000 rows stays exact
            self.sum = s if self.sum is None else self.sum + s
        if not new.shape[0]:
            return
        if self.mean is None:
            self.mean = self.sum / self.old_rows if self.sum is not None else torch.zeros(x.shape[1], dtype=x.dtype)
            self.first = new[0].clone()
        norms = new.norm(dim=1)
        self.zero += int((norms == 0).sum())
        self.same_mean += int((_close(torch, new, self.mean) & (norms != 0)).sum())
        self.same_first += int(_close(torch, new, self.first).sum())

    def result(self, key: str) -> RowValues:
        torch = self.torch
        norms = torch.cat(self.norms).float() if self.norms else torch.zeros(0)
        old, new = norms[: self.old_rows], norms[self.old_rows:]
        count = new.numel()
        identical = count > 1 and self.same_first == count
        untrained = count if identical else self.zero + self.same_mean
        old_p, new_p = _percentiles(torch, old), _percentiles(torch, new)
        outliers = 0
        if old.numel() and count and not untrained:
            outliers = int(((new < old_p["p1"] / NORM_FACTOR) | (new > old_p["p99"] * NORM_FACTOR)).sum())
        return RowValues(self.tensor, key, self.old_rows, count, self.zero, self.same_mean, identical, outliers, old_p, new_p, _histogram(torch, old, new))


def _close(torch, rows, vector):
    """Rows within SAME_ROW_RTOL (relative to the vector's norm) of ``vector``; exactly equal for a zero vector."""
    scale = float(vector.norm())
    return (rows - vector).norm(dim=1) <= SAME_ROW_RTOL * scale


def _percentiles(torch, norms) -> dict[str, float]:
    if not norms.numel():
        return {}
    q = torch.quantile(norms.double(), torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64))
    return {"min": _num(norms.min()), "p1": _num(q[0]), "p50": _num(q[1]), "p99": _num(q[2]), "max": _num(norms.max())}


def _histogram(torch, old, new) -> dict:
    """Counts of old and new rows' norms over one set of equal-width bins spanning both."""
    both = torch.cat([old, new])
    if not both.numel():
        return {"edges": [], "old": [], "new": []}
    lo, hi = float(both.min()), float(both.max())
    hi = hi if hi > lo else lo + 1.0
    edges = [lo + (hi - lo) * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]

    def counts(x) -> list[int]:
        return [int(c) for c in torch.histc(x.double(), bins=HISTOGRAM_BINS, min=lo, max=hi)] if x.numel() else [0] * HISTOGRAM_BINS

    return {"edges": [_num(e) for e in edges], "old": counts(old), "new": counts(new)}


def _num(value) -> float:
    v = float(value)
    return v if math.isfinite(v) else 0.0


def scan_checkpoint_values(ckpt, block_bytes: int = STREAM_BLOCK_BYTES) -> dict:
    """``scan --values``: NaN / Inf in any float tensor, and in a model's vocabulary matrices the tail
    of identical rows a resize leaves untrained (``--init mean`` / ``zero``: the new rows all alike)."""
    from inspector.base import vocab_layout
    from inspector.interrupts import heavy_import
    from inspector.io.loader import TensorReader

    torch = heavy_import("torch")
    matrices = set(vocab_layout(ckpt).matrices) if ckpt.kind == "model" else set()
    nonfinite, tails = [], []
    with TensorReader(ckpt.root, ckpt.stamps) as reader:
        for info in ckpt.tensors:
            if info.dtype not in SCANNED_DTYPES or 0 in info.shape:
                continue
            nan = inf = 0
            tail = _Tail(torch) if info.name in matrices and len(info.shape) == 2 else None
            for block in _blocks(reader, info, block_bytes):
                x = block.to(torch.float64 if info.dtype == "F64" else torch.float32)
                nan += int(torch.isnan(x).sum())
                inf += int(torch.isinf(x).sum())
                if tail is not None:
                    tail.add(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))
            if nan or inf:
                nonfinite.append({"name": info.name, "dtype": info.dtype, "nan": nan, "inf": inf})
            if tail is not None and tail.run >= 2:
                tails.append({"tensor": info.name, "rows": info.shape[0], "tail_rows": tail.run, "zero": tail.zero})
    return {"nonfinite": nonfinite, "identical_tail": tails}


class _Tail:
    """The run of consecutive identical rows that ends the matrix, fed one block of rows at a time."""

    def __init__(self, torch) -> None:
        self.torch, self.last, self.run, self.zero = torch, None, 0, False

    def add(self, x) -> None:
        torch = self.torch
        x = x.double()
        prev = torch.cat([self.last[None], x[:-1]]) if self.last is not None else x[:-1]
        rows = x if self.last is not None else x[1:]
        eq = (rows - prev).norm(dim=1) <= SAME_ROW_RTOL * prev.norm(dim=1)
        if self.last is None:
            eq = torch.cat([torch.tensor([False]), eq])
        breaks = (~eq).nonzero()
        self.run = self.run + x.shape[0] if not breaks.numel() else x.shape[0] - int(breaks[-1])
        self.last = x[-1].clone()
        self.zero = bool((self.last == 0).all())
