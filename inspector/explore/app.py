"""The ``explore`` screen: a module tree, a detail panel, the check's findings; statistics on demand.

Everything shown comes from ``model.Exploration`` (headers only). Tensor data is read only when the
user opens a tensor (enter, or a click), in a thread worker, so the UI keeps answering while a
70,840-row matrix streams through; opening another tensor cancels it.
"""

from __future__ import annotations

import time
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, OptionList, Static, Tree
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from inspector.errors import InspectorError
from inspector.explore.model import Entry, Exploration, Node, role, side_by_side
from inspector.units import human_bytes, human_count, printable, shape_str

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}
KEYS = (
    ("up / down", "move in the tree (or the findings)"),
    ("right / left", "open / close a module (left on a tensor: up to its module)"),
    ("enter", "open: expand a module; statistics of a tensor"),
    ("/", "search tensor names (a regex; enter applies, escape clears)"),
    ("s", "sort by name / by size"),
    ("f", "the findings panel (enter jumps to the tensor)"),
    ("tab", "next panel"),
    ("escape", "clear the search"),
    ("mouse", "click a module, a tensor or a finding; the wheel scrolls"),
    ("?", "this help"),
    ("q, ctrl+c", "quit"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar = [Binding("escape,q,question_mark", "dismiss", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: auto; max-width: 76; border: round $accent; background: $panel; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        for key, what in KEYS:
            table.add_row(Text(key, style="bold"), what)
        yield Static(table, id="help")

    def on_click(self) -> None:
        self.dismiss()


class ModuleTree(Tree):
    """Textual's Tree with the arrow keys file browsers use: right opens a module, left closes it (or goes up)."""

    BINDINGS: ClassVar = [Binding("right", "open_module", "open", show=False), Binding("left", "close_module", "close", show=False)]

    def action_open_module(self) -> None:
        node = self.cursor_node
        if node is not None and node.allow_expand:
            if node.is_expanded and node.children:
                self.move_cursor(node.children[0])
            else:
                node.expand()

    def action_close_module(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.allow_expand and node.is_expanded:
            node.collapse()
        elif node.parent is not None and not node.parent.is_root:
            self.move_cursor(node.parent)


class ExploreApp(App[int]):
    TITLE = "lora-inspector explore"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar = [
        Binding("q", "quit_app", "quit"),
        Binding("ctrl+c", "quit_app", "quit", show=False, priority=True),  # Textual's default only says "press ctrl+q"
        Binding("question_mark", "help", "keys"),
        # priority: checked as the key arrives, before the keys queued behind it go to the focused
        # widget, so that "/embed" typed or pasted at once all lands in the search field.
        Binding("slash", "search", "search", priority=True),
        Binding("s", "sort", "sort"),
        Binding("f", "findings", "findings"),
        Binding("escape", "clear_search", "clear", show=False),
    ]
    CSS = """
    #bar { height: 1; padding: 0 1; background: $boost; }
    #main { height: 1fr; }
    #left { width: 1fr; border: round $primary; }
    #detail { width: 1fr; min-width: 34; max-width: 80; border: round $secondary; padding: 0 1; }
    #search { display: none; height: 1; border: none; padding: 0 1; }
    #findings { height: auto; max-height: 7; border: round $warning; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, exploration: Exploration) -> None:
        super().__init__()
        self.exploration = exploration
        self.sort = "name"
        self.pattern: str | None = None
        self.stats: dict[str, object] = {}  # tensor name -> computed results (or a message), for revisits
        # tensor name -> the run now computing it: a superseded run (cancelled, or one that finished
        # after enter was pressed again) must neither drop nor overwrite what its successor shows.
        self.runs: dict[str, int] = {}
        self.run_count = 0
        self.leaves: dict[str, object] = {}  # tensor name -> its TreeNode in the current tree
        self.shown: Entry | Node | None = None

    # -- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        x = self.exploration
        bar = Text("lora-inspector explore  ", style="bold")
        if x.diagnosis is not None:  # the counts first: the paths may not fit 80 columns
            s = x.diagnosis.summary
            bar.append(f"{s['error']} errors, {s['warning']} warnings  ", style="bold red" if s["error"] else "")
        bar.append(printable(x.title))
        yield Static(bar, id="bar")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Input(placeholder="regex, e.g. embed|lm_head", id="search")
                tree = ModuleTree("tensors", id="tree")
                tree.show_root = False
                tree.guide_depth = 2
                yield tree
            with VerticalScroll(id="detail"):
                yield Static(id="facts")
                yield Static(id="values")
                yield Static(id="notes")
        if x.diagnosis is not None:
            yield OptionList(*self._finding_options(), id="findings")
        yield Footer()

    def on_mount(self) -> None:
        if self.exploration.diagnosis is not None:
            panel = self.query_one("#findings", OptionList)
            panel.border_title = f"findings ({len(self.exploration.findings)}): enter jumps to the tensor"
        self.query_one("#detail").border_title = "detail"
        self._rebuild()
        self.query_one("#tree", Tree).focus()

    def _finding_options(self) -> list[Option]:
        out = []
        for i, f in enumerate(self.exploration.findings):
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append(f"{f.code.code} {f.severity:<7} ", style=SEVERITY_STYLE.get(f.severity, ""))
            line.append(printable(f.message))
            out.append(Option(line, id=f"finding-{i}"))
        return out

    # -- the tree ---------------------------------------------------------------------------------
    def _rebuild(self, keep: Entry | None = None) -> None:
        """Build the tree for the current sort and search; keep the cursor on ``keep`` if it is still shown."""
        from inspector.scan import compile_match

        tree = self.query_one("#tree", Tree)
        match = compile_match(self.pattern) if self.pattern else None
        root = self.exploration.tree(self.sort, match)
        tree.clear()
        self.leaves = {}
        for child in root.children:
            self._add(tree.root, child, expand=bool(self.pattern))
        tree.root.expand()
        left = self.query_one("#left")
        shown = f"{root.tensors} of {len(self.exploration.entries)} tensors" if self.pattern else f"{root.tensors} tensors, {human_count(root.params)} params, {human_bytes(root.nbytes)}"
        left.border_title = shown
        # Text: a str title is markup, and "/lora_[AB]" would lose its "[AB]"
        left.border_subtitle = Text(f"/{printable(self.pattern)}  sort: {self.sort}" if self.pattern else f"sort: {self.sort}")
        target = self.leaves.get(keep.name) if keep is not None else None
        if target is None and self.pattern:
            target = next(iter(self.leaves.values()), None)
        if target is not None:
            self._reveal(target)
        else:
            tree.move_cursor(tree.root.children[0] if tree.root.children else None)
            self._show(tree.root.children[0].data if tree.root.children else None)

    def _add(self, parent, node: Node, expand: bool) -> None:
        if node.entry is not None and not node.children:
            self.leaves[node.entry.name] = parent.add_leaf(_leaf_label(node), data=node)
            return
        # Top-level modules start open (lm_head, model > embed_tokens, layers.{0..79}, norm); layer groups closed.
        branch = parent.add(_branch_label(node), data=node, expand=expand or (parent.is_root and node.group is None))
        if node.entry is not None:
            self.leaves[node.entry.name] = branch
        for child in node.children:
            self._add(branch, child, expand)

    def _reveal(self, tree_node) -> None:
        up = tree_node.parent
        while up is not None:
            up.expand()
            up = up.parent
        # The expansion lays lines out on the next refresh: move the cursor after it.
        self.call_after_refresh(self._cursor_to, tree_node)

    def _cursor_to(self, tree_node) -> None:
        tree = self.query_one("#tree", Tree)
        tree.move_cursor(tree_node)
        tree.scroll_to_node(tree_node, animate=False)
        self._show(tree_node.data)

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        self._show(event.node.data)

    def on_tree_node_selected(self, event: Tree.NodeSelected) -> None:
        node: Node | None = event.node.data
        if node is not None and node.entry is not None:
            self._open(node.entry)

    # -- the detail panel -------------------------------------------------------------------------
    def _show(self, node: Node | None) -> None:
        facts, notes = self.query_one("#facts", Static), self.query_one("#notes", Static)
        self.shown = node.entry if node is not None and node.entry is not None else node
        if node is None:
            facts.update("no tensor matches" if self.pattern else "no tensors")
        elif node.entry is None:
            facts.update(_module_facts(node))
        else:
            facts.update(_tensor_facts(node.entry, self.exploration.diagnosis is not None))
            notes.update(_notes(node.entry))
            self._show_values(node.entry)
            return
        self.query_one("#values", Static).update("")
        notes.update("")

    def _show_values(self, entry: Entry) -> None:
        if self.shown is not entry:
            return
        done = self.stats.get(entry.name)
        text = done if done is not None else Text("enter: statistics (reads the tensor)", style="dim")
        self.query_one("#values", Static).update(text if isinstance(text, (str, Text)) else _stats_text(text))

    # -- statistics in a worker -------------------------------------------------------------------
    def _open(self, entry: Entry) -> None:
        if isinstance(self.stats.get(entry.name), list):
            return  # computed already
        self.run_count += 1
        self.runs[entry.name] = self.run_count
        self.stats[entry.name] = Text("reading...", style="italic")
        self._show_values(entry)
        self._compute(entry, self.run_count)

    @work(thread=True, exclusive=True, group="stats", exit_on_error=False)
    def _compute(self, entry: Entry, run: int) -> None:
        from inspector.explore.stats import Cancelled, not_downloaded, tensor_stats

        worker = get_current_worker()
        x = self.exploration
        jobs = [(x.source(entry.side), entry.info, None, entry.side)]
        for effect in entry.effects:
            old = entry.info.shape[0] if effect.kind == "grown" and entry.info.shape else None
            jobs += [(x.adapter, t, old, "adapter") for t in effect.tensors]
        results = []
        last = [0.0]
        try:
            for i, (ckpt, info, old_rows, side) in enumerate(jobs):
                gone = not_downloaded(ckpt, info)  # read from the Hub, headers only: its data is a hole, never read
                if gone is not None:
                    results.append((side, gone))
                    continue

                def progress(done: float, i: int = i) -> None:
                    now = time.monotonic()
                    if now - last[0] >= 0.1:  # a block can take a millisecond: the screen needs no more than this
                        last[0] = now
                        self.call_from_thread(self._progress, entry, run, (i + done) / len(jobs))

                results.append((side, tensor_stats(ckpt.root, ckpt.stamps, info, old_rows=old_rows, progress=progress,
                                                   cancelled=lambda: worker.is_cancelled)))
        except Cancelled:
            self.call_from_thread(self._finished, entry, run, None)
            return
        except (InspectorError, ValueError, OSError) as exc:
            why = exc.message if isinstance(exc, InspectorError) else str(exc)
            self.call_from_thread(self._finished, entry, run, Text(f"cannot read it: {printable(why)}", style="red"))
            return
        except Exception as exc:  # noqa: BLE001 - a bug of ours: said in the panel rather than "reading..." forever
            self.call_from_thread(self._finished, entry, run, Text(f"internal error: {type(exc).__name__}: {printable(str(exc))}", style="red"))
            return
        self.call_from_thread(self._finished, entry, run, results)

    def _progress(self, entry: Entry, run: int, share: float) -> None:
        if self.runs.get(entry.name) == run:
            self.stats[entry.name] = Text(f"reading... {share:.0%}", style="italic")
            self._show_values(entry)

    def _finished(self, entry: Entry, run: int, results) -> None:
        if self.runs.get(entry.name) != run:
            return  # superseded: a later run of this tensor owns its panel
        del self.runs[entry.name]
        if results is None:
            self.stats.pop(entry.name, None)  # cancelled: enter starts it again
        else:
            self.stats[entry.name] = results
        self._show_values(entry)

    # -- actions ----------------------------------------------------------------------------------
    def action_quit_app(self) -> None:
        self.workers.cancel_group(self, "stats")
        self.exit(0)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_search(self) -> None:
        search = self.query_one("#search", Input)
        if search.has_focus:  # a "/" inside the regex itself
            search.insert_text_at_cursor("/")
            return
        search.display = True  # at once, not at the next CSS pass: a hidden widget takes no focus
        search.value = self.pattern or ""
        # Focus now, not through focus()'s call_later: keys typed right after "/" are already queued
        # (a paste, a fast typist, tmux send-keys) and must reach the input, not the tree.
        self.screen.set_focus(search)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        keep = self.shown if isinstance(self.shown, Entry) else None
        previous, self.pattern = self.pattern, event.value or None
        try:
            self._rebuild(keep)
        except InspectorError as exc:  # not a regex, or one too costly to run
            self.pattern = previous
            self._rebuild(keep)
            self.query_one("#left").border_subtitle = Text(printable(exc.why), style="red")
            return
        event.input.display = False
        self.screen.set_focus(self.query_one("#tree", Tree))

    def action_clear_search(self) -> None:
        search = self.query_one("#search", Input)
        was_open = search.display
        search.display = False
        if self.pattern is not None:
            keep = self.shown if isinstance(self.shown, Entry) else None
            self.pattern = None
            self._rebuild(keep)
        if was_open:
            self.query_one("#tree", Tree).focus()

    def action_sort(self) -> None:
        self.sort = "size" if self.sort == "name" else "name"
        self._rebuild(self.shown if isinstance(self.shown, Entry) else None)

    def action_findings(self) -> None:
        if self.exploration.diagnosis is not None:
            self.query_one("#findings", OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        finding = self.exploration.findings[event.option_index]
        entry = self.exploration.entry_for(finding)
        if entry is None:  # a finding about the pair as a whole (dtypes, memory): its text is all there is
            self.shown = None
            self.query_one("#facts", Static).update(_finding_text(finding))
            self.query_one("#values", Static).update("")
            self.query_one("#notes", Static).update("")
            return
        if entry.name not in self.leaves:  # filtered out by a search: show everything again
            self.pattern = None
            self.query_one("#search", Input).display = False
            self._rebuild(entry)
        else:
            self._reveal(self.leaves[entry.name])
        self.query_one("#tree", Tree).focus()


# ---- what the widgets show -------------------------------------------------------------------------


def _leaf_label(node: Node) -> Text:
    e = node.entry
    text = Text(printable(node.label or e.info.name.rpartition(".")[2]), style="bold red" if e.mismatch else "")
    text.append(f" {shape_str(e.info.shape)}", style="dim")
    for effect in e.effects:
        if effect.shape is not None and effect.shape != e.info.shape:
            text.append(f"→{shape_str(effect.shape)}", style="bold red")
    # What the adapter does before dtype and size: on a narrow screen the label's end is cut off.
    for effect in e.effects:
        text.append(f" {effect.tag}", style="bold red" if effect.shape is not None and effect.shape != e.info.shape else "cyan")
    if e.side == "adapter" and e.note:
        text.append(" alone", style="yellow")
    text.append(f" {e.info.dtype} {human_bytes(e.info.nbytes)}", style="dim")
    return text


def _branch_label(node: Node) -> Text:
    text = Text(printable(node.label), style="bold")
    text.append(f"  {node.tensors} tensors, {human_bytes(node.nbytes)}", style="dim")
    if node.adapted:
        text.append(f"  {node.adapted} adapted", style="cyan")
    if node.mismatches:
        text.append(f"  {node.mismatches} mismatched", style="bold red")
    return text


def _module_facts(node: Node) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_row(Text(printable(node.name or node.label), style="bold"))
    rows = [("tensors", f"{node.tensors:,}"), ("params", f"{node.params:,} ({human_count(node.params)})"), ("bytes", human_bytes(node.nbytes)),
            ("dtypes", ", ".join(f"{k} x{v}" for k, v in sorted(node.dtypes.items())))]
    if node.group:
        rows.insert(0, ("group", node.group))
    if node.adapted or node.mismatches:
        rows.append(("adapter", f"changes {node.adapted}, {node.mismatches} mismatched"))
    grid = Table.grid(padding=(0, 1))
    for k, v in rows:
        grid.add_row(Text(k, style="dim"), v)
    table.add_row(grid)
    return table


def _tensor_facts(entry: Entry, paired: bool) -> Table:
    out = Table.grid()
    out.add_row(Text(printable(entry.info.name), style="bold"))
    table = Table(box=None, padding=(0, 1), show_header=paired, header_style="dim", expand=False)
    table.add_column("", style="dim")
    table.add_column("base" if paired else "")
    if paired:
        table.add_column("adapter")
    for row in side_by_side(entry):
        style = "bold red" if row.mismatch else ""
        if paired:
            table.add_row(row.label, Text(row.base, style=style, no_wrap=True), Text(printable(row.adapter), style=style, no_wrap=True))
        else:  # one checkpoint: its own column only
            table.add_row(row.label, Text(row.adapter if entry.side == "adapter" else row.base, no_wrap=True))
    out.add_row(table)
    if paired and entry.side == "base" and not entry.effects:
        out.add_row(Text("the adapter leaves it as it is", style="dim"))
    for e in entry.effects:
        out.add_row(Text.assemble((e.kind, "bold red" if e.shape is not None and e.shape != entry.info.shape else "cyan"), f": {e.summary}"))
    if entry.note:
        out.add_row(Text(f"alone: {entry.note}", style="yellow"))
    return out


def _notes(entry: Entry) -> Table:
    """The findings that name the tensor, under its statistics."""
    out = Table.grid()
    for f in entry.findings:
        out.add_row(_finding_text(f))
    return out


def _finding_text(f) -> Text:
    text = Text(f"{f.code.code} {f.code.slug} ({f.severity}): ", style=SEVERITY_STYLE.get(f.severity, ""))
    text.append(printable(f.message))
    text.append(f"\nfix: {printable(f.hint)}", style="dim")
    return text


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _stats_text(results) -> Table:
    from inspector.explore.stats import NotDownloaded, sparkline

    out = Table.grid()
    for side, s in results:
        out.add_row(Text(f"values: {_what(side, s.name)}", style="bold"))
        if isinstance(s, NotDownloaded):
            out.add_row(Text(f"not downloaded: {printable(s.repo)} was read from the Hub, headers only (no tensor data)", style="yellow"))
            out.add_row(Text(printable(s.hint), style="dim"))
            continue
        grid = Table.grid(padding=(0, 1))
        grid.add_row(Text("min", style="dim"), _num(s.min), Text("max", style="dim"), _num(s.max))
        grid.add_row(Text("mean", style="dim"), _num(s.mean), Text("std", style="dim"), _num(s.std))
        grid.add_row(Text("NaN", style="dim"), Text(f"{s.nan:,}", style="bold red" if s.nan else ""),
                     Text("Inf", style="dim"), Text(f"{s.inf:,}", style="bold red" if s.inf else ""))
        grid.add_row(Text("zeros", style="dim"), f"{s.zeros:,} of {s.numel:,}")
        out.add_row(grid)
        if s.counts:
            out.add_row(Text(sparkline(s.counts), style="green"))
        if s.rows is not None:
            r = s.rows
            top = max([*r.histogram["old"], *r.histogram["new"]], default=0)
            out.add_row(Text("row norms, old rows vs new rows", style="dim"))
            out.add_row(Text.assemble(("old ", "dim"), (sparkline(r.histogram["old"], top), "blue"), f" {r.old_rows:,} p50 {_num(r.old_percentiles.get('p50'))}"))
            out.add_row(Text.assemble(("new ", "dim"), (sparkline(r.histogram["new"], top), "magenta"), f" {r.new_rows:,} p50 {_num(r.new_percentiles.get('p50'))}"))
            if r.untrained:
                out.add_row(Text(f"{r.untrained:,} new rows look untrained (zero, the mean, or all alike)", style="yellow"))
    return out


def _what(side: str, name: str) -> str:
    """Which tensor a block of statistics is about: the base's, or the adapter's (its role)."""
    return "base" if side == "base" else f"adapter {role(name) or 'copy'}"
