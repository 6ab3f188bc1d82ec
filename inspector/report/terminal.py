"""Rich renderables for people at a terminal.

Commands and paths are printed whole, on lines of their own: rich folds a long word at the edge of a
table cell and cuts a panel title with an ellipsis, and a command broken across table borders cannot
be copied. So a report is a list of blocks, and ``write`` prints the ``Whole`` ones without wrapping
or cropping (the terminal wraps them, and copying gives them back in one piece). In finding tables
a command or long path is a reference ``[n]``, listed whole below the tables.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from rich.console import Console, ConsoleOptions, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from inspector.diff import DiffResult, value_notes
from inspector.io.checkpoint import Checkpoint
from inspector.io.tensor import TensorInfo
from inspector.report import Failure, Renderer
from inspector.scan import ScanResult, value_lines
from inspector.units import counts_str, dtypes_str, human_bytes, human_count, printable, shape_str, value_str

if TYPE_CHECKING:
    from inspector.check import Fleet
    from inspector.convert import ConvertResult
    from inspector.diagnose import Diagnosis
    from inspector.merge import MergeResult
    from inspector.repair import ResizeResult
    from inspector.verify import VerifyResult


@dataclass(frozen=True)
class Whole:
    """A line printed whole at any width: a command or a path, which must copy as one piece."""

    text: Text


Block = Union[RenderableType, Whole]


class Report:
    """A terminal report: blocks printed one after another by ``write``."""

    def __init__(self, blocks: Iterable[Block]) -> None:
        self.blocks = tuple(blocks)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        # console.print(report) works too, but folds whole lines at the edge like any text: use write().
        for block in self.blocks:
            yield block.text if isinstance(block, Whole) else block


def write(console: Console, report: Report) -> None:
    for block in report.blocks:
        if isinstance(block, Whole):
            console.print(block.text, soft_wrap=True)  # neither folded nor cropped
        else:
            console.print(block)


def _has_path(value: str) -> bool:
    return "/" in value


Row = tuple[Union[str, Text], Union[str, Text], bool]  # label, value, printed whole


def _warnings(ckpt: Checkpoint) -> list[Row]:
    """What reading a checkpoint noticed; warnings that name paths are printed whole."""
    label = Text("warning", style="yellow bold")
    return [(label, Text(printable(w), style="yellow"), _has_path(w)) for w in ckpt.warnings]


def _fields(rows: list[Row], indent: int = 2) -> list[Block]:
    """Label / value lines with aligned labels: values that are paths or commands on whole lines,
    the others (prose) in a grid that wraps them."""
    width = max(len(label.plain if isinstance(label, Text) else label) for label, _, _ in rows)
    blocks: list[Block] = []
    grid: Table | None = None
    for label, value, whole in rows:
        label = label if isinstance(label, Text) else Text(label, style="bold")
        if whole:
            grid = None
            blocks.append(Whole(Text.assemble(" " * indent, label, " " * (width - len(label.plain) + 2), value)))
            continue
        if grid is None:
            grid = Table.grid(padding=(0, 2))
            grid.add_column(width=width, no_wrap=True)
            grid.add_column()
            blocks.append(Padding(grid, (0, 0, 0, indent), expand=False))
        grid.add_row(label, value)
    return blocks


def _tokenizer_note(source: str | None) -> str:
    return f"tokenizer files from {printable(source)}" if source else "no tokenizer files in the inputs"


def _facts(ckpt: Checkpoint, invalid: str | None) -> list[Row]:
    files = ckpt.files if len(ckpt.files) <= 4 else (*ckpt.files[:3], f"... {len(ckpt.files) - 3} more")
    rows: list[Row] = [
        ("kind", f"{ckpt.kind} ({ckpt.format})", False),
        ("files", "\n".join(printable(f) for f in files), False),
        ("tensors", f"{ckpt.tensor_count:,}", False),
        ("parameters", f"{ckpt.parameter_count:,} ({human_count(ckpt.parameter_count)})", False),
        ("data", f"{ckpt.total_bytes:,} bytes ({human_bytes(ckpt.total_bytes)})", False),
        ("dtypes", dtypes_str(ckpt.dtypes), False),
    ]
    for key, value in ckpt.key_config().items():
        if value is not None:
            shown = printable(value_str(value))
            rows.append((key, shown, isinstance(value, str) and _has_path(value)))  # base_model_name_or_path: often a path
    if ckpt.tokenizer:
        tok = ckpt.tokenizer
        rows.append(("tokenizer", f"{tok.length:,} tokens ({tok.source}, {tok.added} added)", False))
    if ckpt.remote is not None:
        rows.append(("remote", ckpt.remote.summary(), False))
    warning = Text("warning", style="yellow bold")
    rows += _warnings(ckpt)
    if invalid:
        rows.append((warning, Text(f"{printable(invalid)} (check and merge refuse this adapter)", style="yellow"), False))
    return rows


def tensor_table(tensors: tuple[TensorInfo, ...], *, show_file: bool, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("tensor", overflow="fold")
    table.add_column("shape", justify="right", no_wrap=True)
    table.add_column("dtype", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    if show_file:
        table.add_column("file", overflow="fold")
    for t in tensors:
        row = [printable(t.name), shape_str(t.shape), t.dtype, human_bytes(t.nbytes)]
        if show_file:
            row.append(t.file)
        table.add_row(*row)
    return table


def _values(result: DiffResult, shown: int = 20) -> list[RenderableType]:
    if result.values is None:
        return []
    return [*_value_table(result, shown), *(Text(n, style="red" if n.startswith("no-op") else "yellow") for n in value_notes(result))]


def _value_table(result: DiffResult, shown: int) -> list[RenderableType]:
    worst = sorted(result.values, key=lambda v: (not v.nonfinite, -v.max_abs))
    differ = [v for v in worst if v.nonfinite or v.max_abs > result.atol]
    title = f"values: {len(differ)} of {len(result.values)} tensors differ (atol {result.atol:g})"
    shared = [v for v in result.values if v.shared_nonfinite]
    note = [Text(f"NaN/Inf at the same places on both sides (equal, but present): {', '.join(printable(v.name) for v in shared[:5])}"
                 + (f" and {len(shared) - 5} more" if len(shared) > 5 else ""), style="yellow")] if shared else []
    if not differ:
        top = max((v.max_abs for v in worst), default=0.0)
        return [Text(f"{title}; largest max-abs difference {top:.3g}", style="green"), *note]
    worst = differ
    table = Table(title=title, title_justify="left")
    table.add_column("tensor", overflow="fold")
    table.add_column("max abs", justify="right", no_wrap=True)
    table.add_column("relative", justify="right", no_wrap=True)
    for v in worst[:shown]:
        style = "red" if v.nonfinite or v.max_abs > result.atol else "green"
        table.add_row(printable(v.name), Text("NaN/Inf" if v.nonfinite else f"{v.max_abs:.3g}", style=style), f"{v.rel:.3g}")
    parts: list[RenderableType] = [table, *note]
    if len(worst) > shown:
        parts.append(Text(f"... {len(worst) - shown} more (all of them: --format json)", style="dim"))
    return parts


# A backticked span with a space in a hint is a command to run; a word with a slash this long, a path.
_COMMAND = re.compile(r"`([^`\n]* [^`\n]*)`")
_PATH_WORD = re.compile(r"[^\s'\"`(),;]*/[^\s'\"`(),;]*")
_LONG_PATH = 20  # shorter ones ("Python/torch", "hf_mvn/normal") fit any cell


class _References:
    """Commands and long paths quoted in finding text, numbered once each: the table cell shows
    ``[n]``, and ``lines`` gives them whole for below the tables."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    def ref(self, text: str) -> str:
        return f"[{self.numbers.setdefault(text, len(self.numbers) + 1)}]"

    def _path(self, match: re.Match) -> str:
        word = match.group(0)
        stem = word.rstrip(".:")  # the sentence's full stop is not part of the path
        return word if len(stem) < _LONG_PATH else self.ref(stem) + word[len(stem):]

    def cite(self, text: str) -> str:
        return _PATH_WORD.sub(self._path, _COMMAND.sub(lambda m: self.ref(m.group(1)), text))

    def lines(self) -> list[Block]:
        return [Whole(Text.assemble((f"[{n}] ", "dim"), printable(text))) for text, n in self.numbers.items()]


