"""Benchmark: lora-inspector's streaming merge against the standard PEFT path (docs/design.md, "Performance targets").

Builds the spec's reference case once (cached in bench/out/<case>/, git-ignored) with transformers +
PEFT: a bf16 Llama-shaped base with vocab 32,000 and a LoRA adapter trained on a 70,840-token
vocabulary (modules_to_save ["embed_tokens", "lm_head"] + r=16 LoRA on q/k/v/o/gate/up/down,
lora_B perturbed so it is non-zero, saved by PEFT's own save_pretrained in the dtypes PEFT uses).
Then measures, each as a separate subprocess, in the same run, round-robin:

  peft   python bench/peft_merge.py BASE ADAPTER OUT   (from_pretrained bf16, resize_token_embeddings
         with mean_resizing=False (see peft_merge.py), PeftModel.from_pretrained, merge_and_unload,
         save_pretrained; --peft-mean-resizing adds one run with transformers' default)
  ours   lora-inspector merge BASE ADAPTER --out OUT --device DEV --force --quiet --format json
  cp     cp -r BASE OUT && sync                        (the copy floor, on disk as ours is)
  floor  python -c "import torch"                      (interpreter + torch import, for reference)

Wall time is the parent's clock around the child; peak RSS is the child's ru_maxrss (from
`/usr/bin/time -v` when present, else os.wait4), i.e. the largest resident set any process of the
child's tree reached; the tree's summed RSS is also sampled every 10 ms as a cross-check; CPU is the
tree's user+sys seconds (robust to other load on the machine, unlike wall time). Caches are
warm (one untimed warm-up of each command), `sync` runs before every measured command, outputs are
removed before each run. Finally ours is compared tensor by tensor with PEFT's output: same names,
shapes, dtypes, values within bf16 rounding (<= 1 ulp; the worst is reported).

    python bench/merge_bench.py [--runs 3] [--device cpu|cuda] [--case cpu-473mb|gpu-3.6gb] [--rebuild]
                                [--threads N] [--env KEY=VALUE]... [--peft-mean-resizing] [--no-warmup]
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
import threading
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sparse_checkpoint import cli_path, cpu_model  # noqa: E402  (bench/ is no package: this script's own folder)

CACHE = HERE / "out"
NEW_VOCAB = 70_840
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# hidden/intermediate/layers from docs/design.md; intermediate 5600 puts the 473 MB case at 473.4 MB (bf16).
CASES = {
    "cpu-473mb": {"hidden": 1024, "intermediate": 5600, "layers": 8, "heads": 16, "kv_heads": 16, "vocab": 32_000},
    "gpu-3.6gb": {"hidden": 4096, "intermediate": 11008, "layers": 8, "heads": 32, "kv_heads": 32, "vocab": 32_000},
}
# The targets (docs/design.md): ours / PEFT at most this, wall and peak RSS (GPU: wall 0.4x, host RSS under 1.5 GB).
TARGETS = {"cpu": (0.5, 0.5, None), "cuda": (0.4, None, 1.5e9)}


# ------------------------------------------------------------------------------------------ build


def build(case: str, dest: Path) -> None:
    """Base (transformers save_pretrained) and adapter (PEFT save_pretrained) into ``dest`` (run in a subprocess)."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    c = CASES[case]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=c["vocab"], hidden_size=c["hidden"], intermediate_size=c["intermediate"], num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"], max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    base = dest / "base"
    model.save_pretrained(base)
    # adapter_config.json's base_model_name_or_path; PEFT reads that config at save time, sees the
    # vocabulary grew and also saves the embedding layers (three copies of each matrix, as in the wild)
    model.name_or_path = str(base)
    # Training on the extended tokenizer: resize, then LoRA + full embed_tokens/lm_head copies.
    model.resize_token_embeddings(NEW_VOCAB, mean_resizing=False)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=TARGET_MODULES, modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:  # lora_A/lora_B and the modules_to_save copies: "trained"
                param.add_((torch.randn(param.shape, dtype=torch.float32) * 0.02).to(param.dtype))
    adapter = dest / "adapter"
    peft_model.save_pretrained(adapter)
    (adapter / "README.md").unlink(missing_ok=True)


def ensure_built(case: str, rebuild: bool) -> tuple[Path, Path, dict]:
    root = CACHE / case
    marker = root / "build.json"
    want = {"v": 3, "case": case, **CASES[case], "new_vocab": NEW_VOCAB, "r": 16, "targets": TARGET_MODULES}
    if not rebuild and marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("spec") == want:
            return root / "base", root / "adapter", info
    shutil.rmtree(root, ignore_errors=True)  # no marker: absent or incomplete
    root.mkdir(parents=True)
    print(f"Building {case} into {root} (once; cached) ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--_build", case, "--_dest", str(root)], check=True)
    built_s = time.perf_counter() - t0
    info = {"spec": want, "built_s": round(built_s, 1), "base_bytes": dir_bytes(root / "base"), "adapter_bytes": dir_bytes(root / "adapter")}
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return root / "base", root / "adapter", info


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------- measure


