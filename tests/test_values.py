"""``check --values`` (LI16xx): NaN / Inf, all-zero lora_B, never-trained new rows, on real PEFT adapters
with one edit to their values each."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from inspector.cli import main
from tests.models import Built


def edited(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of the adapter ``src`` whose tensors ``edit`` changed in place."""
    shutil.copytree(src, dst)
    path = dst / "adapter_model.safetensors"
    state = load_file(path)
    edit(state)
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata={"format": "pt"})
    return dst


def check_values(capsys, base: Built, adapter: Path, *extra: str) -> tuple[int, list[dict], dict]:
    code = main(["check", str(base.path), str(adapter), "--values", "--format", "json", *extra])
    report = json.loads(capsys.readouterr().out)
    return code, [f for f in report["findings"] if f["code"].startswith("LI16")], report


def _key(state: dict, part: str) -> str:
    return _keys(state, part)[0]


def _keys(state: dict, part: str) -> list[str]:
    """The keys naming ``part``, PEFT's frozen original_module copy left out (the plain key is the one loaded)."""
    return [k for k in state if part in k and "original_module" not in k]


def test_clean_adapters_have_no_value_findings(capsys, llama: Built, lora_llama: Built, lora_llama_grown: Built) -> None:
    for adapter in (lora_llama, lora_llama_grown):
        _, found, report = check_values(capsys, llama, adapter.path)
        assert found == [] and report["values"]["tensors"] > 0
    rows = report["values"]["rows"]  # the grown adapter's trained new rows: measured, not flagged
    assert {r["tensor"] for r in rows} == {"model.embed_tokens.weight", "lm_head.weight"}
    assert all(r["old_rows"] == 64 and r["new_rows"] == 16 and r["untrained"] == 0 for r in rows)
    assert sum(rows[0]["histogram"]["old"]) == 64 and sum(rows[0]["histogram"]["new"]) == 16
    # Without --values none of it: no value pass, no "values" key (exit 1: LI101, the grown vocabulary).
    assert main(["check", str(llama.path), str(lora_llama_grown.path), "--format", "json"]) == 1
    assert "values" not in json.loads(capsys.readouterr().out)


