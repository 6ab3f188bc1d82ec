"""Benchmark: header-only scan (and check, once it exists) of a Llama-2-70B-shaped checkpoint.

Builds a 29-shard bf16 Llama-2-70B base (138 GB apparent, sparse holes) and a 70,840-token LoRA
adapter for it (bench/sparse_checkpoint.py), then times

  floor       `python -c pass` (interpreter start, the lowest a subprocess can go)
  import      `python -c "import inspector.cli"`
  scan        `lora-inspector scan BASE --format json` (subprocess, interpreter start included)
  scan both   `lora-inspector scan BASE ADAPTER --format json`
  check       `lora-inspector check BASE ADAPTER --format json` (skipped until the command exists)
  in-process  `read_checkpoint(BASE)` / `read_checkpoint(ADAPTER)`

and verifies the scan's counts against the index and the closed-form figures. The spec's target
(docs/design.md, "Performance targets"): scan/check of this case well under 1 s, without importing torch.

    python bench/scan_70b.py [--runs 5] [--out DIR]   # --out keeps the checkpoints in DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from sparse_checkpoint import cli_path, cpu_model, disk_usage, make_adapter70840, make_llama70b  # noqa: E402

TARGET_S = 1.0


def time_cmd(cmd: list[str], runs: int, ok_codes=(0,)) -> tuple[list[float], subprocess.CompletedProcess]:
    """Wall time of ``runs`` runs of ``cmd`` (after one untimed warm-up run); the last result."""
    env = dict(os.environ, COLUMNS="160")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)  # warm-up: page cache, .pyc
    if proc.returncode not in ok_codes:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
        if proc.returncode not in ok_codes:
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    return times, proc


def time_call(fn, runs: int) -> tuple[float, list[float], object]:
    """(first call's time, the next ``runs`` calls' times, last result)."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return first, times, result


def has_command(cli: list[str], name: str) -> bool:
    proc = subprocess.run([*cli, "--help"], capture_output=True, text=True)
    in_commands = False
    for line in proc.stdout.splitlines():
        if line.strip().lower().startswith("commands"):
            in_commands = True
        elif in_commands and line.split()[:1] == [name]:
            return True
    return False


def machine() -> str:
    model = cpu_model()
    return f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {model}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x >= 0.01 else f"{x * 1000:.1f} ms"