def _tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of ``pid`` and its descendants, from /proc (0 where unreadable)."""
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * page
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            pass
    return total


def run_measured(cmd: list[str], env: dict) -> dict:
    """Wall seconds, peak RSS bytes (ru_maxrss of the child tree), sampled tree-sum peak, output."""
    timev = os.access("/usr/bin/time", os.X_OK)
    full = ["/usr/bin/time", "-v", *cmd] if timev else cmd
    os.sync()  # earlier runs' dirty pages are not this run's cost
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    sampled = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            sampled[0] = max(sampled[0], _tree_rss(proc.pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out_chunks: dict[str, bytes] = {}

    def drain(name: str, stream) -> None:
        out_chunks[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    for r in readers:
        r.join()
    thread.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = out_chunks["err"].decode(errors="replace")
    rss = usage.ru_maxrss * 1024  # KiB on Linux
    if timev:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
        if m:
            rss = int(m.group(1)) * 1024
        stderr = stderr[: stderr.rfind("\tCommand being timed")] if "\tCommand being timed" in stderr else stderr
    cpu = usage.ru_utime + usage.ru_stime  # the child tree's CPU seconds (less sensitive to other load than wall)
    # minor page faults of the child tree: fresh buffers per block cost one per 4 KB page they touch
    return {"wall": wall, "cpu": cpu, "rss": rss, "minflt": usage.ru_minflt, "tree": sampled[0], "rc": proc.returncode, "stdout": out_chunks["out"].decode(errors="replace"), "stderr": stderr}


# ----------------------------------------------------------------------------------------- verify


def open_tensors(model_dir: Path):
    """name -> (file) for a saved model directory (single file or sharded with index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        wm = json.loads(index.read_text())["weight_map"]
        return {k: model_dir / v for k, v in wm.items()}
    from safetensors import safe_open

    single = model_dir / "model.safetensors"
    with safe_open(single, "pt") as f:
        return {k: single for k in f.keys()}


def compare(ours: Path, peft: Path, base: Path) -> dict:
    """Ours vs PEFT per tensor: names, shapes, dtypes, max abs diff and worst diff in bf16/fp16 ulps."""
    import torch
    from safetensors import safe_open

    a_map, b_map, base_map = open_tensors(ours), open_tensors(peft), open_tensors(base)
    res = {"missing": sorted(set(b_map) - set(a_map)), "extra": sorted(set(a_map) - set(b_map)), "mismatch": [],
           "worst_abs": (0.0, ""), "worst_ulp": (0.0, ""), "differing_elems": 0, "elems": 0, "tensors": 0, "changed_vs_base": 0}  # fmt: skip
    handles: dict[Path, object] = {}

    def get(path: Path, name: str):
        if path not in handles:
            handles[path] = safe_open(path, "pt")
        return handles[path].get_tensor(name)

    for name in sorted(set(a_map) & set(b_map)):
        a, b = get(a_map[name], name), get(b_map[name], name)
        res["tensors"] += 1
        if a.shape != b.shape or a.dtype != b.dtype:
            res["mismatch"].append(f"{name}: ours {a.dtype} {list(a.shape)} vs PEFT {b.dtype} {list(b.shape)}")
            continue
        af, bf = a.float(), b.float()
        diff = (af - bf).abs()
        res["elems"] += diff.numel()
        res["differing_elems"] += int((diff > 0).sum())
        m = float(diff.max()) if diff.numel() else 0.0
        if m > res["worst_abs"][0]:
            res["worst_abs"] = (m, name)
        if a.dtype in (torch.bfloat16, torch.float16) and m > 0:
            mant = 7 if a.dtype == torch.bfloat16 else 10
            mag = torch.maximum(af.abs(), bf.abs()).clamp_min(torch.finfo(a.dtype).tiny)
            ulp = torch.exp2(torch.floor(torch.log2(mag)) - mant)
            u = float((diff / ulp).max())
            if u > res["worst_ulp"][0]:
                res["worst_ulp"] = (u, name)
        if name in base_map:
            o = get(base_map[name], name)
            if o.shape != a.shape or not torch.equal(o, a):
                res["changed_vs_base"] += 1
        else:
            res["changed_vs_base"] += 1
    res["ok"] = not (res["missing"] or res["extra"] or res["mismatch"]) and res["worst_ulp"][0] <= 1.0
    return res


# ---------------------------------------------------------------------------------------- report


def machine(device: str) -> str:
    model = cpu_model()
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
        mem_s = f"{mem / 2**30:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        mem_s = "RAM unknown"
    dev = "CPU"
    if device != "cpu":
        proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name(0))"], capture_output=True, text=True)
        dev = proc.stdout.strip() or "CUDA (name unknown)"
    vers = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "transformers", "peft"))
    return f"nproc {len(os.sched_getaffinity(0))}, {model}, {mem_s}, {vers}, Python {platform.python_version()}, device: {dev}"