_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "bold blue"}
_SHOWN_PER_CODE = 20  # the JSON report always lists everything


def _finding_tables(diagnosis: Diagnosis, refs: _References, severities: tuple[str, ...] = ("error", "warning", "info")) -> list[Block]:
    parts: list[Block] = []
    shown: Counter[str] = Counter()
    hidden: Counter[str] = Counter()
    for severity in severities:
        items = [f for f in diagnosis.findings if f.severity == severity]
        if not items:
            continue
        table = Table(title=Text(f"{'info' if severity == 'info' else severity + 's'} ({len(items)})", style=_STYLE[severity]), title_justify="left", show_lines=True, expand=True)
        table.add_column("code", no_wrap=True, style=_STYLE[severity])
        table.add_column("finding", ratio=3, overflow="fold")
        table.add_column("adapter", justify="right", no_wrap=True)
        table.add_column("base", justify="right", no_wrap=True)
        for f in items:
            code = f.code.code
            if shown[code] >= _SHOWN_PER_CODE:
                hidden[code] += 1
                continue
            shown[code] += 1
            body = Text()
            if f.tensor and not f.message.startswith(f.tensor):
                body.append(printable(f.tensor) + "\n", style="bold")
            body.append(printable(refs.cite(f.message)))
            body.append("\nfix: ", style="green bold")
            body.append(printable(refs.cite(f.hint)), style="green")
            table.add_row(Text(f"{code}\n{f.code.slug}"), body, shape_str(f.adapter_shape) if f.adapter_shape else "", shape_str(f.base_shape) if f.base_shape else "")
        parts.append(table)
    for code, n in hidden.items():
        parts.append(Text(f"... and {n} more {code} findings (all of them: --format json)", style="dim"))
    return parts


