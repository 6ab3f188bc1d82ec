"""HTML reports: one self-contained page per run, for CI artifacts and issue attachments.

Everything the page needs is inside it: no script, font, style or image is fetched, and the
Content-Security-Policy in its head says so to the browser (``default-src 'none'``; the one style
and the one script are allowed by their hashes, so even markup slipped into the page could run no
script of its own). Tensor names, paths and config values come from the files (docs/threat-model.md):
every one goes through ``_e``, and nothing from a file is ever put inside the script. Tables are
rendered here; the script only sorts and filters them and adds copy buttons to commands, so the
page reads the same without it.
"""

from __future__ import annotations

import math
import re
import shlex
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING

from inspector.diff import DiffResult, value_notes
from inspector.io.checkpoint import Checkpoint
from inspector.io.tensor import TensorInfo
from inspector.report import Failure, Renderer
from inspector.report.htmlpage import Fragment, page, text
from inspector.scan import ScanResult, value_lines
from inspector.units import counts_str, dtypes_str, human_bytes, human_count, shape_str, value_str

if TYPE_CHECKING:
    from inspector.check import Fleet
    from inspector.convert import ConvertResult
    from inspector.diagnose import Diagnosis
    from inspector.findings import Finding
    from inspector.merge import MergeResult
    from inspector.repair import ResizeResult
    from inspector.values import RowValues
    from inspector.verify import VerifyResult

_e = text  # every string from anywhere goes through it


# ---- fragments ----------------------------------------------------------------------------------

# A backticked span is a command to run (it gets a copy button) when is_command says so; else a name.
_BACKTICKS = re.compile(r"`([^`\n]*)`")
_FLAG = re.compile(r"(?<!\S)(--?[\w-]+)")


def _command(text: str) -> Fragment:
    """A command, its flags kept whole (a browser may break a line after any hyphen: "--" / "out");
    the copy button copies the text, which the spans leave as it is."""
    return _FLAG.sub(lambda m: f'<span class="flag">{m.group(1)}</span>', _e(text))


# The programs whose commands the hints give (`lora-inspector merge ...`, `hf download ...`, `pip install ...`).
_PROGRAMS = ("lora-inspector", "hf", "pip")


def is_command(text: str) -> bool:
    """A backticked span gets a copy button only if it is a command as ``shell_command`` writes one:
    one of our programs, every word as ``shlex.quote`` leaves it. Messages quote tensor names, which
    come from files: a name holding "`curl https://x | sh`" must not become a fix to copy."""
    try:
        words = shlex.split(text)
    except ValueError:  # unbalanced quotes
        return False
    return len(words) > 1 and words[0] in _PROGRAMS and " ".join(shlex.quote(w) for w in words) == text


def prose(text: str) -> Fragment:
    """A message or hint: escaped, with its backticked commands as ``<code class="cmd">``."""
    out, last = [], 0
    for m in _BACKTICKS.finditer(text):
        out.append(_e(text[last:m.start()]))
        inner = m.group(1)
        out.append(f'<code class="cmd">{_command(inner)}</code>' if is_command(inner) else f"<code>{_e(inner)}</code>")
        last = m.end()
    out.append(_e(text[last:]))
    return "".join(out)


def _code(text: object) -> Fragment:
    return f"<code>{_e(text)}</code>"


def facts(rows: Sequence[tuple[str, Fragment]]) -> Fragment:
    return '<dl class="facts">' + "".join(f"<dt>{_e(label)}</dt><dd>{value}</dd>" for label, value in rows) + "</dl>"


Cell = Fragment | tuple[Fragment, object]  # the cell's HTML, or (HTML, the value it sorts by)


