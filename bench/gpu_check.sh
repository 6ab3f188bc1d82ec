#!/usr/bin/env bash
# Every check that needs a GPU, as one prepared run for a session that is lent a device:
#   1. the CUDA tests (pytest -m gpu: merges on --device cuda vs PEFT on the CPU, also in many row blocks
#      through the CUDA streams (tests/test_merge_streams.py); the writer on CUDA tensors)
#   2. the GPU merge benchmark (bench/merge_bench.py --device cuda: builds the spec's 3.6 GB case once)
#   3. three CUDA streams vs one on that case (bench/gpu_streams.py: wall times, same bytes)
# Uses the python on PATH (the device machine has torch, transformers, peft, ... preinstalled).
#   bash bench/gpu_check.sh [LOGDIR]      logs to LOGDIR (default: $OUT when set, else bench/out/gpu-check)
#   RUNS=2 bash bench/gpu_check.sh        fewer measured runs when device time is short (default 3)
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${1:-${OUT:-bench/out/gpu-check}}
mkdir -p "$logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; python --version
  python -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee "$logs/machine.txt"

python -m pytest -m gpu tests -q -rs -p no:cacheprovider 2>&1 | tee "$logs/pytest-gpu.txt"
tests_rc=${PIPESTATUS[0]}

python bench/merge_bench.py --device cuda --runs "${RUNS:-3}" >"$logs/bench-cuda.md" 2>"$logs/bench-cuda.log"
bench_rc=$?
cat "$logs/bench-cuda.md"; tail -n 20 "$logs/bench-cuda.log"

python bench/gpu_streams.py --runs "${RUNS:-3}" >"$logs/bench-streams.md" 2>"$logs/bench-streams.log"
streams_rc=$?
cat "$logs/bench-streams.md"; tail -n 20 "$logs/bench-streams.log"

echo "gpu tests exit $tests_rc, gpu bench exit $bench_rc, streams bench exit $streams_rc (logs in $logs)"
exit $(( tests_rc || bench_rc || streams_rc ))
