"""The rules ``check`` applies: one module per family of findings, one registered check per code.

Families (the hundreds digit of the code): vocabulary (LI1xx), tokenizer (LI2xx), lora (LI3xx),
orphans (LI4xx), rows (LI5xx), tokens (LI6xx), tied (LI7xx), empty (LI8xx), quantized (LI9xx),
architecture (LI10xx), dtypes (LI11xx), bloat (LI12xx), memory (LI13xx), unsupported (LI14xx),
serving (LI15xx, only with check --target; the rules are in inspector/targets/), values (LI16xx,
only with check --values).
A new finding: a code in inspector/findings.py, a ``@check(Code.X)`` function in its family's
module, a section in docs/findings.md, a test in tests/test_check.py.
"""

from __future__ import annotations

# Importing the family modules registers their checks.
from inspector.checks import (  # noqa: F401
    architecture,
    bloat,
    dtypes,
    empty,
    lora,
    memory,
    orphans,
    quantized,
    rows,
    serving,
    tied,
    tokenizer,
    tokens,
    unsupported,
    values,
    vocabulary,
)
from inspector.checks.quantized import PACKED_NOISE
from inspector.checks.registry import REGISTRY, Check

__all__ = ["PACKED_NOISE", "REGISTRY", "Check"]
