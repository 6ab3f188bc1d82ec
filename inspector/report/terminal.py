"""Rich renderables for people at a terminal."""

from __future__ import annotations

from collections import Counter

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from inspector.checkpoint import Checkpoint
from inspector.diff import DiffResult
from inspector.scan import ScanResult
from inspector.tensor import TensorInfo
from inspector.units import counts_str, dtypes_str, human_bytes, human_count, printable, shape_str, value_str



def _tokenizer_note(source: str | None) -> str:
    return f"tokenizer files from {printable(source)}" if source else "no tokenizer files in the inputs"

def _facts(ckpt: Checkpoint) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("kind", f"{ckpt.kind} ({ckpt.format})")
    files = ckpt.files if len(ckpt.files) <= 4 else (*ckpt.files[:3], f"... {len(ckpt.files) - 3} more")
    grid.add_row("files", "\n".join(printable(f) for f in files))
    grid.add_row("tensors", f"{ckpt.tensor_count:,}")
    grid.add_row("parameters", f"{ckpt.parameter_count:,} ({human_count(ckpt.parameter_count)})")
    grid.add_row("data", f"{ckpt.total_bytes:,} bytes ({human_bytes(ckpt.total_bytes)})")
    grid.add_row("dtypes", dtypes_str(ckpt.dtypes))
    for key, value in ckpt.key_config().items():
        if value is None:
            continue
        grid.add_row(key, printable(value_str(value)))
    if ckpt.tokenizer:
        tok = ckpt.tokenizer
        grid.add_row("tokenizer", f"{tok.length:,} tokens ({tok.source}, {tok.added} added)")
    for warning in ckpt.warnings:
        grid.add_row(Text("warning", style="yellow bold"), Text(printable(warning), style="yellow"))
    return grid


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


def scan(result: ScanResult) -> RenderableType:
    parts: list[RenderableType] = []
    for entry in result.checkpoints:
        ckpt = entry.checkpoint
        # A Text, not markup: a path like "m[/red]" is a name, not a closing tag (MarkupError).
        parts.append(Panel(_facts(ckpt), title=Text(ckpt.path, style="bold"), title_align="left", expand=False))
        if entry.shown is not None:
            title = f"{len(entry.shown)} of {ckpt.tensor_count} tensors" + (f" matching {result.match!r}" if result.match else "")
            parts.append(tensor_table(entry.shown, show_file=len(ckpt.files) > 1, title=title))
    return Group(*parts)


def _values(result: DiffResult, shown: int = 20) -> list[RenderableType]:
    if result.values is None:
        return []
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


def diff(result: DiffResult) -> RenderableType:
    a, b = result.a.path, result.b.path
    head = Text.assemble(("A ", "bold"), a, "\n", ("B ", "bold"), b)
    values = _values(result)
    if not (result.added or result.removed or result.reshaped or result.retyped) and values:
        return Group(head, *values, Text(f"same names, shapes and dtypes: {result.unchanged} tensors"))
    if result.identical:
        return Group(head, Text(f"identical: {result.unchanged} tensors with the same names, shapes and dtypes", style="green"))
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
    return Group(head, table, *values, summary)


_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "bold blue"}
_SHOWN_PER_CODE = 20  # the JSON report always lists everything


