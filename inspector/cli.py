"""The command line: click commands that parse, call, render; and the one place errors become
``Error:``/``Hint:`` lines and exit codes."""

from __future__ import annotations

import io
import os
import re
import stat
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import click

from inspector import interrupts
from inspector.errors import InspectorError, UsageError
from inspector.repair import DEFAULT_MERGE_INIT, INITS, MERGE_INITS  # no torch at import time
from inspector.report import FORMATS, Failure, Options, Renderer, renderer
from inspector.targets import TARGET_NAMES
from inspector.units import printable

if TYPE_CHECKING:
    from inspector.report.terminal import Report

# click >= 8.2 raises this for a bare group; 8.1 printed the help itself and exits 0.
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())
# Plain progress lines (stderr not a terminal, as in CI logs): at most one per this many seconds.


@dataclass
class Settings:
    format: str = "rich"
    output: str | None = None
    quiet: bool = False
    debug: bool = False
    no_color: bool = False


def _not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value == "":
        raise click.BadParameter("an empty path; give a file name (or leave --output out for stdout)", ctx=ctx, param=param)
    return value


def _not_nan(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value != value:  # NaN passes FloatRange (every comparison with it is false) and would let any difference through
        raise click.BadParameter("nan is not a tolerance", ctx=ctx, param=param)
    return value


def output_options(func):
    """Global options, accepted before the command name and after it alike (``scan X --format json``)."""
    options = [
        click.option("--format", "format_", type=click.Choice(FORMATS), default=None, help="Output format (default: rich)."),
        click.option("--output", type=click.Path(dir_okay=False), default=None, callback=_not_empty, help="Write the report to FILE instead of stdout."),
        click.option("--quiet", "-q", is_flag=True, default=None, help="No progress or log lines on stderr."),
        click.option("--debug", is_flag=True, default=None, help="Show tracebacks."),
        click.option("--no-color", is_flag=True, default=None, help="Plain text, no colours."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


# scan, check, diff and explore read a Hub id that is not cached remotely (headers and small files, inspector/io/hub.py).
offline_option = click.option("--offline", is_flag=True, help="Hub ids from the local Hugging Face cache only: no network (as HF_HUB_OFFLINE=1).")


def settings(ctx: click.Context, **overrides) -> Settings:
    base: Settings = ctx.find_object(Settings) or Settings()
    merged = Settings(**vars(base))
    for key, value in overrides.items():
        if value is not None and value is not False:
            setattr(merged, "format" if key == "format_" else key, value)
    return merged


def _special(path: str, target: Path) -> bool:
    """A character device or pipe (written into), or a path whose links pass through /dev or /proc
    (e.g. a link to /proc/self/fd/1). A block device is refused: a report over a partition."""
    try:
        mode = target.stat().st_mode  # links followed
    except OSError:
        return False  # nothing there yet (or unreadable): the rename says what is wrong
    if stat.S_ISBLK(mode):
        raise UsageError("Refusing to write report", path, "it is a block device (a disk or a partition)", "Pass a file path to --output.")
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return True
    hop = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        if hop.startswith(("/dev/", "/proc/")):
            return True
        if not os.path.islink(hop):
            return False
        hop = os.path.normpath(os.path.join(os.path.dirname(hop), os.readlink(hop)))
    return False


def _write_into(path: str, opener, text: str) -> None:
    try:
        with opener() as fh:
            fh.write(text)
    except OSError as exc:
        raise UsageError("Cannot write report", path, exc.strerror or str(exc), "Pass an --output path you can write to.") from exc


# The descriptors a path can name: /dev/stdout, /dev/fd/3, /proc/self/fd/1 (written to as inherited).
_FD_PATH = re.compile(r"/dev/(?:std(out)|std(err)|fd/(\d{1,9}))|/proc/self/fd/(\d{1,9})")


def _write_output(path: str, text: str) -> None:
    """Write a report beside its target and rename it in, so a failed run never leaves half a file.
    A path to a descriptor, device or pipe is written into instead: renaming a file over it would
    replace it (as root, /dev/null or /dev/stdout for everyone)."""
    target = Path(path)
    fd = _FD_PATH.fullmatch(os.path.abspath(path))
    if fd:  # what the shell redirected (a file, a pipe, a socket): write to the descriptor itself
        sys.stdout.flush()
        number = 1 if fd.group(1) else 2 if fd.group(2) else int(fd.group(3) or fd.group(4))
        return _write_into(path, lambda: os.fdopen(os.dup(number), "w", encoding="utf-8"), text)
    if _special(path, target):
        return _write_into(path, lambda: open(target, "w", encoding="utf-8"), text)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError("Cannot write report", path, f"the directory '{folder}' does not exist", "Create the directory first, or pass another --output path.")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise UsageError("Cannot write report", path, exc.strerror or str(exc), "Pass an --output path in a writable directory.") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is an ordinary file
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError("Cannot write report", path, exc.strerror or str(exc), "Pass an --output path in a writable directory.") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _colors(s: Settings) -> dict:
    """Console settings: plain text (no colour, no bold) with --no-color or NO_COLOR set (no-color.org)."""
    return {"color_system": None} if s.no_color or os.environ.get("NO_COLOR") else {}


Render = Callable[[Renderer], Union[str, "Report"]]  # e.g. lambda r: r.scan(result)


def emit(s: Settings, render: Render) -> None:
    """Render with the renderer of ``s.format`` and send it to stdout or --output. With --format
    github and $GITHUB_STEP_SUMMARY set (GitHub Actions sets it), the markdown report also goes to
    the step summary: the annotations are capped, the summary lists everything."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY") if s.format == "github" else None
    out = render(renderer(s.format, Options(step_summary=bool(summary))))
    if summary:
        _append_summary(summary, render(renderer("markdown")))
    if not isinstance(out, str):
        _print_rich(s, out)
    elif s.output:
        _write_output(s.output, out)
    else:
        _stdout(out)


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
    _RUN.reported = True


def _print_rich(s: Settings, report: Report) -> None:
    from rich.console import Console

    from inspector.report.terminal import write

    # markup/emoji off: tensor names, paths and config values come from the files; "[/bold]" or
    # ":smile:" as a tensor name must print as itself, not raise MarkupError or become an emoji
    # (the report's own styles are set with Text and style=, which need neither).
    if s.output:
        console = Console(record=True, file=io.StringIO(), width=120, no_color=True, markup=False, emoji=False)
        write(console, report)
        _write_output(s.output, console.export_text())
        return
    console = Console(markup=False, emoji=False, **_colors(s))
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # piped or redirected: do not fold tensor names at 80 columns
    _RUN.reported = True
    write(console, report)


def _append_summary(path: str, markdown: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
    except OSError as exc:
        raise UsageError("Cannot write the step summary", path, exc.strerror or str(exc),
                         "Check GITHUB_STEP_SUMMARY (GitHub Actions sets it to a writable file), or unset it.") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lora-inspector", prog_name="lora-inspector")
@output_options
@click.pass_context
def cli(ctx: click.Context, format_, output, quiet, debug, no_color) -> None:
    """Inspect, check, repair and merge LoRA adapters and their base checkpoints.

    Reads safetensors headers only for scan/diff/check: instant on a 140 GB model.
    """
    ctx.obj = settings(ctx, format_=format_, output=output, quiet=quiet, debug=debug, no_color=no_color)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--tensors", is_flag=True, help="List every tensor: name, shape, dtype, bytes.")
@click.option("--match", metavar="REGEX", help="Only list tensors whose name matches REGEX (implies --tensors).")
@click.option("--values", is_flag=True, help="Also stream the values: NaN / Inf, and vocabulary rows ending in an identical (untrained) tail.")
@offline_option
@output_options
@click.pass_context
def scan(ctx, paths, tensors, match, values, offline, **opts) -> None:
    """Show what is in each checkpoint: kind, files, counts, bytes, dtypes, key config fields."""
    from inspector.io.paths import remote_reads
    from inspector.scan import scan as run_scan

    with remote_reads(offline=offline):
        result = run_scan(list(paths), tensors=tensors, match=match, values=values)
    emit(settings(ctx, **opts), lambda r: r.scan(result))


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--values", is_flag=True, help="Also stream both and report per-tensor max-abs and relative differences.")
@click.option("--atol", type=click.FloatRange(min=0), default=0.0, show_default=True, callback=_not_nan,
              help="With --values: differences up to this max-abs count as equal.")
@click.option("--adapter", metavar="DIR", help="With --values, A the base and B a merge of it: exit 1 when B equals A in every tensor ADAPTER changes (a no-op).")
@offline_option
@output_options
@click.pass_context
def diff(ctx, a, b, values, atol, adapter, offline, **opts) -> None:
    """Tensors added, removed, reshaped and re-typed from A to B. Exit 1 when they differ.

    With --values (e.g. a merge against a reference merge), also the largest value differences and
    the tensors whose relative change ||dW||/||W|| is an outlier.
    """
    import dataclasses

    from inspector.diff import adapter_targets, compare_values, diff_checkpoints
    from inspector.io.checkpoint import read_checkpoint
    from inspector.io.paths import remote_reads

    s = settings(ctx, **opts)
    if (atol or adapter) and not values:
        raise click.UsageError(f"{'--atol' if atol else '--adapter'} applies to value differences: add --values.", ctx=ctx)
    with remote_reads(offline=offline):
        result = diff_checkpoints(read_checkpoint(a), read_checkpoint(b))
        if adapter:
            result = dataclasses.replace(result, targeted=adapter_targets(result.a, read_checkpoint(adapter)))
    if values:
        if result.a.remote or result.b.remote:
            from inspector.io.hub import refuse_data

            refuse_data((result.a, result.b), "diff --values")
        with progress_bar(s, "diff --values") as advance:
            result = compare_values(result, atol=atol, progress=advance)
    emit(s, lambda r: r.diff(result))
    ctx.exit(0 if result.identical and not result.noop else 1)


@cli.command()
@click.argument("base")
@click.argument("adapters", nargs=-1, required=True, metavar="ADAPTER...")
@click.option("--tokenizer", "tokenizer_dir", metavar="DIR", help="Tokenizer to check against (default: the adapter dir's, else the base dir's).")
@click.option("--fail-on", type=click.Choice(["error", "warning"]), default=None,
              help="Exit 1 when a finding of this severity or worse exists.  [default: error]")
@click.option("--select", multiple=True, metavar="CODES", help="Report only these codes (comma-separated; a family such as LI1 is LI1xx).")
@click.option("--ignore", multiple=True, metavar="CODES", help="Leave these codes out (comma-separated; families as for --select).")
@click.option("--target", "targets", multiple=True, type=click.Choice(TARGET_NAMES, case_sensitive=False),
              help="Also check that this server serves the adapter unmerged (repeatable; all = every one).")
@click.option("--values", is_flag=True, help="Also stream the adapter's values: NaN / Inf, all-zero lora_B, untrained new rows (LI16xx).")
@offline_option
@output_options
@click.pass_context
def check(ctx, base, adapters, tokenizer_dir, fail_on, select, ignore, targets, values, offline, **opts) -> None:
    """Diagnose BASE + ADAPTER before a merge: every reason it fails or goes silently wrong.

    Several adapters are each checked against BASE (read once), and the report ends with a table of
    them. Exit 0 clean, 1 findings at or above --fail-on (in any adapter), 2 unreadable input (any
    adapter: nothing is checked then). --select, --ignore and --fail-on default to
    [tool.lora-inspector] in the nearest pyproject.toml (the flags win).
    """
    from inspector.check import Fleet, apply_rules, rules_for, run_checks
    from inspector.io.paths import remote_reads
    from inspector.targets import resolve as resolve_targets

    rules = rules_for(select, ignore, fail_on)  # before reading anything: a typo in a code fails fast
    servers = resolve_targets(targets)
    with remote_reads(offline=offline):
        results = tuple(apply_rules(d, rules) for d in run_checks(base, adapters, tokenizer_dir, targets=servers, values=values))
    if len(results) == 1:  # one adapter: the report and JSON shape check has always had
        emit(settings(ctx, **opts), lambda r: r.check(results[0]))
        ctx.exit(1 if results[0].fails(rules.fail_on) else 0)
    fleet = Fleet(results, servers, rules.fail_on)
    emit(settings(ctx, **opts), lambda r: r.check_many(fleet))
    ctx.exit(1 if fleet.fails() else 0)


@contextmanager
def progress_bar(s: Settings, label: str, clock: Callable[[], float] | None = None) -> Iterator[Callable[[int, int], None] | None]:
    """Progress on stderr unless --quiet (report/progress.py): yields advance(done_bytes, total_bytes), or None."""
    from inspector.report.progress import progress

    with progress(label, quiet=s.quiet, colors=_colors(s), clock=clock) as advance:
        yield advance


def write_options(func):
    """Options of the commands that write a checkpoint (resize, merge)."""
    options = [
        click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Seed for hf_mvn and normal."),
        click.option("--max-shard-size", default="5GB", show_default=True, help="Shard size limit (e.g. 5GB, 500MB)."),
        click.option("--force", is_flag=True, help="Replace a non-empty --out (built and verified first, then swapped in)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command()
@click.argument("base")
@click.option("--out", required=True, metavar="DIR", help="Where to write the resized model (must not exist or be empty; --force replaces).")
@click.option("--vocab", type=click.IntRange(min=1), help="New number of rows.")
@click.option("--tokenizer", "tokenizer_dir", metavar="DIR", help="Resize to this tokenizer's length and copy its files.")
@click.option("--like", metavar="ADAPTER", help="Resize to the size the adapter implies (its saved rows, token indices or tokenizer).")
@click.option("--init", type=click.Choice(list(INITS)), help="New-row init (default: subword_mean when both tokenizers are known, else mean).")
@click.option("--pad-to-multiple-of", "pad_to", type=click.IntRange(min=1), help="Round the rows up; padding rows get the mean.")
@write_options
@output_options
@click.pass_context
def resize(ctx, base, out, vocab, tokenizer_dir, like, init, pad_to, seed, max_shard_size, force, **opts) -> None:
    """Write BASE with embedding / lm_head (and output bias) resized; old rows bit-identical."""
    from inspector.io.shards import parse_size
    from inspector.resize import resize_checkpoint

    s = settings(ctx, **opts)
    with progress_bar(s, "resize") as advance:
        result = resize_checkpoint(base, out, vocab=vocab, tokenizer=tokenizer_dir, like=like, init=init, pad_to=pad_to, seed=seed,
                                   force=force, max_shard_size=parse_size(max_shard_size), progress=advance)
    emit(s, lambda r: r.resize(result))


@cli.command()
@click.argument("base")
@click.argument("adapter")
@click.option("--out", required=True, metavar="DIR", help="Where to write the merged model (must not exist or be empty; --force replaces).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True, help="Output dtype of float tensors (auto: each base tensor's own).")
@click.option("--init", type=click.Choice(MERGE_INITS), help=f"Init for grown rows no one carries (default {DEFAULT_MERGE_INIT}); giving it also accepts LI501.")
@click.option("--tokenizer", "tokenizer_dir", metavar="DIR", help="Tokenizer to check against (default: the adapter dir's, else the base dir's).")
@write_options
@output_options
@click.pass_context
def merge(ctx, base, adapter, out, device, dtype, init, tokenizer_dir, seed, max_shard_size, force, **opts) -> None:
    """Merge ADAPTER into BASE, streaming one tensor at a time; equals PEFT's merge_and_unload.

    Resizes to the vocabulary the adapter implies. Exit 1 (nothing written) when check finds an
    error the merge cannot repair.
    """
    from inspector.io.shards import parse_size
    from inspector.merge import merge_adapter

    s = settings(ctx, **opts)
    with progress_bar(s, "merge") as advance:
        result = merge_adapter(base, adapter, out, device=device, dtype=dtype, init=init, seed=seed, force=force,
                               max_shard_size=parse_size(max_shard_size), tokenizer_dir=tokenizer_dir, progress=advance)
    emit(s, lambda r: r.merge(result))


@cli.command()
@click.argument("adapter")
@click.option("--for", "target", required=True, type=click.Choice([n for n in TARGET_NAMES if n != "all"], case_sensitive=False),
              help="The server to make the adapter servable by, unmerged.")
@click.option("--out", required=True, metavar="DIR", help="Where to write the converted adapter (must not exist or be empty; --force replaces).")
@click.option("--base", metavar="DIR", help="The base model (default: the adapter's base_model_name_or_path when it is a local directory).")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True, help="Dtype of float tensors (auto: each tensor's own).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out (built and verified first, then swapped in).")
@output_options
@click.pass_context
def convert(ctx, adapter, target, out, base, dtype, force, **opts) -> None:
    """Write ADAPTER as the server named by --for serves it unmerged, computing what PEFT computes.

    Only lossless repairs: rsLoRA / rank_pattern / alpha_pattern scaling folded into lora_B, frozen
    copies dropped, keys renamed to PEFT's layout, --dtype. Exit 1 (nothing written) when the server
    still refuses or diverges: the hint gives the merge command.
    """
    from inspector.convert import convert_adapter

    s = settings(ctx, **opts)
    with progress_bar(s, "convert") as advance:
        result = convert_adapter(adapter, out, target=target.lower(), base=base, dtype=dtype, force=force, progress=advance)
    emit(s, lambda r: r.convert(result))


@cli.command()
@click.argument("base")
@click.argument("adapter")
@click.argument("merged")
@click.option("--tokenizer", "tokenizer_dir", metavar="DIR", help="Tokenizer for the prompts (default: the adapter dir's, else the base dir's).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), help="Prompts, one per line (text, or whitespace-separated token ids).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="Dtype both models run in; sets the tolerance.")
@output_options
@click.pass_context
def verify(ctx, base, adapter, merged, tokenizer_dir, prompts_file, device, dtype, **opts) -> None:
    """Check that MERGED computes what PeftModel(BASE, ADAPTER) computes, on the same tokens.

    One model in memory at a time. Exit 0 when every prompt agrees within the dtype's tolerance, 1
    when not (naming the first diverging layer, or a no-op merge), 2 unreadable input.
    """
    from inspector.verify import verify as run_verify

    result = run_verify(base, adapter, merged, tokenizer_dir=tokenizer_dir, prompts_file=prompts_file, device=device, dtype=dtype)
    emit(settings(ctx, **opts), lambda r: r.verify(result))
    ctx.exit(0 if result.agrees else 1)


@cli.command()
@click.argument("path")
@click.argument("adapter", required=False)
@offline_option
def explore(path, adapter, offline) -> None:
    """Browse PATH (and ADAPTER over it) in the terminal: module tree, search, findings, statistics.

    Opens from the headers; a tensor's values are read only when you open it (enter). A Hub id that is
    not cached is read remotely, headers only (no statistics then). Keys: / search, s sort, f findings,
    ? help, q quit. Needs a terminal (exit 2 otherwise).
    """
    # textual is imported there, only for this command: scan and check stay fast.
    from inspector.explore import run

    raise click.exceptions.Exit(run(path, adapter, offline=offline))


@dataclass
class _Run:
    argv: list[str]
    reported: bool = False  # a report reached stdout: a failure after it adds no second document


_RUN = _Run([])


def _requested(argv: list[str]) -> tuple[str | None, str | None]:
    """(command, --format) as the command line asks, read from argv itself: an error may come before
    click has parsed it. The last --format wins, as click's own parsing does."""
    command = fmt = None
    words = iter(argv)
    for word in words:
        if word == "--":
            break
        if word == "--format":
            fmt = next(words, None)
        elif word.startswith("--format="):
            fmt = word.partition("=")[2]
        elif word == "--output":
            next(words, None)  # a report named "scan" is not the command
        elif command is None and word in cli.commands:
            command = word
    return command, fmt


def _failure_on_stdout(message: str, path: str | None, hint: str) -> None:
    """The failure in the requested format on stdout too, for formats that promise a parseable stdout."""
    command, fmt = _requested(_RUN.argv)
    if fmt not in FORMATS or _RUN.reported:
        return
    text = renderer(fmt).error(Failure(command, message, path, hint))
    if text:
        try:
            _stdout(text)
        except OSError:  # stdout is gone (a closed pipe): stderr has said it
            pass


def _fail(exc: InspectorError) -> int:
    # Messages quote names from files; no control character of theirs reaches the terminal.
    sys.stderr.write(f"Error: {printable(exc.message)}\nHint: {printable(exc.hint)}\n")
    _failure_on_stdout(exc.message, exc.path, exc.hint)
    return exc.exit_code


def _interrupted(exc: KeyboardInterrupt | None) -> int:
    text = interrupts.message(exc)
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except OSError:  # SIGHUP: the terminal is gone (EIO); the exit code still says what happened
        _silenced()
        return interrupts.exit_code(exc)
    error, hint = (line.partition(": ")[2] for line in text.splitlines()[:2])
    _failure_on_stdout(error, str(interrupts.PUBLISHED[-1]) if interrupts.PUBLISHED else None, hint)
    return interrupts.exit_code(exc)


def _silenced() -> None:
    """stdout and stderr to /dev/null: text still buffered for a terminal that went away would make
    the interpreter's last flush fail, and Python then exits 120 instead of with our code."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError, ValueError):  # a stream without a descriptor (captured)
                os.dup2(null, stream.fileno())
    finally:
        os.close(null)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script is ``inspector.entry``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # SIGTERM would end the process without unwinding, leaving a half-written staging directory;
    # raising instead runs the same cleanup as Ctrl-C (already installed by inspector.entry; here
    # for callers of main()).
    previous = interrupts.install()
    try:
        return _main(argv)
    finally:
        interrupts.restore(previous)


def _main(argv: list[str]) -> int:
    interrupts.PUBLISHED.clear()
    _RUN.argv, _RUN.reported = argv, False
    debug = "--debug" in argv
    try:
        # standalone_mode=False returns ctx.exit()'s code instead of raising it.
        code = cli.main(args=argv, prog_name="lora-inspector", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort as exc:  # click's wrapping of KeyboardInterrupt (and EOF at a prompt)
        return _interrupted(exc.__context__ if isinstance(exc.__context__, KeyboardInterrupt) else None)
    except _NO_ARGS as exc:  # bare `lora-inspector`: the help, as --help gives it
        sys.stdout.write(exc.format_message() + "\n")
        return 0
    except click.ClickException as exc:
        command = _requested(argv)[0]
        hint = f"see 'lora-inspector {command} --help'." if command else "see 'lora-inspector --help'."
        sys.stderr.write(f"Error: {exc.format_message()}\nHint: {hint}\n")
        _failure_on_stdout(exc.format_message(), None, hint)
        return 2
    except InspectorError as exc:
        if debug:
            traceback.print_exc()  # and still the Error/Hint lines and the exit code scripts rely on
        return _fail(exc)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except BrokenPipeError:
        # `lora-inspector scan X | head`: the reader left; that is not an error.
        sys.stderr.close()
        return 0
    except OSError as exc:  # the system refused something no reader turned into a message of its own
        if isinstance(exc.__context__, KeyboardInterrupt):  # a write to a terminal that went away, while stopping
            return _interrupted(exc.__context__)
        where = os.fsdecode(exc.filename) if exc.filename is not None else None
        return _fail(InspectorError("Cannot access", where, exc.strerror or str(exc), "Check the path, its permissions and the disk, then run again."))
    except MemoryError:
        if debug:
            raise
        # Reported below: inside this clause the traceback still holds what used the memory up.
    except Exception as exc:  # a bug of ours: say so without a traceback unless --debug
        if debug:
            raise
        return _fail(InspectorError("Internal error", None, f"{type(exc).__name__}: {exc}", "Rerun with --debug and report the traceback."))
    return _fail(InspectorError("Out of memory", None, "the input needed more memory than this process may use",
                                "Free memory or raise the limit (ulimit -v), or check the input: a hostile file can ask for any amount."))
