"""HOSTILE.md end to end: every case through the real CLI (``inspector.cli.main``).

Each test asserts the exit code, that stderr is exactly an ``Error: ... for '<file>': <why>.`` line
naming the offending file plus a ``Hint:`` line, that no traceback is printed, that no pickle code
ran (a sentinel file a gadget would create stays absent) and, for ``merge`` and ``resize``, that the
directory tree holding the inputs and the output is byte-for-byte what it was before (no output, no
staging directory, an old ``--out`` untouched). The broken files are generated in ``tmp_path`` from
the session's tiny real checkpoints (tests/hostile_corpus.py); the reader-level unit tests and the
hypothesis fuzzing of the header reader live in test_header.py and test_torchbin.py.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import inspector.io.torchbin
import inspector.io.writer
from inspector.cli import main
from inspector.io.loader import TensorReader
from tests.failures import assert_no_report
from tests.hostile import ExecGadget, SystemGadget
from tests.hostile_corpus import (
    BROKEN_FILES,
    BrokenFile,
    Hung,
    adapter_with_file,
    add_raw_tensor,
    copy_dir,
    deadline,
    edit_json_file,
    hf_cache_layout,
    model_with_file,
    set_tensor,
    snapshot,
    st_bytes,
    torch_save_bytes,
    with_payload,
)
from tests.models import Built
from tests.terminal import Terminal

REPO = Path(__file__).resolve().parent.parent
INDEX = "model.safetensors.index.json"
P = "base_model.model."
Q0 = "model.layers.0.self_attn.q_proj"


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_error(rc: int, out: str, err: str, path: object, why: str, *, code: int = 2) -> list[str]:
    """Exit ``code``; stderr exactly ``Error: <what> for '<path>': ...<why>...`` and a ``Hint:``."""
    assert "Traceback" not in err, err
    assert rc == code, err
    assert_no_report(out, err)  # with --format json, the same failure as JSON
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert re.fullmatch(rf"Error: [A-Z][^\n]* for '{re.escape(str(path))}': .+\.", lines[0]), lines[0]
    assert why in lines[0], lines[0]
    assert lines[1].startswith("Hint: ") and len(lines[1]) > len("Hint: ") + 10, lines[1]
    return lines


def merge(capsys, base: Path, adapter: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return cli(capsys, "merge", base, adapter, "--out", out, "--device", "cpu", *extra)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path.parent / f"{tmp_path.name}-pwned"  # outside the snapshot: its absence is asserted apart
    yield path
    assert not path.exists(), "pickle code ran"


def assert_merge_refused(capsys, work: Path, base: Path, adapter: Path, path: object, why: str, *, code: int = 2, force_over_old: bool = False) -> None:
    """``merge`` fails with Error/Hint naming ``path`` and leaves ``work`` exactly as it was."""
    out = work / "merged"
    if force_over_old:
        out.mkdir()
        (out / "old.txt").write_text("the previous output")
    before = snapshot(work)
    rc, stdout, err = merge(capsys, base, adapter, out, *(["--force"] if force_over_old else []))
    assert_error(rc, stdout, err, path, why, code=code)
    assert snapshot(work) == before


# ---- HOSTILE 1-8: broken safetensors files, via scan, check and merge ------------------------------------


@pytest.mark.parametrize("bad", BROKEN_FILES, ids=[f"{b.case}-{b.id}" for b in BROKEN_FILES])
def test_broken_model_file_scan(capsys, tmp_path: Path, llama: Built, bad: BrokenFile) -> None:
    model = model_with_file(llama.path, tmp_path / "model", "model.safetensors", bad.blob)
    before = snapshot(tmp_path)
    rc, out, err = cli(capsys, "scan", model, "--format", "json")
    assert_error(rc, out, err, model / "model.safetensors", bad.why)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("bad", BROKEN_FILES, ids=[f"{b.case}-{b.id}" for b in BROKEN_FILES])
def test_broken_adapter_file_check(capsys, tmp_path: Path, llama: Built, lora_llama: Built, bad: BrokenFile) -> None:
    adapter = adapter_with_file(lora_llama.path, tmp_path / "adapter", "adapter_model.safetensors", bad.blob)
    rc, out, err = cli(capsys, "check", llama.path, adapter, "--format", "json")
    assert_error(rc, out, err, adapter / "adapter_model.safetensors", bad.why)


MERGE_SAMPLES = [b for b in BROKEN_FILES if b.id in ("header-over-limit", "duplicate-escaped", "overlap", "truncated")]


@pytest.mark.parametrize("side", ["base", "adapter"])
@pytest.mark.parametrize("bad", MERGE_SAMPLES, ids=[b.id for b in MERGE_SAMPLES])
def test_broken_file_merge_writes_nothing(capsys, work: Path, side: str, bad: BrokenFile) -> None:
    name = "model.safetensors" if side == "base" else "adapter_model.safetensors"
    (work / side / name).write_bytes(bad.blob)
    assert_merge_refused(capsys, work, work / "base", work / "adapter", work / side / name, bad.why, force_over_old=side == "adapter")


def test_broken_base_file_resize_writes_nothing(capsys, work: Path) -> None:
    (work / "base" / "model.safetensors").write_bytes(next(b for b in BROKEN_FILES if b.id == "trailing").blob)
    before = snapshot(work)
    rc, out, err = cli(capsys, "resize", work / "base", "--out", work / "resized", "--vocab", "80")
    assert_error(rc, out, err, work / "base" / "model.safetensors", "trailing bytes after the last tensor")
    assert snapshot(work) == before


@pytest.mark.parametrize(
    ("command", "shape"),
    [
        ("resize", [4]),
        ("merge", [4]),
        ("merge", [2, 2]),
    ],
    ids=["resize", "merge-1d", "merge-2d"],
)
def test_legal_dtype_torch_cannot_load(capsys, work: Path, command: str, shape: list[int]) -> None:
    """F4 is a legal safetensors dtype (scan lists it) that torch cannot hold: refused, file named."""
    base = work / "base"
    add_raw_tensor(base / "model.safetensors", "extra.packed", "F4", shape, b"\x12\x34")
    rc, out, err = cli(capsys, "scan", base, "--format", "json")
    assert (rc, err) == (0, "") and json.loads(out)["checkpoints"][0]["dtypes"]["F4"] == 1
    before = snapshot(work)
    if command == "merge":
        rc, out, err = merge(capsys, base, work / "adapter", work / "merged")
    else:
        rc, out, err = cli(capsys, "resize", base, "--out", work / "merged", "--vocab", "80")
    assert_error(rc, out, err, base / "model.safetensors", "extra.packed is F4, which has no torch dtype here")
    assert snapshot(work) == before


# ---- HOSTILE 9: zero-size and scalar tensors are legal; an empty adapter tensor is a finding -------------


def test_zero_size_and_scalar_tensors_are_legal(capsys, tmp_path: Path, llama: Built) -> None:
    header = {
        "scalar": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
        "empty": {"dtype": "F16", "shape": [0, 4], "data_offsets": [4, 4]},
        "zero_dim": {"dtype": "BF16", "shape": [3, 0], "data_offsets": [4, 4]},
    }
    model = model_with_file(llama.path, tmp_path / "model", "model.safetensors", st_bytes(header, b"\0\0\x80\x3f"))
    rc, out, err = cli(capsys, "scan", model, "--tensors", "--format", "json")
    assert (rc, err) == (0, "")
    item = json.loads(out)["checkpoints"][0]
    assert {t["name"]: t["shape"] for t in item["tensors"]} == {"scalar": [], "empty": [0, 4], "zero_dim": [3, 0]}
    assert (item["tensor_count"], item["parameter_count"], item["total_bytes"]) == (3, 1, 4)


def test_empty_adapter_tensor_is_a_finding_and_merge_refuses(capsys, work: Path) -> None:
    key = f"{P}{Q0}.lora_B.weight"
    set_tensor(work / "adapter" / "adapter_model.safetensors", key, lambda t: torch.zeros(0, t.shape[1]))
    rc, out, err = cli(capsys, "check", work / "base", work / "adapter", "--format", "json")
    assert (rc, err) == (1, "")
    assert [(f["code"], f["adapter_key"], f["adapter_shape"]) for f in json.loads(out)["findings"] if f["code"] == "LI801"] == [("LI801", key, [0, 4])]
    assert_merge_refused(capsys, work, work / "base", work / "adapter", work / "adapter", "LI801", code=1)


# ---- HOSTILE 10: NaN/Inf: the merge refuses to write a non-finite result and names the tensor -------------


@pytest.mark.parametrize(
    ("side", "file", "key", "value", "target"),
    [
        ("adapter", "adapter_model.safetensors", f"{P}{Q0}.lora_A.weight", float("nan"), f"{Q0}.weight"),
        ("adapter", "adapter_model.safetensors", f"{P}model.layers.1.self_attn.v_proj.lora_B.weight", float("inf"), "model.layers.1.self_attn.v_proj.weight"),
        ("base", "model.safetensors", "model.norm.weight", float("-inf"), "model.norm.weight"),  # copied through, 1-D
        ("base", "model.safetensors", "model.embed_tokens.weight", float("nan"), "model.embed_tokens.weight"),  # copied in row blocks
    ],
    ids=["nan-lora_A", "inf-lora_B", "inf-base-norm", "nan-base-embedding"],
)
def test_non_finite_merge_result_is_refused(capsys, work: Path, side: str, file: str, key: str, value: float, target: str) -> None:
    def poison(t: torch.Tensor) -> torch.Tensor:
        t.view(-1)[0] = value
        return t

    set_tensor(work / side / file, key, poison)
    assert_merge_refused(capsys, work, work / "base", work / "adapter", target, "contains NaN or Inf", force_over_old=side == "base")


# ---- HOSTILE 11: content decides, never the name; nothing is handed to a zip or pickle loader -------------


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a file could reach a zip or pickle loader raises (a BaseException: no catch-all hides it)."""

    def forbidden(*args, **kwargs):
        raise Hung("a file was handed to a zip or pickle loader")

    for target, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"), (inspector.io.torchbin, "walk_pickle"), (inspector.io.torchbin.zipfile, "ZipFile")]:
        monkeypatch.setattr(target, name, forbidden)


