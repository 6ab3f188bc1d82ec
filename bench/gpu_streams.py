"""Benchmark (GPU only): what the merge's three CUDA streams buy over one.

Merges the merge benchmark's case (built and cached by bench/merge_bench.py) in this process, in
turn with the pipeline as shipped (inspector/streams.py: copy in, compute and copy out on three
streams) and with the three lanes on one stream (each block's copies and kernels one after another;
the host still reads the next block from the disk meanwhile), after one untimed warm-up of each.
Reports wall times and checks that both outputs hold the same bytes: the same kernels on the same
device, only ordered differently, must give the same bits (a missing wait would not).

    python bench/gpu_streams.py [--runs 3] [--case gpu-3.6gb]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # bench/ is no package; the repository's inspector/
from merge_bench import CACHE, CASES, ensure_built  # noqa: E402


def one_stream(dev: str):
    """The shipped lanes with copy in, compute and copy out all on one stream."""
    from inspector.streams import CudaLane, CudaLanes

    lanes = CudaLanes(dev)
    lanes.copy_in = lanes.compute = lanes.copy_out = CudaLane(dev)
    return lanes


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for shard in sorted(out.glob("*.safetensors")):
        with open(shard, "rb") as fh:
            while block := fh.read(1 << 24):
                h.update(block)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="measured runs of each variant (median reported)")
    ap.add_argument("--case", choices=sorted(CASES), default="gpu-3.6gb")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu_streams.py needs a CUDA device", file=sys.stderr)
        return 2
    import inspector.merge as merge

    base, adapter, _ = ensure_built(args.case, False)
    out = CACHE / args.case / "runs" / "streams"
    variants = {"three streams (shipped)": merge._lanes, "one stream": one_stream}
    times: dict[str, list[float]] = {name: [] for name in variants}
    digests: dict[str, str] = {}
    for run in range(args.runs + 1):  # run 0: the warm-up
        for name, lanes in variants.items():
            merge._lanes = lanes
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            merge.merge_adapter(str(base), str(adapter), str(out), device="cuda")
            if run:
                times[name].append(time.perf_counter() - t0)
            if run == args.runs:
                digests[name] = digest(out)
    shutil.rmtree(out, ignore_errors=True)

    print(f"## merge on {torch.cuda.get_device_name(0)}: three CUDA streams vs one, case {args.case} ({args.runs} run(s) each, median)\n")
    print("| lanes | wall (median) | min-max |\n|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} s | {min(ts):.2f}-{max(ts):.2f} s |")
    same = len(set(digests.values())) == 1
    print(f"\nSame output bytes: {'yes' if same else 'NO'} ({', '.join(f'{k}: {v[:12]}' for k, v in digests.items())})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
