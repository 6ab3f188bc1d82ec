"""``diff``: tensors added, removed, reshaped and re-typed between two checkpoints (headers only).

A model compared with a PEFT adapter is compared the way PEFT would load it: each full tensor the
adapter carries (plain, ``modules_to_save`` or ``base_layer`` copy) stands against the base tensor
it replaces, so ``diff BASE ADAPTER`` shows ``lm_head.weight [32000, 8] -> [70840, 8]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from inspector.io.checkpoint import Checkpoint
from inspector.io.tensor import STREAM_BLOCK_BYTES, TensorInfo

# A relative change this many times the median of the changed tensors' is an outlier.
OUTLIER_FACTOR = 10.0


@dataclass(frozen=True)
class Change:
    name: str
    a: TensorInfo
    b: TensorInfo


@dataclass(frozen=True)
class DiffResult:
    a: Checkpoint
    b: Checkpoint
    added: tuple[TensorInfo, ...]  # in B only
    removed: tuple[TensorInfo, ...]  # in A only
    reshaped: tuple[Change, ...]
    retyped: tuple[Change, ...]
    unchanged: int
    aligned: bool = False  # adapter keys were mapped onto the model's names
    untouched: int = 0  # aligned only: model tensors the adapter carries no copy of (not "removed")
    same_shape: tuple[Change, ...] = ()  # tensors in both with equal shapes: what --values compares
    values: tuple[ValueDiff, ...] | None = None  # with --values
    atol: float = 0.0
    targeted: tuple[str, ...] | None = None  # with --adapter: the tensors its LoRA / full copies change

    @property
    def values_differ(self) -> bool:
        return self.values is not None and any(v.nonfinite or v.max_abs > self.atol for v in self.values)

    @property
    def noop(self) -> bool | None:
        """With --values --adapter: B equals A in every tensor the adapter changes (a merge that did nothing)."""
        if self.values is None or self.targeted is None:
            return None
        by_name = {v.name: v for v in self.values}
        compared = [by_name[n] for n in self.targeted if n in by_name]
        return bool(compared) and not any(v.nonfinite or v.max_abs > self.atol for v in compared)

    @property
    def outliers(self) -> tuple[str, ...]:
        """Changed tensors whose relative change ||dW|| / ||W|| (``change``) is over OUTLIER_FACTOR times
        the median of the changed tensors' (3 or more changed): one tensor changed far more than the others."""
        changed = [v for v in self.values or () if v.change > 0]
        if len(changed) < 3:
            return ()
        rels = sorted(v.change for v in changed)
        median = rels[len(rels) // 2]
        return tuple(v.name for v in changed if v.change > OUTLIER_FACTOR * median)

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.reshaped or self.retyped or self.values_differ)


@dataclass(frozen=True)
class ValueDiff:
    name: str
    max_abs: float  # max |a - b|, computed in fp32
    rel: float  # ||a - b|| / ||b|| (Frobenius); 0 when both are zero
    nonfinite: bool  # NaN or Inf on one side where the other holds something else
    shared_nonfinite: int = 0  # elements that are the same NaN / Inf on both sides (equal, but worth knowing)
    change: float = 0.0  # ||a - b|| / ||a||: how far B moved from A (A the base, B a merge of it)


def _adapter_view(adapter: Checkpoint, model: Checkpoint) -> dict[str, TensorInfo]:
    """The adapter's tensors keyed by the model tensor each full copy replaces (others keep their key)."""
    from inspector.adapter import COPY_PREFERENCE, classify_key
    from inspector.base import BaseIndex

    index = BaseIndex(model)
    view: dict[str, TensorInfo] = {}
    chosen: dict[str, int] = {}
    for info in adapter.tensors:
        t = classify_key(info)
        target = index.resolve(t.target) if t.role == "full" and t.copy in COPY_PREFERENCE else None
        if target is None:
            view[info.name] = info
        elif COPY_PREFERENCE.index(t.copy) < chosen.get(target, len(COPY_PREFERENCE)):
            view[target], chosen[target] = info, COPY_PREFERENCE.index(t.copy)
    return view


def diff_checkpoints(a: Checkpoint, b: Checkpoint) -> DiffResult:
    """Compare two checkpoints tensor by tensor; a tensor both reshaped and re-typed is listed in both."""
    aligned = {a.kind, b.kind} == {"model", "adapter"}
    in_a = _adapter_view(a, b) if aligned and a.kind == "adapter" else a.by_name
    in_b = _adapter_view(b, a) if aligned and b.kind == "adapter" else b.by_name
    added = tuple(t for n, t in in_b.items() if n not in in_a)
    removed = tuple(t for n, t in in_a.items() if n not in in_b)
    untouched = 0
    if aligned:  # an adapter lacks most model tensors by design: only its own extras are news
        model_only = removed if a.kind == "model" else added
        untouched = len(model_only)
        added, removed = (added, ()) if a.kind == "model" else ((), removed)
    common = [(n, in_a[n], in_b[n]) for n in in_a if n in in_b]
    reshaped = tuple(Change(n, x, y) for n, x, y in common if x.shape != y.shape)
    retyped = tuple(Change(n, x, y) for n, x, y in common if x.dtype != y.dtype)
    unchanged = sum(1 for _, x, y in common if x.shape == y.shape and x.dtype == y.dtype)
    same_shape = tuple(Change(n, x, y) for n, x, y in common if x.shape == y.shape)
    return DiffResult(a, b, added, removed, reshaped, retyped, unchanged, aligned, untouched, same_shape)


