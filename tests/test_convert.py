"""``convert ADAPTER --for NAME``: lossless repairs only, proven on tiny models against PEFT itself.

Every converted adapter is loaded with ``PeftModel.from_pretrained`` on the same base and must give
the original adapter's logits (fp32, within 1e-5); what no lossless repair makes servable is refused
(exit 1, nothing written) with the merge as the fix. The servers' rules here are stand-ins built in
the test (monkeypatched into ``inspector.targets.TARGETS``) so that each repair and refusal is
exercised whatever the real tables say.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from inspector.cli import main
from inspector.findings import Code
from inspector.targets import TARGETS, Target
from inspector.targets import facts as f
from inspector.targets.rule import Rule
from tests.check_cases import edit_config, edit_json, edit_tensors
from tests.merge_cases import LOGIT_TOL, header_dtypes, load, model_output
from tests.models import Built, make_lora_adapter, make_tokenizer

IDS = [1, 5, 17, 42, 7, 3, 63]
P = "base_model.model."
EXACT = dict(atol=1e-5, rtol=1e-5)
CONVERT = "`lora-inspector convert {adapter} --for {target} --out converted`"


def _rule(code: Code, when, outcome: str, message: str, fix: str = CONVERT) -> Rule:
    return Rule(code, when, outcome, message, fix, "tests/test_convert.py (stand-in)")


def _stand_in(name: str, title: str, *rules: Rule) -> Target:
    return Target(name, title, "stand-in", tuple(_rule(r.code, r.when, r.outcome, r.message, r.fix.replace("{target}", name)) for r in rules))


SCALING = (
    _rule(Code.SERVE_SCALING, f.uses_rslora, "diverges", "scales by lora_alpha / r, where PEFT's use_rslora scales by lora_alpha / sqrt(r) (r {r})"),
    _rule(Code.SERVE_SCALING, f.uses_patterns, "diverges", "ignores {fields} and scales every module by lora_alpha / r"),
)
FROZEN = _rule(Code.SERVE_MODULES_TO_SAVE, f.has_frozen_copies, "refused", "refuses the keys {keys}")
FULL = _rule(Code.SERVE_MODULES_TO_SAVE, f.has_full_weights, "refused", "refuses full weights of {modules}", "merge")
DORA = _rule(Code.SERVE_DORA, f.uses_dora, "refused", "refuses DoRA adapters", "merge")
RANK = _rule(Code.SERVE_RANK, f.rank_above(4), "flag", "rank {rank} is above the default limit {limit}", "Start the server with --max-lora-rank {rank}.")
EMBEDDING = _rule(Code.SERVE_EMBEDDING_LORA, f.has_embedding_lora, "refused", "has no LoRA for {modules}", "merge")


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins: sglang computes alpha / r everywhere and refuses frozen copies and full weights;
    vLLM refuses DoRA and full weights and needs a flag above rank 4; llama.cpp refuses embedding
    LoRA; TGI has no rule at all (everything passes)."""
    monkeypatch.setitem(TARGETS, "sglang", _stand_in("sglang", "SGLang", *SCALING, FROZEN, FULL))
    monkeypatch.setitem(TARGETS, "vllm", _stand_in("vllm", "vLLM", DORA, FULL, FROZEN, RANK))
    monkeypatch.setitem(TARGETS, "llamacpp", _stand_in("llamacpp", "llama.cpp", EMBEDDING, FROZEN))
    monkeypatch.setitem(TARGETS, "tgi", _stand_in("tgi", "TGI"))


# ---- adapters --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, llama: Built) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("convert")
    kinds = {
        "rslora": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_rslora=True),
        "patterns": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], rank_pattern={"v_proj": 4}, alpha_pattern={"q_proj": 4}),
        "embedding": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]),
        "modules_to_save": dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
        "dora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True),
        "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    }
    return {name: make_lora_adapter(llama.path, root / name, seed=i, **kw).path for i, (name, kw) in enumerate(kinds.items())}