def test_zip_and_pickle_payload_inside_valid_safetensors(capsys, work: Path, sentinel: Path, no_unpickling) -> None:
    base = work / "base"
    gadget_zip = torch_save_bytes({"w": torch.ones(2), "x": SystemGadget(sentinel)})
    payload = gadget_zip + pickle.dumps(ExecGadget(sentinel))
    with_payload(base / "model.safetensors", base / "model.safetensors", payload)
    rc, out, err = cli(capsys, "scan", base, "--tensors", "--format", "json")
    assert (rc, err) == (0, "")
    tensors = {t["name"]: (t["shape"], t["dtype"]) for t in json.loads(out)["checkpoints"][0]["tensors"]}
    assert tensors["payload"] == ([len(payload)], "U8")
    # The merge copies the payload as the bytes it is, unread by anything but the tensor reader.
    rc, out, err = merge(capsys, base, work / "adapter", work / "merged")
    assert (rc, err) == (0, "")
    merged = load_file(str(work / "merged" / "model.safetensors"))
    assert bytes(merged["payload"].numpy()) == payload


def test_bin_named_safetensors_is_refused_unread(capsys, tmp_path: Path, llama: Built, no_unpickling) -> None:
    # A safetensors file whose last tensor is a complete torch.save zip: zipfile.is_zipfile() says yes.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes((llama.path / "config.json").read_bytes())
    with_payload(llama.path / "model.safetensors", model / "pytorch_model.bin", torch_save_bytes({"model.norm.weight": torch.ones(16)}))
    rc, out, err = cli(capsys, "scan", model, "--format", "json")
    assert_error(rc, out, err, model / "pytorch_model.bin", "it is not a zip-format torch.save file")


