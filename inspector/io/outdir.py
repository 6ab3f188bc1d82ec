"""May a run write its output to ``--out``? Checked before anything is written.

``--out`` must not be, contain, or lie inside an input, compared by real path and by device +
inode (symlinks, hard links, bind mounts); a non-empty one needs ``--force``, and an old output that
``--force`` would remove must hold no input and no mount point; the disk must have room. Each
refusal is a ``UsageError`` naming ``--out``. See docs/safety.md.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from inspector.errors import UsageError
from inspector.io.publish import removal_problem
from inspector.units import human_bytes


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _ancestor_identities(path: Path) -> set[tuple[int, int]]:
    return {ident for p in path.parents if (ident := _identity(p)) is not None}


def _linked_files(inp: Path) -> list[Path]:
    """Where the symlinks in input directory ``inp`` really point (a Hub cache snapshot's files live
    in ``../../blobs``): those files are inputs too, so an --out holding them is refused."""
    try:
        entries = list(os.scandir(inp)) if os.path.isdir(inp) else []
    except OSError:
        return []
    # Links to regular files only (what a checkpoint reads); a link to a directory (`base -> /models`)
    # is not an input, and counting it would refuse every --out below it.
    return [_real(Path(e.path)) for e in entries if e.is_symlink() and os.path.isfile(e.path)]


def _example_out(inp: Path) -> Path:
    """An --out to suggest for input ``inp``: beside it, or for a Hub cache snapshot, outside the cache."""
    real = _real(inp)
    if real.parent.name == "snapshots":
        return Path.cwd() / (real.parent.parent.name.removeprefix("models--").replace("--", "-") + "-merged")
    return real.parent / (real.name + "-out")


def _overlap(out_real: Path, in_real: Path, shown: Path) -> str | None:
    """Why ``out`` overlaps an input, or None. Real paths catch symlinks; (dev, inode) pairs catch
    hard links and bind mounts, which give the same file or directory another name."""
    if out_real == in_real:
        return f"it is the input '{shown}'"
    if out_real.is_relative_to(in_real):
        return f"it is inside the input '{shown}'"
    if in_real.is_relative_to(out_real):
        return f"it contains the input '{shown}'"
    out_id, in_id = _identity(out_real), _identity(in_real)
    if out_id is not None and out_id == in_id:
        return f"it is the input '{shown}' under another name (a hard link or bind mount)"
    if in_id is not None and in_id in _ancestor_identities(out_real):
        return f"it is inside the input '{shown}' (reached through a bind mount)"
    if out_id is not None and out_id in _ancestor_identities(in_real):
        return f"it contains the input '{shown}' (reached through a bind mount)"
    return None


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(path.anchor or ".")


def check_out(out_dir: Path, target: Path, inputs: Sequence[Path], *, force: bool, needed_bytes: int) -> None:
    """Refuse (``UsageError``) an ``--out`` the run may not write; ``target`` is its real path."""

    def refuse(why: str, hint: str, what: str = "Refusing to write output") -> UsageError:
        return UsageError(what, out_dir, why, hint)

    _check_inputs(target, inputs, refuse)
    if os.path.lexists(target):
        _check_existing(target, inputs, force, refuse)
    _check_space(target, force, needed_bytes, refuse)


def _check_inputs(target: Path, inputs: Sequence[Path], refuse) -> None:
    for inp in inputs:
        for real in (_real(inp), *_linked_files(inp)):
            why = _overlap(target, real, inp if real == _real(inp) else real)
            if why is not None:
                raise refuse(why, f"Choose an --out directory outside '{inp}' that does not contain it either, "
                                  f"e.g. '{_example_out(inp)}'; inputs are never written to.")  # fmt: skip


def _check_existing(target: Path, inputs: Sequence[Path], force: bool, refuse) -> None:
    if not target.is_dir():
        raise refuse(f"'{target}' exists and is not a directory", "Choose a directory path for --out (it is created if missing).")
    if force:
        problem = removal_problem(target, inputs)
        if problem is not None:  # --force would delete it after the merge: refuse now, before anything is written
            raise refuse(f"--force would remove the old output, but {problem}",
                         "Unmount it or remove the old output by hand (inputs are never deleted), or choose another --out.")  # fmt: skip
        return
    try:
        non_empty = any(os.scandir(target))
    except OSError as exc:
        raise refuse(f"cannot list it ({exc.strerror})", "Check the directory's permissions.") from exc
    if non_empty:
        raise refuse("the directory exists and is not empty", "Choose a new or empty --out directory, or pass --force to replace it.")


def _check_space(target: Path, force: bool, needed: int, refuse) -> None:
    probe = _nearest_existing(target.parent)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise refuse(f"'{probe}' is not writable", "Choose an --out in a directory you can write to.")
    usage = shutil.disk_usage(probe)
    if usage.total == 0:
        raise refuse(f"'{probe}' is on no disk (a pseudo filesystem such as /proc or /sys)", "Choose an --out on a disk.")
    if usage.free < needed:
        note = (" With --force the old output is removed only after the new one is complete,"
                " so its space does not count as free.") if force else ""  # fmt: skip
        raise refuse(f"{human_bytes(needed)} needed but only {human_bytes(usage.free)} free on the disk holding '{probe}'",
                     f"Free disk space or choose an --out on another disk.{note}", what="Not enough disk space")  # fmt: skip
