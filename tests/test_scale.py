"""Scale: a Llama-2-70B-shaped sharded checkpoint (29 bf16 shards, 138 GB of sparse holes) scans
from headers alone, with the right counts, and without importing torch or transformers.

Timing is measured by bench/scan_70b.py, not asserted here.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.cli import main

BENCH = Path(__file__).resolve().parent.parent / "bench" / "sparse_checkpoint.py"


def _load_sparse():
    spec = importlib.util.spec_from_file_location("sparse_checkpoint", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sparse_checkpoint", module)  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


sparse = _load_sparse()

# Llama-2-70B, counted by hand: 80 layers x (q, k, v, o, gate, up, down, 2 norms) + embed + norm + lm_head.
TENSORS_70B = 80 * 9 + 3
# 80 x (2*8192^2 + 2*1024*8192 + 3*8192*28672 + 2*8192) + 2*32000*8192 + 8192
PARAMS_70B = 68_976_648_192


@pytest.fixture(scope="module")
def llama70b(tmp_path_factory):
    # 138 GB apparent size (holes): removed at once rather than left to pytest's basetemp rotation.
    root = tmp_path_factory.mktemp("scale")
    yield sparse.make_llama70b(root / "llama70b")
    shutil.rmtree(root, ignore_errors=True)


def _scan(capsys, *paths) -> list[dict]:
    capsys.readouterr()
    code = main(["scan", *map(str, paths), "--format", "json"])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads(out)
    assert doc["schema"] == 1 and doc["command"] == "scan"
    return doc["checkpoints"]


def test_generator_counts_match_hand_count(llama70b):
    assert TENSORS_70B == 723
    assert PARAMS_70B == 80 * (2 * 8192**2 + 2 * 1024 * 8192 + 3 * 8192 * 28672 + 2 * 8192) + 2 * 32000 * 8192 + 8192
    assert (llama70b.tensor_count, llama70b.parameter_count, llama70b.total_bytes) == (TENSORS_70B, PARAMS_70B, 2 * PARAMS_70B)
    # The data regions are holes: a few hundred KB on disk for 138 GB of apparent size.
    assert llama70b.file_bytes > 137e9
    assert sparse.disk_usage(llama70b.path) < 16 * 2**20


def test_scan_70b_counts(llama70b, capsys):
    index = json.loads((llama70b.path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 2 * PARAMS_70B
    assert len(index["weight_map"]) == TENSORS_70B

    (report,) = _scan(capsys, llama70b.path)
    assert report["kind"] == "model"
    assert report["format"] == "safetensors"
    assert report["tensor_count"] == TENSORS_70B
    assert report["parameter_count"] == PARAMS_70B == llama70b.parameter_count
    assert report["total_bytes"] == index["metadata"]["total_size"] == llama70b.total_bytes
    assert report["dtypes"] == {"BF16": TENSORS_70B}
    assert len(report["files"]) == 30
    assert report["files"][0] == "model.safetensors.index.json"
    assert report["files"][1:] == [f"model-{k:05d}-of-00029.safetensors" for k in range(1, 30)]
    assert report["config"]["model_type"] == "llama"
    assert report["config"]["vocab_size"] == 32000
    assert report["config"]["hidden_size"] == 8192
    assert report["config"]["num_hidden_layers"] == 80
    assert report["config"]["tie_word_embeddings"] is False
    assert report["warnings"] == []


def test_scan_70b_adapter_counts(tmp_path, capsys):
    adapter = sparse.make_adapter70840(tmp_path / "adapter")
    try:
        (report,) = _scan(capsys, adapter.path)
    finally:
        shutil.rmtree(adapter.path, ignore_errors=True)
    assert report["kind"] == "adapter"
    assert report["tensor_count"] == 80 * 7 * 2 + 2 == adapter.tensor_count
    assert report["parameter_count"] == adapter.parameter_count
    assert report["total_bytes"] == adapter.total_bytes
    assert report["config"]["modules_to_save"] == ["embed_tokens", "lm_head"]
    assert report["config"]["r"] == 16


def test_scan_70b_does_not_import_torch(llama70b):
    code = (
        "import sys; from inspector.cli import main; "
        f"rc = main(['scan', {str(llama70b.path)!r}, '--format', 'json']); "
        "assert rc == 0, rc; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
        "sorted(m for m in ('torch', 'transformers') if m in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["checkpoints"][0]["tensor_count"] == TENSORS_70B
