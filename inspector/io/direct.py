"""A new file written front to back, around the page cache where the filesystem allows (O_DIRECT).

Written through the page cache, every byte of a merged shard is copied into it and later flushed
from it: on the 2-core reference machine that cost ~1.1-2.5 s of system time per GB written, more than
the merge's arithmetic (docs/benchmarks.md). With O_DIRECT the disk reads the bytes straight from
our buffer. O_DIRECT needs the file offset, the length and the buffer's address aligned to the
device's block size, while a safetensors shard is a header of any length followed by tensors of any
size; so the bytes are gathered in one page-aligned buffer (an anonymous mmap) and written a whole
buffer at a time, and only the last, partial buffer goes through the page cache.

Falls back, with the same bytes on disk, wherever O_DIRECT is refused: when it is set on the new
file (filesystems without it answer EINVAL) or at a write (EINVAL for alignment the device does not
accept): the flag is cleared on the open file and the same write is made again.
``LORA_INSPECTOR_NO_DIRECT=1`` turns it off altogether (for NFS, say, where every direct write waits
for the server).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

BUFFER_BYTES = 8 << 20  # a multiple of every block size in use (512 B-64 KiB); 2-16 MiB measured alike
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux, FreeBSD; 0 elsewhere (macOS has F_NOCACHE instead)


def wanted() -> bool:
    """O_DIRECT unless the platform lacks it or ``LORA_INSPECTOR_NO_DIRECT`` is set (to anything
    but empty, 0, false, no or off). Set it on NFS, where each direct write is a round trip."""
    off = os.environ.get("LORA_INSPECTOR_NO_DIRECT", "").strip().lower() not in ("", "0", "false", "no", "off")
    return bool(_O_DIRECT) and not off


class DirectFile:
    """A file object with ``write``, ``flush``, ``fileno`` and ``close``, for a file this run creates
    (``O_EXCL``, mode 0o666 less the umask, as ``open(path, "xb")``). ``direct`` says whether
    O_DIRECT is still in use (tests and the benchmark read it)."""

    def __init__(self, path: str | Path, *, buffer_bytes: int | None = None) -> None:
        # Created plainly, O_DIRECT added after: a filesystem without it (tmpfs before Linux 6.6,
        # ramfs, some FUSE) refuses O_CREAT|O_EXCL|O_DIRECT with EINVAL only after creating the file.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            self.direct = wanted() and _set_direct(self._fd)
            # private and anonymous: page-aligned, as O_DIRECT needs, and never shared with a child
            self._map = mmap.mmap(-1, buffer_bytes or BUFFER_BYTES, flags=mmap.MAP_PRIVATE)
        except BaseException:
            fd, self._fd = self._fd, -1
            os.close(fd)
            raise
        self._buf = memoryview(self._map)
        self._fill = 0

    def write(self, data: bytes | memoryview) -> int:
        """Copy ``data`` into the buffer, writing out each buffer that fills up. Returns its length."""
        view = memoryview(data).cast("B")
        size, done = len(self._buf), 0
        while done < len(view):
            n = min(size - self._fill, len(view) - done)
            self._buf[self._fill : self._fill + n] = view[done : done + n]
            self._fill += n
            done += n
            if self._fill == size:
                self._write_out()
        return done

    def flush(self) -> None:
        """Write what the buffer holds. A partial buffer leaves the file unaligned, so O_DIRECT ends
        here for this file (the rest of it, if any, goes through the page cache)."""
        if self._fill:
            self._buffered()
            self._write_out()

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Closes without writing what is still buffered: callers flush first (and fsync), while an
        aborted write throws the bytes away anyway."""
        fd, self._fd = self._fd, -1
        if getattr(self, "_map", None) is not None:
            try:
                self._buf.release()
                self._map.close()
            except BufferError:  # a slice still held (by a traceback): unmapped when that goes
                pass
            self._map = None
        if fd >= 0:
            os.close(fd)

    def _write_out(self) -> None:
        done = 0
        with self._buf[: self._fill] as view:  # released even on an error, so close() can unmap
            while done < len(view):
                try:
                    n = os.write(self._fd, view[done:])
                except OSError as exc:
                    if not self.direct or exc.errno != errno.EINVAL:
                        raise
                    self._buffered()  # the device refused this alignment: same write, through the page cache
                    continue
                if n == 0:  # a regular file only writes nothing when it cannot: say why, never loop
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
        self._fill = 0

    def __del__(self) -> None:  # a writer dropped without abort(): no descriptor left behind
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def _buffered(self) -> None:
        if self.direct:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_O_DIRECT)
            self.direct = False


def _set_direct(fd: int) -> bool:
    """Turn O_DIRECT on for ``fd``; False where the filesystem refuses it (EINVAL)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | _O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True
