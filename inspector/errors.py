"""The project's one error family.

Every problem with the user's input or environment is an ``InspectorError`` carrying what failed,
the path, why, and a hint. The CLI turns it into ``Error:``/``Hint:`` lines and an exit code; no
other layer prints. Problems *inside* a readable checkpoint are findings, not exceptions.
"""

from __future__ import annotations

from pathlib import Path


class InspectorError(Exception):
    """A user-facing failure: ``Error: <what> for '<path>': <why>.`` plus ``Hint: <hint>``."""

    exit_code = 2

    def __init__(self, what: str, path: str | Path | None, why: str, hint: str) -> None:
        self.what = what
        self.path = str(path) if path is not None else None
        self.why = why.rstrip(".")
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f" for '{self.path}'" if self.path is not None else ""
        return f"{self.what}{where}: {self.why}."


class InvalidInputError(InspectorError):
    """A file or directory that cannot be read as what it claims to be (exit 2)."""


class UsageError(InspectorError):
    """Options that contradict each other or a path of the wrong kind (exit 2)."""


class RefusedError(InspectorError):
    """Work refused because of error findings (exit 1); nothing was written."""

    exit_code = 1