def write_mode(where: Path) -> str:
    """How the merge's shards reach the disk under ``where`` (inspector/io/direct.py): O_DIRECT, or the
    page cache where the filesystem refuses it or LORA_INSPECTOR_NO_DIRECT is set."""
    from inspector.io.direct import DirectFile

    probe = where / ".direct-probe"
    probe.unlink(missing_ok=True)
    f = DirectFile(probe, buffer_bytes=1 << 16)
    try:
        f.write(bytes(1 << 16))  # one full, aligned buffer: written straight away
        return "O_DIRECT" if f.direct else "through the page cache (O_DIRECT refused or switched off)"
    finally:
        f.close()
        probe.unlink()


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="measured runs of each command (median reported)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: PEFT merges on the GPU, ours gets --device cuda")
    ap.add_argument("--case", choices=sorted(CASES), help="default: cpu-473mb on cpu, gpu-3.6gb on cuda")
    ap.add_argument("--peft-mean-resizing", action="store_true",
                    help="also measure PEFT with transformers' default resize_token_embeddings(mean_resizing=True) (minutes on CPU)")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every measured command (default: torch's own, one per core)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="set in every measured command's environment, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached base and adapter")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run of each command")
    ap.add_argument("--_build", help=argparse.SUPPRESS)
    ap.add_argument("--_dest", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._build:
        build(args._build, args._dest)
        return 0
    case = args.case or ("gpu-3.6gb" if args.device == "cuda" else "cpu-473mb")

    base, adapter, info = ensure_built(case, args.rebuild)
    runs_dir = CACHE / case / "runs"
    outs = {k: runs_dir / k for k in ("peft", "ours", "cp", "peft-mr")}

    def peft_cmd(key: str) -> list[str]:
        return [sys.executable, str(HERE / "peft_merge.py"), str(base), str(adapter), str(outs[key]), "--device", args.device]

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="160")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    threads = f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}" if env.get("OMP_NUM_THREADS") else "torch threads: default"
    if args.env:
        threads += ", environment: " + " ".join(args.env)
    cmds = {
        "peft": peft_cmd("peft"),
        "ours": [*cli_path(), "merge", str(base), str(adapter), "--out", str(outs["ours"]), "--device", args.device, "--force", "--quiet", "--format", "json"],
        "cp": ["sh", "-c", 'cp -r "$0" "$1" && sync', str(base), str(outs["cp"])],  # the copy on disk, as ours fsyncs
        "peft-mr": [*peft_cmd("peft-mr"), "--mean-resizing"],
        "floor": [sys.executable, "-c", "import torch"],
    }
    if not args.peft_mean_resizing:
        del cmds["peft-mr"]
    runs_dir.mkdir(parents=True, exist_ok=True)
    for p in (base, adapter):  # inputs in the page cache for everyone
        for f in p.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    while fh.read(1 << 24):
                        pass

    results: dict[str, list[dict]] = {k: [] for k in cmds}
    cmp, out_bytes = None, 0
    load = [os.getloadavg()[0]]
    rounds = ([] if args.no_warmup else ["warm-up"]) + list(range(1, args.runs + 1))
    for rnd in rounds:
        for key, cmd in cmds.items():
            if key == "peft-mr" and rnd != 1:
                continue  # minutes per run: measured once, no warm-up
            if key in outs:
                shutil.rmtree(outs[key], ignore_errors=True)
            r = run_measured(cmd, env)
            if r["rc"] != 0:
                print(f"{key} failed (exit {r['rc']}): {' '.join(cmd)}\n{r['stderr'][-4000:]}", file=sys.stderr)
                return 2
            if key == "ours":
                json.loads(r["stdout"])  # --format json must stay parseable
            print(f"  {rnd} {key:7s} {r['wall']:7.2f} s wall {r['cpu']:7.2f} s CPU {mib(r['rss']):>10s} (tree sampled {mib(r['tree'])})", file=sys.stderr, flush=True)
            r["bytes"] = dir_bytes(outs[key]) if key in outs else 0
            if rnd != "warm-up":
                results[key].append(r)
            load.append(os.getloadavg()[0])
            # Each output goes once measured (and ours once compared with this round's PEFT output):
            # the 3.76 GB case needs the inputs plus two outputs on disk, not four.
            if key == "ours":
                out_bytes = r["bytes"]
                cmp = compare(outs["ours"], outs["peft"], base)
                shutil.rmtree(outs["peft"], ignore_errors=True)
            if key in outs and key != "peft":
                shutil.rmtree(outs[key], ignore_errors=True)

    med = {k: (statistics.median(r["wall"] for r in v), statistics.median(r["rss"] for r in v)) for k, v in results.items()}
    pw, pr = med["peft"]
    labels = {
        "peft": "PEFT: from_pretrained + resize + PeftModel + merge_and_unload + save_pretrained",
        "peft-mr": "PEFT as above, resize with transformers' default mean_resizing=True",
        "ours": f"`lora-inspector merge --device {args.device}`",
        "cp": "`cp -r BASE` + `sync` (copy floor)",
        "floor": "`python -c \"import torch\"` (interpreter floor)",
    }
    lines = [
        "| command | wall (median) | wall min-max | CPU user+sys | peak RSS (median) | tree RSS sampled | page faults / GB written | wall / PEFT | RSS / PEFT |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, v in results.items():
        w, r = med[k]
        tree = statistics.median(x["tree"] for x in v)
        cpu = statistics.median(x["cpu"] for x in v)
        faults = statistics.median(x["minflt"] / (x["bytes"] / 1e9) if x["bytes"] else x["minflt"] for x in v)
        per_gb = f"{faults:,.0f}" if k in outs else f"({faults:,.0f} in all)"
        lines.append(f"| {labels[k]} | {w:.2f} s | {min(x['wall'] for x in v):.2f}-{max(x['wall'] for x in v):.2f} s | {cpu:.2f} s | {mib(r)} | {mib(tree)} | {per_gb} | {w / pw:.2f}x | {r / pr:.2f}x |")

    c = CASES[case]
    warm = "no warm-up" if args.no_warmup else "after an untimed warm-up"
    print(f"## merge: lora-inspector vs the standard PEFT path, case {case} ({args.runs} run(s) each, median; {warm})\n")
    print(f"Machine: {machine(args.device)}, {threads}. Load average during the run: {min(load):.2f}-{max(load):.2f} (other work on the machine). "
          f"Output shards written {write_mode(CACHE)}.\n")
    print(
        f"Base: Llama-shaped bf16, hidden {c['hidden']}, intermediate {c['intermediate']}, {c['layers']} layers, {c['heads']} heads, "
        f"vocab {c['vocab']:,}: {info['base_bytes'] / 1e6:,.1f} MB. Adapter (PEFT save_pretrained): r=16 LoRA on {', '.join(TARGET_MODULES)} + "
        f"modules_to_save embed_tokens/lm_head at {NEW_VOCAB:,} rows: {info['adapter_bytes'] / 1e6:,.1f} MB. Output: {out_bytes / 1e6:,.1f} MB.\n"
    )
    print("\n".join(lines))
    print()
    tw, tr, tabs = TARGETS[args.device]
    ow, orss = med["ours"]
    verdict = [f"wall {ow / pw:.2f}x PEFT (target <= {tw}x): {'OK' if ow / pw <= tw else 'MISSED'}"]
    if tr is not None:
        verdict.append(f"peak RSS {orss / pr:.2f}x PEFT (target <= {tr}x): {'OK' if orss / pr <= tr else 'MISSED'}")
    if tabs is not None:
        verdict.append(f"peak host RSS {orss / 1e9:.2f} GB (target < {tabs / 1e9:.1f} GB): {'OK' if orss < tabs else 'MISSED'}")
    print("Targets (docs/design.md): " + "; ".join(verdict) + ".\n")
    worst_abs, worst_abs_name = cmp["worst_abs"]
    worst_ulp, worst_ulp_name = cmp["worst_ulp"]
    print(
        f"Ours vs PEFT: {cmp['tensors']} tensors, {cmp['changed_vs_base']} differ from the base (merged/resized); "
        f"{cmp['differing_elems']:,} of {cmp['elems']:,} elements differ from PEFT's; worst max-abs diff {worst_abs:.3g}"
        + (f" ({worst_abs_name})" if worst_abs_name else "")
        + f", worst {worst_ulp:.2f} ulp" + (f" ({worst_ulp_name})" if worst_ulp_name else "") + "."
    )
    problems = [f"missing in ours: {n}" for n in cmp["missing"]] + [f"extra in ours: {n}" for n in cmp["extra"]] + cmp["mismatch"]
    if worst_ulp > 1.0:
        problems.append(f"{worst_ulp_name}: {worst_ulp:.2f} ulp from PEFT's value (more than bf16 rounding)")
    if problems:
        print("\nVERIFY FAILED:\n" + "\n".join(f"- {p}" for p in problems[:20]))
        return 1
    print("Verified: same tensor names, shapes and dtypes as PEFT's output, every value within 1 ulp (bf16 rounding).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