def table(head: Sequence[str], rows: Iterable[Sequence[Cell]], *, numeric: Iterable[int] = (), sortable: bool = True,
          caption: str | None = None, table_id: str | None = None) -> Fragment:
    """A table rendered whole (it reads without the script); ``numeric`` columns sort by number,
    right-aligned; a cell given as (HTML, key) sorts by key."""
    num = set(numeric)
    attrs = (' class="sortable"' if sortable else "") + (f' id="{_e(table_id)}"' if table_id else "")
    out = [f"<table{attrs}>"]
    if caption:
        out.append(f"<caption>{_e(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f'<th{" class=n" if i in num else ""} scope="col">{_e(h)}</th>' for i, h in enumerate(head)) + "</tr></thead><tbody>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            content, key = cell if isinstance(cell, tuple) else (cell, None)
            attr = (" class=n" if i in num else "") + (f' data-v="{_e(key)}"' if key is not None else "")
            cells.append(f"<td{attr}>{content}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _filter(table_id: str, what: str) -> Fragment:
    # Hidden until the script shows it: without the script it would do nothing.
    return f'<input type="search" class="filter" data-table="{_e(table_id)}" placeholder="filter {_e(what)} by name" aria-label="filter {_e(what)} by name" hidden>'


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def tensor_table(tensors: Sequence[TensorInfo], *, show_file: bool, table_id: str, caption: str,
                 codes: dict[str, list[str]] | None = None) -> Fragment:
    """Name, shape (sorted by element count), dtype, bytes (by the raw count), and the file and the
    finding codes on each tensor when asked."""
    head = ["tensor", "shape", "dtype", "bytes"] + (["file"] if show_file else []) + (["findings"] if codes is not None else [])
    rows = []
    for t in tensors:
        row: list[Cell] = [_code(t.name), (_e(shape_str(t.shape)), _numel(t.shape)), _e(t.dtype), (_e(human_bytes(t.nbytes)), t.nbytes)]
        if show_file:
            row.append(_e(t.file))
        if codes is not None:
            row.append(_e(" ".join(codes.get(t.name, ()))))
        rows.append(row)
    return _filter(table_id, "tensors") + table(head, rows, numeric=(1, 3), caption=caption, table_id=table_id)


def finding_cell(f: Finding) -> Fragment:
    """The finding's tensor, message and fix (with copyable commands)."""
    parts = []
    if f.tensor and not f.message.startswith(f.tensor):
        parts.append(f"<div>{_code(f.tensor)}</div>")
    if f.target:
        parts.append(f"<div>server: {_e(f.target)}" + (f" ({_e(f.outcome)})" if f.outcome else "") + "</div>")
    parts.append(f"<div>{prose(f.message)}</div>")
    if f.hint:
        parts.append(f'<div class="fix"><b>fix:</b> {prose(f.hint)}</div>')
    return "".join(parts)


def findings(items: Sequence[Finding], heading: str = "h2") -> list[Fragment]:
    """One table per severity, every finding (a file has room: the terminal caps them)."""
    out: list[Fragment] = []
    for severity in ("error", "warning", "info"):
        found = [f for f in items if f.severity == severity]
        if not found:
            continue
        title = f"{'info' if severity == 'info' else severity + 's'} ({len(found)})"
        out.append(f'<{heading} class="{severity}">{_e(title)}</{heading}>')
        rows = [[f'<span class="{severity}">{_e(f.code.code)}</span><br>{_e(f.code.slug)}', finding_cell(f),
                 _e(shape_str(f.adapter_shape)) if f.adapter_shape else "", _e(shape_str(f.base_shape)) if f.base_shape else ""] for f in found]
        out.append(table(["code", "finding", "adapter", "base"], rows, numeric=(2, 3), sortable=False))
    return out


def _path(path: object) -> Fragment:
    return _code(path)


def _sized(ckpt: Checkpoint) -> Fragment:
    return f"{_path(ckpt.path)} ({ckpt.tensor_count:,} tensors, {_e(human_bytes(ckpt.total_bytes))})"


def _warning_rows(ckpt: Checkpoint) -> list[tuple[str, Fragment]]:
    return [("warning", f'<span class="warning">{_e(w)}</span>') for w in ckpt.warnings]


def _notes(lines: Iterable[str], cls: str = "warning") -> Fragment:
    items = [f'<li class="{cls}">{prose(line)}</li>' for line in lines]
    return f'<ul class="notes">{"".join(items)}</ul>' if items else ""


def _verdict_class(summary: dict[str, int]) -> str:
    return "error" if summary["error"] else ("warning" if summary["warning"] else "ok")


# ---- row norms: inline SVG ----------------------------------------------------------------------

_W, _H, _PAD_L, _PAD_B, _PAD_T = 560, 180, 8, 34, 18


def row_norm_svg(r: RowValues) -> Fragment:
    """check --values: the old and the new rows' norms over the same bins, each side scaled to its
    own fullest bin (as the terminal draws them), so the shapes compare whatever the row counts."""
    h = r.histogram
    old, new, edges = list(h["old"]), list(h["new"]), list(h["edges"])
    bins = max(len(old), 1)
    top_old, top_new = max([*old, 1]), max([*new, 1])
    plot_w, plot_h = _W - 2 * _PAD_L, _H - _PAD_B - _PAD_T
    slot = plot_w / bins
    bar = slot * 0.4
    label = f"Row norms of {r.tensor}: {r.old_rows} old rows, {r.new_rows} new"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" aria-label="{_e(label)}">',
             f'<text x="{_PAD_L}" y="12"><tspan class="old">&#9632;</tspan> old rows ({r.old_rows})  <tspan class="new">&#9632;</tspan> new rows ({r.new_rows}); each scaled to its fullest bin</text>']
    base_y = _PAD_T + plot_h
    for i in range(len(old)):
        x0 = _PAD_L + i * slot + slot * 0.1
        for side, count, top, x in (("old", old[i], top_old, x0), ("new", new[i], top_new, x0 + bar)):
            height = plot_h * count / top
            parts.append(f'<rect class="{side}" x="{x:.1f}" y="{base_y - height:.1f}" width="{bar:.1f}" height="{height:.1f}">'
                         f"<title>{side} rows with norm {edges[i]:.4g} to {edges[i + 1]:.4g}: {count}</title></rect>")
    parts.append(f'<line class="axis" x1="{_PAD_L}" y1="{base_y}" x2="{_W - _PAD_L}" y2="{base_y}"/>')
    for i in (0, len(edges) // 2, len(edges) - 1) if edges else ():
        x = _PAD_L + i * slot
        anchor = "start" if i == 0 else ("end" if i == len(edges) - 1 else "middle")
        parts.append(f'<text x="{x:.1f}" y="{base_y + 14}" text-anchor="{anchor}">{edges[i]:.4g}</text>')
    parts.append(f'<text x="{_W / 2:.0f}" y="{base_y + 29}" text-anchor="middle">row L2 norm</text></svg>')
    caption = f"row norms of {_code(r.tensor)}: {r.old_rows} old rows, {r.new_rows} new"
    pct = "; ".join(f"{side} p1 / p50 / p99 {p.get('p1', 0):.3g} / {p.get('p50', 0):.3g} / {p.get('p99', 0):.3g}"
                    for side, p in (("old", r.old_percentiles), ("new", r.new_percentiles)) if p)
    return f"<figure><figcaption>{caption}</figcaption>{''.join(parts)}" + (f"<div>{_e(pct)}</div>" if pct else "") + "</figure>"


def row_norms(diagnosis: Diagnosis) -> list[Fragment]:
    scan = diagnosis.binding.value_scan if diagnosis.binding.values else None
    if not scan or not scan.rows:
        return []
    return ["<h2>row norms of the new vocabulary rows</h2>", *(row_norm_svg(r) for r in scan.rows)]


# ---- the reports ---------------------------------------------------------------------------------


def _check_body(diagnosis: Diagnosis, number: int | None = None) -> list[Fragment]:
    """One adapter's report: summary fields, findings, row norms, the adapter's tensors."""
    from inspector.check import Selected  # imported by the check command already

    s, plan = diagnosis.summary, diagnosis.target
    adapter = diagnosis.adapter.checkpoint
    rows: list[tuple[str, Fragment]] = [("base", _sized(diagnosis.base)), ("adapter", _sized(adapter))]
    rows += [(f"{role} remote", _e(c.remote.summary())) for role, c in (("base", diagnosis.base), ("adapter", adapter)) if c.remote]
    rows += _warning_rows(diagnosis.base) + _warning_rows(adapter)
    if plan.base_rows is not None:
        rows.append(("vocabulary", _e(plan.base_rows) if not plan.grows else f"{_e(plan.base_rows)} -&gt; {_e(plan.rows)} ({_e(plan.source)})"))
    if diagnosis.tokenizer:
        rows.append(("tokenizer", f"{diagnosis.tokenizer.length:,} tokens ({_path(diagnosis.tokenizer.directory)})"))
    rows.append(("result", f'<span class="verdict {_verdict_class(s)}">{_e(counts_str(s))}</span>'))
    note = diagnosis.note if isinstance(diagnosis, Selected) else None
    if note:
        rows.append(("filtered", _e(note)))
    heading = "h3" if number is not None else "h2"
    out = [facts(rows), *findings(diagnosis.findings, heading)]
    out += row_norms(diagnosis)
    codes: dict[str, list[str]] = defaultdict(list)
    for f in diagnosis.findings:
        if f.adapter_key and f.code.code not in codes[f.adapter_key]:
            codes[f.adapter_key].append(f.code.code)
    suffix = f"-{number}" if number is not None else ""
    out.append(f"<{heading}>adapter tensors ({adapter.tensor_count:,})</{heading}>")
    out.append(tensor_table(adapter.tensors, show_file=len(adapter.files) > 1, table_id=f"tensors{suffix}",
                            caption=f"{adapter.tensor_count:,} tensors in the adapter", codes=codes))
    return out


def _title(kind: str, text: Fragment, sep: str = ": ") -> Fragment:
    return f"<h1>lora-inspector {_e(kind)}{sep}{text}</h1>"


def _job_kind(job) -> str:
    """What merge did to one output tensor (the plan's job), in the words of the rich report."""
    what = []
    if job.replace is not None:
        what.append("replaced by the adapter")
    if job.deltas:
        what.append(f"{len(job.deltas)} LoRA delta{'s' * (len(job.deltas) != 1)} merged")
    if job.bias_deltas:
        what.append("LoRA bias merged")
    if job.tokens:
        what.append("trainable tokens")
    if tuple(job.shape) != tuple(job.source.shape):
        what.append(f"grown from {shape_str(job.source.shape)}")
    return ", ".join(what) or "copied through"


class Html(Renderer[str]):
    """One self-contained page per run (see the module's doc)."""

    def scan(self, result: ScanResult) -> str:
        body = [_title("scan", f"{len(result.checkpoints)} checkpoint{'s' * (len(result.checkpoints) != 1)}")]
        for i, entry in enumerate(result.checkpoints, 1):
            ckpt = entry.checkpoint
            rows: list[tuple[str, Fragment]] = [
                ("kind", _e(f"{ckpt.kind} ({ckpt.format})")),
                ("files", "<br>".join(_code(f) for f in ckpt.files)),
                ("tensors", f"{ckpt.tensor_count:,}"),
                ("parameters", _e(f"{ckpt.parameter_count:,} ({human_count(ckpt.parameter_count)})")),
                ("data", _e(f"{ckpt.total_bytes:,} bytes ({human_bytes(ckpt.total_bytes)})")),
                ("dtypes", _e(dtypes_str(ckpt.dtypes))),
                *[(key, _e(value_str(v))) for key, v in ckpt.key_config().items() if v is not None],
            ]
            if ckpt.tokenizer:
                tok = ckpt.tokenizer
                rows.append(("tokenizer", _e(f"{tok.length:,} tokens ({tok.source}, {tok.added} added)")))
            if ckpt.remote is not None:  # a Hub id read remotely: from where, at which commit, how much came over
                rows.append(("remote", _e(ckpt.remote.summary())))
            rows += _warning_rows(ckpt)
            if entry.invalid:
                rows.append(("warning", f'<span class="warning">{_e(entry.invalid)} (check and merge refuse this adapter)</span>'))
            body += [f"<h2>{_path(ckpt.path)}</h2>", facts(rows)]
            lines = value_lines(entry.values)
            if lines:
                body.append(_notes(lines))
            elif entry.values is not None:
                body.append('<p class="ok">values: finite; no identical tail of vocabulary rows</p>')
            # A page has room for every tensor: without --tensors / --match it lists them all.
            shown = entry.shown if entry.shown is not None else ckpt.tensors
            caption = f"{len(shown):,} of {ckpt.tensor_count:,} tensors" + (f" matching {result.match!r}" if result.match else "")
            body.append(tensor_table(shown, show_file=len(ckpt.files) > 1, table_id=f"tensors-{i}", caption=caption))
        return page("lora-inspector scan", body, "scan")

    def diff(self, result: DiffResult) -> str:
        changed = bool(result.added or result.removed or result.reshaped or result.retyped)
        summary = (f"{len(result.added)} added, {len(result.removed)} removed, {len(result.reshaped)} reshaped, "
                   f"{len(result.retyped)} retyped, {result.unchanged} unchanged"
                   + (f"; {result.untouched} model tensors the adapter does not carry" if result.aligned else ""))
        verdict = "identical" if result.identical and not result.noop else "differ"
        body = [_title("diff", f'<span class="verdict {"ok" if verdict == "identical" else "error"}">{verdict}</span>', " "),
                facts([("A", _sized(result.a)), ("B", _sized(result.b)), ("summary", _e(summary))])]
        if changed:
            rows: list[list[Cell]] = []
            rows += [['<span class="error">removed</span>', _code(t.name), _e(f"{shape_str(t.shape)} {t.dtype}"), "-"] for t in result.removed]
            rows += [['<span class="ok">added</span>', _code(t.name), "-", _e(f"{shape_str(t.shape)} {t.dtype}")] for t in result.added]
            rows += [['<span class="warning">reshaped</span>', _code(c.name), _e(shape_str(c.a.shape)), _e(shape_str(c.b.shape))] for c in result.reshaped]
            rows += [['<span class="info">retyped</span>', _code(c.name), _e(c.a.dtype), _e(c.b.dtype)] for c in result.retyped]
            # the tensor name first: the filter box reads the first cell
            body += ["<h2>changes</h2>", _filter("changes", "changes"),
                     table(["tensor", "change", "A", "B"], [[r[1], r[0], r[2], r[3]] for r in rows], table_id="changes")]
        if result.values is not None:
            differ = [v for v in result.values if v.nonfinite or v.max_abs > result.atol]
            differing = {v.name for v in differ}
            body.append(f"<h2>values: {len(differ)} of {len(result.values)} tensors differ (atol {result.atol:g})</h2>")
            vrows = [[_code(v.name), ("NaN/Inf" if v.nonfinite else _e(f"{v.max_abs:.3g}"), "Infinity" if v.nonfinite else v.max_abs),
                      (_e(f"{v.rel:.3g}"), v.rel), (_e(f"{v.change:.3g}"), v.change),
                      '<span class="error">differs</span>' if v.name in differing else '<span class="ok">equal</span>'] for v in result.values]
            body += [_filter("values", "tensors"), table(["tensor", "max abs", "relative", "||dW||/||W||", ""], vrows, numeric=(1, 2, 3), table_id="values")]
            shared = [v for v in result.values if v.shared_nonfinite]
            notes = [f"NaN/Inf at the same places on both sides (equal, but present): {', '.join(f'{v.name} ({v.shared_nonfinite})' for v in shared)}"] if shared else []
            body.append(_notes([*notes, *value_notes(result)]))
        if not changed and result.values is None:
            body.append(f'<p class="ok">identical: {result.unchanged} tensors with the same names, shapes and dtypes</p>')
        return page(f"lora-inspector diff: {verdict}", body, "diff")

    def check(self, diagnosis: Diagnosis) -> str:
        s = diagnosis.summary
        verdict = "fails" if s["error"] else "passes"
        body = [_title("check", f'<span class="verdict {verdict}">{verdict}</span>: {_e(counts_str(s))}', " "), *_check_body(diagnosis)]
        return page(f"lora-inspector check {verdict}: {counts_str(s)}", body, "check")

    def check_many(self, fleet: Fleet) -> str:
        from inspector.check import OUTCOME_LABELS

        failing = sum(d.fails(fleet.fail_on) for d in fleet.results)
        verdict = "fails" if failing else "passes"
        counts = fleet.counts()
        head = list(fleet.titles) if fleet.targets else ["errors", "warnings", "info"]
        rows = []
        for number, d in enumerate(fleet.results, 1):
            if fleet.targets:
                cells: list[Cell] = [f'<span class="{"ok" if o == "ok" else "warning" if o == "flag" else "error"}">{_e(OUTCOME_LABELS[o])}</span>'
                                     for o in (fleet.outcome(d, t) for t in fleet.targets)]
            else:
                cells = [(_e(d.summary[s]), d.summary[s]) for s in ("error", "warning", "info")]
            v = fleet.verdict(d)
            link = f'<a href="#adapter-{number}">{_code(PurePath(d.adapter.checkpoint.path).name or d.adapter.checkpoint.path)}</a>'
            rows.append([(_e(number), number), link, *cells, f'<span class="{v}">{v}</span>'])
        numeric = (0,) if fleet.targets else (0, 2, 3, 4)
        body = [_title("check", f'<span class="verdict {verdict}">{verdict}</span>: {failing} of {len(fleet.results)} adapters fail; {_e(counts_str(counts))}', " "),
                facts([("base", _sized(fleet.base)), *_warning_rows(fleet.base),
                       ("adapters", _e(f"{len(fleet.results)}: {failing} fail, {len(fleet.results) - failing} pass (--fail-on {fleet.fail_on})")),
                       *([("targets", _e(", ".join(fleet.titles)))] if fleet.targets else []),
                       *([("filtered", _e(fleet.note))] if fleet.note else [])]),
                "<h2>adapters</h2>", table(["#", "adapter", *head, "verdict"], rows, numeric=numeric)]
        for number, d in enumerate(fleet.results, 1):
            v = fleet.verdict(d)
            body.append(f'<details id="adapter-{number}"{" open" if d.summary["error"] or d.summary["warning"] else ""}>'
                        f'<summary><b>#{number}</b> {_path(d.adapter.checkpoint.path)} <span class="{v}">{v}: {_e(counts_str(d.summary))}</span></summary>')
            body += _check_body(d, number)
            body.append("</details>")
        return page(f"lora-inspector check {verdict}: {failing} of {len(fleet.results)} adapters fail", body, "check")

    def resize(self, result: ResizeResult) -> str:
        plan = result.plan
        body = [_title("resize", _e(f"{plan.old_rows} -> {plan.rows} rows")),
                facts([("reason", _e(plan.reason)), ("new rows", _e(plan.init if plan.rows > plan.kept else "-")),
                       ("written", f"{_path(result.out)} ({_e(_tokenizer_note(result.tokenizer_from))})")])]
        rows = [[_code(m.name), (_e(shape_str(m.old_shape)), _numel(m.old_shape)), (_e(shape_str(m.new_shape)), _numel(m.new_shape)), _e(m.init)] for m in result.matrices]
        body += ["<h2>resized tensors</h2>", table(["tensor", "before", "after", "init"], rows, numeric=(1, 2))]
        notes = []
        if plan.reused_padding:
            notes.append(f"{plan.reused_padding} padding rows past the old tokenizer ({plan.kept} tokens) now hold new tokens: initialized with {plan.init}, not kept")
        if plan.rows != plan.requested:
            notes.append(f"padded {plan.requested} -> {plan.rows} rows (--pad-to-multiple-of); padding rows use the mean")
        if result.subword is not None:
            sub = result.subword
            notes.append(f"subword_mean: {sub.tokens} new tokens, {sub.fallbacks} fell back to the mean (no pieces), {sub.byte_only} split into byte-fallback pieces only")
        body.append(_notes(notes, "info") + _notes(result.warnings))
        return page("lora-inspector resize", body, "resize")

    def merge(self, result: MergeResult) -> str:
        plan, st = result.plan, result.stats
        vocab = plan.diagnosis.target
        rows: list[tuple[str, Fragment]] = [("adapter", _path(plan.diagnosis.adapter.checkpoint.path)), ("base", _path(plan.diagnosis.base.path)), ("device", _e(plan.device))]
        if vocab.grows:
            rows.append(("vocabulary", _e(f"{vocab.base_rows} -> {vocab.rows} ({vocab.source})") + (_e(f"; rows no one carries: --init {plan.init}") if st["grown"] else "")))
        rows.append(("tensors", _e(f"{st['tensors']} written: {st['lora']} LoRA deltas merged, {st['replaced']} replaced by the adapter, "
                                   f"{st['tokens']} trainable-token sets, {st['grown']} grown, {st['copied']} copied through")))
        if plan.untied:
            rows.append(("tied", _e(f"{plan.head.removesuffix('.weight') if plan.head else 'the head'} untied from the embedding (tie_word_embeddings: false), as PEFT does")))
        rows.append(("written", f"{_path(result.out)} ({_e(_tokenizer_note(result.tokenizer_from))})"))
        body = [_title("merge", f"merged into {_path(result.out)}"), facts(rows)]
        done = [(f, "repaired (the vocabulary grown)") for f in plan.repaired] + [(f, f"merged with --init {plan.init}: the rows training saw are lost") for f in plan.accepted]
        done += [(f, "warning: " + f.hint) for f in plan.diagnosis.findings if f.severity == "warning"]
        if done:  # as in the JSON report: errors repaired or merged over with --init, warnings acted on
            drows = [[f'<span class="{f.severity}">{_e(f.code.code)}</span><br>{_e(f.code.slug)}', finding_cell_without_fix(f), prose(how)] for f, how in done]
            body += ["<h2>check's findings the merge acted on</h2>", table(["code", "finding", "done"], drows, sortable=False)]
        jobs = [[_code(j.name), (_e(shape_str(j.shape)), _numel(j.shape)), _e(j.dtype), _e(_job_kind(j))] for j in plan.jobs]
        body += [f"<h2>output tensors ({len(jobs):,})</h2>", _filter("tensors", "tensors"),
                 table(["tensor", "shape", "dtype", "what"], jobs, numeric=(1,), table_id="tensors")]
        return page(f"lora-inspector merge: {result.out}", body, "merge")

    def convert(self, result: ConvertResult) -> str:
        plan = result.plan
        d = plan.diagnosis
        base = _path(d.base.path) + (" (its base_model_name_or_path)" if plan.base_from != "--base" else "")
        rows: list[tuple[str, Fragment]] = [("adapter", _path(d.adapter.checkpoint.path)), ("base", base), ("for", _e(plan.title)),
                                        ("dtype", _e(plan.dtype)), ("written", f"{_path(result.out)} ({result.stats['tensors']} tensors; {_e(_tokenizer_note(result.tokenizer_from))})")]
        body = [_title("convert", f"for {_e(plan.title)} into {_path(result.out)}"), facts(rows), "<h2>repairs</h2>"]
        if plan.repairs:
            body.append(table(["repair", "what", "keys"], [[_e(r.kind), prose(r.message), _e(len(r.keys))] for r in plan.repairs], sortable=False))
        else:
            body.append(f"<p>none needed: {_e(plan.title)} serves the adapter as it is</p>")
        changes = plan.config_changes
        if changes:
            body += ["<h2>adapter_config.json changes</h2>",
                     table(["field", "before", "after"], [[_code(k), _code(value_str(a)), _code(value_str(b))] for k, (a, b) in changes.items()], sortable=False)]
        body += findings([*plan.flags, *plan.warnings])
        body.append(_notes(plan.notes, "info"))
        return page(f"lora-inspector convert: {plan.title}", body, "convert")

    def verify(self, result: VerifyResult) -> str:
        from inspector.verify import PROMPT_COLUMNS, prompt_cells, verdict

        cls = "ok" if result.agrees else "error"
        rows = []
        for p in result.prompts:
            cells = prompt_cells(p)
            keys = [None, p.tokens, p.max_abs, p.kl if p.kl is not None else -1, p.top1 if p.top1 is not None else -1, None]
            rows.append([_e(c) if k is None else (_e(c), k) for c, k in zip(cells[:-1], keys)] + [f'<span class="{"ok" if p.agrees else "error"}">{_e(cells[-1])}</span>'])
        body = [_title("verify", f'<span class="verdict {cls}">{"agrees" if result.agrees else "differs"}</span>', " "),
                facts([("base", _path(result.base)), ("adapter", _path(result.adapter)), ("merged", _path(result.merged)),
                       ("run", _e(f"{result.head}, {result.dtype} on {result.device}")), ("result", f'<span class="verdict {cls}">{_e(verdict(result))}</span>')]),
                "<h2>prompts</h2>", table(PROMPT_COLUMNS, rows, numeric=(1, 2, 3, 4))]
        return page(f"lora-inspector verify: {'agrees' if result.agrees else 'differs'}", body, "verify")

    def error(self, failure: Failure) -> str:
        # As --format json does: stdout gets the failure too, so `... --format html > report.html`
        # leaves a page that says what went wrong, not an empty file.
        command = failure.command or "lora-inspector"
        rows: list[tuple[str, Fragment]] = [("error", f'<span class="error">{_e(failure.message)}</span>')]
        if failure.path is not None:
            rows.append(("path", _path(failure.path)))
        rows.append(("hint", prose(failure.hint)))
        body = [f'<h1>lora-inspector {_e(failure.command or "")} <span class="verdict error">failed</span></h1>', facts(rows)]
        return page(f"lora-inspector {command} failed", body, failure.command)


def finding_cell_without_fix(f: Finding) -> Fragment:
    parts = [f"<div>{_code(f.tensor)}</div>"] if f.tensor and not f.message.startswith(f.tensor) else []
    return "".join(parts) + f"<div>{prose(f.message)}</div>"


def _tokenizer_note(source: str | None) -> str:
    return f"tokenizer files from {source}" if source else "no tokenizer files in the inputs"

