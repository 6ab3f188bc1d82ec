"""``diff``: tensors added, removed, reshaped and re-typed between two checkpoints (headers only)."""

from __future__ import annotations

from dataclasses import dataclass

from inspector.checkpoint import Checkpoint
from inspector.tensor import TensorInfo


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

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.reshaped or self.retyped)


def diff_checkpoints(a: Checkpoint, b: Checkpoint) -> DiffResult:
    """Compare two checkpoints tensor by tensor; a tensor both reshaped and re-typed is listed in both."""
    in_a, in_b = a.by_name, b.by_name
    added = tuple(t for n, t in in_b.items() if n not in in_a)
    removed = tuple(t for n, t in in_a.items() if n not in in_b)
    common = [(n, in_a[n], in_b[n]) for n in in_a if n in in_b]
    reshaped = tuple(Change(n, x, y) for n, x, y in common if x.shape != y.shape)
    retyped = tuple(Change(n, x, y) for n, x, y in common if x.dtype != y.dtype)
    unchanged = sum(1 for _, x, y in common if x.shape == y.shape and x.dtype == y.dtype)
    return DiffResult(a, b, added, removed, reshaped, retyped, unchanged)
