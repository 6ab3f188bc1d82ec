"""The one safe, streaming checkpoint writer that ``resize``, ``merge`` and ``convert`` share.

Every output tensor is planned up front (name, dtype, shape), so each shard's header is known before
any data exists: a shard is written header first, then filled one tensor at a time as ``write`` is
called, which keeps peak memory at one tensor. Everything goes into a hidden staging directory beside
the target; ``commit`` re-reads every shard header, writes the index, fsyncs, checks that no input
changed, and has ``publish`` put the staging directory in place (docs/safety.md). Any failure before
that, Ctrl-C included, removes the staging directory and leaves the target as it was.

Importing this module does not import torch (``scan``/``check`` never do); ``write`` imports it.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from inspector import interrupts
from inspector.errors import InspectorError, InvalidInputError, UsageError
from inspector.io.direct import DirectFile
from inspector.io.header import read_header
from inspector.io.outdir import check_out
from inspector.io.publish import hold, input_identities, leftovers, make_dir_beside, publish_lock, remove_tree, swap
from inspector.io.shards import DEFAULT_MAX_SHARD_SIZE, INDEX_FILE, SINGLE_FILE, OutputTensor, Shard, plan_shards
from inspector.io.sidefiles import opened_inside, tree_entries
from inspector.io.stamp import FileStamp, ensure_unchanged

if TYPE_CHECKING:
    import numpy as np
    import torch

# Room beyond the planned shards: config/tokenizer files added later and filesystem overhead.
SPACE_MARGIN = 16 * 1024**2
_CHUNK = 1 << 20
_WRITE_WHAT = "Cannot write checkpoint"

# ------------------------------------------------------------------------------------- file I/O


def _write_all(fh: Any, data: bytes | memoryview | np.ndarray) -> None:
    """Write a whole buffer. The single point every byte goes through (tests patch it)."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    written = fh.write(view)
    if written is not None and written != len(view):  # a buffered file writes all or raises
        raise OSError(errno.EIO, f"short write ({written} of {len(view)} bytes)")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # filesystems without dir fsync
            raise
    finally:
        os.close(fd)


