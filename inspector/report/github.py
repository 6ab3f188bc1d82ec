"""GitHub Actions workflow annotations (``::error title=CODE::message``).

GitHub shows about ten annotations of a step and drops the rest, so one line per finding (336 for an
adapter of another hidden size) would hide the ones that matter. Findings are grouped by code and
tensor pattern (names that differ only in a layer index are one group), at most ``MAX_ANNOTATIONS``
lines are written, and the last one says what was left out and where the full list is (the step
summary, which the CLI fills with the markdown report when ``$GITHUB_STEP_SUMMARY`` is set).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from inspector.diff import DiffResult, value_notes
from inspector.report import Failure, Renderer
from inspector.scan import ScanResult, value_lines
from inspector.units import counts_str, printable, shape_str

if TYPE_CHECKING:
    from inspector.check import Fleet
    from inspector.convert import ConvertResult
    from inspector.diagnose import Diagnosis
    from inspector.findings import Finding
    from inspector.merge import MergeResult
    from inspector.repair import ResizeResult
    from inspector.verify import VerifyResult

MAX_ANNOTATIONS = 10  # per run, the closing notice included
_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}
_RANK = {"error": 0, "warning": 1, "notice": 2}
_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")  # model.layers.12.mlp -> model.layers.*.mlp


def _escape_data(text: str) -> str:
    return printable(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, title: str, message: str) -> str:
    return f"::{level} title={_escape_property(title)}::{_escape_data(message)}"


@dataclass(frozen=True)
class Note:
    """One annotation before escaping; ``label`` names what it stands for in the closing summary."""

    level: str
    title: str
    message: str
    label: str = ""
    count: int = 1  # findings (or changes) it stands for

    def line(self) -> str:
        return annotation(self.level, self.title, self.message)


def pattern(f: Finding) -> str | None:
    """The finding's tensor with layer indices as ``*``; None for a finding about no tensor."""
    name = f.tensor or f.adapter_key
    return _INDEX.sub("*", name) if name else None


def grouped(findings: Iterable[Finding]) -> list[list[Finding]]:
    """Findings of one code and severity on one tensor pattern, in the order they come (errors first)."""
    groups: dict[tuple, list[Finding]] = {}
    for f in findings:
        where = pattern(f)
        groups.setdefault((f.code, f.severity, where if where is not None else f.message), []).append(f)
    return list(groups.values())


def finding_note(group: list[Finding], *, level: str | None = None, lead: str = "", hint: bool = True) -> Note:
    f = group[0]
    title = f"{f.code.code} {f.code.slug}"
    fix = f" Hint: {f.hint}" if hint else ""
    if len(group) == 1:
        return Note(level or _LEVEL[f.severity], title, f"{lead}{f.message}{fix}", f.code.code)
    return Note(level or _LEVEL[f.severity], f"{title} x{len(group)}",
                f"{lead}{len(group)} findings on {pattern(f)}; the first: {f.message}{fix}", f.code.code, len(group))


def capped(notes: list[Note], closing: Note | None, full_list: str) -> str:
    """At most MAX_ANNOTATIONS lines; what does not fit is counted in the closing notice."""
    if len(notes) + (closing is not None) <= MAX_ANNOTATIONS:
        return "\n".join(n.line() for n in [*notes, *([closing] if closing else [])]) + "\n"
    shown, left = notes[: MAX_ANNOTATIONS - 1], notes[MAX_ANNOTATIONS - 1 :]
    counts = Counter()
    for n in left:
        counts[n.label or n.title] += n.count
    what = ", ".join(f"{label} x{k}" if k > 1 else label for label, k in counts.items())
    rest = f"{len(left)} more annotations not shown ({what}); {full_list}"
    closing = replace(closing, message=f"{closing.message}; {rest}") if closing else Note("notice", "lora-inspector", rest)
    return "\n".join(n.line() for n in [*shown, closing]) + "\n"


