"""LI11xx: dtype differences (the merge computes in fp32 and writes the base dtype)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from inspector.binding import Binding
from inspector.checks.registry import check
from inspector.findings import Code, Hit
from inspector.io.tensor import FLOAT_DTYPES


@check(Code.DTYPE)
def dtype_difference(b: Binding) -> Iterator[Hit]:
    base_dtypes = Counter(t.dtype for t in b.base.tensors if t.dtype in FLOAT_DTYPES)
    adapter_dtypes = Counter(t.info.dtype for t in b.adapter.tensors if t.info.dtype in FLOAT_DTYPES)
    if not base_dtypes or not adapter_dtypes or set(adapter_dtypes) <= set(base_dtypes) and len(base_dtypes) == 1:
        return
    base_main = base_dtypes.most_common(1)[0][0]
    if set(adapter_dtypes) == {base_main}:
        return
    listing = ", ".join(f"{d} x{n}" for d, n in adapter_dtypes.items())
    yield Hit(f"the adapter stores {listing}; the base stores {base_main}.", f"Nothing to do: the merge computes in fp32 and writes {base_main} (choose with --dtype).")
