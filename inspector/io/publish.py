"""Putting a finished output in place, and taking an old one away, without ever losing data.

The writer builds a complete, verified output in a staging directory beside ``--out``; this module
does the filesystem moves around it (see docs/safety.md for what each step guarantees):
- ``swap``: a new output into ``--out``. Over an old output (``--force``) the two directories are
  exchanged in one atomic ``renameat2(RENAME_EXCHANGE)`` where Linux offers it, so ``--out`` always
  holds one complete output; elsewhere two renames, with a window named in the docs.
- ``removal_problem`` / ``remove_tree``: an old output is removed only when no part of it is an input
  (device + inode) or a mount point, checked before anything is touched and again while removing.
- ``publish_lock``: runs publishing into the same directory take turns, so two ``--force`` runs
  cannot strand each other's old output.
- ``leftovers``: hidden directories an earlier run left (SIGKILL, power loss), named so the user can
  delete them; never removed silently, since one may hold the only copy of an old output.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

Identity = tuple[int, int]  # (st_dev, st_ino): the same file or directory under any name
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# Entries of an input directory looked at for identities: a checkpoint has tens of files; a huge
# tree is not a checkpoint, and the walk must stay cheap.
_MAX_INPUT_ENTRIES = 100_000


def make_dir_beside(target: Path, tag: str) -> Path:
    """Create an empty hidden directory ``.NAME.TAG-XXXXXXXX`` next to ``target`` (same filesystem,
    so renames are atomic).

    ``os.mkdir`` rather than ``mkdtemp``: the umask applies, so the published directory gets the
    permissions any other new directory would, not mkdtemp's 0700.
    """
    while True:
        path = target.parent / f".{target.name}.{tag}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


# ------------------------------------------------------------------------------------ identities


def identity(path: str | Path, *, follow: bool = True) -> Identity | None:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def input_identities(inputs: Iterable[Path]) -> set[Identity]:
    """Every directory and file of the inputs (and what their symlinks point at), and the
    directories above them: an old output holding any of these (a bind mount, a hard link) reaches an input."""
    found: set[Identity] = set()
    for inp in inputs:
        real = Path(os.path.realpath(inp))
        found.update(i for p in (real, *real.parents) if (i := identity(p)) is not None)
        if not real.is_dir():
            continue
        seen = 0
        for folder, dirs, files in os.walk(real):
            for name in (*dirs, *files):
                seen += 1
                path = os.path.join(folder, name)
                found.update(i for i in (identity(path, follow=False), identity(path)) if i is not None)
            if seen > _MAX_INPUT_ENTRIES:
                break
    return found


def _unescape_mount(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> set[str]:
    """Mount points of this process's namespace (Linux); empty where /proc does not tell.

    A bind mount on the same filesystem keeps st_dev, so comparing devices alone misses it.
    """
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            return {_unescape_mount(line.split(" ")[4]) for line in fh if line.count(" ") >= 4}
    except OSError:
        return set()


# --------------------------------------------------------------------------- removing old outputs


def _walk_problem(root: Path, forbidden: set[Identity], mounts: set[str], dev: int) -> str | None:
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            shown = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                continue  # removing a symlink never touches what it points at
            if (st.st_dev, st.st_ino) in forbidden:
                return f"'{shown}' in it is an input under another name (a bind mount or hard link)"
            if stat.S_ISDIR(st.st_mode) and (st.st_dev != dev or os.path.realpath(path) in mounts):
                return f"'{shown}' in it is a mount point"
    return None


def removal_problem(old: Path, inputs: Iterable[Path]) -> str | None:
    """Why removing the old output ``old`` could destroy data that is not the old output, or None.

    Checked before anything is written: a mount point inside it (removal would cross into another
    filesystem or another place of this one), or any part of it that is an input file or directory.
    """
    try:
        dev = os.lstat(old).st_dev
    except OSError:
        return None
    mounts = mount_points()
    if os.path.realpath(old) in mounts:
        return "it is a mount point itself"
    return _walk_problem(old, input_identities(inputs), mounts, dev)


def remove_tree(root: Path, forbidden: set[Identity]) -> bool:
    """Remove ``root`` and what it holds, never descending into a mount point, another filesystem or
    an input (the same check as ``removal_problem``, again, in case something was mounted since).
    True when everything is gone."""
    mounts = mount_points()
    try:
        dev = os.lstat(root).st_dev
    except FileNotFoundError:
        return True
    complete = True
    dirs_seen: list[str] = [str(root)]
    for folder, dirs, files in os.walk(root):
        keep = []
        for name in dirs:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                complete = False
                continue
            if stat.S_ISLNK(st.st_mode):
                files.append(name)  # a link to a directory: unlink the link itself
            elif st.st_dev != dev or (st.st_dev, st.st_ino) in forbidden or os.path.realpath(path) in mounts:
                complete = False  # left in place, and named by the caller
            else:
                keep.append(name)
                dirs_seen.append(path)
        dirs[:] = keep
        for name in files:
            path = os.path.join(folder, name)
            if identity(path, follow=False) in forbidden:
                complete = False
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                complete = False
    for path in reversed(dirs_seen):  # deepest first
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            complete = False
    return complete


# ------------------------------------------------------------------------------------- the swap


@functools.cache
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def exchange(a: Path, b: Path) -> bool:
    """Swap the directories at ``a`` and ``b`` in one atomic step. False where the OS or filesystem
    has no such operation (the caller falls back to two renames); OSError for any other failure."""
    func = _renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def swap(staging: Path, target: Path) -> Path:
    """Put ``staging`` at ``target`` and the old ``target`` aside; return where the old one now is.

    The aside directory is made first: once the exchange has happened nothing may fail before the
    writer records the publish (a full disk failing a later mkdir would have the old output, then
    sitting at the staging path, removed as if it were staging)."""
    aside = make_dir_beside(target, "old")
    try:
        exchanged = exchange(staging, target)
    except BaseException:
        os.rmdir(aside)
        raise
    if exchanged:
        try:
            os.rename(staging, aside)  # the old output, under a name that says what it is (replaces the empty placeholder)
        except OSError:
            os.rmdir(aside)
            return staging
        return aside
    # Two renames (no RENAME_EXCHANGE here): between them --out does not exist; a run killed there
    # leaves the old output in .NAME.old-*, which the next run names.
    try:
        os.rename(target, aside)  # replaces the empty placeholder
    except BaseException:
        os.rmdir(aside)
        raise
    try:
        os.rename(staging, target)
    except BaseException:
        if os.path.lexists(staging):  # the swap did not happen: put the old output back
            os.rename(aside, target)
        raise
    return aside


@contextmanager
def publish_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (the directory --out sits in) while publishing, so
    concurrent runs swap one after the other; released by the kernel if this process dies."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield  # a directory that cannot be opened cannot be locked: publish unserialised
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # filesystems without flock (some network mounts)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ------------------------------------------------------------------------------------- leftovers


def leftovers(target: Path) -> list[Path]:
    """Hidden directories that earlier runs writing ``target`` left behind and no live run holds."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(staging|old)-[0-9a-f]{{8}}")
    try:
        names = sorted(e.name for e in os.scandir(target.parent) if pattern.fullmatch(e.name))
    except OSError:
        return []
    return [target.parent / n for n in names if not _held(target.parent / n)]


def _open_dir(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False  # held by another process, or a filesystem without flock


def _held(path: Path) -> bool:
    """Is ``path`` locked by a live run (``hold``)?"""
    fd = _open_dir(path)
    if fd is None:
        return False
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)


def hold(path: Path) -> int | None:
    """Lock the directory ``path`` for as long as the returned descriptor is open, so ``leftovers``
    in a concurrent run does not take a live staging directory for an abandoned one."""
    fd = _open_dir(path)
    if fd is not None:
        _try_lock(fd)
    return fd
