"""``explore``: an interactive view of a checkpoint (and an adapter over it) in the terminal.

``model`` builds what is shown from headers (no textual, no torch); ``stats`` reads one tensor's
values when asked; ``app`` is the Textual screen. textual is imported only by ``run``, so that the
other commands never load it.
"""

from __future__ import annotations

import sys

from inspector.errors import InspectorError, UsageError


def run(path: str, adapter: str | None = None, *, offline: bool = False) -> int:
    """Read PATH (and ADAPTER) from headers, then hand the terminal to the app until the user quits.

    A Hub id that is not cached is read remotely, headers only, as scan and check read it (``offline``:
    the cache only). Its stub directory lives as long as the ``remote_reads()`` block, which spans the
    whole session: it is removed when the app exits (q, ctrl+c, an error, SIGTERM, SIGHUP)."""
    from inspector.io.paths import remote_reads

    with remote_reads(offline=offline):
        return _run(path, adapter)


def _run(path: str, adapter: str | None) -> int:
    from inspector.explore.model import open_exploration

    exploration = open_exploration(path, adapter)  # an unreadable input fails here, before the screen
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("Not a terminal", None, "explore draws an interactive screen and needs a terminal on stdin and stdout",
                         "Run it in a terminal (over SSH: ssh -t). For a report to save or pipe, use `lora-inspector check BASE ADAPTER "
                         "--format markdown` or `lora-inspector scan PATH --tensors`.")
    try:
        from inspector.explore.app import ExploreApp
    except ImportError as exc:
        raise InspectorError("Missing dependency", None, f"explore needs the textual package, which cannot be imported ({exc})",
                             "Reinstall lora-inspector with its dependencies: pip install --force-reinstall lora-inspector (or pip install 'textual>=8.2').") from exc
    app = ExploreApp(exploration)
    code = app.run()
    return code if isinstance(code, int) else 0
