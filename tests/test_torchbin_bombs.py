"""Small .bin files that would cost gigabytes or minutes: refused quickly, in bounded memory, as Error/Hint.

Each bomb is built at test time with a few megabytes at most: zipfile deflates a streamed member, or a
deflate stream is repeated block by block (a block ending in a full flush stands on its own).
"""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest

import inspector.io.torchbin as torchbin
from inspector.cli import main
from inspector.errors import InvalidInputError
from inspector.io.torchbin import walk_pickle

REPO = Path(__file__).resolve().parent.parent
MB = 1 << 20


# Forks the scan from a small process and reports the scan's own peak RSS: a child forked straight from
# pytest (torch loaded) would count pytest's pages in its peak. The limit on address space applies to
# the scan alone.
_MEASURED = """
import os, resource, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    if int(sys.argv[2]) > 0:
        resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
    os.execv(sys.executable, [sys.executable, "-m", "inspector", "scan", sys.argv[1]])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def scan(path: Path, *, address_space: int = 0, timeout: float = 20) -> tuple[int, str, float, int]:
    """Run ``lora-inspector scan path``; return its exit code, stderr, seconds and peak RSS in MB."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", _MEASURED, str(path), str(address_space)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # the walker before its caps took 48 s and 6 GB on the first bomb
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"scan {path.name} ran past {timeout} s")
    return proc.returncode, err, time.monotonic() - start, int(out.split()[-1]) // 1024


def assert_refused(rc: int, err: str, why: str) -> None:
    assert rc == 2, err
    assert err.startswith("Error: ") and "\nHint: " in err, err
    assert why in err, err
    assert "Traceback" not in err and "Internal error" not in err, err


def deflated_bin(path: Path, head: bytes, pattern: bytes, size: int, tail: bytes = b"") -> Path:
    """A torch.save-shaped zip whose data.pkl is ``head``, ``pattern`` repeated to ``size`` bytes, ``tail``,
    written through zipfile a megabyte at a time (deflate shrinks it a thousandfold)."""
    block = pattern * (MB // len(pattern))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as member:
            member.write(head)
            for _ in range(size // len(block)):
                member.write(block)
            member.write(tail)
    return path


def raw_deflate(data: bytes, last: bool = False) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)


def lying_zip(path: Path, stream: bytes, declared: bytes) -> Path:
    """One deflated member, archive/data.pkl, whose headers give the size and CRC of ``declared``,
    whatever ``stream`` inflates to."""
    name = b"archive/data.pkl"
    sizes = (zlib.crc32(declared), len(stream), len(declared))
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, zipfile.ZIP_DEFLATED, 0, 0, *sizes, len(name), 0) + name
    central = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, zipfile.ZIP_DEFLATED, 0, 0, *sizes, len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(stream), 0)
    path.write_bytes(local + stream + central + end)
    return path


def test_deflate_bomb_under_the_declared_cap(tmp_path: Path) -> None:
    """60 MB of EMPTY_DICT deflate to ~60 KB and declare 60 MB, under the 64 MB cap: it used to cost
    48 s and 6.3 GB (each opcode listed, then a dict each). Now the stack cap stops it."""
    bomb = deflated_bin(tmp_path / "pytorch_model.bin", b"\x80\x02", b"}", 60 * MB)
    assert bomb.stat().st_size < 200_000
    rc, err, seconds, peak_mb = scan(bomb, address_space=1536 * MB)
    assert_refused(rc, err, "its stack grows past 100,000 values")
    assert seconds < 5 and peak_mb < 400, (seconds, peak_mb)


def test_declared_size_that_lies(tmp_path: Path) -> None:
    """The headers say 1,000 bytes (with their CRC); the stream inflates to 1 GB. Reading the member
    whole inflated all of it before cutting it to the declared size; chunked reads never hold it."""
    head = b"\x80\x02" + b"}" * (MB - 2)
    stream = raw_deflate(head) + raw_deflate(b"}" * MB) * 1023 + raw_deflate(b"", last=True)
    assert len(stream) < 2 * MB
    bomb = lying_zip(tmp_path / "pytorch_model.bin", stream, head[:1000])
    rc, err, seconds, peak_mb = scan(bomb, address_space=1536 * MB)
    assert_refused(rc, err, "Refusing to read pickle")  # the first 1,000 bytes have no STOP
    assert seconds < 5 and peak_mb < 200, (seconds, peak_mb)


def test_member_that_inflates_past_the_cap_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """zipfile stops at the declared size, but the count does not rely on it: a member that reads on
    past the cap is cut off there, not read whole."""
    path = deflated_bin(tmp_path / "pytorch_model.bin", b"\x80\x02", b"}", MB)
    monkeypatch.setattr(torchbin, "MAX_PICKLE_BYTES", 2 * MB)
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *args, **kwargs: io.BytesIO(b"}" * (3 * MB)))
    with pytest.raises(InvalidInputError, match="data.pkl inflates to more than 2,097,152 bytes"):
        torchbin.read_torch_bin(path)


def test_200000_deep_tuple_is_refused_with_a_message(tmp_path: Path) -> None:
    """A dict key nested 200,000 tuples deep: building the refusal (its repr) raised RecursionError."""
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}" + b")" + b"\x85" * 200_000 + b"K\x01s.")
    rc, err, seconds, _ = scan(path)
    assert_refused(rc, err, "its data nests more than 32 levels deep")
    assert seconds < 5