def peft_logits(base: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel

    return model_output(PeftModel.from_pretrained(load(base), adapter).eval(), IDS)


def tensors(adapter: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def convert(capsys: pytest.CaptureFixture[str], adapter: Path, target: str, out: Path, *extra: object) -> tuple[int, str, str]:
    rc = main(["convert", str(adapter), "--for", target, "--out", str(out), *map(str, extra)])
    got, err = capsys.readouterr()
    return rc, got, err


def convert_json(capsys: pytest.CaptureFixture[str], adapter: Path, target: str, out: Path, *extra: object) -> dict:
    rc, got, err = convert(capsys, adapter, target, out, "--format", "json", *extra)
    assert rc == 0, err
    report = json.loads(got)
    assert report["schema"] == 1 and report["command"] == "convert" and report["target"] == target
    return report


def serving_codes(capsys: pytest.CaptureFixture[str], base: Path, adapter: Path, target: str) -> list[tuple[str, str]]:
    main(["check", str(base), str(adapter), "--target", target, "--format", "json"])
    return [(x["code"], x["outcome"]) for x in json.loads(capsys.readouterr()[0])["findings"] if x["code"].startswith("LI15")]


def assert_same_outputs(base: Path, original: Path, converted: Path) -> None:
    want = peft_logits(base, original)
    assert (want - model_output(load(base), IDS)).abs().max() > 1e-3  # the adapter does change the outputs
    torch.testing.assert_close(peft_logits(base, converted), want, **EXACT)


# ---- folding the scale ---------------------------------------------------------------------------


def test_rslora_is_folded_into_lora_b(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "converted"
    assert serving_codes(capsys, llama.path, made["rslora"], "sglang") == [("LI1510", "diverges")]
    report = convert_json(capsys, made["rslora"], "sglang", out, "--base", llama.path)
    assert [r["kind"] for r in report["repairs"]] == ["fold"]
    assert report["config_changes"] == {"use_rslora": [True, False]}
    assert [x["code"] for x in report["repaired"]] == ["LI1510"] and report["flags"] == [] and report["stats"]["folded"] == 4
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["use_rslora"], config["r"], config["lora_alpha"], config["rank_pattern"], config["alpha_pattern"]) == (False, 8, 16, {}, {})
    before, after = tensors(made["rslora"]), tensors(out)
    assert list(after) == list(before)
    for key, t in before.items():  # lora_B times (16 / sqrt(8)) / (16 / 8) = sqrt(8); lora_A as it was
        torch.testing.assert_close(after[key], t * math.sqrt(8) if ".lora_B." in key else t, atol=0, rtol=1e-6)
    assert_same_outputs(llama.path, made["rslora"], out)
    assert serving_codes(capsys, llama.path, out, "sglang") == []


def test_rank_and_alpha_patterns_are_folded_and_ranks_padded(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "converted"
    assert serving_codes(capsys, llama.path, made["patterns"], "sglang") == [("LI1510", "diverges")]
    report = convert_json(capsys, made["patterns"], "sglang", out, "--base", llama.path)
    assert [r["kind"] for r in report["repairs"]] == ["fold", "pad"]
    assert report["config_changes"] == {"rank_pattern": [{"v_proj": 4}, {}], "alpha_pattern": [{"q_proj": 4}, {}]}
    before, after = tensors(made["patterns"]), tensors(out)
    q, v, o = (f"{P}model.layers.0.self_attn.{m}" for m in ("q_proj", "v_proj", "o_proj"))
    # PEFT's scales: q 4/8, v 16/4, o 16/8; every module now at 16/8 with r 8.
    torch.testing.assert_close(after[f"{q}.lora_B.weight"], before[f"{q}.lora_B.weight"] * 0.25, atol=0, rtol=1e-6)
    assert torch.equal(after[f"{o}.lora_B.weight"], before[f"{o}.lora_B.weight"])
    assert after[f"{v}.lora_A.weight"].shape == (8, 16) and after[f"{v}.lora_B.weight"].shape == (8, 8)
    assert torch.equal(after[f"{v}.lora_A.weight"][:4], before[f"{v}.lora_A.weight"]) and not after[f"{v}.lora_A.weight"][4:].any()
    torch.testing.assert_close(after[f"{v}.lora_B.weight"][:, :4], before[f"{v}.lora_B.weight"] * 2, atol=0, rtol=1e-6)
    assert not after[f"{v}.lora_B.weight"][:, 4:].any()
    assert_same_outputs(llama.path, made["patterns"], out)
    assert serving_codes(capsys, llama.path, out, "sglang") == []


def test_a_server_that_scales_as_peft_gets_no_fold(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    report = convert_json(capsys, made["rslora"], "tgi", tmp_path / "converted", "--base", llama.path)
    assert report["repairs"] == [] and report["config_changes"] == {}
    before, after = tensors(made["rslora"]), tensors(tmp_path / "converted")
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_converting_twice_changes_nothing_more(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    once = tmp_path / "once"
    convert_json(capsys, made["patterns"], "sglang", once, "--base", llama.path)
    report = convert_json(capsys, once, "sglang", tmp_path / "twice", "--base", llama.path)
    assert report["repairs"] == [] and report["repaired"] == []
    first, second = tensors(once), tensors(tmp_path / "twice")
    assert list(first) == list(second) and all(torch.equal(first[k], second[k]) for k in first)


# ---- frozen copies -------------------------------------------------------------------------------


def test_a_base_layer_copy_equal_to_the_base_is_dropped(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    """PEFT saves the embedding beside a LoRA on it (base_layer); equal to the base's, it is redundant."""
    copy = f"{P}model.embed_tokens.base_layer.weight"
    assert copy in tensors(made["embedding"])
    assert serving_codes(capsys, llama.path, made["embedding"], "sglang") == [("LI1505", "refused")]
    out = tmp_path / "converted"
    report = convert_json(capsys, made["embedding"], "sglang", out, "--base", llama.path)
    assert [(r["kind"], r["keys"]) for r in report["repairs"]] == [("drop", [copy])] and report["stats"]["dropped"] == 1
    assert copy not in tensors(out) and len(tensors(out)) == len(tensors(made["embedding"])) - 1
    assert_same_outputs(llama.path, made["embedding"], out)
    assert serving_codes(capsys, llama.path, out, "sglang") == []


def _changed_copy(adapter: Path, dst: Path) -> Path:
    def edit(ts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ts[f"{P}model.embed_tokens.base_layer.weight"][5] += 0.5  # a trained embedding row
        return ts

    return edit_tensors(adapter, dst, edit)


def test_a_base_layer_copy_that_differs_is_kept_or_refused(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    """PEFT loads a base_layer key in place of the base weight: a copy that differs is what the
    adapter computes with. Dropping it would change the outputs, so it stays, and a server that
    refuses it is not served without a merge."""
    adapter = _changed_copy(made["embedding"], tmp_path / "adapter")
    rc, got, err = convert(capsys, adapter, "sglang", tmp_path / "refused", "--base", llama.path)
    assert rc == 1 and not (tmp_path / "refused").exists()
    assert f"Error: Cannot convert adapter for '{adapter}': SGLang: refuses the keys base_model.model.model.embed_tokens.base_layer.weight;" in err
    assert "Hint: Serve a merged model instead: `lora-inspector merge" in err and "Nothing was written." in err
    report = convert_json(capsys, adapter, "tgi", tmp_path / "kept", "--base", llama.path)  # no rule against it: kept
    assert report["repairs"] == [] and any("differs from the base's tensor" in n for n in report["notes"])
    assert f"{P}model.embed_tokens.base_layer.weight" in tensors(tmp_path / "kept")
    assert_same_outputs(llama.path, adapter, tmp_path / "kept")


def test_an_original_module_copy_is_dropped(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    """modules_to_save's frozen pre-training copy: PEFT uses it only with the adapter disabled."""
    copy = f"{P}model.embed_tokens.original_module.weight"

    def add_copy(ts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ts[copy] = ts[f"{P}model.embed_tokens.weight"] * 0  # not even the base's values: never used while the adapter is active
        return ts

    adapter = edit_tensors(made["modules_to_save"], tmp_path / "adapter", add_copy)
    out = tmp_path / "converted"
    report = convert_json(capsys, adapter, "tgi", out, "--base", llama.path)
    assert [(r["kind"], r["keys"]) for r in report["repairs"]] == [("drop", [copy])]
    assert sorted(tensors(out)) == sorted(tensors(made["modules_to_save"]))
    assert_same_outputs(llama.path, adapter, out)


def test_embedding_lora_is_refused_where_the_server_has_none(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    rc, got, err = convert(capsys, made["embedding"], "llamacpp", tmp_path / "out", "--base", llama.path, "--format", "json")
    assert rc == 1 and not (tmp_path / "out").exists()
    report = json.loads(got)
    assert report["command"] == "convert" and report["error"]["message"] == (
        f"Cannot convert adapter for '{made['embedding']}': llama.cpp: has no LoRA for model.embed_tokens; "
        "no lossless repair makes it servable by llama.cpp unmerged.")
    assert report["error"]["hint"].startswith(f"Serve a merged model instead: `lora-inspector merge {llama.path} {made['embedding']} --out merged`")


def test_modules_to_save_full_weights_are_refused(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    rc, got, err = convert(capsys, made["modules_to_save"], "vllm", tmp_path / "out", "--base", llama.path)
    assert rc == 1 and not (tmp_path / "out").exists()
    assert "vLLM: refuses full weights of model.embed_tokens.weight; no lossless repair makes it servable by vLLM unmerged." in err
    assert "Hint: Serve a merged model instead: `lora-inspector merge" in err


# ---- refusals ------------------------------------------------------------------------------------


def test_dora_for_vllm_is_refused_with_the_merge(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, got, err = convert(capsys, made["dora"], "vllm", out, "--base", llama.path)
    assert rc == 1 and got == "" and not out.exists() and list(tmp_path.iterdir()) == []
    merge = f"lora-inspector merge {llama.path} {made['dora']} --out merged"
    assert err == (f"Error: Cannot convert adapter for '{made['dora']}': vLLM: refuses DoRA adapters; no lossless repair makes it servable by vLLM unmerged.\n"
                   f"Hint: Serve a merged model instead: `{merge}` (it computes exactly what PEFT computes). Nothing was written.\n")


def test_check_errors_are_refused_with_the_check(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    """Keys without base_model.model. (LI406): PEFT drops them, so no server output could match."""
    adapter = edit_tensors(made["plain"], tmp_path / "adapter", lambda ts: {k.removeprefix(P): v for k, v in ts.items()})
    rc, got, err = convert(capsys, adapter, "tgi", tmp_path / "out", "--base", llama.path)
    assert rc == 1 and not (tmp_path / "out").exists()
    assert "check finds errors convert does not repair: LI406 key-without-prefix" in err
    assert f"Hint: Run `lora-inspector check {llama.path} {adapter}` for each error and its fix." in err


def test_a_flag_is_reported_not_refused(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    report = convert_json(capsys, made["rslora"], "vllm", tmp_path / "out", "--base", llama.path)
    assert [(x["code"], x["outcome"], x["hint"]) for x in report["flags"]] == [("LI1503", "flag", "Start the server with --max-lora-rank 8.")]
    rc, got, err = convert(capsys, made["rslora"], "vllm", tmp_path / "rich", "--base", llama.path)
    assert rc == 0 and "LI1503" in got and "fix: Start the server with --max-lora-rank 8." in got


# ---- renames, dtype, files -------------------------------------------------------------------------


def test_keys_with_the_adapter_name_are_renamed(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    """torch.save(peft_model.state_dict()) keeps ".default"; a server reading keys wants PEFT's saved layout."""
    def rekey(k: str) -> str:
        k = re.sub(r"\.(lora_A|lora_B)\.weight$", r".\1.default.weight", k)
        return k.replace(".lora_magnitude_vector", ".lora_magnitude_vector.default.weight")

    adapter = edit_tensors(made["dora"], tmp_path / "adapter", lambda ts: {rekey(k): v for k, v in ts.items()})
    out = tmp_path / "converted"
    report = convert_json(capsys, adapter, "tgi", out, "--base", llama.path)
    assert [r["kind"] for r in report["repairs"]] == ["rename"] and report["stats"]["renamed"] == 12
    assert sorted(tensors(out)) == sorted(tensors(made["dora"]))
    assert all(torch.equal(tensors(out)[k], v) for k, v in tensors(made["dora"]).items())
    assert_same_outputs(llama.path, adapter, out)


def test_dtype_cast(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "converted"
    report = convert_json(capsys, made["plain"], "tgi", out, "--base", llama.path, "--dtype", "bf16")
    assert [r["kind"] for r in report["repairs"]] == ["cast"] and report["stats"]["cast"] == 8
    assert set(header_dtypes(out).values()) == {"BF16"}
    before = tensors(made["plain"])
    assert all(torch.equal(t, before[k].to(torch.bfloat16)) for k, t in tensors(out).items())
    torch.testing.assert_close(peft_logits(llama.path, out), peft_logits(llama.path, made["plain"]), **LOGIT_TOL[torch.bfloat16])


def test_a_fold_in_bf16_says_it_rounds(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    report = convert_json(capsys, made["rslora"], "sglang", tmp_path / "out", "--base", llama.path, "--dtype", "bf16")
    assert [r["kind"] for r in report["repairs"]] == ["fold", "cast"]
    assert report["notes"] == ["4 scaled lora_B tensors are rounded to BF16 (relative error up to 2^-8); --dtype fp32 keeps the fold exact"]


def test_side_files_and_config(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    adapter = edit_config(made["rslora"], tmp_path / "adapter", task_type="CAUSAL_LM")
    make_tokenizer(adapter)
    (adapter / "README.md").write_text("model card\n")
    out = tmp_path / "converted"
    report = convert_json(capsys, adapter, "sglang", out, "--base", llama.path)
    assert report["tokenizer_from"] == str(adapter)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["adapter_config.json", "adapter_model.safetensors", "README.md",
                            *(p.name for p in adapter.iterdir() if p.name.startswith(("tokenizer", "special_tokens")))])
    assert (out / "README.md").read_text() == "model card\n"
    old, new = (json.loads((d / "adapter_config.json").read_text()) for d in (adapter, out))
    assert {k: v for k, v in new.items() if old.get(k) != v} == {"use_rslora": False} and new["task_type"] == "CAUSAL_LM"


# ---- the base, --out ---------------------------------------------------------------------------------


def test_the_base_defaults_to_a_local_base_model_name_or_path(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    assert json.loads((made["rslora"] / "adapter_config.json").read_text())["base_model_name_or_path"] == str(llama.path)
    report = convert_json(capsys, made["rslora"], "sglang", tmp_path / "out")
    assert (report["base"], report["base_from"]) == (str(llama.path), "base_model_name_or_path")
    hub = edit_config(made["rslora"], tmp_path / "hub", base_model_name_or_path="meta-llama/Llama-3.2-1B")
    rc, got, err = convert(capsys, hub, "sglang", tmp_path / "out2")
    assert rc == 2 and not (tmp_path / "out2").exists()
    assert "its base_model_name_or_path 'meta-llama/Llama-3.2-1B' is not a local model directory" in err and "--base DIR" in err


def test_out_is_guarded_by_the_writer(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, got, err = convert(capsys, made["rslora"], "sglang", out, "--base", llama.path)
    assert rc == 2 and "--force" in err and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    rc, got, err = convert(capsys, made["rslora"], "sglang", made["rslora"], "--base", llama.path)  # onto its own input
    assert rc == 2 and "Refusing to write output" in err
    report = convert_json(capsys, made["rslora"], "sglang", out, "--base", llama.path, "--force")
    assert report["out"] == str(out) and sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old output left beside it


def test_a_legacy_bin_adapter_is_written_as_safetensors(capsys, servers, llama: Built, tmp_path: Path) -> None:
    adapter = make_lora_adapter(llama.path, tmp_path / "bin", fmt="bin", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_rslora=True).path
    out = tmp_path / "converted"
    report = convert_json(capsys, adapter, "sglang", out, "--base", llama.path)
    assert [r["kind"] for r in report["repairs"]] == ["fold"]
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert_same_outputs(llama.path, adapter, out)


def test_a_quantized_base_is_no_obstacle(capsys, servers, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    """LI901 is about merging into packed weights; convert leaves the base alone, and a quantized base
    is what adapters are commonly served on. The output is the one the full-precision base gives."""
    def pack(ts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for key in [k for k in ts if k.endswith("_proj.weight")]:
            ts[key] = torch.zeros(ts[key].numel() // 2, 1, dtype=torch.uint8)
            ts[key.removesuffix("weight") + "weight.absmax"] = torch.ones(4)
        return ts

    packed = edit_tensors(llama.path, tmp_path / "packed", pack, filename="model.safetensors")
    base = edit_json(packed, tmp_path / "bnb", "config.json", quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    report = convert_json(capsys, made["rslora"], "sglang", tmp_path / "out", "--base", base)
    assert [r["kind"] for r in report["repairs"]] == ["fold"]
    convert_json(capsys, made["rslora"], "sglang", tmp_path / "full", "--base", llama.path)
    ours, full = tensors(tmp_path / "out"), tensors(tmp_path / "full")
    assert list(ours) == list(full) and all(torch.equal(ours[k], full[k]) for k in full)


# ---- end to end, with the servers' own rule tables (inspector/targets/) ----------------------------


def test_rslora_for_sglang_end_to_end(capsys, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    """SGLang scales by lora_alpha / r (its table's LI1510): the fold makes it compute PEFT's rsLoRA."""
    assert ("LI1510", "diverges") in serving_codes(capsys, llama.path, made["rslora"], "sglang")
    out = tmp_path / "converted"
    report = convert_json(capsys, made["rslora"], "sglang", out, "--base", llama.path)
    assert [r["kind"] for r in report["repairs"]] == ["fold"] and report["config_changes"] == {"use_rslora": [True, False]}
    assert_same_outputs(llama.path, made["rslora"], out)
    assert serving_codes(capsys, llama.path, out, "sglang") == []


def test_patterns_for_sglang_end_to_end(capsys, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    """SGLang sizes every module at r (rank_pattern refused) and scales by lora_alpha / r (alpha_pattern diverges)."""
    assert {c for c, _ in serving_codes(capsys, llama.path, made["patterns"], "sglang")} == {"LI1510"}
    out = tmp_path / "converted"
    report = convert_json(capsys, made["patterns"], "sglang", out, "--base", llama.path)
    assert [r["kind"] for r in report["repairs"]] == ["fold", "pad"]
    assert_same_outputs(llama.path, made["patterns"], out)
    assert serving_codes(capsys, llama.path, out, "sglang") == []


def test_dora_for_vllm_end_to_end(capsys, llama: Built, made: dict[str, Path], tmp_path: Path) -> None:
    rc, got, err = convert(capsys, made["dora"], "vllm", tmp_path / "out", "--base", llama.path)
    assert rc == 1 and not (tmp_path / "out").exists()
    assert "vLLM: refuses DoRA" in err and f"`lora-inspector merge {llama.path} {made['dora']} --out merged`" in err


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("kind", ["rslora", "patterns", "embedding", "plain"])
def test_every_server_either_refuses_or_gets_peft_outputs(capsys, llama: Built, made: dict[str, Path], tmp_path: Path, target: str, kind: str) -> None:
    """For each real table: a conversion is refused (exit 1, nothing written) or its output computes
    what the input computes and leaves nothing the server refuses or computes otherwise."""
    out = tmp_path / "converted"
    rc, got, err = convert(capsys, made[kind], target, out, "--base", llama.path, "--format", "json")
    if rc == 1:
        assert not out.exists() and "lora-inspector merge" in json.loads(got)["error"]["hint"]
        return
    assert rc == 0, err
    assert_same_outputs(llama.path, made[kind], out)
    assert [c for c in serving_codes(capsys, llama.path, out, target) if c[1] != "flag"] == []
