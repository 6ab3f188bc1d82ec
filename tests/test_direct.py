"""The writer's O_DIRECT path (inspector/io/direct.py): the same bytes as a plain write whatever the
sizes, a clean fallback where the filesystem refuses O_DIRECT (at open or at a write), a real full
disk in the middle of a merge, and Ctrl-C while the merge's compute thread is busy."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import inspector.io.direct as direct_mod
from inspector.io.direct import DirectFile
from tests.hostile_corpus import snapshot
from tests.test_hostile import REPO, assert_error, merge

SMALL = 8192  # a buffer of two 4 KiB blocks: every size below crosses many buffer boundaries


@pytest.fixture(autouse=True)
def _direct_wanted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORA_INSPECTOR_NO_DIRECT", raising=False)  # each test says what it wants


def _pieces(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [61, 1, 8192, 8191, 8193, 40_000, 0, 3, 16_384, 12_345]  # a header of odd length first, as shards have
    return [rng.randbytes(n) for n in sizes]


def _write(path: Path, pieces: list[bytes], **kw) -> DirectFile:
    f = DirectFile(path, buffer_bytes=SMALL, **kw)
    try:
        for p in pieces:
            assert f.write(p) == len(p)
        f.flush()
        os.fsync(f.fileno())
    finally:
        f.close()
    return f


def test_same_bytes_as_a_plain_write(tmp_path: Path) -> None:
    pieces = _pieces(0)
    seen_direct = []
    f = DirectFile(tmp_path / "a", buffer_bytes=SMALL)
    for p in pieces:
        f.write(p)
        seen_direct.append(f.direct)
    f.flush()
    f.close()
    assert (tmp_path / "a").read_bytes() == b"".join(pieces)
    assert f.direct is False  # the unaligned tail went through the page cache
    if _accepts_direct(tmp_path):  # then every full buffer really went around the page cache
        assert all(seen_direct), "O_DIRECT was not used where the filesystem accepts it"


def _accepts_direct(folder: Path) -> bool:
    probe = folder / "probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        return direct_mod.wanted() and direct_mod._set_direct(fd)
    finally:
        os.close(fd)
        probe.unlink()


def test_creates_like_open_xb(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"")
    _write(tmp_path / "direct", [b"x"])
    assert (tmp_path / "direct").stat().st_mode == (tmp_path / "plain").stat().st_mode  # 0o666 less the umask
    with pytest.raises(FileExistsError):
        DirectFile(tmp_path / "direct")


def test_refused_when_set_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fcntl.fcntl

    def no_direct(fd, cmd, arg=0):  # as tmpfs before Linux 6.6, ramfs and some FUSE filesystems answer
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(direct_mod.fcntl, "fcntl", no_direct)
    pieces = _pieces(1)
    f = _write(tmp_path / "a", pieces)
    assert f.direct is False
    assert (tmp_path / "a").read_bytes() == b"".join(pieces)


def test_a_filesystem_without_o_direct(capsys, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ramfs refuses O_DIRECT, and Linux refuses O_CREAT|O_EXCL|O_DIRECT there only after creating
    # the file: opening with the flag and retrying without it met "File exists" on every shard.
    disk = work / "ramfs"
    _mount(disk, "ramfs", "")
    try:
        pieces = _pieces(3)
        f = _write(disk / "a", pieces)
        assert f.direct is False and (disk / "a").read_bytes() == b"".join(pieces)
        (disk / "a").unlink()
        big = shutil.disk_usage(work)  # ramfs reports no size at all: as a disk with room
        monkeypatch.setattr("inspector.io.outdir.shutil.disk_usage", lambda p: big)
        assert merge(capsys, work / "base", work / "adapter", disk / "merged")[0] == 0
        monkeypatch.setenv("LORA_INSPECTOR_NO_DIRECT", "1")
        assert merge(capsys, work / "base", work / "adapter", work / "plain")[0] == 0
        assert _merged(disk / "merged") == _merged(work / "plain")
        assert sorted(p.name for p in disk.iterdir()) == ["merged"]  # nothing stray beside it
    finally:
        subprocess.run(["umount", str(disk)], check=False, capture_output=True)


def test_write_refused_falls_back_mid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _accepts_direct(tmp_path):
        pytest.skip("the filesystem of tmp_path refuses O_DIRECT at open (that fallback is tested above)")
    real, refused = os.write, []

    def picky(fd, data):  # the device accepts the first aligned write, then refuses O_DIRECT
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT and refused.append(1) is None and len(refused) > 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data)

    monkeypatch.setattr(direct_mod.os, "write", picky)
    pieces = _pieces(2)
    f = _write(tmp_path / "a", pieces)
    assert len(refused) == 2 and f.direct is False
    assert (tmp_path / "a").read_bytes() == b"".join(pieces)


def test_other_write_errors_are_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_mod.os, "write", full)
    f = DirectFile(tmp_path / "a", buffer_bytes=SMALL)
    with pytest.raises(OSError) as info:
        f.write(b"\0" * SMALL)
    f.close()
    assert info.value.errno == errno.ENOSPC


def test_switched_off_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_INSPECTOR_NO_DIRECT", "1")
    f = DirectFile(tmp_path / "a", buffer_bytes=SMALL)
    assert f.direct is False
    f.close()


def _merged(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_merge_output_is_the_same_through_the_fallback(capsys, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_mod, "BUFFER_BYTES", SMALL)  # many direct writes even for a tiny model
    assert merge(capsys, work / "base", work / "adapter", work / "direct")[0] == 0
    monkeypatch.setenv("LORA_INSPECTOR_NO_DIRECT", "1")
    assert merge(capsys, work / "base", work / "adapter", work / "plain")[0] == 0
    assert _merged(work / "direct") == _merged(work / "plain")


def _mount(where: Path, fstype: str, options: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip(f"mounting a {fstype} needs root and mount(8)")
    where.mkdir()
    proc = subprocess.run(["mount", "-t", fstype, *(["-o", options] if options else []), fstype, str(where)],
                          check=False, capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"mount -t {fstype} is not permitted here: {proc.stderr.strip()}")


def test_disk_full_in_the_middle_of_a_merge(capsys, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A disk with room for half of the model, which the free-space check is told is plenty (as when
    # another process fills the disk after the check): the kernel's ENOSPC arrives mid-shard.
    model_bytes = sum(p.stat().st_size for p in (work / "base").glob("*.safetensors"))
    disk = work / "disk"
    _mount(disk, "tmpfs", f"size={max(4096, model_bytes // 2 // 4096 * 4096)}")
    try:
        monkeypatch.setattr(direct_mod, "BUFFER_BYTES", SMALL)
        free = shutil.disk_usage(disk)
        monkeypatch.setattr("inspector.io.outdir.shutil.disk_usage", lambda p: free._replace(free=1 << 40))
        before = snapshot(work)
        rc, out, err = merge(capsys, work / "base", work / "adapter", disk / "merged")
        lines = assert_error(rc, out, err, disk / "merged", "No space left on device")
        assert "is full" in lines[1] and "Nothing was written" in lines[1]
        assert snapshot(work) == before and list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False, capture_output=True)


# A real process, interrupted while the compute thread is inside a block (the main thread waits in
# the queue for it). The script slows the third block read in that thread from the outside.
SLOW_COMPUTE = textwrap.dedent(
    """
    import signal, sys, threading, time
    from inspector.io.loader import TensorReader
    from inspector.cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    real, calls = TensorReader.read_rows, []

    def slow(self, *args, **kwargs):
        if threading.current_thread().name == "merge-compute":
            calls.append(1)
            if len(calls) == 3:
                print("computing", flush=True)
                time.sleep(1.5)  # a slow block: the thread finishes it, then sees the stop
        return real(self, *args, **kwargs)

    TensorReader.read_rows = slow
    sys.exit(main(sys.argv[1:]))
    """
)


def test_ctrl_c_while_the_compute_thread_runs(work: Path) -> None:
    out = work / "merged"
    before = snapshot(work)
    argv = ["merge", str(work / "base"), str(work / "adapter"), "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COMPUTE, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "computing", proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while not [p for p in work.iterdir() if ".staging-" in p.name] and time.monotonic() < deadline:
            time.sleep(0.02)  # the main thread has written the blocks before the slow one
        assert [p for p in work.iterdir() if ".staging-" in p.name], "the writer had not started"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        waited = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-2:] == ["Error: interrupted.", "Hint: nothing was written; run the command again."]
    assert waited < 10  # the thread's block, then out: not the rest of the model
    assert snapshot(work) == before
