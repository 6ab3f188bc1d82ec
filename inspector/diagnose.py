"""``check``: bind base x adapter (x tokenizer), run every registered check, sort the findings.

The rules live in ``inspector/checks/`` (one module per family, one check per code); the lookups
they share in ``inspector/binding.py``. Headers and small JSON only (and LI1004's 4 KiB peek at two
tensors of a second local model): no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from inspector.adapter import Adapter
from inspector.binding import Binding, VocabTarget, bind
from inspector.checks import PACKED_NOISE, REGISTRY
from inspector.findings import Code, Finding, severity_rank
from inspector.io.checkpoint import Checkpoint
from inspector.io.tokenizer import TokenizerFacts


@dataclass(frozen=True)
class Diagnosis:
    base: Checkpoint
    adapter: Adapter
    tokenizer: TokenizerFacts | None
    target: VocabTarget
    findings: tuple[Finding, ...]
    binding: Binding  # the lookups the checks used (name resolution, vocab layout): merge plans from them

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def summary(self) -> dict[str, int]:
        return {s: self.count(s) for s in ("error", "warning", "info")}

    def fails(self, fail_on: str) -> bool:
        return any(severity_rank(f.severity) <= severity_rank(fail_on) for f in self.findings)


def diagnose(base: Checkpoint, adapter: Adapter, tokenizer: TokenizerFacts | None = None, *, codes: Iterable[Code] | None = None,
             targets: tuple[str, ...] = (), values: bool = False) -> Diagnosis:
    """Run every check (or those of ``codes``; the serving rules of ``targets``); findings come sorted
    by severity, then code, then target, then tensor. ``values``: also the LI16xx checks, which stream
    the adapter's tensors (check --values)."""
    binding = bind(base, adapter, tokenizer, targets, values)
    wanted = set(Code) if codes is None else set(codes)
    lora = binding.config.peft_type == "LORA"  # the other checks read LoRA layouts
    findings = [f for code, check in REGISTRY.items() if code in wanted and (lora or check.always) for f in check.findings(binding)]
    if any(f.code is Code.QUANTIZED_BASE and f.severity == "error" for f in findings):
        findings = [f for f in findings if f.code not in PACKED_NOISE]  # LI901 says it all
    order = {code: i for i, code in enumerate(Code)}
    findings.sort(key=lambda f: (severity_rank(f.severity), order[f.code], f.target or "", f.tensor or "", f.adapter_key or ""))
    return Diagnosis(base, adapter, tokenizer, binding.target, tuple(findings), binding)