def compare_values(result: DiffResult, *, atol: float = 0.0, progress=None, block_bytes: int = STREAM_BLOCK_BYTES) -> DiffResult:
    """Stream both checkpoints' common tensors in row blocks and measure how far their values differ."""
    import dataclasses
    import math

    from inspector.interrupts import heavy_import
    from inspector.io.loader import TensorReader

    torch = heavy_import("torch")  # stop signals held while it loads (see inspector/interrupts.py)

    out = []
    total = sum(c.a.nbytes + c.b.nbytes for c in result.same_shape)
    with TensorReader(result.a.root, result.a.stamps) as ra, TensorReader(result.b.root, result.b.stamps) as rb:
        for c in result.same_shape:
            rows = c.a.shape[0] if c.a.shape else 1
            row_numel = max(1, c.a.numel // rows) if rows else 1
            step = max(1, block_bytes // (4 * row_numel))
            max_abs, diff_sq, ref_sq, a_sq, nonfinite, shared = 0.0, 0.0, 0.0, 0.0, False, 0
            # fp32 holds every narrower float; F64 is compared as F64 (1e300 and 2e300 are no "same Inf").
            wide = torch.float64 if "F64" in (c.a.dtype, c.b.dtype) else torch.float32
            for r0 in range(0, rows, step):
                x = ra.read_rows(c.a, r0, r0 + step).to(wide)
                y = rb.read_rows(c.b, r0, r0 + step).to(wide)
                if x.numel() == 0:
                    continue
                odd = ~(torch.isfinite(x) & torch.isfinite(y))
                if bool(odd.any()):
                    # NaN against NaN and Inf against the same Inf are equal (a file diffed with itself
                    # must be identical); any other pairing with a non-finite value differs.
                    same = (torch.isnan(x) & torch.isnan(y)) | (x == y)
                    nonfinite |= bool((odd & ~same).any())
                    shared += int((odd & same).sum())
                    x, y = x.masked_fill(odd, 0.0), y.masked_fill(odd, 0.0)
                d = (x - y).abs()
                max_abs = max(max_abs, float(d.max()))
                diff_sq += float(d.double().square().sum())
                ref_sq += float(y.double().square().sum())
                a_sq += float(x.double().square().sum())
            rel = math.sqrt(diff_sq / ref_sq) if ref_sq else (0.0 if diff_sq == 0 else math.inf)
            change = math.sqrt(diff_sq / a_sq) if a_sq else (0.0 if diff_sq == 0 else math.inf)
            out.append(ValueDiff(c.name, max_abs, rel, nonfinite, shared, change))
            if progress:
                progress(c.a.nbytes + c.b.nbytes, total)
    return dataclasses.replace(result, values=tuple(out), atol=atol)


def value_notes(result: DiffResult) -> list[str]:
    """What every format says under the value differences: a no-op merge, relative-change outliers."""
    notes = []
    if result.noop:
        notes.append(f"no-op: B equals A in every one of the {len(result.targeted or ())} tensors the adapter changes (atol {result.atol:g}): "
                     "the merge changed nothing")  # fmt: skip
    rel = {v.name: v.change for v in result.values or ()}
    if result.outliers:
        listed = ", ".join(f"{n} ({rel[n]:.3g})" for n in result.outliers[:5]) + (f" and {len(result.outliers) - 5} more" if len(result.outliers) > 5 else "")
        notes.append(f"relative-change outliers (over {OUTLIER_FACTOR:g}x the median ||dW||/||W||): {listed}")
    return notes


def adapter_targets(base: Checkpoint, adapter: Checkpoint) -> tuple[str, ...]:
    """diff --adapter: the base tensors the adapter changes (LoRA-adapted weights, full copies), by
    the binding check and merge use. A merge of it into ``base`` must change at least one of them."""
    from inspector.adapter import read_adapter
    from inspector.binding import bind

    b = bind(base, read_adapter(adapter))
    names = {w.name for lm, w in b.lora_targets.values() if w is not None and (lm.A or lm.B)}
    names |= {b.resolve(f.target) for f in b.adapter.full.values() if f.chosen.copy != "original_module"}
    return tuple(sorted(n for n in names if n is not None))
