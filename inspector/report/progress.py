"""Progress of long work (merge, resize, convert, diff --values) on stderr.

A rich bar on a terminal; in a CI log, where a bar draws nothing, a plain line at most every
PROGRESS_EVERY seconds with bytes and rate, and a last one, so a long merge is seen to be working.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from inspector.units import human_bytes

PROGRESS_EVERY = 15.0  # seconds between plain lines: a few a minute at most


class PlainProgress:
    """Progress for a log (stderr not a terminal): a line every ``every`` seconds at most, and a last
    one when the run was long enough to print any; short runs print nothing."""

    def __init__(self, label: str, write: Callable[[str], None], clock: Callable[[], float] = time.monotonic, every: float = PROGRESS_EVERY) -> None:
        self.label, self.write, self.clock, self.every = label, write, clock, every
        self.start = self.last = clock()
        self.done, self.total = 0, 0
        self.printed = False

    def advance(self, n: int, total: int) -> None:
        self.done += n
        self.total = total
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._line(now, "")

    def finish(self) -> None:
        now = self.clock()
        if self.printed or now - self.start >= self.every:
            self._line(now, "done, ")

    def _line(self, now: float, state: str) -> None:
        elapsed = now - self.start
        of = f" of {human_bytes(self.total)} ({min(100 * self.done // self.total, 100)}%)" if self.total else ""  # 99.8% is not done
        rate = human_bytes(int(self.done / elapsed)) if elapsed > 0 else "-"
        self.write(f"{self.label}: {state}{human_bytes(self.done)}{of} in {_duration(elapsed)}, {rate}/s\n")
        self.printed = True


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.0f} s"


def _stderr_line(line: str) -> None:
    sys.stderr.write(line)
    sys.stderr.flush()  # a CI log shows it now, not when the buffer fills


@contextmanager
def progress(label: str, *, quiet: bool, colors: dict, clock: Callable[[], float] | None = None) -> Iterator[Callable[[int, int], None] | None]:
    """Progress on stderr unless ``quiet``: a rich bar on a terminal, plain lines a few times a minute
    otherwise (CI logs). Yields advance(done_bytes, total_bytes), or None."""
    from rich.console import Console

    console = Console(stderr=True, **colors)
    if quiet:
        yield None
        return
    if not console.is_terminal:
        plain = PlainProgress(label, _stderr_line, clock or time.monotonic, PROGRESS_EVERY)
        yield plain.advance
        plain.finish()  # not reached when the work raised: Error/Hint says how it ended
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=console, transient=True)
    bar.start()
    try:
        task = bar.add_task(label, total=None)
        yield lambda n, total: bar.update(task, advance=n, total=total)
    finally:
        with suppress(OSError):  # the terminal went away (SIGHUP, EIO): the bar cannot be erased, nor need be
            bar.stop()