@pytest.mark.parametrize("form", ["zip", "raw-pickle"])
def test_safetensors_named_pickle_is_refused_unread(capsys, tmp_path: Path, llama: Built, sentinel: Path, form: str, no_unpickling) -> None:
    gadget = SystemGadget(sentinel)
    blob = torch_save_bytes({"model.norm.weight": torch.ones(16), "x": gadget}) if form == "zip" else pickle.dumps(gadget)
    model = model_with_file(llama.path, tmp_path / "model", "model.safetensors", blob)
    rc, out, err = cli(capsys, "scan", model, "--format", "json")
    assert_error(rc, out, err, model / "model.safetensors", "header length")


# ---- HOSTILE 12-15: sharded indexes --------------------------------------------------------------------


def _weight_map(model: Path) -> dict:
    return json.loads((model / INDEX).read_text())


def _write_index(model: Path, data: object) -> None:
    (model / INDEX).write_text(json.dumps(data))


def _first_shard(model: Path) -> str:
    return sorted(set(_weight_map(model)["weight_map"].values()))[0]


def _remap(model: Path, edit) -> None:
    data = _weight_map(model)
    edit(data["weight_map"])
    _write_index(model, data)


def _shared_tensor(weight_map: dict) -> str:
    """A tensor whose shard holds others too: unlisting it leaves the shard listed, and read."""
    shards = list(weight_map.values())
    return next(name for name, shard in weight_map.items() if shards.count(shard) > 1)


def _symlink_out(model: Path) -> None:
    shard = _first_shard(model)
    outside = model.parent / "elsewhere.safetensors"
    (model / shard).rename(outside)
    (model / shard).symlink_to(outside)


BAD_INDEXES = {
    "12-not-json": (lambda m: (m / INDEX).write_text('{"weight_map": '), "not valid JSON"),
    "12-list": (lambda m: _write_index(m, [1]), "the top level is a JSON list, not an object"),
    "12-no-weight-map": (lambda m: _write_index(m, {"metadata": {"total_size": 1}}), "weight_map is missing or not a map"),
    "12-weight-map-list": (lambda m: _write_index(m, {"weight_map": [["a", "b"]]}), "weight_map is missing or not a map"),
    "12-weight-map-int": (lambda m: _remap(m, lambda w: w.update({next(iter(w)): 1})), "weight_map is missing or not a map"),
    "13-dotdot": (lambda m: _remap(m, lambda w: w.update({next(iter(w)): "../elsewhere.safetensors"})), "shard name '../elsewhere.safetensors' points outside"),
    "13-absolute": (lambda m: _remap(m, lambda w: w.update({next(iter(w)): "/etc/passwd"})), "shard name '/etc/passwd' points outside"),
    "13-drive-letter": (lambda m: _remap(m, lambda w: w.update({next(iter(w)): "C:\\x.safetensors"})), "points outside the checkpoint"),
    "13-symlink-out": (_symlink_out, "resolves outside the checkpoint"),
    "14-missing-shard": (lambda m: (m / _first_shard(m)).unlink(), "is listed but missing"),
    "14-listed-absent": (lambda m: _remap(m, lambda w: w.update({"ghost.weight": _first_shard(m)})), "tensor 'ghost.weight' is listed for"),
    "14-present-unlisted": (lambda m: _remap(m, lambda w: w.pop(_shared_tensor(w))), "but the index maps it elsewhere or not at all"),
}


@pytest.mark.parametrize("case", list(BAD_INDEXES))
def test_bad_index_scan_and_check(capsys, tmp_path: Path, llama_sharded: Built, lora_llama: Built, case: str) -> None:
    model = copy_dir(llama_sharded.path, tmp_path / "model")
    breaker, why = BAD_INDEXES[case]
    breaker(model)
    before = snapshot(tmp_path)
    rc, out, err = cli(capsys, "scan", model, "--format", "json")
    assert_error(rc, out, err, model / INDEX, why)
    rc, out, err = cli(capsys, "check", model, lora_llama.path, "--format", "json")
    assert_error(rc, out, err, model / INDEX, why)
    assert snapshot(tmp_path) == before


def test_bad_index_merge_writes_nothing(capsys, work: Path, llama_sharded: Built) -> None:
    base = copy_dir(llama_sharded.path, work / "sharded")
    _remap(base, lambda w: w.update({"ghost.weight": _first_shard(base)}))
    assert_merge_refused(capsys, work, base, work / "adapter", base / INDEX, "tensor 'ghost.weight' is listed for")