def row(what: str, times: list[float], note: str = "") -> str:
    return f"| {what} | {ms(statistics.median(times))} | {ms(min(times))} | {ms(max(times))} | {note} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median reported)")
    ap.add_argument("--out", type=Path, help="build the checkpoints here and keep them (default: a temp dir, removed)")
    args = ap.parse_args()

    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="scan70b-")
        out = Path(tmp)
    else:
        out = args.out
    try:
        return run(out, args.runs)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(out: Path, runs: int) -> int:
    t0 = time.perf_counter()
    base = make_llama70b(out / "llama70b")
    adapter = make_adapter70840(out / "adapter70840")
    build_s = time.perf_counter() - t0
    apparent = base.file_bytes + adapter.file_bytes
    on_disk = disk_usage(out)

    cli = cli_path()
    failures: list[str] = []

    floor, _ = time_cmd([sys.executable, "-c", "pass"], runs)
    imp, _ = time_cmd([sys.executable, "-c", "import inspector.cli"], runs)
    scan_t, proc = time_cmd([*cli, "scan", str(base.path), "--format", "json"], runs)
    report = json.loads(proc.stdout)["checkpoints"][0]
    index = json.loads((base.path / "model.safetensors.index.json").read_text())
    expect = {
        "tensor_count": base.tensor_count,
        "parameter_count": base.parameter_count,
        "total_bytes": index["metadata"]["total_size"],
    }
    if index["metadata"]["total_size"] != base.total_bytes:
        failures.append(f"index total_size {index['metadata']['total_size']} != expected {base.total_bytes}")
    for key, want in expect.items():
        if report.get(key) != want:
            failures.append(f"scan {key} = {report.get(key)}, expected {want}")
    if len(report.get("files", [])) != len(base.files):
        failures.append(f"scan lists {len(report.get('files', []))} files, expected {len(base.files)}")

    both_t, proc = time_cmd([*cli, "scan", str(base.path), str(adapter.path), "--format", "json"], runs)
    rep_a = json.loads(proc.stdout)["checkpoints"][1]
    for key in ("tensor_count", "parameter_count", "total_bytes"):
        if rep_a.get(key) != getattr(adapter, key):
            failures.append(f"adapter scan {key} = {rep_a.get(key)}, expected {getattr(adapter, key)}")

    check_t = None
    check_note = "`check` not in `lora-inspector --help` yet: skipped"
    if has_command(cli, "check"):
        # Exit 1 is expected: the adapter's 70,840-row embed_tokens/lm_head do not fit the base's 32,000.
        check_t, proc = time_cmd([*cli, "check", str(base.path), str(adapter.path), "--format", "json"], runs, ok_codes=(0, 1))
        result = json.loads(proc.stdout)
        codes = sorted({f.get("code") for f in result.get("findings", [])})
        check_note = f"exit {proc.returncode}; summary {result.get('summary')}; codes {', '.join(map(str, codes))}"
        shapes = {(f.get("tensor"), tuple(f.get("adapter_shape") or ()), tuple(f.get("base_shape") or ())) for f in result.get("findings", [])}
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            if (name, (70840, 8192), (32000, 8192)) not in shapes:
                failures.append(f"check reports no [70840, 8192] vs [32000, 8192] finding for {name}")

    from inspector.io.checkpoint import read_checkpoint

    first_b, inproc_b, ckpt = time_call(lambda: read_checkpoint(base.path), runs)
    first_a, inproc_a, _ = time_call(lambda: read_checkpoint(adapter.path), runs)
    heavy = sorted(m for m in ("torch", "transformers", "peft", "safetensors", "numpy") if m in sys.modules)
    if ckpt.parameter_count != base.parameter_count:
        failures.append(f"read_checkpoint parameter_count {ckpt.parameter_count} != {base.parameter_count}")

    rows = [
        "| measurement | median | min | max | notes |",
        "|---|---:|---:|---:|---|",
        row("`python -c pass` (interpreter floor)", floor),
        row("`python -c \"import inspector.cli\"`", imp),
        row("`lora-inspector scan BASE --format json`", scan_t, f"{base.tensor_count} tensors, 30 files"),
        row("`lora-inspector scan BASE ADAPTER --format json`", both_t, f"+ {adapter.tensor_count} adapter tensors"),
    ]
    if check_t is not None:
        rows.append(row("`lora-inspector check BASE ADAPTER --format json`", check_t, check_note))
    else:
        rows.append(f"| `lora-inspector check BASE ADAPTER --format json` | - | - | - | {check_note} |")
    rows += [
        row("in-process `read_checkpoint(BASE)`", inproc_b, f"first call {ms(first_b)}"),
        row("in-process `read_checkpoint(ADAPTER)`", inproc_a, f"first call {ms(first_a)}"),
    ]
    worst = max(statistics.median(scan_t), statistics.median(both_t), statistics.median(check_t) if check_t else 0)
    print(f"## scan of a Llama-2-70B-shaped checkpoint ({runs} runs each, after one warm-up)\n")
    print(f"Machine: {machine()}\n")
    print(
        f"Base: {base.tensor_count} tensors, {base.parameter_count:,} parameters, {base.total_bytes:,} bytes (bf16) in "
        f"{len(base.files) - 1} shards + index. Adapter: {adapter.tensor_count} tensors, {adapter.parameter_count:,} parameters, "
        f"{adapter.total_bytes:,} bytes (F32, r=16, embed_tokens/lm_head [70840, 8192]). Apparent size {apparent / 1e9:.1f} GB, "
        f"{on_disk / 1e6:.2f} MB on disk (sparse); built in {build_s:.2f} s.\n"
    )
    print("\n".join(rows))
    print()
    print(f"Modules loaded in-process after read_checkpoint among torch/transformers/peft/safetensors/numpy: {', '.join(heavy) or 'none'}.")
    print(f"Slowest command median {ms(worst)} against the {TARGET_S:.0f} s target: {'OK' if worst < TARGET_S else 'TOO SLOW'}.")
    if heavy and {"torch", "transformers"} & set(heavy):
        failures.append(f"read_checkpoint imported {heavy}")
    if failures:
        print("\nFAILED:\n" + "\n".join(f"- {f}" for f in failures))
        return 1
    print("Counts verified: tensor_count, parameter_count, total_bytes (= index metadata.total_size), files.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