def test_nan_and_fp16_overflow(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    def nan(state: dict) -> None:
        state[_key(state, "lora_A")][0, 1] = float("nan")

    def overflow(state: dict) -> None:
        key = _key(state, "lora_B")
        big = state[key].clone()
        big[1, 0] = 70000.0  # > 65504: Inf once cast to fp16
        for k in state:
            state[k] = state[k].half()
        state[key] = big.half()

    for edit, (n_nan, n_inf) in ((nan, (1, 0)), (overflow, (0, 1))):
        adapter = edited(lora_llama.path, tmp_path / edit.__name__, edit)
        code, found, _ = check_values(capsys, llama, adapter)
        assert code == 1
        assert [(f["code"], f["severity"], f["data"]["nan"], f["data"]["inf"]) for f in found] == [("LI1601", "error", n_nan, n_inf)]
    assert "65504" in found[0]["message"]


def test_zero_lora_b(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    def all_zero(state: dict) -> None:
        for k in state:
            if "lora_B" in k:
                state[k].zero_()

    def one_zero(state: dict) -> None:
        state[_key(state, "lora_B")].zero_()

    code, found, _ = check_values(capsys, llama, edited(lora_llama.path, tmp_path / "all", all_zero))
    assert code == 1 and [(f["code"], f["severity"]) for f in found] == [("LI1602", "error")]
    assert "no-op" in found[0]["message"] and found[0]["data"] == {"zero": 4, "lora_b": 4}
    code, found, _ = check_values(capsys, llama, edited(lora_llama.path, tmp_path / "one", one_zero))
    assert code == 0 and [(f["code"], f["severity"], f["data"]["zero"]) for f in found] == [("LI1602", "warning", 1)]


def test_zero_lora_b_with_dora_is_not_a_no_op(capsys, tmp_path: Path, llama: Built, dora_llama: Built) -> None:
    # DoRA's trained magnitude still rescales the weights when every lora_B is zero: a warning, not "no-op".
    def all_zero(state: dict) -> None:
        for k in state:
            if "lora_B" in k:
                state[k].zero_()

    code, found, _ = check_values(capsys, llama, edited(dora_llama.path, tmp_path / "dora", all_zero))
    assert code == 0 and [(f["code"], f["severity"]) for f in found] == [("LI1602", "warning")]
    assert "no-op" not in found[0]["message"]


@pytest.mark.parametrize("init", ["mean", "zero", "same"])
def test_untrained_new_rows(capsys, tmp_path: Path, llama: Built, lora_llama_grown: Built, init: str) -> None:
    def untrained(state: dict) -> None:
        for key in _keys(state, "embed_tokens"):
            w = state[key]
            w[64:] = {"mean": w[:64].mean(dim=0), "zero": torch.zeros(w.shape[1]), "same": torch.ones(w.shape[1]) * 0.03}[init]

    _, found, _ = check_values(capsys, llama, edited(lora_llama_grown.path, tmp_path / init, untrained))
    assert [(f["code"], f["severity"], f["tensor"]) for f in found] == [("LI1603", "warning", "model.embed_tokens.weight")]
    data = found[0]["data"]
    assert data["untrained"] == 16 and (data["mean_rows"], data["zero_rows"], data["identical"]) == {
        "mean": (16, 0, True), "zero": (0, 16, True), "same": (0, 0, True)}[init]


@pytest.mark.parametrize("init", ["mean", "zero"])
def test_rows_of_a_resize_never_trained(capsys, tmp_path: Path, llama: Built, lora_llama_grown: Built, init: str) -> None:
    # `resize --init mean|zero` wrote the rows; the adapter saved the embedding without training it.
    assert main(["resize", str(llama.path), "--vocab", "80", "--init", init, "--out", str(tmp_path / "r"), "--quiet", "--format", "json"]) == 0
    capsys.readouterr()
    resized = load_file(tmp_path / "r" / "model.safetensors")["model.embed_tokens.weight"]

    def saved_untrained(state: dict) -> None:
        for key in _keys(state, "embed_tokens"):
            state[key] = resized.clone()

    _, found, _ = check_values(capsys, llama, edited(lora_llama_grown.path, tmp_path / init, saved_untrained))
    assert [(f["code"], f["tensor"], f["data"]["untrained"]) for f in found] == [("LI1603", "model.embed_tokens.weight", 16)]
    assert (found[0]["data"]["mean_rows"], found[0]["data"]["zero_rows"]) == ((16, 0) if init == "mean" else (0, 16))


def test_new_row_norm_outliers(capsys, tmp_path: Path, llama: Built, lora_llama_grown: Built) -> None:
    def huge(state: dict) -> None:
        for key in _keys(state, "lm_head"):
            state[key][70:72] *= 50

    _, found, _ = check_values(capsys, llama, edited(lora_llama_grown.path, tmp_path / "huge", huge))
    assert [(f["code"], f["tensor"], f["data"]["norm_outliers"]) for f in found] == [("LI1604", "lm_head.weight", 2)]
    assert "p99" in found[0]["message"] and found[0]["data"]["old_norms"]["p50"] > 0


def test_rich_report_draws_row_norms(capsys, tmp_path: Path, llama: Built, lora_llama_grown: Built) -> None:
    out = tmp_path / "report.txt"
    main(["check", str(llama.path), str(lora_llama_grown.path), "--values", "--output", str(out)])
    text = out.read_text()
    assert "row norms of lm_head.weight: 64 old rows, 16 new" in text and "row norms of model.embed_tokens.weight" in text
    assert text.count(" old ") >= 20 and "#" in text
    main(["check", str(llama.path), str(lora_llama_grown.path), "--output", str(out)])
    assert "row norms" not in out.read_text()


def test_check_values_in_every_format(capsys, llama: Built, lora_llama_grown: Built) -> None:
    for fmt in ("markdown", "github"):
        main(["check", str(llama.path), str(lora_llama_grown.path), "--values", "--format", fmt])
        assert capsys.readouterr().out


# ---- diff --values: a no-op merge, relative-change outliers ------------------------------------------


@pytest.fixture(scope="module")
def merged_llama(tmp_path_factory: pytest.TempPathFactory, llama: Built, lora_llama: Built) -> Path:
    out = tmp_path_factory.mktemp("merged") / "m"
    assert main(["merge", str(llama.path), str(lora_llama.path), "--out", str(out), "--quiet", "--format", "json"]) == 0
    return out


def _diff(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["diff", *argv, "--values", "--format", "json"])
    return code, json.loads(capsys.readouterr().out)["values"]


def test_diff_finds_a_noop_merge(capsys, llama: Built, lora_llama: Built, merged_llama: Path) -> None:
    code, values = _diff(capsys, str(llama.path), str(merged_llama), "--adapter", str(lora_llama.path))
    assert code == 1 and values["noop"] is False and len(values["targeted"]) == 4  # q/v_proj of 2 layers
    code, values = _diff(capsys, str(llama.path), str(llama.path), "--adapter", str(lora_llama.path))
    assert code == 1 and values["noop"] is True
    for fmt in ("rich", "markdown", "github"):
        main(["diff", str(llama.path), str(llama.path), "--values", "--adapter", str(lora_llama.path), "--format", fmt])
        assert "no-op" in capsys.readouterr().out
    # Without --adapter, the same diff is what it always was: identical, exit 0, fields added only.
    code, values = _diff(capsys, str(llama.path), str(llama.path))
    assert code == 0 and values["noop"] is None and values["outliers"] == []
    assert main(["diff", str(llama.path), str(merged_llama), "--adapter", str(lora_llama.path)]) == 2
    capsys.readouterr()


def test_diff_flags_relative_change_outliers(capsys, tmp_path: Path, llama: Built, merged_llama: Path) -> None:
    shutil.copytree(merged_llama, tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    state = load_file(path)
    state["model.layers.1.mlp.down_proj.weight"] *= 30
    save_file(state, path, metadata={"format": "pt"})
    _, values = _diff(capsys, str(llama.path), str(tmp_path / "m"))
    assert values["outliers"] == ["model.layers.1.mlp.down_proj.weight"]
    assert [t["name"] for t in values["tensors"] if t["outlier"]] == values["outliers"]
    assert next(t["change"] for t in values["tensors"] if t["outlier"]) == pytest.approx(29, rel=1e-4)


# ---- scan --values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["mean", "zero"])
def test_scan_finds_the_untrained_tail_of_a_resize(capsys, tmp_path: Path, llama: Built, init: str) -> None:
    assert main(["resize", str(llama.path), "--vocab", "80", "--init", init, "--out", str(tmp_path / "r"), "--quiet", "--format", "json"]) == 0
    capsys.readouterr()
    assert main(["scan", str(tmp_path / "r"), str(llama.path), "--values", "--format", "json"]) == 0
    resized, base = json.loads(capsys.readouterr().out)["checkpoints"]
    tails = {t["tensor"]: (t["tail_rows"], t["zero"]) for t in resized["values"]["identical_tail"]}
    assert tails == {"model.embed_tokens.weight": (16, init == "zero"), "lm_head.weight": (16, init == "zero")}
    assert base["values"] == {"nonfinite": [], "identical_tail": []}
    for fmt in ("rich", "markdown", "github"):
        main(["scan", str(tmp_path / "r"), "--values", "--format", fmt])
        assert "last 16 of 80 rows" in capsys.readouterr().out


def test_scan_finds_nan(capsys, tmp_path: Path, lora_llama: Built) -> None:
    def nan(state: dict) -> None:
        state[_key(state, "lora_B")][0, 0] = float("inf")

    main(["scan", str(edited(lora_llama.path, tmp_path / "a", nan)), "--values", "--format", "json"])
    values = json.loads(capsys.readouterr().out)["checkpoints"][0]["values"]
    assert [(v["nan"], v["inf"]) for v in values["nonfinite"]] == [(0, 1)]