def test_total_size_disagreement_is_a_warning(capsys, tmp_path: Path, llama_sharded: Built) -> None:
    model = copy_dir(llama_sharded.path, tmp_path / "model")
    data = _weight_map(model)
    actual = data["metadata"]["total_size"]
    data["metadata"]["total_size"] = actual + 1
    _write_index(model, data)
    rc, out, err = cli(capsys, "scan", model, "--format", "json")
    assert (rc, err) == (0, "")
    item = json.loads(out)["checkpoints"][0]
    assert item["total_bytes"] == actual
    assert item["warnings"] == [f"index metadata.total_size is {actual + 1} but the shards hold {actual} bytes of tensor data"]


# ---- HOSTILE 16-17: legacy pickles ---------------------------------------------------------------------------

GADGETS = {"os.system": SystemGadget, "builtins.exec": ExecGadget}


@pytest.mark.parametrize("form", ["zip", "raw-pickle"])
@pytest.mark.parametrize("gadget", list(GADGETS))
def test_pickle_gadget_adapter_check_and_merge(capsys, work: Path, sentinel: Path, gadget: str, form: str) -> None:
    evil = GADGETS[gadget](sentinel)
    state = dict(load_file(str(work / "adapter" / "adapter_model.safetensors")), x=evil)
    (work / "adapter" / "adapter_model.safetensors").unlink()
    bin_path = work / "adapter" / "adapter_model.bin"
    bin_path.write_bytes(torch_save_bytes(state) if form == "zip" else pickle.dumps(evil))
    why = "it references the global" if form == "zip" else "it is not a zip-format torch.save file"
    rc, out, err = cli(capsys, "check", work / "base", work / "adapter", "--format", "json")
    lines = assert_error(rc, out, err, bin_path, why)
    assert form != "zip" or re.search(r"global \S+\.(system|exec)\.$", lines[0])
    assert_merge_refused(capsys, work, work / "base", work / "adapter", bin_path, why, force_over_old=True)


def test_pickle_gadget_base_merge(capsys, work: Path, sentinel: Path) -> None:
    base = work / "base"
    state = dict(load_file(str(base / "model.safetensors")), x=ExecGadget(sentinel))
    (base / "model.safetensors").unlink()
    (base / "pytorch_model.bin").write_bytes(torch_save_bytes(state))
    assert_merge_refused(capsys, work, base, work / "adapter", base / "pytorch_model.bin", "it references the global __builtin__.exec")  # protocol 2 spells it so


