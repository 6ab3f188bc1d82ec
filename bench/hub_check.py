"""Benchmark: `check` of a Llama-2-70B-shaped base and its adapter given as Hub ids, against a local
server that speaks the Hub's HTTP API (tests/hubserver.py), without downloading the weights.

Builds the 29-shard bf16 base (138 GB apparent, sparse holes) and the 70,840-token adapter
(bench/sparse_checkpoint.py), serves both as `org/base-70b` and `org/lora-70840` on 127.0.0.1, and times

  local        `lora-inspector check BASE_DIR ADAPTER_DIR --format json` (the same files on disk)
  remote cold  `lora-inspector check org/base-70b org/lora-70840 --format json`, an empty HF cache
  remote warm  the same with the small files already in the cache (headers are always range-read)

each a subprocess (interpreter start included; the server runs in this process), and checks that
the remote report equals the local one and what the server sent: the 29 headers, the index and the
small files, no tensor data (bytes served below 5 MB). Docs: docs/benchmarks.md ("Remote check").

    python bench/hub_check.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from scan_70b import machine, ms
from sparse_checkpoint import cli_path, make_adapter70840, make_llama70b

from tests.hubserver import HubServer, Repo

TARGET_S = 2.0
BYTES_LIMIT = 5_000_000


def repo_files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def without_paths(report: dict, *paths: str) -> str:
    """The report as text with the checkpoints' names (paths or Hub ids) and the remote block left out."""
    for side in ("base", "adapter"):
        report[side].pop("path")
        report[side].pop("remote", None)
    text = json.dumps(report, sort_keys=True)
    for p in paths:
        text = text.replace(p, "<ckpt>")
    return text


def timed(cmd: list[str], env: dict, fresh_cache: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    if fresh_cache is not None:
        shutil.rmtree(fresh_cache, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    return elapsed, proc


def run(out: Path, runs: int) -> int:
    base = make_llama70b(out / "base")
    adapter = make_adapter70840(out / "adapter")
    cli = cli_path()
    failures: list[str] = []
    repos = {"org/base-70b": Repo({"main": repo_files(base.path)}), "org/lora-70840": Repo({"main": repo_files(adapter.path)})}
    with HubServer(repos) as hub:
        home = out / "hf-home"
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(home), COLUMNS="160")
        env.pop("HF_HUB_OFFLINE", None)
        local_cmd = [*cli, "check", str(base.path), str(adapter.path), "--format", "json"]
        remote_cmd = [*cli, "check", "org/base-70b", "org/lora-70840", "--format", "json"]
        timed(local_cmd, env)  # warm-up: page cache, .pyc
        local = [timed(local_cmd, env) for _ in range(runs)]
        cold, warm, served = [], [], []
        for _ in range(runs):
            before = hub.served.total
            cold.append(timed(remote_cmd, env, fresh_cache=home))
            served.append(hub.served.total - before)
            warm.append(timed(remote_cmd, env))
        remote_report = json.loads(cold[-1][1].stdout)
        local_report = json.loads(local[-1][1].stdout)
        read = remote_report["base"]["remote"], remote_report["adapter"]["remote"]
        if without_paths(remote_report, "org/base-70b", "org/lora-70840") != without_paths(local_report, str(base.path), str(adapter.path)):
            failures.append("the remote report differs from the local one")
        if len(read[0]["headers"]) != 29:
            failures.append(f"{len(read[0]['headers'])} base headers read, expected 29")
        if max(served) >= BYTES_LIMIT:
            failures.append(f"{max(served)} bytes served, limit {BYTES_LIMIT}")
        med = statistics.median(t for t, _ in cold)
        if med >= TARGET_S:
            failures.append(f"remote cold check median {med:.2f} s, target < {TARGET_S} s")

    print(f"machine: {machine()}")
    print(f"base: 29 shards, {base.tensor_count} tensors, {base.file_bytes / 1e9:.0f} GB apparent; adapter: {adapter.tensor_count} tensors")
    print(f"served per cold remote check: {served[-1]:,} bytes (reported transferred: base {read[0]['bytes_transferred']:,}, "
          f"adapter {read[1]['bytes_transferred']:,}; the rest is the model-info API's JSON)")
    print("| measurement | median | min | max |")
    print("|---|---|---|---|")
    for what, results in (("local check (files on disk)", local), ("remote check, empty cache", cold), ("remote check, small files cached", warm)):
        times = [t for t, _ in results]
        print(f"| {what} | {ms(statistics.median(times))} | {ms(min(times))} | {ms(max(times))} |")
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median reported)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="hubcheck-")
    try:
        return run(Path(tmp), args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
