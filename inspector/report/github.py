"""GitHub Actions workflow annotations (``::error title=CODE::message``)."""

from __future__ import annotations

from inspector.diff import DiffResult
from inspector.scan import ScanResult
from inspector.units import counts_str, printable, shape_str


def _escape_data(text: str) -> str:
    return printable(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, title: str, message: str) -> str:
    return f"::{level} title={_escape_property(title)}::{_escape_data(message)}"


def scan(result: ScanResult) -> str:
    lines = []
    for entry in result.checkpoints:
        c = entry.checkpoint
        lines.append(annotation("notice", "scan", f"{c.path}: {c.kind} ({c.format}), {c.tensor_count} tensors, {c.parameter_count} parameters, {c.total_bytes} bytes"))
        lines += [annotation("warning", "scan", f"{c.path}: {w}") for w in c.warnings]
    return "\n".join(lines) + "\n"


def diff(result: DiffResult) -> str:
    lines = [annotation("notice", "removed", f"{t.name} {shape_str(t.shape)} {t.dtype}") for t in result.removed]
    lines += [annotation("notice", "added", f"{t.name} {shape_str(t.shape)} {t.dtype}") for t in result.added]
    lines += [annotation("warning", "reshaped", f"{c.name}: {shape_str(c.a.shape)} -> {shape_str(c.b.shape)}") for c in result.reshaped]
    lines += [annotation("warning", "retyped", f"{c.name}: {c.a.dtype} -> {c.b.dtype}") for c in result.retyped]
    for v in result.values or ():
        if v.nonfinite or v.max_abs > result.atol:
            lines.append(annotation("warning", "values", f"{v.name}: max abs {v.max_abs:.3g}, relative {v.rel:.3g}" + (" (NaN/Inf)" if v.nonfinite else "")))
    for v in result.values or ():
        if v.shared_nonfinite:
            lines.append(annotation("warning", "values", f"{v.name}: {v.shared_nonfinite} NaN/Inf values, at the same places on both sides"))
    if not lines:
        lines.append(annotation("notice", "diff", f"identical: {result.unchanged} tensors"))
    return "\n".join(lines) + "\n"


def check(diagnosis) -> str:
    level = {"error": "error", "warning": "warning", "info": "notice"}
    lines = [annotation(level[f.severity], f"{f.code.code} {f.code.slug}", f"{f.message} Hint: {f.hint}") for f in diagnosis.findings]
    s = diagnosis.summary
    lines.append(annotation("notice", "lora-inspector check", counts_str(s)))
    return "\n".join(lines) + "\n"


def resize(result) -> str:
    plan = result.plan
    lines = [annotation("warning", "resize", w) for w in result.warnings]
    lines.append(annotation("notice", "resize", f"{plan.old_rows} -> {plan.rows} rows ({plan.init}) written to {result.out}"))
    return "\n".join(lines) + "\n"


def merge(result) -> str:
    # As in the JSON report: check's errors the merge repaired (notices), those merged over with an
    # explicit --init, and the warnings it acted on.
    plan = result.plan
    lines = [annotation("notice", f"{f.code.code} {f.code.slug}", f"repaired by the merge: {f.message}") for f in plan.repaired]
    lines += [annotation("warning", f"{f.code.code} {f.code.slug}", f"merged with --init {plan.init}: {f.message}") for f in plan.accepted]
    lines += [annotation("warning", f"{f.code.code} {f.code.slug}", f.message) for f in plan.diagnosis.findings if f.severity == "warning"]
    lines.append(annotation("notice", "merge", f"merged into {result.out}: {result.stats['tensors']} tensors, {result.stats['lora']} LoRA deltas"))
    return "\n".join(lines) + "\n"
