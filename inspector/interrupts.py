"""Ctrl-C, SIGTERM and SIGHUP: when they may unwind the program, and when they must wait.

A stop request normally raises (``KeyboardInterrupt`` for SIGINT, ``Terminated`` for SIGTERM and
SIGHUP) so the writer's cleanup runs wherever the program is. Two kinds of moment must not be cut short, and there
the signal is held and delivered right after:
- the swap that publishes an output and the removal of a staging directory (half done is worse than
  either state);
- the first import of a heavy package (torch, transformers): an exception raised inside it can be
  swallowed by the package's own ``except`` clauses (the run then carries on and exits 0) or leave a
  half-initialised C extension that cannot be loaded again.
See docs/threat-model.md ("Signals").

Standard library only: the console script imports this first and installs the handlers before
anything heavy is imported.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

# SIGHUP: the terminal went away (a dropped SSH session, a closed window). Left to its default it
# kills the process on the spot: a merge's staging directory, or the stubs of a remote read that an
# open explore holds, would stay behind.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
# Outputs this process has published, so that a stop after the last rename is not reported as
# "nothing was written" (the CLI clears it per command and reads it when interrupted).
PUBLISHED: list[Path] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so the same cleanup runs for it (kill, a CI timeout,
    docker stop, a closed terminal); ``signum`` makes the exit code."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = signum


def _raise_for(signum: int, _frame: object = None) -> None:
    if signum != signal.SIGINT:
        signal.signal(signum, signal.SIG_IGN)  # a second one must not cut the cleanup short
        raise Terminated(signum)
    raise KeyboardInterrupt


def install() -> dict[int, object]:
    """Make the stop signals raise (see ``Terminated``); return the previous handlers.

    Only the main thread may install handlers, and a signal the caller chose to ignore stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _raise_for)
    return previous


def restore(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextmanager
def held() -> Iterator[None]:
    """Hold the stop signals for the block; a signal that came meanwhile is re-sent right after it.

    The Python handlers are swapped rather than the signals blocked: Python runs handlers in the main
    thread whatever thread the kernel picked, so blocking them in one thread would not stop torch's
    threads taking them. Nested blocks work: the inner one re-sends to the outer one's recorder.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: came.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(came):
            os.kill(os.getpid(), sig)  # now the caller's own handler runs (raise, record, or the default)


def heavy_import(name: str) -> ModuleType:
    """Import ``name`` (torch, transformers, ...) with stop signals held until the import is complete."""
    with held():
        return importlib.import_module(name)


def exit_code(exc: BaseException | None) -> int:
    """128 + the signal number, as a shell reports a death by that signal."""
    return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


def message(exc: BaseException | None) -> str:
    """What an interrupted run tells the user: exactly what is on disk."""
    if PUBLISHED:  # the stop came after the output was complete and in place
        out = PUBLISHED[-1]
        return (f"Error: interrupted after '{out}' was written.\n"
                f"Hint: the output is complete and verified; only the report was not printed (`lora-inspector scan {out}` shows it).\n")  # fmt: skip
    return "Error: interrupted.\nHint: nothing was written; run the command again.\n"
