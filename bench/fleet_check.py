"""Benchmark: ``check`` of 500 adapters against one Llama-2-7B-shaped base, in one run.

Builds (bench/sparse_checkpoint.py's sparse-hole safetensors writer, stdlib only):

  base      Llama-2-7B in bf16 as the Hub repo holds it: hidden 4096, 32 layers, vocabulary 32,000,
            intermediate 11008, 291 tensors in 2 shards (transformers' "10GB" shards) + index,
            config.json, and a 32,000-token tokenizer.json (about 1.5 MB, as the repo's)
  adapters  500 PEFT LoRA adapters with real headers (data regions are holes): r=16 on q/v mostly,
            other ranks (8, 32, 64), q/k/v/o and all seven linear layers, DoRA, rsLoRA; every tenth
            (--tokenizers K: every K-th) carries a copy of the base's tokenizer, as training scripts
            save it; a few have
            problems (a rank that disagrees with r, a target_modules typo, a grown vocabulary with
            its tokenizer, another model's hidden size)

then times, as subprocesses (interpreter start included; one untimed warm-up, then ``--runs``):

  floor     ``python -c pass``
  one       ``lora-inspector check BASE A1 --target all --format json``
  fleet     ``lora-inspector check BASE A1 ... A500 --target all --format json``

with wall time and peak RSS (the child's ru_maxrss), and verifies the JSON (500 results in order,
the problem adapters' codes, exit 1). The target: the fleet under 10 s on a 2-core machine.

    python bench/fleet_check.py [--adapters 500] [--runs 3] [--tokenizers 10] [--out DIR] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from sparse_checkpoint import _split_shards, _write_json, cli_path, cpu_model, disk_usage, llama_tensors, write_sparse_safetensors  # noqa: E402

TARGET_S = 10.0
# meta-llama/Llama-2-7b-hf's config.json; its safetensors come in 2 shards (save_pretrained's "10GB").
LLAMA7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "vocab_size": 32000}
SHARD_BYTES = 10_000_000_000
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def make_llama7b(out: Path) -> tuple[int, int]:
    """The 7B base (sparse); returns (tensor_count, total_bytes), checked against the closed form."""
    out.mkdir(parents=True, exist_ok=True)
    c = LLAMA7B
    _write_json(out / "config.json", {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                                      "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": False,
                                      "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2, **c})
    tensors = llama_tensors(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"],
                            c["num_key_value_heads"], c["vocab_size"])
    shards = _split_shards(tensors, SHARD_BYTES)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        total += write_sparse_safetensors(out / name, shard, {"format": "pt"})
        weight_map.update({t[0]: name for t in shard})
    _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_tokenizer(out, c["vocab_size"])
    h, i, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    params = n * (4 * h * h + 3 * h * i + 2 * h) + 2 * v * h + h
    assert (len(tensors), len(shards), total) == (n * 9 + 3, 2, params * 2), (len(tensors), len(shards), total)
    return len(tensors), total


def write_tokenizer(out: Path, size: int) -> None:
    """A Llama-like BPE tokenizer.json of ``size`` tokens (3 specials, 256 byte tokens, pieces, merges)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    vocab.update({f"\u2581p{k}": len(vocab) + j for j, k in enumerate(range(size - len(vocab)))})
    merges = [f"\u2581p{k // 7} {k % 97}" for k in range(size - 259)]
    added = [{"id": i, "content": t, "special": True} for t, i in (("<unk>", 0), ("<s>", 1), ("</s>", 2))]
    data = {"version": "1.0", "added_tokens": added, "model": {"type": "BPE", "byte_fallback": True, "vocab": vocab, "merges": merges}}
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


@dataclass(frozen=True)
class Spec:
    """One adapter: LoRA on ``modules`` at rank ``r`` (``stored`` when the tensors disagree)."""

    r: int = 16
    modules: tuple[str, ...] = ("q_proj", "v_proj")
    dora: bool = False
    rslora: bool = False
    stored: int | None = None  # rank in the tensors, when it differs from r (LI303)
    typo: bool = False  # a target_modules entry no module has (LI402)
    vocab: int | None = None  # embed_tokens / lm_head saved with this many rows, tokenizer to match (LI101)
    hidden: int = 4096  # another model's hidden size (LI301 / LI302: its LoRA shapes do not fit)
    tokenizer: bool = False  # a copy of the base's tokenizer, as training scripts save it
    problem: str = ""  # the error / warning code expected