class GitHub(Renderer[str]):
    """Annotations for CI logs: errors and warnings on the run's page, capped (see the module's doc)."""

    def __init__(self, step_summary: bool = False) -> None:
        self.full_list = "the full list is in the step summary" if step_summary else "all of them: --format json or --format markdown"

    def scan(self, result: ScanResult) -> str:
        notes = []
        for entry in result.checkpoints:
            c = entry.checkpoint
            notes.append(Note("notice", "scan", f"{c.path}: {c.kind} ({c.format}), {c.tensor_count} tensors, {c.parameter_count} parameters, {c.total_bytes} bytes"))
            notes += [Note("warning", "scan", f"{c.path}: {w}", "warning") for w in c.warnings]
            if entry.invalid:
                notes.append(Note("warning", "scan", f"{c.path}: {entry.invalid} (check and merge refuse this adapter)", "invalid adapter"))
            notes += [Note("warning", "scan --values", f"{c.path}: {line}", "value") for line in value_lines(entry.values)]
        return capped(notes, None, self.full_list)

    def diff(self, result: DiffResult) -> str:
        notes = [Note("notice", "removed", f"{t.name} {shape_str(t.shape)} {t.dtype}") for t in result.removed]
        notes += [Note("notice", "added", f"{t.name} {shape_str(t.shape)} {t.dtype}") for t in result.added]
        notes += [Note("warning", "reshaped", f"{c.name}: {shape_str(c.a.shape)} -> {shape_str(c.b.shape)}") for c in result.reshaped]
        notes += [Note("warning", "retyped", f"{c.name}: {c.a.dtype} -> {c.b.dtype}") for c in result.retyped]
        for v in result.values or ():
            if v.nonfinite or v.max_abs > result.atol:
                notes.append(Note("warning", "values", f"{v.name}: max abs {v.max_abs:.3g}, relative {v.rel:.3g}" + (" (NaN/Inf)" if v.nonfinite else "")))
        for v in result.values or ():
            if v.shared_nonfinite:
                notes.append(Note("warning", "values", f"{v.name}: {v.shared_nonfinite} NaN/Inf values, at the same places on both sides"))
        notes += [Note("error" if text.startswith("no-op") else "warning", "values", text) for text in value_notes(result)]
        if not notes:
            notes.append(Note("notice", "diff", f"identical: {result.unchanged} tensors"))
        return capped(notes, None, self.full_list)

    def check(self, diagnosis: Diagnosis) -> str:
        from inspector.check import Selected  # imported by the check command already

        notes = [finding_note(group) for group in grouped(diagnosis.findings)]
        note = diagnosis.note if isinstance(diagnosis, Selected) else None  # check's --select / --ignore at work
        closing = Note("notice", "lora-inspector check", counts_str(diagnosis.summary) + (f" ({note})" if note else ""))
        return capped(notes, closing, self.full_list)

    def check_many(self, fleet: Fleet) -> str:
        # One cap for the whole step, as for one adapter: every adapter's errors come first, then
        # warnings, then notices; each title starts with the adapter's path.
        notes = []
        for d in fleet.results:
            path = d.adapter.checkpoint.path
            notes += [replace(n, title=f"{path}: {n.title}") for n in map(finding_note, grouped(d.findings))]
        notes.sort(key=lambda n: _RANK[n.level])  # stable: adapters stay in order within a level
        failing = sum(d.fails(fleet.fail_on) for d in fleet.results)
        summary = f"{len(fleet.results)} adapters, {failing} fail: {counts_str(fleet.counts())}" + (f" ({fleet.note})" if fleet.note else "")
        return capped(notes, Note("notice", "lora-inspector check", summary), self.full_list)

    def resize(self, result: ResizeResult) -> str:
        plan = result.plan
        notes = [Note("warning", "resize", w) for w in result.warnings]
        closing = Note("notice", "resize", f"{plan.old_rows} -> {plan.rows} rows ({plan.init}) written to {result.out}")
        return capped(notes, closing, self.full_list)

    def merge(self, result: MergeResult) -> str:
        # As in the JSON report: check's errors the merge repaired (notices), those merged over with an
        # explicit --init, and the warnings it acted on.
        plan = result.plan
        notes = [finding_note(g, level="notice", lead="repaired by the merge: ", hint=False) for g in grouped(plan.repaired)]
        notes += [finding_note(g, level="warning", lead=f"merged with --init {plan.init}: ", hint=False) for g in grouped(plan.accepted)]
        notes += [finding_note(g, level="warning", hint=False) for g in grouped(f for f in plan.diagnosis.findings if f.severity == "warning")]
        closing = Note("notice", "merge", f"merged into {result.out}: {result.stats['tensors']} tensors, {result.stats['lora']} LoRA deltas")
        return capped(notes, closing, self.full_list)

    def convert(self, result: ConvertResult) -> str:
        # The flags the server still needs (warnings, with the flag as the hint), check's warnings on
        # the input, what was repaired and the notes (notices).
        plan = result.plan
        notes = [finding_note(g) for g in grouped(plan.flags)]
        notes += [finding_note(g, hint=False) for g in grouped(plan.warnings)]
        notes += [Note("notice", f"convert: {r.kind}", r.message, r.kind, len(r.keys)) for r in plan.repairs]
        notes += [Note("notice", "convert", n, "note") for n in plan.notes]
        closing = Note("notice", "convert", f"converted for {plan.title} into {result.out}: {result.stats['tensors']} tensors")
        return capped(notes, closing, self.full_list)

    def verify(self, result: VerifyResult) -> str:
        from inspector.verify import verdict

        notes = [Note("error", "verify", f"{p.label}: max |diff| {p.max_abs:.3g}" + (f", KL {p.kl:.3g}" if p.kl is not None else "")
                      + (f", top-1 {p.top1:.0%}" if p.top1 is not None else ""), "prompt") for p in result.prompts if not p.agrees]  # fmt: skip
        return capped(notes, Note("notice" if result.agrees else "error", "verify", verdict(result)), self.full_list)

    def error(self, failure: Failure) -> None:
        return None  # stderr's Error/Hint is in the log already