def _row_norms(diagnosis: Diagnosis, width: int = 24) -> list[Block]:
    """check --values: old vs new vocabulary rows' norms, one text histogram per grown matrix."""
    scan = diagnosis.binding.value_scan if diagnosis.binding.values else None
    out: list[Block] = []
    for r in scan.rows if scan else ():
        h = r.histogram
        out += [Text(""), Text(f"row norms of {printable(r.tensor)}: {r.old_rows} old rows, {r.new_rows} new", style="bold")]
        # Each side scaled to its own fullest bin: the shapes compare, whatever the row counts.
        top_old, top_new = max([*h["old"], 1]), max([*h["new"], 1])
        for i, (old, new) in enumerate(zip(h["old"], h["new"])):
            bars = Text(f"  {h['edges'][i]:>9.4g} - {h['edges'][i + 1]:<9.4g} old ")
            bars.append(f"{'#' * round(width * old / top_old):<{width}} {old:>5}", style="cyan")
            bars.append("  new ")
            bars.append(f"{'#' * round(width * new / top_new):<{width}} {new:>5}", style="magenta")
            out.append(bars)
    return out


def _sized(ckpt: Checkpoint) -> str:
    return f"{printable(ckpt.path)} ({ckpt.tensor_count} tensors, {human_bytes(ckpt.total_bytes)})"