def spec_for(k: int, every: int = 10) -> Spec:
    """Adapter ``k``'s recipe: mostly r=16 q/v; other ranks and targets; a few problems; every
    ``every``-th carries the base's tokenizer (0: none)."""
    problems = {7: Spec(stored=8, problem="LI303"), 77: Spec(typo=True, problem="LI402"),
                177: Spec(vocab=32001, problem="LI101"), 277: Spec(hidden=5120, problem="LI301")}
    if k in problems:
        return problems[k]
    r = (16, 16, 8, 32, 16, 64)[k % 6]
    modules = (("q_proj", "v_proj"), ("q_proj", "v_proj"), ATTN, ATTN + MLP)[k % 4]
    return Spec(r=r, modules=modules, dora=k % 25 == 3, rslora=k % 9 == 4, tokenizer=every > 0 and k % every == 5 % every)


def make_adapter(out: Path, spec: Spec, base_dir: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    c, h = LLAMA7B, spec.hidden
    inter = c["intermediate_size"] if h == 4096 else 13824
    shapes = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h), "gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}
    rank = spec.stored or spec.r
    tensors = []
    for layer in range(c["num_hidden_layers"]):
        for m in spec.modules:
            key = f"base_model.model.model.layers.{layer}.{'self_attn' if m in ATTN else 'mlp'}.{m}"
            fan_out, fan_in = shapes[m]
            tensors += [(f"{key}.lora_A.weight", "F32", (rank, fan_in)), (f"{key}.lora_B.weight", "F32", (fan_out, rank))]
            if spec.dora:
                tensors.append((f"{key}.lora_magnitude_vector", "F32", (fan_out,)))
    saved = ["embed_tokens", "lm_head"] if spec.vocab else None
    if spec.vocab:
        tensors += [(f"base_model.model.{n}.weight", "F32", (spec.vocab, h)) for n in ("model.embed_tokens", "lm_head")]
    write_sparse_safetensors(out / "adapter_model.safetensors", sorted(tensors), {"format": "pt"})
    _write_json(out / "adapter_config.json", {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "meta-llama/Llama-2-7b-hf", "r": spec.r,
        "lora_alpha": 2 * spec.r, "lora_dropout": 0.05, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "target_modules": [*spec.modules, *(["qv_proj"] if spec.typo else [])], "modules_to_save": saved,
        "use_dora": spec.dora, "use_rslora": spec.rslora, "rank_pattern": {}, "alpha_pattern": {}, "init_lora_weights": True,
    })
    if spec.tokenizer:
        shutil.copy(base_dir / "tokenizer.json", out / "tokenizer.json")
    if spec.vocab:
        write_tokenizer(out, spec.vocab)


def run_once(cmd: list[str], stdout: Path) -> tuple[float, int, int]:
    """(wall seconds, exit code, peak RSS in bytes) of one run; stdout and stderr go to files.

    Peak RSS is ``/usr/bin/time -v``'s where present (os.wait4's ru_maxrss of a forked child would
    count the parent's pages until exec), else the child's own ru_maxrss."""
    timev = os.access("/usr/bin/time", os.X_OK)
    stderr = stdout.with_suffix(".err")
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd] if timev else cmd, stdout=out, stderr=err, env=dict(os.environ, COLUMNS="160"))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code, text = os.waitstatus_to_exitcode(status), stderr.read_text(errors="replace")
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(cmd[:4])} ... exited {code}:\n{text}")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text) if timev else None
    return wall, code, int(found.group(1) if found else usage.ru_maxrss) * 1024  # KiB on Linux


def measure(cmd: list[str], runs: int, stdout: Path) -> tuple[list[float], list[int], int]:
    run_once(cmd, stdout)  # warm-up: page cache, .pyc files
    walls, peaks, code = [], [], 0
    for _ in range(runs):
        wall, code, peak = run_once(cmd, stdout)
        walls.append(wall)
        peaks.append(peak)
    return walls, peaks, code


def verify(report: dict, paths: list[Path], specs: list[Spec]) -> list[str]:
    failures = []
    results = report.get("results", [])
    if [r["adapter"]["path"] for r in results] != [str(p) for p in paths]:
        return [f"results: {len(results)} adapters, expected {len(paths)} in the order given"]
    for k, (result, spec) in enumerate(zip(results, specs)):
        found = {f["code"] for f in result["findings"] if f["severity"] in ("error", "warning") and not f["code"].startswith("LI15")}
        if spec.problem and spec.problem not in found:
            failures.append(f"adapter {k}: expected {spec.problem}, found {sorted(found)}")
        if not spec.problem and found:
            failures.append(f"adapter {k}: expected no error or warning outside LI15xx, found {sorted(found)}")
    return failures