def _plain(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


@functools.cache
def _torch_dtypes() -> dict[Any, str]:
    """torch dtype -> safetensors dtype string: the loader's table, inverted."""
    import torch

    from inspector.io.loader import TORCH_DTYPES

    return {getattr(torch, name): st for st, name in TORCH_DTYPES.items() if hasattr(torch, name)}


def _raw_bytes(tensor: torch.Tensor, planned: OutputTensor) -> np.ndarray:
    """The tensor's little-endian bytes as a flat uint8 array (no copy when already contiguous on CPU)."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor {planned.name!r} is a {type(tensor).__name__}, not a torch.Tensor")
    dtype = _torch_dtypes().get(tensor.dtype)
    if dtype != planned.dtype:
        raise ValueError(f"tensor {planned.name!r} is {tensor.dtype} ({dtype}); the plan says {planned.dtype}")
    if tuple(tensor.shape) != tuple(planned.shape):
        raise ValueError(f"tensor {planned.name!r} has shape {list(tensor.shape)}; the plan says {list(planned.shape)}")
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    # bf16 has no numpy dtype, so go through uint8; resolve lazy conj/neg views before reinterpreting.
    flat = t.resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
    return flat.numpy()


# ---------------------------------------------------------------------------------------- writer

State = Literal["open", "committed", "aborted"]


class CheckpointWriter:
    """Stream planned tensors into ``out_dir`` through a staging directory; publish on ``commit``.

    Use as a context manager: an exception (``KeyboardInterrupt`` included) inside the ``with``
    aborts, removing the staging directory. All paths are validated here, before anything is
    written; each refusal is a ``UsageError``. ``extra_bytes`` is the size of files the caller will
    add with ``add_file``/``copy_file``, counted in the free-space check.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        inputs: Sequence[str | Path],
        tensors: Sequence[OutputTensor],
        max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
        force: bool = False,
        metadata: dict[str, str] | None = None,
        extra_bytes: int = 0,
        stamps: Sequence[FileStamp] = (),
        single_file: str | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.force = force
        self.stamps = tuple(stamps)  # the input files as they were read; re-checked before publishing
        self.tensors: tuple[OutputTensor, ...] = tuple(tensors)
        if type(max_shard_size) is not int or max_shard_size <= 0:
            raise UsageError("Invalid size", None, f"max shard size {max_shard_size!r} is not a positive number of bytes",
                             "Give bytes or a number with a unit: 500MB, 5GB, 2GiB.")  # fmt: skip
        meta = {"format": "pt", **(metadata or {})}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        self.metadata: dict[str, str] = meta
        if single_file is not None and not (_plain(single_file) and single_file.endswith(".safetensors")):
            raise ValueError(f"single_file {single_file!r} is not a plain .safetensors file name")

        # single_file: one unsharded file of that name (an adapter's adapter_model.safetensors: PEFT
        # reads no index), whatever max_shard_size says.
        self._shards = plan_shards(self.tensors, None, meta, single_file=single_file) if single_file else plan_shards(self.tensors, max_shard_size, meta)
        self._shard_of = [i for i, s in enumerate(self._shards) for _ in range(s.first, s.stop)]
        self.total_size = sum(s.data_size for s in self._shards)  # tensor data bytes, the index's metadata.total_size
        self.planned_bytes = sum(s.file_size for s in self._shards)

        # The real path: symlinked --out writes where the link points, and staging sits beside that.
        self._target = Path(os.path.realpath(self.out_dir))
        self._inputs = [Path(p) for p in inputs]
        check_out(self.out_dir, self._target, self._inputs, force=force, needed_bytes=self.planned_bytes + max(0, extra_bytes) + SPACE_MARGIN)
        self._warn_leftovers()

        self._state: State = "open"
        self._staging: Path | None = None
        self._staging_fd: int | None = None  # holds a lock on the staging directory while this run lives
        self._created: list[Path] = []  # parent directories we made, removed again on abort
        self._fh: Any = None
        self._next = 0  # index into the plan of the next tensor to write
        self._names: set[str] = {s.file for s in self._shards} | {INDEX_FILE, SINGLE_FILE, single_file or SINGLE_FILE}
        self._extra: set[str] = set()  # top-level names of added files and folders
        self._folders: set[tuple[str, ...]] = set()  # copy_tree's folders, as path parts

    # ------------------------------------------------------------------------------ validation

    def _refuse(self, why: str, hint: str, what: str = "Refusing to write output") -> UsageError:
        return UsageError(what, self.out_dir, why, hint)

    # --------------------------------------------------------------------------------- plumbing

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is not None:
            self.abort()
            return False
        if self._state == "open":  # left the block cleanly without commit(): publish nothing
            self.abort()
            raise ValueError("CheckpointWriter left without commit() or abort(); nothing was written")
        return False

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Any exception out of a public method aborts; OS errors become a user-facing error."""
        try:
            yield
        except OSError as exc:
            self.abort()
            raise self._io_error(exc) from exc
        except BaseException:
            self.abort()
            raise

    def _io_error(self, exc: OSError) -> InspectorError:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            hint = f"The disk holding '{self._target.parent}' is full; free space or choose another --out."
        else:
            hint = "Check that the output location is writable and its disk is healthy."
        return InspectorError(_WRITE_WHAT, self.out_dir, exc.strerror or str(exc), hint + " Nothing was written.")

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"CheckpointWriter is already {self._state}")

    def _ensure_staging(self) -> Path:
        if self._staging is None:
            missing = [p for p in (self._target.parent, *self._target.parent.parents) if not p.exists()]
            for p in reversed(missing):  # outermost first
                os.mkdir(p)
                self._created.append(p)
            self._staging = make_dir_beside(self._target, "staging")
            self._staging_fd = hold(self._staging)
        return self._staging

    def _check_name(self, name: str) -> None:
        if not _plain(name):
            raise ValueError(f"{name!r} is not a plain file name")
        if name in self._names or name in self._extra:
            raise ValueError(f"{name!r} is already part of the output")

    # ------------------------------------------------------------------------------ tensor data

    def _open_shard(self, shard: Shard) -> None:
        self._fh = DirectFile(self._ensure_staging() / shard.file)  # around the page cache where allowed
        _write_all(self._fh, shard.header)

    def _close_shard(self) -> None:
        fh, self._fh = self._fh, None
        try:
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fh.close()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor; it must match the plan's name, dtype and shape (else ValueError)."""
        with self._guard():
            self._check_open()
            if self._next >= len(self.tensors):
                raise ValueError(f"tensor {name!r} was not planned: all {len(self.tensors)} tensors are written")
            planned = self.tensors[self._next]
            if name != planned.name:
                raise ValueError(f"expected tensor {planned.name!r} (number {self._next + 1} of the plan), got {name!r}")
            raw = _raw_bytes(tensor, planned)
            shard = self._shards[self._shard_of[self._next]]
            if self._fh is None:
                self._open_shard(shard)
            _write_all(self._fh, raw)
            del raw  # let a device->host copy go before the next tensor arrives
            self._next += 1
            if self._next == shard.stop:
                self._close_shard()

    def write_rows(self, name: str, chunks: Iterable[torch.Tensor]) -> None:
        """Append the next planned tensor as consecutive row blocks (dim 0), so a tensor larger than
        memory allows is never whole at once. The blocks must add up to the planned shape."""
        with self._guard():
            self._check_open()
            if self._next >= len(self.tensors):
                raise ValueError(f"tensor {name!r} was not planned: all {len(self.tensors)} tensors are written")
            planned = self.tensors[self._next]
            if name != planned.name or not planned.shape:
                raise ValueError(f"expected tensor {planned.name!r} (number {self._next + 1} of the plan) with a row dimension, got {name!r}")
            shard = self._shards[self._shard_of[self._next]]
            if self._fh is None:
                self._open_shard(shard)
            rows = 0
            for chunk in chunks:
                block = OutputTensor(name, planned.dtype, (int(chunk.shape[0]) if chunk.dim() else -1, *planned.shape[1:]))
                raw = _raw_bytes(chunk, block)
                _write_all(self._fh, raw)
                del raw
                rows += block.shape[0]
            if rows != planned.shape[0]:
                raise ValueError(f"tensor {name!r}: row blocks add up to {rows} rows; the plan says {planned.shape[0]}")
            self._next += 1
            if self._next == shard.stop:
                self._close_shard()

    # ---------------------------------------------------------------------------- other files

    def add_file(self, name: str, data: bytes | str) -> None:
        """Add a small file (e.g. ``config.json``) to the output; ``name`` is a plain file name."""
        with self._guard():
            self._check_open()
            self._check_name(name)
            blob = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            with open(self._ensure_staging() / name, "xb") as fh:
                self._extra.add(name)
                _write_all(fh, blob)
                fh.flush()
                os.fsync(fh.fileno())

    def copy_file(self, src: str | Path, name: str | None = None, *, root: str | Path | None = None) -> None:
        """Copy ``src`` into the output as ``name`` (default: its own name), refusing a file that
        changes while it is copied (size or mtime differ before and after). ``root``: the input
        directory ``src`` was found in; the file opened must still live there (not a link swapped since)."""
        with self._guard():
            self._check_open()
            src = Path(src)
            name = src.name if name is None else name
            self._check_name(name)
            staging = self._ensure_staging()
            self._extra.add(name)
            self._copy_bytes(src, staging / name, root=Path(root) if root is not None else None)

    def copy_tree(self, src: str | Path, name: str, *, root: str | Path) -> None:
        """Copy the folder ``src`` (a sentence-transformers module folder, ...) into the output as
        ``name``, a relative path (``1_Pooling``), with what ``tree_entries`` picks of it: regular
        files and folders, no hidden entries, symlinks only where they stay inside ``root`` (the
        input directory). Each file is refused if it changes while it is copied, as ``copy_file``."""
        with self._guard():
            self._check_open()
            parts = self._check_folder(name)
            staging = self._ensure_staging()
            dest = staging.joinpath(*parts)
            parents = [p for p in dest.parents if p != staging and p.is_relative_to(staging) and not p.exists()]  # deepest first
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(dest)
            self._extra.add(parts[0])
            self._folders.add(parts)
            made = [dest]
            for rel, path, folder in tree_entries(src, root):
                if folder:
                    os.mkdir(dest.joinpath(*rel))
                    made.append(dest.joinpath(*rel))
                else:
                    self._copy_bytes(path, dest.joinpath(*rel), root=Path(root))
            for p in (*reversed(made), *parents):  # a folder's entries are durable once it is synced (commit syncs staging)
                _fsync_dir(p)

    def _check_folder(self, name: str) -> tuple[str, ...]:
        parts = tuple(name.split("/")) if isinstance(name, str) else ()
        if not parts or not all(_plain(p) for p in parts):
            raise ValueError(f"{name!r} is not a relative folder path")
        if parts[0] in self._names or (parts[0] in self._extra and all(f[0] != parts[0] for f in self._folders)):
            raise ValueError(f"{name!r} is already part of the output")
        if any(f[: len(parts)] == parts or parts[: len(f)] == f for f in self._folders):
            raise ValueError(f"{name!r} overlaps a folder already in the output")
        return parts

    def _copy_bytes(self, src: Path, dst: Path, *, root: Path | None = None) -> None:
        """Copy one file's bytes into the new file ``dst``. ``root``: ``src`` was found inside that
        input directory, and the file opened must still be one that lives there (not a link swapped
        to point elsewhere since the folder was listed)."""
        hint = "Check that the file exists and is readable."
        try:
            # O_NONBLOCK: a FIFO put where a file was listed must not block the open (regular files ignore it).
            fsrc = os.fdopen(os.open(src, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)), "rb")
            before = os.fstat(fsrc.fileno())
        except OSError as exc:
            raise InvalidInputError("Cannot read", src, exc.strerror or str(exc), hint) from exc
        with fsrc:
            if not stat.S_ISREG(before.st_mode):
                raise InvalidInputError("Cannot copy", src, "not a regular file", "Pass a file, not a directory or device.")
            if root is not None and not opened_inside(root, src, before):
                raise InvalidInputError("Cannot copy", src, f"it resolves outside the input directory '{root}'",
                                        "Replace the link with the file itself, or remove it.")  # fmt: skip
            copied = 0
            with open(dst, "xb") as fdst:
                while copied <= before.st_size:  # a file that keeps growing must not copy forever
                    try:
                        chunk = fsrc.read(_CHUNK)
                    except OSError as exc:
                        raise InvalidInputError("Cannot read", src, exc.strerror or str(exc), hint) from exc
                    if not chunk:
                        break
                    _write_all(fdst, chunk)
                    copied += len(chunk)
                fdst.flush()
                os.fsync(fdst.fileno())
            after = os.fstat(fsrc.fileno())
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or copied != after.st_size:
            raise InvalidInputError("Cannot copy", src, "the file changed while it was being copied",
                                    "Wait until nothing is writing to it, then run again.")  # fmt: skip

    # ---------------------------------------------------------------------------------- publish

    def _verify(self, staging: Path) -> None:
        """Re-open every shard with the strict reader: names, dtypes, shapes and sizes equal the plan."""
        for shard in self._shards:
            path = staging / shard.file
            try:
                found, meta = read_header(path)
            except InvalidInputError as exc:
                raise self._verify_error(shard, exc.why) from exc
            want = [(t.name, t.dtype, tuple(t.shape)) for t in self.tensors[shard.first : shard.stop]]
            got = [(t.name, t.dtype, t.shape) for t in found]  # read_header returns data order
            if got != want:
                raise self._verify_error(shard, "its tensors differ from the plan")
            if os.path.getsize(path) != shard.file_size:
                raise self._verify_error(shard, f"it is {os.path.getsize(path)} bytes, planned {shard.file_size}")
            if meta != self.metadata:
                raise self._verify_error(shard, "its __metadata__ differs from the plan")

    def _verify_error(self, shard: Shard, why: str) -> InspectorError:
        return InspectorError(_WRITE_WHAT, self.out_dir, f"verifying '{shard.file}' failed: {why}",
                              "The disk may be failing, or this is a bug; nothing was published.")  # fmt: skip

    def _write_index(self, staging: Path) -> None:
        weight_map = {t.name: self._shards[self._shard_of[i]].file for i, t in enumerate(self.tensors)}
        index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
        # transformers' own layout: indent 2, sorted keys, trailing newline.
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        with open(staging / INDEX_FILE, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def _warn_leftovers(self) -> None:
        # Hidden directories of runs that were killed (SIGKILL, power loss) are named, never removed:
        # an ".old-" one may hold the only copy of an output that a --force run was replacing.
        found = leftovers(self._target)
        if found:
            names = ", ".join(f"'{p}'" for p in found)
            missing = "" if os.path.lexists(self._target) else f" '{self._target}' itself is missing: the '.old-' one holds the previous output."
            sys.stderr.write(f"Warning: an earlier run writing here was stopped and left {names}.{missing} "
                             "Delete what you do not need; lora-inspector never removes them.\n")  # fmt: skip

    def _publish(self, staging: Path) -> Path | None:
        """Rename ``staging`` to ``--out`` (exchanging it with an old output under --force); return
        where the old output now is, or None. After this, nothing can undo the publish."""
        target = self._target
        if self.force and os.path.lexists(target):
            old = swap(staging, target)
        else:
            old = None
            try:
                os.rename(staging, target)  # atomic; also replaces an empty existing directory
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another run published there meanwhile
                    raise self._refuse("the directory exists and is not empty (another run wrote it meanwhile)",
                                       "Choose a new or empty --out directory, or pass --force to replace it.") from exc
                raise
        self._staging = None
        self._created = []
        self._state = "committed"
        interrupts.PUBLISHED.append(self.out_dir)
        return old

    def _after_publish(self, old: Path | None) -> None:
        """Make the publish durable, then remove the old output. Errors here must not say "nothing
        was written": the new output is in place, and the message says exactly what is on disk."""
        try:
            _fsync_dir(self._target.parent)
        except OSError as exc:
            kept = f" The previous output is kept in '{old}'." if old is not None else ""
            raise InspectorError("Output written but not confirmed on disk", self.out_dir,
                                 f"the new output is in place, but syncing its directory failed ({exc.strerror or exc})",
                                 f"The disk reported an error: check it, then verify the output (`lora-inspector scan {self.out_dir}`).{kept}") from exc  # fmt: skip
        if old is None:
            return
        fd = hold(old)  # so that a concurrent run does not name it as abandoned while it goes
        try:
            complete = remove_tree(old, input_identities(self._inputs))
        finally:
            if fd is not None:
                os.close(fd)
        if not complete:  # read-only parts of the old output, or something mounted into it meanwhile
            sys.stderr.write(f"Warning: the old output could not be fully removed; what is left of it is in '{old}'. Delete it by hand.\n")

    def commit(self) -> Path:
        """Verify every shard, write the index (several shards only), fsync and publish; return ``out_dir``."""
        with self._guard():
            self._check_open()
            if self._next < len(self.tensors):
                missing = self.tensors[self._next].name
                raise ValueError(f"{len(self.tensors) - self._next} planned tensors were not written, starting with {missing!r}")
            staging = self._ensure_staging()
            if not self.tensors:  # an empty plan still publishes a valid, empty model.safetensors
                self._open_shard(self._shards[0])
                self._close_shard()
            self._verify(staging)
            if len(self._shards) > 1:
                self._write_index(staging)
            _fsync_dir(staging)
        # Held as one: the last input check, the swap, and the removal of an old output (--force) run
        # to the end; a Ctrl-C meanwhile arrives once all of it is done, and PUBLISHED says so.
        with interrupts.held():
            with self._guard(), publish_lock(self._target.parent):
                ensure_unchanged(self.stamps)  # an input re-saved during the run: its bytes may be mixed in
                old = self._publish(staging)
            self._close_staging_fd()
            self._after_publish(old)
        return self.out_dir

    def abort(self) -> None:
        """Remove the staging directory (and parents this writer created); the target is untouched."""
        with interrupts.held():  # a second Ctrl-C must not leave half a staging directory behind
            self._abort()

    def _close_staging_fd(self) -> None:
        fd, self._staging_fd = self._staging_fd, None
        if fd is not None:
            os.close(fd)

    def _abort(self) -> None:
        self._close_staging_fd()
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass  # the data is being thrown away
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        for p in reversed(self._created):
            try:
                os.rmdir(p)
            except OSError:
                break
        self._created = []
        if self._state == "open":
            self._state = "aborted"
