"""`diff --values`: streamed per-tensor value differences between two checkpoints."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from inspector.cli import main
from inspector.diff import compare_values, diff_checkpoints
from inspector.io.checkpoint import read_checkpoint
from tests.models import Built


def _copy_with(src: Path, dst: Path, edit) -> dict[str, torch.Tensor]:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return tensors


def _json(capsys, *argv) -> tuple[int, dict]:
    rc = main(["diff", *map(str, argv), "--values", "--format", "json"])
    return rc, json.loads(capsys.readouterr().out)


def test_identical_checkpoints_have_zero_differences(capsys, llama: Built, llama_bin: Built) -> None:
    # The legacy .bin twin holds the same values: every tensor compares equal, exit 0.
    rc, report = _json(capsys, llama.path, llama_bin.path)
    assert rc == 0
    values = report["values"]
    assert values["compared"] == llama.tensor_count and values["differ"] == 0 and values["max_abs"] == 0.0
    assert all(v["rel"] == 0.0 and not v["nonfinite"] for v in values["tensors"])


def test_a_perturbed_tensor_is_measured_exactly(capsys, tmp_path: Path, llama: Built) -> None:
    name = "model.layers.0.self_attn.q_proj.weight"
    base = load_file(llama.path / "model.safetensors")
    delta = torch.zeros_like(base[name])
    delta[1, 2], delta[3, 4] = 0.25, -0.5
    _copy_with(llama.path, tmp_path / "b", lambda t: t.__setitem__(name, t[name] + delta))
    rc, report = _json(capsys, llama.path, tmp_path / "b")
    assert rc == 1
    by_name = {v["name"]: v for v in report["values"]["tensors"]}
    changed = by_name[name]
    b = base[name] + delta
    expected_rel = float((delta.double().norm() / b.double().norm()))
    assert changed["max_abs"] == pytest.approx(0.5, abs=1e-7)
    assert changed["rel"] == pytest.approx(expected_rel, rel=1e-6)
    assert report["values"]["differ"] == 1
    assert all(v["max_abs"] == 0.0 for n, v in by_name.items() if n != name)
    # --atol above the difference makes the checkpoints equal for CI.
    assert main(["diff", str(llama.path), str(tmp_path / "b"), "--values", "--atol", "0.6", "--format", "json"]) == 0
    capsys.readouterr()


def test_nan_is_reported_as_nonfinite(capsys, tmp_path: Path, llama: Built) -> None:
    name = "model.norm.weight"
    _copy_with(llama.path, tmp_path / "nan", lambda t: t[name].__setitem__(0, math.nan))
    rc, report = _json(capsys, llama.path, tmp_path / "nan")
    assert rc == 1
    nan = next(v for v in report["values"]["tensors"] if v["name"] == name)
    assert nan["nonfinite"] is True


def test_the_same_nan_on_both_sides_is_equal(capsys, tmp_path: Path, llama: Built) -> None:
    # A checkpoint holding NaN / Inf diffed with itself (or a copy) is identical, exit 0; the report still
    # counts those values. A NaN against a number, or +Inf against -Inf, differs.
    name = "model.norm.weight"

    def poison(t):
        t[name][0], t[name][1] = math.nan, math.inf

    _copy_with(llama.path, tmp_path / "a", poison)
    _copy_with(llama.path, tmp_path / "b", poison)
    rc, report = _json(capsys, tmp_path / "a", tmp_path / "b")
    entry = next(v for v in report["values"]["tensors"] if v["name"] == name)
    assert rc == 0 and report["values"]["differ"] == 0
    assert (entry["nonfinite"], entry["shared_nonfinite"], entry["max_abs"]) == (False, 2, 0.0)
    _copy_with(llama.path, tmp_path / "c", lambda t: t[name].__setitem__(1, -math.inf))
    rc, report = _json(capsys, tmp_path / "a", tmp_path / "c")
    assert rc == 1 and next(v for v in report["values"]["tensors"] if v["name"] == name)["nonfinite"] is True


def test_f64_is_compared_in_f64(capsys, tmp_path: Path) -> None:
    # 1e300 and 2e300 both overflow fp32 to +inf: compared in F64 they differ, and nothing is NaN/Inf.
    for name, big in (("a", 1e300), ("b", 2e300)):
        (tmp_path / name).mkdir()
        save_file({"x": torch.tensor([big, 1.0], dtype=torch.float64)}, str(tmp_path / name / "model.safetensors"))
    rc, report = _json(capsys, tmp_path / "a", tmp_path / "b")
    (entry,) = report["values"]["tensors"]
    assert rc == 1 and (entry["nonfinite"], entry["shared_nonfinite"], entry["max_abs"]) == (False, 0, 1e300)


def test_atol_nan_is_refused(capsys, llama: Built) -> None:
    rc = main(["diff", str(llama.path), str(llama.path), "--values", "--atol", "nan"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("Error: Invalid value for '--atol': nan is not a tolerance")


def test_row_blocks_give_the_same_numbers_as_one_block(tmp_path: Path, llama: Built) -> None:
    # Tiny blocks force many row blocks per tensor: the streamed sums must equal the one-shot ones.
    _copy_with(llama.path, tmp_path / "noisy", lambda t: [v.add_(0.01 * torch.randn_like(v)) for k, v in t.items() if v.is_floating_point()])
    result = diff_checkpoints(read_checkpoint(llama.path), read_checkpoint(tmp_path / "noisy"))
    one = {v.name: v for v in compare_values(result).values}
    many = {v.name: v for v in compare_values(result, block_bytes=64).values}
    a, b = load_file(llama.path / "model.safetensors"), load_file(tmp_path / "noisy" / "model.safetensors")
    for name, v in many.items():
        assert v.max_abs == one[name].max_abs == float((a[name] - b[name]).abs().max())
        assert v.rel == pytest.approx(one[name].rel, rel=1e-9)
        assert v.rel == pytest.approx(float((a[name].double() - b[name].double()).norm() / b[name].double().norm()), rel=1e-5)


def test_rich_values_table_names_the_tensor(capsys, tmp_path: Path, llama: Built) -> None:
    name = "lm_head.weight"
    _copy_with(llama.path, tmp_path / "c", lambda t: t[name].mul_(2))
    assert main(["diff", str(llama.path), str(tmp_path / "c"), "--values"]) == 1
    out = capsys.readouterr().out
    assert "values: 1 of 21 tensors differ (atol 0)" in out and name in out