def test_safetensors_twin_means_the_pickle_is_never_read(capsys, work: Path, sentinel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise Hung("the pickle twin was read")

    monkeypatch.setattr("inspector.io.checkpoint.read_torch_bin", forbidden)
    (work / "adapter" / "adapter_model.bin").write_bytes(torch_save_bytes({"x": SystemGadget(sentinel)}))
    (work / "base" / "pytorch_model.bin").write_bytes(pickle.dumps(ExecGadget(sentinel)))
    rc, out, err = cli(capsys, "check", work / "base", work / "adapter", "--format", "json")
    assert (rc, err) == (0, "")
    rc, out, err = merge(capsys, work / "base", work / "adapter", work / "merged")
    assert (rc, err) == (0, "")
    assert not [p.name for p in (work / "merged").iterdir() if p.suffix == ".bin"]


# ---- HOSTILE 18-20: configs ------------------------------------------------------------------------------------

BAD_ADAPTER_CONFIGS = {
    "r-string": ({"r": "eight"}, "r is 'eight'; the LoRA rank must be a positive integer"),
    "r-zero": ({"r": 0}, "r is 0; the LoRA rank must be a positive integer"),
    "r-negative": ({"r": -1}, "r is -1; the LoRA rank must be a positive integer"),
    "r-float": ({"r": 8.0}, "r is 8.0; the LoRA rank must be a positive integer"),
    "r-bool": ({"r": True}, "r is True; the LoRA rank must be a positive integer"),
    "alpha-string": ({"lora_alpha": "x"}, "lora_alpha is 'x'; expected a number"),
    "alpha-nan": ({"lora_alpha": float("nan")}, "lora_alpha is nan; expected a number"),
    "rslora-string": ({"use_rslora": "false"}, "use_rslora is 'false' (str); it must be true or false"),
    "dora-int": ({"use_dora": 1}, "use_dora is 1 (int); it must be true or false"),
    "peft-type-list": ({"peft_type": ["LORA"]}, "peft_type is ['LORA']"),
    "target-modules-int": ({"target_modules": 5}, "target_modules is 5"),
    "20-invalid-regex": ({"target_modules": "model\\.(q_proj"}, "is not a valid regular expression"),
    "20-invalid-rank-pattern-key": ({"rank_pattern": {"(": 2}}, "is not a valid regular expression"),
    "20-regex-too-long": ({"target_modules": "a" * 1001}, "longer than 1000 characters"),
}


@pytest.mark.parametrize("case", list(BAD_ADAPTER_CONFIGS))
def test_bad_adapter_config_check(capsys, tmp_path: Path, llama: Built, lora_llama: Built, case: str) -> None:
    changes, why = BAD_ADAPTER_CONFIGS[case]
    adapter = copy_dir(lora_llama.path, tmp_path / "adapter")
    edit_json_file(adapter / "adapter_config.json", **changes)
    rc, out, err = cli(capsys, "check", llama.path, adapter, "--format", "json")
    lines = assert_error(rc, out, err, adapter / "adapter_config.json", why)
    assert lines[0].startswith("Error: Invalid adapter_config.json for ")


BAD_JSON_FILES = {
    "adapter-not-json": ("adapter", "adapter_config.json", '{"r": 4,', "not valid JSON"),
    "adapter-list": ("adapter", "adapter_config.json", "[]", "the top level is a JSON list, not an object"),
    "adapter-not-utf8": ("adapter", "adapter_config.json", b'{"r": "\xff"}', "not valid JSON"),
    "adapter-surrogate": ("adapter", "adapter_config.json", '{"peft_type": "\\udc00"}', "lone surrogate"),
    "base-not-json": ("base", "config.json", "{", "not valid JSON"),
    "base-list": ("base", "config.json", "[1]", "the top level is a JSON list, not an object"),
    "base-surrogate": ("base", "config.json", '{"model_type": "\\ud800"}', "lone surrogate"),
}


@pytest.mark.parametrize("case", list(BAD_JSON_FILES))
def test_unreadable_config_json_check_and_merge(capsys, work: Path, case: str) -> None:
    side, name, text, why = BAD_JSON_FILES[case]
    path = work / side / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc, out, err = cli(capsys, "check", work / "base", work / "adapter", "--format", "json")
    assert_error(rc, out, err, path, why)
    assert_merge_refused(capsys, work, work / "base", work / "adapter", path, why)


def test_bad_adapter_config_merge_writes_nothing(capsys, work: Path) -> None:
    edit_json_file(work / "adapter" / "adapter_config.json", use_rslora="false")
    assert_merge_refused(capsys, work, work / "base", work / "adapter", work / "adapter" / "adapter_config.json", "use_rslora is 'false'")


def test_unknown_peft_type_is_a_finding(capsys, work: Path) -> None:
    edit_json_file(work / "adapter" / "adapter_config.json", peft_type="SOMETHING")
    rc, out, err = cli(capsys, "check", work / "base", work / "adapter", "--format", "json")
    assert (rc, err) == (1, "")
    assert [(f["code"], f["severity"], f["message"]) for f in json.loads(out)["findings"] if f["code"] == "LI1401"] == [
        ("LI1401", "error", "peft_type is SOMETHING; lora-inspector checks and merges LoRA adapters only.")
    ]
    assert_merge_refused(capsys, work, work / "base", work / "adapter", work / "adapter", "LI1401", code=1)


def test_config_fields_naming_code_are_never_imported(capsys, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = "li_hostile_evil_module"
    marker = work / "imported"
    code_dir = work.parent / f"{work.name}-code"
    code_dir.mkdir()
    (code_dir / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(code_dir))
    edit_json_file(
        work / "adapter" / "adapter_config.json",
        auto_mapping={"base_model_class": "Evil", "parent_library": module},
        megatron_core=module,
        megatron_config={"tensor_model_parallel_size": 1, "init_method": f"{module}.Evil"},
        library_name=module,
    )
    rc, out, err = cli(capsys, "check", work / "base", work / "adapter", "--format", "json")
    assert (rc, err) == (0, "")
    rc, out, err = merge(capsys, work / "base", work / "adapter", work / "merged")
    assert (rc, err) == (0, "")
    assert module not in sys.modules
    assert not marker.exists()


@pytest.mark.parametrize("field", ["target_modules", "rank_pattern", "alpha_pattern", "exclude_modules"])
def test_pathological_regex_is_bounded(capsys, work: Path, field: str) -> None:
    evil = "(a+)+$"
    value = {evil: 2} if field.endswith("pattern") else evil
    edit_json_file(work / "adapter" / "adapter_config.json", **{field: value})
    start = time.monotonic()
    with deadline(10):
        rc, out, err = cli(capsys, "check", work / "base", work / "adapter", "--format", "json")
    assert time.monotonic() - start < 5
    # Nested repeats are refused while the config is read, before any matching can hang.
    assert_error(rc, out, err, work / "adapter" / "adapter_config.json", "nests a repeat inside a repeat")


def test_pathological_regex_against_hostile_base_names(capsys, work: Path) -> None:
    base = work / "base"
    state = load_file(str(base / "model.safetensors"))
    state["a" * 40 + "!.weight"] = torch.zeros(2, 2)  # a module name made for the regex
    from safetensors.torch import save_file

    save_file(state, str(base / "model.safetensors"), metadata={"format": "pt"})
    edit_json_file(work / "adapter" / "adapter_config.json", target_modules="(a+)+$")
    with deadline(2):
        rc, out, err = cli(capsys, "check", base, work / "adapter", "--format", "json")
    assert_error(rc, out, err, work / "adapter" / "adapter_config.json", "nests a repeat inside a repeat")


# ---- HOSTILE 21: symlinks out of the input, FIFOs and devices --------------------------------------------------


def _link_out(directory: Path, name: str) -> Path:
    """Move ``directory/name`` next to the directory and leave a symlink to it in its place."""
    outside = directory.parent / f"outside-{name}"
    (directory / name).rename(outside)
    (directory / name).symlink_to(outside)
    return directory / name


@pytest.mark.parametrize(
    ("side", "name", "why"),
    [
        ("base", "model.safetensors", "it is a symlink to"),
        ("base", "config.json", "it is a symlink to"),
        ("adapter", "adapter_model.safetensors", "it is a symlink to"),
        ("adapter", "adapter_config.json", "it is a symlink to"),
        ("adapter", "tokenizer.json", "outside the tokenizer directory"),  # merge would copy it into the output
        ("base", "special_tokens_map.json", "outside the tokenizer directory"),
    ],
)
def test_symlink_out_of_the_checkpoint_is_refused(capsys, work: Path, side: str, name: str, why: str) -> None:
    if not (work / side / name).exists():
        (work / side / name).write_text("{}")  # a secret the link would leak
    link = _link_out(work / side, name)
    rc, out, err = cli(capsys, "check", work / "base", work / "adapter", "--format", "json")
    assert_error(rc, out, err, link, why)
    assert_merge_refused(capsys, work, work / "base", work / "adapter", link, why)


def test_symlink_to_device_is_refused(capsys, tmp_path: Path, llama: Built) -> None:
    model = copy_dir(llama.path, tmp_path / "model")
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to("/dev/zero")
    with deadline(10):
        rc, out, err = cli(capsys, "scan", model)
    assert_error(rc, out, err, model / "model.safetensors", "it is a symlink to '/dev/zero'")


def test_symlinks_inside_the_checkpoint_are_fine(capsys, tmp_path: Path, llama: Built) -> None:
    model = copy_dir(llama.path, tmp_path / "model")
    (model / "weights").mkdir()
    (model / "model.safetensors").rename(model / "weights" / "real.safetensors")
    (model / "model.safetensors").symlink_to("weights/real.safetensors")
    rc, out, err = cli(capsys, "scan", model, "--format", "json")
    assert (rc, err) == (0, "")
    assert json.loads(out)["checkpoints"][0]["tensor_count"] == llama.tensor_count


def test_hugging_face_cache_layout_keeps_working(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    base = hf_cache_layout(llama.path, tmp_path / "hub", "org--llama")
    adapter = hf_cache_layout(lora_llama.path, tmp_path / "hub", "org--lora")
    assert (base / "model.safetensors").is_symlink()
    rc, out, err = cli(capsys, "scan", base, adapter, "--format", "json")
    assert (rc, err) == (0, "")
    rc, out, err = cli(capsys, "check", base, adapter, "--format", "json")
    assert (rc, err) == (0, "")
    rc, out, err = merge(capsys, base, adapter, tmp_path / "merged")
    assert (rc, err) == (0, "")
    # Side files arrive too (they are blob links like everything else in a snapshot).
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]


@pytest.mark.parametrize("where", ["blobs", "repo"])
def test_out_over_the_cache_that_holds_the_input_is_refused(capsys, tmp_path: Path, llama: Built, lora_llama: Built, where: str) -> None:
    # A snapshot's files are links into ../../blobs: replacing blobs/ (--force) would destroy the base.
    base = hf_cache_layout(llama.path, tmp_path / "hub", "org--llama")
    repo = tmp_path / "hub" / "models--org--llama"
    out = repo / "blobs" if where == "blobs" else repo
    before = snapshot(tmp_path / "hub")
    rc, stdout, err = merge(capsys, base, lora_llama.path, out, "--force")
    assert rc == 2 and stdout == ""
    assert err.startswith(f"Error: Refusing to write output for '{out}': it contains the input '")
    assert f"e.g. '{Path.cwd() / 'org-llama-merged'}'" in err  # outside the cache, not another revision folder
    assert snapshot(tmp_path / "hub") == before


@pytest.mark.parametrize(
    ("command", "name"),
    [("scan", "model.safetensors"), ("scan", "pytorch_model.bin"), ("check", "adapter_model.safetensors"), ("check", "adapter_model.bin")],
)
def test_fifo_where_a_file_is_expected(capsys, tmp_path: Path, llama: Built, lora_llama: Built, command: str, name: str) -> None:
    if command == "scan":
        directory = tmp_path / "model"
        directory.mkdir()
        (directory / "config.json").write_bytes((llama.path / "config.json").read_bytes())
        argv = ["scan", directory]
    else:
        directory = tmp_path / "adapter"
        directory.mkdir()
        (directory / "adapter_config.json").write_bytes((lora_llama.path / "adapter_config.json").read_bytes())
        argv = ["check", llama.path, directory]
    os.mkfifo(directory / name)
    with deadline(10):  # opening a FIFO for reading blocks until a writer comes: it must never be opened
        rc, out, err = cli(capsys, *argv)
    assert_error(rc, out, err, directory / name, "not a regular file")


@pytest.mark.parametrize("command", ["scan", "check", "merge"])
def test_device_given_as_a_file(capsys, tmp_path: Path, llama: Built, lora_llama: Built, command: str) -> None:
    argv = {
        "scan": ["scan", "/dev/zero"],
        "check": ["check", llama.path, "/dev/zero"],
        "merge": ["merge", "/dev/zero", lora_llama.path, "--out", tmp_path / "out", "--device", "cpu"],
    }[command]
    with deadline(10):
        rc, out, err = cli(capsys, *argv)
    assert_error(rc, out, err, "/dev/zero", "not a regular file")
    assert not (tmp_path / "out").exists()


# ---- HOSTILE 22: --out equal to, inside or containing an input; non-empty --out ---------------------------------


def _out_case(work: Path, case: str) -> tuple[Path, str]:
    base, adapter = work / "base", work / "adapter"
    if case in ("symlink-to-base", "inside-base-via-symlink"):
        (work / "link").symlink_to(base, target_is_directory=True)
    if case == "non-empty":
        (work / "old").mkdir()
        (work / "old" / "keep.txt").write_text("keep me")
    if case == "existing-file":
        (work / "file.txt").write_text("a file")
    return {
        "equal-base": (base, f"it is the input '{base}'"),
        "inside-base": (base / "merged", f"it is inside the input '{base}'"),
        "containing-base": (work, f"it contains the input '{base}'"),
        "equal-adapter": (adapter, f"it is the input '{adapter}'"),
        "inside-adapter": (adapter / "sub" / "merged", f"it is inside the input '{adapter}'"),
        "symlink-to-base": (work / "link", f"it is the input '{base}'"),
        "inside-base-via-symlink": (work / "link" / "merged", f"it is inside the input '{base}'"),
        "non-empty": (work / "old", "the directory exists and is not empty"),
        "existing-file": (work / "file.txt", "exists and is not a directory"),
    }[case]


OUT_CASES = ["equal-base", "inside-base", "containing-base", "equal-adapter", "inside-adapter", "symlink-to-base", "inside-base-via-symlink", "non-empty", "existing-file"]


@pytest.mark.parametrize(
    ("command", "case"),
    [(command, case) for command in ("merge", "resize") for case in OUT_CASES if command == "merge" or "adapter" not in case],  # resize has no adapter
)
def test_out_overlapping_an_input_is_refused(capsys, work: Path, command: str, case: str) -> None:
    out, why = _out_case(work, case)
    before = snapshot(work)
    if command == "merge":
        rc, stdout, err = merge(capsys, work / "base", work / "adapter", out)
    else:
        rc, stdout, err = cli(capsys, "resize", work / "base", "--out", out, "--vocab", "80")
    lines = assert_error(rc, stdout, err, out, why)
    assert lines[0].startswith("Error: Refusing to write output for ")
    assert snapshot(work) == before


# ---- HOSTILE 23: disk full, no space, Ctrl-C and SIGTERM mid-write ------------------------------------------------


@pytest.mark.parametrize("command", ["merge", "resize"])
@pytest.mark.parametrize("force_over_old", [False, True], ids=["new-out", "forced-over-old"])
def test_disk_full_mid_write(capsys, work: Path, monkeypatch: pytest.MonkeyPatch, command: str, force_over_old: bool) -> None:
    real, calls = inspector.io.writer._write_all, []

    def full(fh, data):
        calls.append(1)
        if len(calls) == 4:  # the header, two tensors, then the disk fills up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, data)

    monkeypatch.setattr(inspector.io.writer, "_write_all", full)
    out = work / "merged"
    if force_over_old:
        out.mkdir()
        (out / "old.txt").write_text("the previous output")
    before = snapshot(work)
    force = ["--force"] if force_over_old else []
    if command == "merge":
        rc, stdout, err = merge(capsys, work / "base", work / "adapter", out, *force)
    else:
        rc, stdout, err = cli(capsys, "resize", work / "base", "--out", out, "--vocab", "80", *force)
    lines = assert_error(rc, stdout, err, out, "No space left on device")
    assert "is full" in lines[1]
    assert len(calls) == 4
    assert snapshot(work) == before


def test_not_enough_free_space_is_checked_first(capsys, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = inspector.io.writer.shutil.disk_usage(work)
    monkeypatch.setattr(inspector.io.writer.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    before = snapshot(work)
    rc, out, err = merge(capsys, work / "base", work / "adapter", work / "merged")
    lines = assert_error(rc, out, err, work / "merged", "free on the disk holding")
    assert lines[0].startswith("Error: Not enough disk space for ")
    assert snapshot(work) == before


# A real process, stopped mid-merge by a real signal. The merge is made slow from the outside: the
# script wraps the writer's one write function (the product has no test hooks) and reports when
# it stalls inside the third write, with the staging directory half full.
STALLING_MERGE = textwrap.dedent(
    """
    import signal, sys, time
    import inspector.io.writer as W
    from inspector.cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if the parent ignores it
    real, calls = W._write_all, []

    def stalling(fh, data):
        calls.append(1)
        if len(calls) == 3:
            print("stalled", flush=True)
            time.sleep(60)
        real(fh, data)

    W._write_all = stalling
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    ("sig", "code", "force_over_old"),
    [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, True), (signal.SIGHUP, 129, True)],
    ids=["sigint-new-out", "sigterm-forced-over-old", "sighup-forced-over-old"],  # SIGHUP: the terminal closed
)
def test_signal_mid_merge_leaves_nothing(work: Path, sig: int, code: int, force_over_old: bool) -> None:
    out = work / "merged"
    if force_over_old:
        out.mkdir()
        (out / "old.txt").write_text("the previous output")
    before = snapshot(work)
    argv = ["merge", str(work / "base"), str(work / "adapter"), "--out", str(out), "--device", "cpu", *(["--force"] if force_over_old else [])]
    proc = subprocess.Popen([sys.executable, "-c", STALLING_MERGE, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "stalled", proc.communicate(timeout=30)
        assert [p.name for p in work.iterdir() if ".staging-" in p.name], "not interrupted mid-write"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-2:] == ["Error: interrupted.", "Hint: nothing was written; run the command again."]
    assert snapshot(work) == before


def test_terminal_closing_mid_merge_leaves_nothing(work: Path) -> None:
    """The merge runs in a terminal that goes away (a dropped SSH session): SIGHUP, then every write
    to the terminal fails (EIO). Exit 129, nothing left behind."""
    out = work / "merged"
    before = snapshot(work)
    argv = ["merge", str(work / "base"), str(work / "adapter"), "--out", str(out), "--device", "cpu"]
    with Terminal([sys.executable, "-c", STALLING_MERGE, *argv], cwd=REPO) as terminal:
        terminal.wait_for(b"stalled")
        assert [p.name for p in work.iterdir() if ".staging-" in p.name], "not interrupted mid-write"
        assert terminal.hang_up() == 129
    assert snapshot(work) == before


# ---- HOSTILE 24: a file that changes while it is read --------------------------------------------------------------


@pytest.mark.parametrize("change", ["mtime", "truncate"])
@pytest.mark.parametrize("command", ["merge", "resize"])
def test_input_changing_while_read(capsys, work: Path, monkeypatch: pytest.MonkeyPatch, change: str, command: str) -> None:
    real = TensorReader.read
    touched: list[Path] = []

    def read_then_change(self, info):
        tensor = real(self, info)
        if not touched:  # after the first tensor read, someone rewrites the file
            path = self.root / info.file
            st = os.stat(path)
            if change == "mtime":
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
            else:
                os.truncate(path, st.st_size // 2)
            touched.append(path)
        return tensor

    monkeypatch.setattr(TensorReader, "read", read_then_change)
    out = work / "merged"
    if command == "merge":
        rc, stdout, err = merge(capsys, work / "base", work / "adapter", out)
    else:
        rc, stdout, err = cli(capsys, "resize", work / "base", "--out", out, "--vocab", "80")
    why = "it was rewritten (its modification time changed) after its header was read" if change == "mtime" else "ends early"
    assert_error(rc, stdout, err, touched[0], why)
    assert not out.exists()
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]


# ---- fuzz: the whole scan path, every format, names no sane writer makes --------------------------------------

# Lone surrogates (valid JSON escapes, invalid Unicode), control characters and rich markup lookalikes.
_PIECE = st.characters(categories=["Lu", "Ll", "Nd", "Po", "Ps", "Pe", "Sm", "Zs", "Cc", "Cs"]) | st.sampled_from(["[bold]", "[/bold]", "[/]", "\x1b[2J"])
_NAME = st.lists(_PIECE, max_size=6).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(_NAME, max_size=4), fmt=st.sampled_from(["json", "rich", "markdown", "github"]), trailing=st.binary(max_size=2))
def test_fuzz_scan_reports_or_names_the_file(capsys, tmp_path: Path, names: list[str], fmt: str, trailing: bytes) -> None:
    """Whatever the names, scan prints a report (exit 0) or an Error/Hint naming the file (exit 2)."""
    entries = ",".join(f'{json.dumps(n)}: {{"dtype": "U8", "shape": [1], "data_offsets": [{i}, {i + 1}]}}' for i, n in enumerate(names))
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(st_bytes(("{" + entries + "}").encode(), bytes(len(names)) + trailing))
    rc, out, err = cli(capsys, "scan", path, "--tensors", "--format", fmt)
    assert "Traceback" not in err and "Internal error" not in err, err
    if rc == 2:
        assert_error(rc, out, err, path, "")
    else:
        assert (rc, err) == (0, "")
        if fmt == "json":
            assert [t["name"] for t in json.loads(out)["checkpoints"][0]["tensors"]] == names


def test_markup_in_paths_and_names_prints_literally(capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m[notastyle]" / "x[" / "red]"  # shown as ".../m[notastyle]/x[/red]": not markup
    header = {"[/bold]": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, ":smile:[bold]x": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(st_bytes(header, b"\0\0"))
    monkeypatch.setenv("COLUMNS", "200")
    rc, out, err = cli(capsys, "scan", model, "--tensors", "--match", "[/b]")
    assert (rc, err) == (0, "")
    assert str(model) in out and "[/bold]" in out and ":smile:[bold]x" in out and "matching '[/b]'" in out


@pytest.mark.parametrize("fmt", ["markdown", "github", "rich"])
def test_terminal_escapes_in_tensor_names_are_never_printed_raw(capsys, tmp_path: Path, fmt: str) -> None:
    """A tensor name carrying ESC sequences (clear screen, window title) reaches no report as raw bytes."""
    from safetensors.torch import save_file

    name = "evil\x1b[2J\x1b]0;pwned\x07.weight"
    save_file({name: torch.zeros(2, 2)}, str(tmp_path / "x.safetensors"))
    rc, out, err = cli(capsys, "scan", tmp_path / "x.safetensors", "--tensors", "--format", fmt)
    assert (rc, err) == (0, "")
    assert "\x1b" not in out and "\x07" not in out
    if fmt != "github":  # annotations summarize a scan; the tables name every tensor
        assert "evil\\x1b[2J" in out


def test_a_newline_in_a_tensor_name_draws_no_row_of_its_own(capsys, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a\nlm_head.weight": torch.zeros(1), "b": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    rc, out, err = cli(capsys, "scan", tmp_path / "x.safetensors", "--tensors")
    assert (rc, err) == (0, "") and "a\\x0alm_head.weight" in out
    assert not any(line.strip("│ ").startswith("lm_head.weight") for line in out.splitlines())


def test_a_link_to_a_directory_in_an_input_is_not_an_input(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    # `base -> /models/...` style links beside an adapter are common; only linked files count as inputs.
    adapter = copy_dir(lora_llama.path, tmp_path / "adapter")
    (adapter / "root").symlink_to("/")
    (adapter / "up").symlink_to("..")
    rc, out, err = merge(capsys, llama.path, adapter, tmp_path / "merged")
    assert (rc, err) == (0, "") and (tmp_path / "merged" / "model.safetensors").is_file()
