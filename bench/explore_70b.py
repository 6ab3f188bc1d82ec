"""Benchmark: `lora-inspector explore BASE ADAPTER` on the Llama-2-70B-shaped case, in a real pseudo-terminal.

Builds the 29-shard bf16 base (723 tensors, 138 GB apparent, sparse holes) and the 70,840-row adapter
(bench/sparse_checkpoint.py), then starts `explore` on a pty as a user would and times

  first screen   from the process start to the screen drawn (the findings panel's title written)
  quit           from `q` to the process's exit (exit code 0 checked)

and reads the process's /proc/PID/io when the screen is up: the bytes it read in all (rchar: every
.py/.pyc, the headers, the configs) against one vocabulary tensor's 500 MiB, and whether torch is in
its memory maps (it must not be before a tensor is opened).

    python bench/explore_70b.py [--runs 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import pty
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from sparse_checkpoint import cli_path, cpu_model, make_adapter70840, make_llama70b

TARGET_S = 1.0
MARKER = b"findings ("  # the findings panel's border title: drawn with the first full screen


def one_run(cmd: list[str], timeout: float = 60.0) -> tuple[float, float, int, bool]:
    """(seconds to the first screen, seconds from q to exit, rchar at the first screen, torch mapped then)."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="100", LINES="30")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = b""
    try:
        while MARKER not in seen:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"no screen within {timeout} s:\n{seen[-2000:]!r}")
            if select.select([master], [], [], 0.01)[0]:
                try:
                    seen += os.read(master, 1 << 16)
                except OSError:
                    break
        first = time.perf_counter() - t0
        io = dict(line.split(": ") for line in Path(f"/proc/{proc.pid}/io").read_text().splitlines())
        torch = "/torch/" in Path(f"/proc/{proc.pid}/maps").read_text()
        t1 = time.perf_counter()
        os.write(master, b"q")
        while proc.poll() is None:  # keep draining: a full pty would block the app's last writes
            if select.select([master], [], [], 0.01)[0]:
                try:
                    os.read(master, 1 << 16)
                except OSError:
                    pass
            if time.perf_counter() - t1 > timeout:
                proc.kill()
                raise SystemExit("explore did not quit on q")
        quit_s = time.perf_counter() - t1
    finally:
        os.close(master)
    if proc.returncode != 0:
        raise SystemExit(f"explore exited {proc.returncode}")
    return first, quit_s, int(io["rchar"]), torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="keep the checkpoints in this directory")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="explore70b-"))
    try:
        base, adapter = root / "base", root / "adapter"
        if not (base / "model.safetensors.index.json").exists():
            make_llama70b(base)
            make_adapter70840(adapter)
        cmd = [*cli_path(), "explore", str(base), str(adapter)]
        one_run(cmd)  # warm-up: page cache, .pyc
        runs = [one_run(cmd) for _ in range(args.runs)]
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    firsts = [r[0] for r in runs]
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}, {platform.system()} {platform.release()}")
    print(f"explore BASE ADAPTER, first screen (process start included): median {statistics.median(firsts) * 1000:.0f} ms, "
          f"max {max(firsts) * 1000:.0f} ms over {len(runs)} runs (target {TARGET_S * 1000:.0f} ms)")
    print(f"q to exit: median {statistics.median(r[1] for r in runs) * 1000:.0f} ms")
    print(f"bytes read by the first screen (rchar, code included): median {statistics.median(r[2] for r in runs) / 2**20:.1f} MiB; "
          f"torch loaded: {any(r[3] for r in runs)}")
    return 0 if statistics.median(firsts) < TARGET_S and not any(r[3] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
