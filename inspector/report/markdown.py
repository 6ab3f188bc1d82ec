"""Markdown reports (PR comments, GitHub step summaries)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from inspector.diff import DiffResult, value_notes
from inspector.report import Failure, Renderer
from inspector.scan import ScanResult, value_lines
from inspector.units import counts_str, dtypes_str, human_bytes, human_count, printable, shape_str, value_str

if TYPE_CHECKING:
    from inspector.check import Fleet
    from inspector.convert import ConvertResult
    from inspector.diagnose import Diagnosis
    from inspector.findings import Finding
    from inspector.merge import MergeResult
    from inspector.repair import ResizeResult
    from inspector.verify import VerifyResult


def _inline(text: str) -> str:
    """``text`` (a finding's message or hint: our words around names from files) safe as markdown:
    outside its code spans, the characters that start links, images, raw HTML and entities are
    escaped, so a name crafted as ``[text](url)`` or ``<img ...>`` shows as typed in a PR comment.
    The spans are found as CommonMark finds them (a run of n backticks closes at the next run of
    exactly n), so a backtick in a name cannot move text out of a span unescaped."""
    runs = list(re.finditer(r"`+", text))
    out, pos, k = [], 0, 0
    while k < len(runs):
        close = next((j for j in range(k + 1, len(runs)) if len(runs[j].group()) == len(runs[k].group())), None)
        if close is None:  # no closing run: these backticks are plain text
            k += 1
            continue
        out += [_plain(text[pos : runs[k].start()]), text[runs[k].start() : runs[close].end()]]
        pos, k = runs[close].end(), close + 1
    return "".join(out) + _plain(text[pos:])


def _plain(text: str) -> str:
    """Text outside code spans: markup starters escaped, and a word joiner (U+2060, invisible) after
    each @ and #, which GitHub would otherwise turn into a mention (notifying a team from a bot's
    comment) or a reference to an issue; a backslash does not stop those."""
    return _MARKUP.sub(r"\\\g<0>", text).replace("@", "@\u2060").replace("#", "#\u2060")


# What can start markup in a table cell: a link or image needs "](", raw HTML and autolinks "<",
# entities "&"; a backslash could undo our escapes. Shapes' brackets ([4, 8]) stay as they are.
_MARKUP = re.compile(r"[\\<&`]|\](?=\()")


def _cell(value: object) -> str:
    return _inline(printable(str(value)).replace("\n", " ")).replace("|", "\\|")


def _code(value: object) -> str:
    """``value`` as one inline code span whatever it holds. A tensor name from a file may hold
    backticks: in a plain `...` span the first one closes it and the rest renders as markdown (a
    ``curl ... | sh`` in a PR comment). CommonMark: fence with a longer run of backticks than any
    inside, and pad with a space where the text starts or ends with one."""
    text = printable(str(value)).replace("\n", " ")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    # CommonMark strips one space from each end of a span that has text: pad where an end is a
    # backtick or a space, so " x " stays distinct from "x"
    pad = " " if text.strip(" ") and (text[:1] in "` " or text[-1:] in "` ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


_ICON = {"error": "❌ error", "warning": "⚠️ warning", "info": "ℹ️ info"}
_OUTCOME = {"ok": "✅ ok", "flag": "⚠️ flag needed", "refused": "❌ refused", "diverges": "❌ diverges"}


def _findings(findings: Iterable[Finding]) -> list[str]:
    rows = [
        [_ICON[f.severity], _code(f.code.code), _code(f.tensor) if f.tensor else "", shape_str(f.adapter_shape) if f.adapter_shape else "", shape_str(f.base_shape) if f.base_shape else "", f.message, f.hint]
        for f in findings
    ]
    return _table(["severity", "code", "tensor", "adapter", "base", "what", "fix"], rows)


def _fleet_table(fleet: Fleet) -> list[str]:
    """check with several adapters: adapter x target (the worst outcome), or adapter x counts."""
    heads = list(fleet.titles) if fleet.targets else ["errors", "warnings", "info"]
    rows = []
    for number, d in enumerate(fleet.results, 1):
        cells = [_OUTCOME[fleet.outcome(d, t)] for t in fleet.targets] if fleet.targets else [d.summary[s] for s in ("error", "warning", "info")]
        rows.append([number, _code(d.adapter.checkpoint.path), *cells, fleet.verdict(d)])
    return _table(["#", "adapter", *heads, "verdict"], rows)


class Markdown(Renderer[str]):
    """Tables for PR comments and GitHub step summaries."""

    def scan(self, result: ScanResult) -> str:
        out: list[str] = []
        for entry in result.checkpoints:
            ckpt = entry.checkpoint
            rows = [
                ["kind", f"{ckpt.kind} ({ckpt.format})"],
                ["files", ", ".join(ckpt.files)],
                ["tensors", f"{ckpt.tensor_count:,}"],
                ["parameters", f"{ckpt.parameter_count:,} ({human_count(ckpt.parameter_count)})"],
                ["data", f"{ckpt.total_bytes:,} bytes ({human_bytes(ckpt.total_bytes)})"],
                ["dtypes", dtypes_str(ckpt.dtypes)],
                *[[k, value_str(v)] for k, v in ckpt.key_config().items() if v is not None],
            ]
            if ckpt.tokenizer:
                rows.append(["tokenizer", f"{ckpt.tokenizer.length:,} tokens ({ckpt.tokenizer.source})"])
            if ckpt.remote is not None:
                rows.append(["remote", ckpt.remote.summary()])
            rows += [["warning", w] for w in ckpt.warnings]
            if entry.invalid:
                rows.append(["warning", f"{entry.invalid} (check and merge refuse this adapter)"])
            rows += [["values", line] for line in value_lines(entry.values)]
            out += [f"### {_code(ckpt.path)}", "", *_table(["field", "value"], rows), ""]
            if entry.shown is not None:
                trows = [[_code(t.name), shape_str(t.shape), t.dtype, t.file] for t in entry.shown]
                out += [*_table(["tensor", "shape", "dtype", "file"], trows), ""]
        return "\n".join(out)

    def diff(self, result: DiffResult) -> str:
        out = [f"### diff {_code(result.a.path)} -> {_code(result.b.path)}", ""]
        rows: list[list[object]] = []
        rows += [["removed", _code(t.name), f"{shape_str(t.shape)} {t.dtype}", "-"] for t in result.removed]
        rows += [["added", _code(t.name), "-", f"{shape_str(t.shape)} {t.dtype}"] for t in result.added]
        rows += [["reshaped", _code(c.name), shape_str(c.a.shape), shape_str(c.b.shape)] for c in result.reshaped]
        rows += [["retyped", _code(c.name), c.a.dtype, c.b.dtype] for c in result.retyped]
        if rows:
            out += [*_table(["change", "tensor", "A", "B"], rows), ""]
        out.append(
            f"{len(result.added)} added, {len(result.removed)} removed, {len(result.reshaped)} reshaped, "
            f"{len(result.retyped)} retyped, {result.unchanged} unchanged"
            + (f"; {result.untouched} model tensors the adapter does not carry" if result.aligned else "")
        )
        if result.values is not None:
            differ = [v for v in result.values if v.nonfinite or v.max_abs > result.atol]
            out += ["", f"values: {len(differ)} of {len(result.values)} tensors differ (atol {result.atol:g})"]
            if differ:
                out += ["", *_table(["tensor", "max abs", "relative"], [[_code(v.name), "NaN/Inf" if v.nonfinite else f"{v.max_abs:.3g}", f"{v.rel:.3g}"] for v in differ])]
            shared = [v for v in result.values if v.shared_nonfinite]
            if shared:
                out += ["", "NaN/Inf at the same places on both sides (equal, but present): " + ", ".join(f"{_code(v.name)} ({v.shared_nonfinite})" for v in shared)]
            out += [line for note in value_notes(result) for line in ("", _cell(note))]
        return "\n".join(out) + "\n"

    def check(self, diagnosis: Diagnosis) -> str:
        from inspector.check import Selected  # imported by the check command already

        s = diagnosis.summary
        verdict = "fails" if s["error"] else "passes"
        out = [
            f"### lora-inspector check {verdict}: {counts_str(s)}",
            "",
            f"base {_code(diagnosis.base.path)} · adapter {_code(diagnosis.adapter.checkpoint.path)}",
            "",
        ]
        note = diagnosis.note if isinstance(diagnosis, Selected) else None  # check's --select / --ignore at work
        if note:
            out += [f"_{_cell(note)}_", ""]
        remote = [f"{role} {_code(c.path)} {c.remote.summary()}" for role, c in (("base", diagnosis.base), ("adapter", diagnosis.adapter.checkpoint)) if c.remote]
        if remote:
            out += [f"_{_cell(line)}_" for line in remote] + [""]
        warnings = [*diagnosis.base.warnings, *diagnosis.adapter.checkpoint.warnings]
        if warnings:
            out += [f"warning: {_cell(w)}" for w in warnings] + [""]
        if diagnosis.findings:
            out += _findings(diagnosis.findings)
        return "\n".join(out) + "\n"

    def check_many(self, fleet: Fleet) -> str:
        # The table of adapters first (what a PR reader wants), then each adapter with errors or
        # warnings; info is counted, not listed (--format json has every finding).
        failing = sum(d.fails(fleet.fail_on) for d in fleet.results)
        out = [
            f"### lora-inspector check {'fails' if failing else 'passes'}: {failing} of {len(fleet.results)} adapters fail; {counts_str(fleet.counts())}",
            "",
            f"base {_code(fleet.base.path)}" + (f" · targets: {', '.join(fleet.titles)}" if fleet.targets else ""),
            "",
        ]
        remote = [f"{who} {_code(c.path)} {c.remote.summary()}" for who, c in
                  (("base", fleet.base), *((f"#{n}", d.adapter.checkpoint) for n, d in enumerate(fleet.results, 1))) if c.remote]
        out += [f"_{_cell(line)}_" for line in remote] + ([""] if remote else [])
        if fleet.note:
            out += [f"_{_cell(fleet.note)}_", ""]
        out += [f"warning: {_cell(w)}" for w in fleet.base.warnings] + ([""] if fleet.base.warnings else [])
        out += [*_fleet_table(fleet), ""]
        for number, d in enumerate(fleet.results, 1):
            problems = [f for f in d.findings if f.severity != "info"]
            if not problems and not d.adapter.checkpoint.warnings:
                continue
            out += [f"#### #{number} {_code(d.adapter.checkpoint.path)} {fleet.verdict(d)}: {counts_str(d.summary)}", ""]
            out += [f"warning: {_cell(w)}" for w in d.adapter.checkpoint.warnings]
            out += [*_findings(problems), ""] if problems else [""]
        return "\n".join(out)

    def resize(self, result: ResizeResult) -> str:
        plan = result.plan
        out = [f"### resized {_code(plan.old_rows)} -> {_code(plan.rows)} rows ({plan.reason})", ""]
        out += _table(["tensor", "before", "after", "init"], [[_code(m.name), shape_str(m.old_shape), shape_str(m.new_shape), m.init] for m in result.matrices])
        if result.subword is not None:
            sub = result.subword
            out += ["", f"subword_mean: {sub.tokens} new tokens, {sub.fallbacks} fell back to the mean, {sub.byte_only} byte-fallback only"]
        out += [f"warning: {_cell(w)}" for w in result.warnings]
        out += ["", f"written to {_code(result.out)}"]
        return "\n".join(out) + "\n"

    def merge(self, result: MergeResult) -> str:
        plan, st = result.plan, result.stats
        vocab = plan.diagnosis.target
        rows = [["device", plan.device], ["vocabulary", f"{vocab.base_rows} -> {vocab.rows}" if vocab.grows else str(vocab.base_rows)],
                ["tensors", f"{st['tensors']} ({st['lora']} LoRA, {st['replaced']} replaced, {st['grown']} grown)"], ["untied", str(plan.untied)]]
        out = [f"### merged into {_code(result.out)}", "", *_table(["field", "value"], rows)]
        done = [(f, "repaired") for f in plan.repaired] + [(f, f"merged with --init {plan.init}") for f in plan.accepted]
        done += [(f, f.hint) for f in plan.diagnosis.findings if f.severity == "warning"]
        if done:  # as in the JSON report: errors repaired or merged over with --init, warnings acted on
            out += ["", *_table(["", "code", "what", "done"], [[_ICON[f.severity], _code(f.code.code), f.message, how] for f, how in done])]
        return "\n".join(out) + "\n"

    def convert(self, result: ConvertResult) -> str:
        plan = result.plan
        d = plan.diagnosis
        base = _code(d.base.path) + (" (base_model_name_or_path)" if plan.base_from != "--base" else "")
        rows = [["adapter", _code(d.adapter.checkpoint.path)], ["base", base], ["for", plan.title], ["tensors", f"{result.stats['tensors']} written"]]
        out = [f"### converted for {_cell(plan.title)} into {_code(result.out)}", "", *_table(["field", "value"], rows)]
        if plan.repairs:
            out += ["", *_table(["repair", "what"], [[r.kind, r.message] for r in plan.repairs])]
        else:
            out += ["", f"nothing to repair: {_cell(plan.title)} serves the adapter as it is"]
        found = [*plan.flags, *plan.warnings]
        if found:  # the flags the server still needs on the output, check's warnings on the input
            out += ["", *_table(["", "code", "what", "fix"], [[_ICON[f.severity], _code(f.code.code), f.message, f.hint] for f in found])]
        out += [f"note: {_cell(n)}" for n in plan.notes]
        return "\n".join(out) + "\n"

    def verify(self, result: VerifyResult) -> str:
        from inspector.verify import PROMPT_COLUMNS, prompt_cells, verdict

        out = [f"### verify {_code(result.merged)}", "", f"{'✅' if result.agrees else '❌'} {_cell(verdict(result))}", ""]
        out += _table(PROMPT_COLUMNS, [prompt_cells(p) for p in result.prompts])
        return "\n".join(out) + "\n"

    def error(self, failure: Failure) -> None:
        return None  # stderr's Error/Hint says it; a markdown page of one error helps no one