class Terminal(Renderer[Report]):
    """Tables and aligned fields for people; paths and commands whole (see the module's doc)."""

    def scan(self, result: ScanResult) -> Report:
        parts: list[Block] = []
        for i, entry in enumerate(result.checkpoints):
            ckpt = entry.checkpoint
            if i:
                parts.append(Text(""))
            # A Text, not markup: a path like "m[/red]" is a name, not a closing tag (MarkupError).
            parts.append(Whole(Text(printable(ckpt.path), style="bold")))
            parts += _fields(_facts(ckpt, entry.invalid))
            parts += [Text(f"  {printable(line)}", style="yellow") for line in value_lines(entry.values)]
            if entry.values is not None and not value_lines(entry.values):
                parts.append(Text("  values: finite; no identical tail of vocabulary rows", style="green"))
            if entry.shown is not None:
                title = f"{len(entry.shown)} of {ckpt.tensor_count} tensors" + (f" matching {result.match!r}" if result.match else "")
                parts.append(tensor_table(entry.shown, show_file=len(ckpt.files) > 1, title=title))
        return Report(parts)

    def diff(self, result: DiffResult) -> Report:
        head = [Whole(Text.assemble(("A ", "bold"), printable(result.a.path))), Whole(Text.assemble(("B ", "bold"), printable(result.b.path)))]
        values = _values(result)
        if not (result.added or result.removed or result.reshaped or result.retyped) and values:
            return Report([*head, *values, Text(f"same names, shapes and dtypes: {result.unchanged} tensors")])
        if result.identical:
            return Report([*head, Text(f"identical: {result.unchanged} tensors with the same names, shapes and dtypes", style="green")])
        table = Table(show_lines=False)
        table.add_column("change", no_wrap=True)
        table.add_column("tensor", overflow="fold")
        table.add_column("A", justify="right", no_wrap=True)
        table.add_column("B", justify="right", no_wrap=True)
        for t in result.removed:
            table.add_row(Text("removed", style="red"), printable(t.name), f"{shape_str(t.shape)} {t.dtype}", "-")
        for t in result.added:
            table.add_row(Text("added", style="green"), printable(t.name), "-", f"{shape_str(t.shape)} {t.dtype}")
        for c in result.reshaped:
            table.add_row(Text("reshaped", style="yellow"), printable(c.name), shape_str(c.a.shape), shape_str(c.b.shape))
        for c in result.retyped:
            table.add_row(Text("retyped", style="magenta"), printable(c.name), c.a.dtype, c.b.dtype)
        summary = Text(
            f"{len(result.added)} added, {len(result.removed)} removed, {len(result.reshaped)} reshaped, "
            f"{len(result.retyped)} retyped, {result.unchanged} unchanged"
            + (f"; {result.untouched} model tensors the adapter does not carry" if result.aligned else "")
        )
        return Report([*head, table, *values, summary])

    def check(self, diagnosis: Diagnosis) -> Report:
        from inspector.check import Selected  # imported by the check command already

        refs = _References()
        parts = _finding_tables(diagnosis, refs)
        parts += refs.lines()  # after the tables that cite them, before the summary
        parts += _row_norms(diagnosis)
        s, plan = diagnosis.summary, diagnosis.target
        rows: list[Row] = [("base", _sized(diagnosis.base), True), ("adapter", _sized(diagnosis.adapter.checkpoint), True)]
        rows += [(f"{role} remote", c.remote.summary(), False) for role, c in (("base", diagnosis.base), ("adapter", diagnosis.adapter.checkpoint)) if c.remote]
        rows += _warnings(diagnosis.base) + _warnings(diagnosis.adapter.checkpoint)  # stale index, other named adapters, ...
        if plan.base_rows is not None:
            vocab = f"{plan.base_rows}" if not plan.grows else f"{plan.base_rows} -> {plan.rows} ({printable(plan.source)})"
            rows.append(("vocabulary", vocab, _has_path(vocab)))
        if diagnosis.tokenizer:
            rows.append(("tokenizer", f"{diagnosis.tokenizer.length} tokens ({printable(diagnosis.tokenizer.directory)})", True))
        verdict = Text(counts_str(s), style="bold red" if s["error"] else ("bold yellow" if s["warning"] else "bold green"))
        rows.append(("result", verdict, False))
        note = diagnosis.note if isinstance(diagnosis, Selected) else None  # check's --select / --ignore at work
        if note:
            rows.append(("filtered", note, _has_path(note)))
        return Report([*parts, Text(""), Text("lora-inspector check", style="bold"), *_fields(rows)])

    def check_many(self, fleet: Fleet) -> Report:
        from inspector.report.terminal_fleet import fleet_report

        return fleet_report(fleet)

    def resize(self, result: ResizeResult) -> Report:
        plan = result.plan
        table = Table(title=f"resized {plan.old_rows} -> {plan.rows} rows ({plan.reason})", title_justify="left")
        table.add_column("tensor", overflow="fold")
        table.add_column("before", justify="right", no_wrap=True)
        table.add_column("after", justify="right", no_wrap=True)
        table.add_column("new rows", no_wrap=True)
        for m in result.matrices:
            table.add_row(printable(m.name), shape_str(m.old_shape), shape_str(m.new_shape), m.init if plan.rows > plan.kept else "-")
        lines: list[Block] = [table]
        if plan.reused_padding:
            lines.append(Text(f"{plan.reused_padding} padding rows past the old tokenizer ({plan.kept} tokens) now hold new tokens: initialized with {plan.init}, not kept"))
        if plan.rows != plan.requested:
            lines.append(Text(f"padded {plan.requested} -> {plan.rows} rows (--pad-to-multiple-of); padding rows use the mean"))
        if result.subword is not None:
            sub = result.subword
            share = sub.byte_only / sub.tokens if sub.tokens else 0.0
            lines.append(Text(
                f"subword_mean: {sub.tokens} new tokens, {sub.fallbacks} fell back to the mean (no pieces), "
                f"{sub.byte_only} ({share:.1%}) split into byte-fallback pieces only (weak averages)"
            ))
        lines += [Text(f"warning: {printable(w)}", style="yellow") for w in result.warnings]
        lines.append(Whole(Text(f"written: {printable(str(result.out))} ({_tokenizer_note(result.tokenizer_from)})", style="green")))
        return Report(lines)

    def merge(self, result: MergeResult) -> Report:
        plan, st = result.plan, result.stats
        vocab = plan.diagnosis.target
        rows: list[Row] = [
            ("adapter", printable(plan.diagnosis.adapter.checkpoint.path), True),
            ("base", printable(plan.diagnosis.base.path), True),
            ("device", plan.device, False),
        ]
        if vocab.grows:
            filled = f"; rows no one carries: --init {plan.init}" if st["grown"] else ""
            text = f"{vocab.base_rows} -> {vocab.rows} ({printable(vocab.source)}){filled}"
            rows.append(("vocabulary", text, _has_path(text)))
        rows.append(("tensors", f"{st['tensors']} written: {st['lora']} LoRA deltas merged, {st['replaced']} replaced by the adapter, "
                     f"{st['tokens']} trainable-token sets, {st['grown']} grown, {st['copied']} copied through", False))
        if plan.untied:
            rows.append(("tied", f"{printable(plan.head.removesuffix('.weight'))} untied from the embedding (tie_word_embeddings: false), as PEFT does", False))
        for label, found in (("repaired", plan.repaired), ("accepted", plan.accepted)):
            names = Counter(f"{f.code.code} {f.code.slug}" for f in found)
            if names:  # check's errors the merge repaired, or merged over with an explicit --init
                note = f" (with --init {plan.init}: the rows training saw are lost)" if label == "accepted" else ""
                rows.append((label, ", ".join(f"{name} x{n}" if n > 1 else name for name, n in names.items()) + note, False))
        for f in plan.diagnosis.findings:
            if f.severity == "warning":
                rows.append((Text(f.code.code, style="yellow"), printable(f.message), False))
        rows.append(("written", Text(f"{printable(str(result.out))} ({_tokenizer_note(result.tokenizer_from)})", style="green"), True))
        return Report([Text("lora-inspector merge", style="bold"), *_fields(rows)])

    def convert(self, result: ConvertResult) -> Report:
        plan = result.plan
        d = plan.diagnosis
        rows: list[Row] = [
            ("adapter", printable(d.adapter.checkpoint.path), True),
            ("base", printable(d.base.path) + (" (its base_model_name_or_path)" if plan.base_from != "--base" else ""), True),
            ("for", plan.title, False),
        ]
        rows += [(r.kind, printable(r.message), False) for r in plan.repairs]
        if not plan.repairs:
            rows.append(("repairs", f"none needed: {plan.title} serves the adapter as it is", False))
        for f in (*plan.flags, *plan.warnings):  # the flags the server still needs, check's warnings on the input
            rows.append((Text(f.code.code, style="yellow"), Text(f"{printable(f.message)}\nfix: {printable(f.hint)}"), False))
        rows += [(Text("note", style="yellow"), printable(n), False) for n in plan.notes]
        tokenizer = f"tokenizer files from {printable(result.tokenizer_from)}" if result.tokenizer_from else "no tokenizer files in the adapter directory"
        rows.append(("written", Text(f"{printable(str(result.out))} ({result.stats['tensors']} tensors; {tokenizer})", style="green"), True))
        return Report([Text("lora-inspector convert", style="bold"), *_fields(rows)])

    def verify(self, result: VerifyResult) -> Report:
        from inspector.verify import PROMPT_COLUMNS, prompt_cells, verdict

        table = Table(title="prompts", title_justify="left")
        for col in PROMPT_COLUMNS:
            table.add_column(col, overflow="fold", justify="left" if col in ("prompt", "") else "right")
        for p in result.prompts:
            cells = prompt_cells(p)
            table.add_row(*[printable(c) for c in cells[:-1]], Text(cells[-1], style="green" if p.agrees else "red"))
        rows: list[Row] = [("base", printable(result.base), True), ("adapter", printable(result.adapter), True), ("merged", printable(result.merged), True),
                           ("run", f"{result.head}, {result.dtype} on {result.device}", False),
                           ("result", Text(verdict(result), style="bold green" if result.agrees else "bold red"), False)]  # fmt: skip
        return Report([table, Text(""), Text("lora-inspector verify", style="bold"), *_fields(rows)])

    def error(self, failure: Failure) -> None:
        return None  # stderr's Error/Hint says it


# Shortcuts for code that prints a report itself (console.print(terminal.check(diagnosis))); the CLI
# picks its renderer from inspector.report.RENDERERS.
_TERMINAL = Terminal()
scan, diff, check, resize, merge, convert = _TERMINAL.scan, _TERMINAL.diff, _TERMINAL.check, _TERMINAL.resize, _TERMINAL.merge, _TERMINAL.convert
