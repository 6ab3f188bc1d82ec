"""The console script's entry point: stop handlers first, then everything else.

Ctrl-C or SIGTERM in the first fraction of a second (while click, rich and the command's modules
load) must end the run like any other stop: the same two lines, exit 130 / 143, nothing written. So
the handlers are installed before any other import of ours, and the CLI is imported inside the same
``try``. Only the interpreter's own start-up, before this module runs, is left uncovered.
"""

from __future__ import annotations

import signal
import sys
import threading

from inspector import interrupts


def main_exit() -> None:
    interrupts.install()
    try:
        from inspector.cli import main

        code = main()
    except KeyboardInterrupt as exc:  # the stop came while the CLI was being imported
        sys.stderr.write(interrupts.message(exc))
        code = interrupts.exit_code(exc)
    # Done and reported: a signal during the interpreter's teardown (torch's takes a moment) must not
    # turn the exit status into a death by signal.
    if threading.current_thread() is threading.main_thread():
        for sig in interrupts.STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)