def check(diagnosis) -> RenderableType:
    parts: list[RenderableType] = []
    shown: dict[str, int] = {}
    hidden: dict[str, int] = {}
    for severity in ("error", "warning", "info"):
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
            if shown.get(code, 0) >= _SHOWN_PER_CODE:
                hidden[code] = hidden.get(code, 0) + 1
                continue
            shown[code] = shown.get(code, 0) + 1
            body = Text()
            if f.tensor and not f.message.startswith(f.tensor):
                body.append(printable(f.tensor) + "\n", style="bold")
            body.append(printable(f.message))
            body.append("\nfix: ", style="green bold")
            body.append(printable(f.hint), style="green")
            table.add_row(Text(f"{code}\n{f.code.slug}"), body, shape_str(f.adapter_shape) if f.adapter_shape else "", shape_str(f.base_shape) if f.base_shape else "")
        parts.append(table)
    for code, n in hidden.items():
        parts.append(Text(f"... and {n} more {code} findings (all of them: --format json)", style="dim"))
    s = diagnosis.summary
    plan = diagnosis.plan
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("base", f"{diagnosis.base.path} ({diagnosis.base.tensor_count} tensors, {human_bytes(diagnosis.base.total_bytes)})")
    grid.add_row("adapter", f"{diagnosis.adapter.checkpoint.path} ({diagnosis.adapter.checkpoint.tensor_count} tensors, {human_bytes(diagnosis.adapter.checkpoint.total_bytes)})")
    if plan.base_rows is not None:
        vocab = f"{plan.base_rows}" if not plan.grows else f"{plan.base_rows} -> {plan.rows} ({plan.source})"
        grid.add_row("vocabulary", vocab)
    if diagnosis.tokenizer:
        grid.add_row("tokenizer", f"{diagnosis.tokenizer.length} tokens ({diagnosis.tokenizer.directory})")
    verdict = Text(counts_str(s), style="bold red" if s["error"] else ("bold yellow" if s["warning"] else "bold green"))
    grid.add_row("result", verdict)
    parts.append(Panel(grid, title="[bold]lora-inspector check", title_align="left", expand=False))
    return Group(*parts)


def resize(result) -> RenderableType:
    plan = result.plan
    table = Table(title=f"resized {plan.old_rows} -> {plan.rows} rows ({plan.reason})", title_justify="left")
    table.add_column("tensor", overflow="fold")
    table.add_column("before", justify="right", no_wrap=True)
    table.add_column("after", justify="right", no_wrap=True)
    table.add_column("new rows", no_wrap=True)
    for m in result.matrices:
        table.add_row(printable(m.name), shape_str(m.old_shape), shape_str(m.new_shape), m.init if plan.rows > plan.kept else "-")
    lines = [table]
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
    lines.append(Text(f"written: {result.out} ({_tokenizer_note(result.tokenizer_from)})", style="green"))
    return Group(*lines)


def merge(result) -> RenderableType:
    plan, st = result.plan, result.stats
    vocab = plan.diagnosis.plan
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("merged", f"{plan.diagnosis.adapter.checkpoint.path} into {plan.diagnosis.base.path} on {plan.device}")
    if vocab.grows:
        filled = f"; rows no one carries: --init {plan.init}" if st["grown"] else ""
        grid.add_row("vocabulary", f"{vocab.base_rows} -> {vocab.rows} ({vocab.source}){filled}")
    grid.add_row("tensors", f"{st['tensors']} written: {st['lora']} LoRA deltas merged, {st['replaced']} replaced by the adapter, "
                 f"{st['tokens']} trainable-token sets, {st['grown']} grown, {st['copied']} copied through")
    if plan.untied:
        grid.add_row("tied", f"{printable(plan.head.removesuffix('.weight'))} untied from the embedding (tie_word_embeddings: false), as PEFT does")
    for label, found in (("repaired", plan.repaired), ("accepted", plan.accepted)):
        names = Counter(f"{f.code.code} {f.code.slug}" for f in found)
        if names:  # check's errors the merge repaired, or merged over with an explicit --init
            note = f" (with --init {plan.init}: the rows training saw are lost)" if label == "accepted" else ""
            grid.add_row(label, ", ".join(f"{name} x{n}" if n > 1 else name for name, n in names.items()) + note)
    for f in plan.diagnosis.findings:
        if f.severity == "warning":
            grid.add_row(Text(f.code.code, style="yellow"), printable(f.message))
    grid.add_row("written", Text(f"{result.out} ({_tokenizer_note(result.tokenizer_from)})", style="green"))
    return Panel(grid, title="[bold]lora-inspector merge", title_align="left", expand=False)