def profile(cmd: list[str]) -> None:
    """The fleet check in this process under cProfile: where the time goes."""
    import cProfile
    import io
    import pstats
    from contextlib import redirect_stdout

    from inspector.cli import main

    prof = cProfile.Profile()
    with redirect_stdout(io.StringIO()):
        prof.runcall(main, cmd)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per command (after one warm-up)")
    ap.add_argument("--out", type=Path, help="build the checkpoints here and keep them (default: a temp dir, removed)")
    ap.add_argument("--tokenizers", type=int, default=10, metavar="K", help="every K-th adapter carries a copy of the base's tokenizer (1: all, 0: none)")
    ap.add_argument("--profile", action="store_true", help="also profile the fleet check in-process (cProfile)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fleet-"))
    try:
        return run(out, args.adapters, args.runs, args.tokenizers, args.profile)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


def run(out: Path, count: int, runs: int, every: int, want_profile: bool) -> int:
    t0 = time.perf_counter()
    base = out / "llama-2-7b"
    tensor_count, total = make_llama7b(base)
    specs = [spec_for(k, every) for k in range(count)]
    paths = [out / "adapters" / f"a{k:03d}" for k in range(count)]
    for path, spec in zip(paths, specs):
        make_adapter(path, spec, base)
    build_s = time.perf_counter() - t0

    cli = cli_path()
    fleet_cmd = [*cli, "check", str(base), *map(str, paths), "--target", "all", "--format", "json"]
    floor, floor_rss, _ = measure([sys.executable, "-c", "pass"], runs, out / "floor.out")
    one, one_rss, _ = measure([*cli, "check", str(base), str(paths[0]), "--target", "all", "--format", "json"], runs, out / "one.json")
    fleet, fleet_rss, code = measure(fleet_cmd, runs, out / "fleet.json")
    report = json.loads((out / "fleet.json").read_text())
    failures = verify(report, paths, specs) + ([] if code == 1 else [f"exit code {code}, expected 1 (adapters with errors)"])

    print(f"## check of {count} adapters against a Llama-2-7B-shaped base ({runs} runs each, after one warm-up)\n")
    print(f"Machine: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}\n")
    lora = sum(1 for s in specs for _ in s.modules) * LLAMA7B["num_hidden_layers"] * 2
    print(f"Base: {tensor_count} tensors, {total:,} bytes (bf16, 2 shards + index), 32,000-token tokenizer.json. "
          f"Adapters: {count} ({lora:,} LoRA tensors in all; {sum(s.tokenizer for s in specs)} carry a tokenizer.json; "
          f"problems: {', '.join(s.problem for s in specs if s.problem)}). {disk_usage(out) / 1e6:.1f} MB on disk; built in {build_s:.1f} s.\n")
    print("| command | wall median | min | max | peak RSS (max) |")
    print("|---|---:|---:|---:|---:|")
    for what, walls, peaks in (("`python -c pass` (interpreter floor)", floor, floor_rss),
                               ("`check BASE A1 --target all --format json`", one, one_rss),
                               (f"`check BASE A1 ... A{count} --target all --format json`", fleet, fleet_rss)):
        print(f"| {what} | {statistics.median(walls):.2f} s | {min(walls):.2f} s | {max(walls):.2f} s | {max(peaks) / 2**20:,.0f} MiB |")
    per = (statistics.median(fleet) - statistics.median(one)) / max(count - 1, 1)
    print(f"\nPer additional adapter: {per * 1000:.1f} ms. JSON report: {(out / 'fleet.json').stat().st_size / 1e6:.1f} MB, exit {code}.")
    worst = statistics.median(fleet)
    print(f"Fleet median {worst:.2f} s against the {TARGET_S:.0f} s target: {'OK' if worst < TARGET_S else 'TOO SLOW'}.")
    if want_profile:
        profile(fleet_cmd[len(cli):])
    if failures:
        print("\nFAILED:\n" + "\n".join(f"- {f}" for f in failures))
        return 1
    print("Verified: one result per adapter in order, each problem adapter's code, no other error or warning outside LI15xx.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
