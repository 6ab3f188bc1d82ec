"""Which version of an input file a run read: its identity when the header was read.

Headers and data are read at different times (check reads headers, the merge reads data a minute
later). A file re-saved or replaced in between would pair the old header's offsets with the new
file's bytes: a corrupt model, written with exit 0. So every input file is stamped (device, inode,
size, mtime) from the open file whose header is parsed, data reads compare against that stamp, and
the writer re-checks every stamp before it publishes. See docs/threat-model.md ("Inputs that change").
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from inspector.errors import InvalidInputError

_HINT = "Run the command again when nothing else writes to the checkpoint (a training job still saving, a sync tool, a download)."


@dataclass(frozen=True)
class FileStamp:
    path: Path
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path, st: os.stat_result) -> FileStamp:
        return cls(Path(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def differs(self, st: os.stat_result) -> str | None:
        """How ``st`` (the file now) differs from the stamp, or None."""
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            return "it was replaced by another file"
        if st.st_size != self.size:
            return f"its size changed from {self.size} to {st.st_size} bytes"
        if st.st_mtime_ns != self.mtime_ns:
            return "it was rewritten (its modification time changed)"
        return None


def changed(stamp: FileStamp, st: os.stat_result | None = None) -> InvalidInputError | None:
    """The error to raise when ``stamp``'s file is no longer what was read (``st``: a fresh stat)."""
    if st is None:
        try:
            st = os.stat(stamp.path)
        except OSError as exc:
            return InvalidInputError("Input changed during the run", stamp.path, f"it can no longer be read ({exc.strerror})", _HINT)
    why = stamp.differs(st)
    return None if why is None else InvalidInputError("Input changed during the run", stamp.path, f"{why} after its header was read", _HINT)


def ensure_unchanged(stamps: Iterable[FileStamp]) -> None:
    """Raise ``InvalidInputError`` naming the first stamped file that changed since it was read."""
    for stamp in stamps:
        error = changed(stamp)
        if error is not None:
            raise error
