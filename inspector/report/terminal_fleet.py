"""The rich report of ``check BASE ADAPTER ADAPTER ...``, kept readable for fifty adapters.

Each adapter gets one line (its number, its path whole, its verdict and counts) and, only when it
has errors or warnings, their tables; info findings are counted, not listed (``--format json`` has
every finding). The report ends with a table of the adapters: with --target, per server the worst
outcome among that adapter's serving findings; without, its counts. Then the summary fields.
"""

from __future__ import annotations

from pathlib import PurePath

from rich.table import Table
from rich.text import Text

from inspector.check import OUTCOME_LABELS, Fleet
from inspector.diagnose import Diagnosis
from inspector.report.terminal import Block, Report, Row, Whole, _fields, _finding_tables, _References, _sized, _warnings
from inspector.units import counts_str, printable

_OUTCOME_STYLE = {"ok": "green", "flag": "yellow", "refused": "red", "diverges": "bold red"}
_VERDICT_STYLE = {"fails": "bold red", "passes": "green"}


def fleet_report(fleet: Fleet) -> Report:
    parts: list[Block] = []
    for number, diagnosis in enumerate(fleet.results, 1):
        parts += _section(number, diagnosis, fleet)
    if not (parts and isinstance(parts[-1], Text) and not parts[-1].plain):  # the last adapter's tables left a gap already
        parts.append(Text(""))
    parts += [matrix(fleet), Text(""), Text("lora-inspector check", style="bold"), *_fields(_summary(fleet))]
    return Report(parts)


def _section(number: int, diagnosis: Diagnosis, fleet: Fleet) -> list[Block]:
    """One adapter: a whole line, then its reading warnings and its error / warning tables, if any."""
    s, verdict = diagnosis.summary, fleet.verdict(diagnosis)
    parts: list[Block] = [Whole(Text.assemble((f"#{number} ", "bold"), printable(diagnosis.adapter.checkpoint.path), "  ",
                                              (f"{verdict}: {counts_str(s)}", _VERDICT_STYLE[verdict])))]
    ckpt = diagnosis.adapter.checkpoint
    noticed = ([("remote", ckpt.remote.summary(), False)] if ckpt.remote else []) + _warnings(ckpt)  # other named adapters in its directory, ...
    if noticed:
        parts += _fields(noticed)
    if s["error"] or s["warning"]:
        refs = _References()  # numbered per adapter, listed right below its tables
        parts += _finding_tables(diagnosis, refs, ("error", "warning"))
        parts += [*refs.lines(), Text("")]  # a gap before the next adapter's line
    return parts


def _name(diagnosis: Diagnosis) -> str:
    """The adapter's last path component: the table's rows are numbered, the paths above are whole."""
    path = diagnosis.adapter.checkpoint.path
    return printable(PurePath(path).name or path)


def matrix(fleet: Fleet) -> Table:
    """Adapter x target (the worst outcome), or adapter x counts without --target; a verdict last."""
    what = "the worst outcome per server" if fleet.targets else "findings per severity"
    table = Table(title=f"{len(fleet.results)} adapters: {what}", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("adapter", overflow="fold", min_width=8)
    heads = fleet.titles if fleet.targets else ("errors", "warnings", "info")
    for head in heads:
        table.add_column(head, justify="left" if fleet.targets else "right")
    table.add_column("verdict", no_wrap=True)
    for number, d in enumerate(fleet.results, 1):
        if fleet.targets:
            outcomes = [fleet.outcome(d, t) for t in fleet.targets]
            cells = [Text(OUTCOME_LABELS[o], style=_OUTCOME_STYLE[o]) for o in outcomes]
        else:
            cells = [Text(str(d.summary[s]), style="bold red" if s == "error" and d.summary[s] else "") for s in ("error", "warning", "info")]
        verdict = fleet.verdict(d)
        table.add_row(str(number), _name(d), *cells, Text(verdict, style=_VERDICT_STYLE[verdict]))
    return table


def _summary(fleet: Fleet) -> list[Row]:
    failing = sum(d.fails(fleet.fail_on) for d in fleet.results)
    remote: list[Row] = [("base remote", fleet.base.remote.summary(), False)] if fleet.base.remote else []
    rows: list[Row] = [("base", _sized(fleet.base), True), *remote, *_warnings(fleet.base)]
    rows.append(("adapters", f"{len(fleet.results)}: {failing} fail, {len(fleet.results) - failing} pass (--fail-on {fleet.fail_on})", False))
    if fleet.targets:
        rows.append(("targets", ", ".join(fleet.titles), False))
    counts = fleet.counts()
    style = "bold red" if counts["error"] else ("bold yellow" if counts["warning"] else "bold green")
    rows.append(("result", Text(f"{counts_str(counts)} in all", style=style), False))
    if fleet.note:
        rows.append(("filtered", fleet.note, "/" in fleet.note))
    return rows