def test_out_of_memory_while_reading_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    """One 60 MB string with a 4-byte character: Python holds it in 4 bytes a character, 240 MB. Under
    a 300 MB address space that runs out; the MemoryError must end as Error/Hint and exit 2."""
    head = b"\x80\x02}X" + struct.pack("<I", 4 + 60 * MB) + "\U0001f600".encode()
    bomb = deflated_bin(tmp_path / "pytorch_model.bin", head, b"a", 60 * MB, b"K\x01s.")
    rc, err, seconds, _ = scan(bomb, address_space=300 * MB)
    assert_refused(rc, err, "ran out of memory")
    assert seconds < 10


def test_memory_error_elsewhere_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def exhausted(*args, **kwargs):
        raise MemoryError

    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"PK\x03\x04")
    monkeypatch.setattr("inspector.io.checkpoint.read_torch_bin", exhausted)
    rc = main(["scan", str(path)])
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    assert err.startswith("Error: Out of memory: ") and "\nHint: " in err and "Internal error" not in err, err


# ---- the walker's own bounds, in-process ----------------------------------------------------------


def test_opcode_count_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dicts memoized and parked in a list: the stack stays low while memo and list grow by one a
    opcode or two. Only the opcode cap stops it (at the real cap: ~3 s and ~430 MB)."""
    monkeypatch.setattr(torchbin, "MAX_PICKLE_OPS", 100_000)
    batch = b"(" + b"}\x94" * 500 + b"e"
    with pytest.raises(InvalidInputError, match=r"more than 100,000 pickle opcodes"):
        walk_pickle(tmp_path / "x.bin", b"\x80\x04]" + batch * 200 + b".")


def test_stack_height_is_capped(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="its stack grows past 100,000 values"):
        walk_pickle(tmp_path / "x.bin", b"\x80\x02" + b"N" * 100_001 + b".")


@pytest.mark.parametrize(("blob", "reason"), [
    (b"\x80\x02]q\x00h\x00a.", "memo key 0 is a dict or list used before it is complete"),  # a list inside itself
    (b"\x80\x02]q\x00\x85h\x00K\x01a.", "APPEND on a list that was already complete"),  # changed through a memo copy
    (b"\x80\x02}q\x00\x85h\x00X\x01\x00\x00\x00a}s.", "SETITEM on a dict that was already complete"),
    (b"\x80\x02(q\x00.", "BINPUT of a MARK"),
    (b"\x80\x02}q\x00}q\x00.", "memo key 0 is used twice"),
    (b"\x80\x02(\x85.", "a MARK where a value belongs"),
    (b"\x80\x02]" + b"(]" * 40 + b"e" * 40 + b".", "its data nests more than 32 levels deep"),
], ids=["cycle", "append-to-alias", "setitem-to-alias", "memoized-mark", "memo-key-reused", "mark-as-value", "deep-lists"])
def test_shapes_that_would_defeat_the_depth_bound(tmp_path: Path, blob: bytes, reason: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        walk_pickle(tmp_path / "x.bin", blob)
    assert reason in info.value.why


def test_messages_quote_file_data_briefly(tmp_path: Path) -> None:
    """A 1 MB global name, a 2,040-bit size and a 10,000-item key are quoted in a few dozen characters."""
    with pytest.raises(InvalidInputError) as info:
        walk_pickle(tmp_path / "x.bin", b"\x80\x02c" + b"m" * MB + b"\nname\n.")
    assert info.value.why == f"it references the global {'m' * 60}....name"
    huge = b"\x8a\xff" + b"\x7f" * 255  # LONG1: a 2,040-bit integer
    storage = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
    blob = b"\x80\x02}X\x01\x00\x00\x00actorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00" + huge + b"\x85K\x01\x85\x89}tRs."
    with pytest.raises(InvalidInputError) as info:
        walk_pickle(tmp_path / "x.bin", blob)
    assert info.value.why == "a tensor size is (<a 2039-bit integer>,), not a tuple of non-negative 64-bit integers"
    with pytest.raises(InvalidInputError) as info:
        walk_pickle(tmp_path / "x.bin", b"\x80\x02}(" + b"N" * 10_000 + b"tK\x01s.")
    assert info.value.why == "dict key (None, None, None, None, ...) is not a string"


@pytest.mark.parametrize("kind", ["bzip2", "lzma", "encrypted"])
def test_data_pkl_other_than_stored_or_deflated_is_refused(tmp_path: Path, kind: str) -> None:
    """bzip2 and lzma members inflate a read's whole input at once, however large; an encrypted one
    made zipfile raise RuntimeError, an "Internal error". torch.save writes neither."""
    path = tmp_path / "pytorch_model.bin"
    method = {"bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA}.get(kind, zipfile.ZIP_STORED)
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}.")
    if kind == "encrypted":  # set bit 0 of the flags in the local header and the central directory
        blob = bytearray(path.read_bytes())
        central = blob.index(b"PK\x01\x02")
        blob[6] |= 1
        blob[central + 8] |= 1
        path.write_bytes(bytes(blob))
    with pytest.raises(InvalidInputError, match="data.pkl is encrypted or compressed other than by deflate"):
        torchbin.read_torch_bin(path)
