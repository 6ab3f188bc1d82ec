"""A classifier re-headed for another label count (a 2-label base, an adapter trained with
num_labels=5 and ignore_mismatched_sizes=True). PEFT loads and merges it: check warns (LI405, not the
LI103 error), and the merge writes the adapter's head, equal to PEFT's merge_and_unload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inspector.cli import main
from tests.models import save_trained_adapter

P = "base_model.model."


@pytest.fixture(scope="module")
def reheaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(2-label base, 5-label adapter, PEFT's merged state dict)."""
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("reheaded")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(root / "base")
    model = BertForSequenceClassification.from_pretrained(root / "base", num_labels=5, ignore_mismatched_sizes=True)
    peft_model = save_trained_adapter(model, root / "adapter", task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"])
    merged = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    return root / "base", root / "adapter", merged


def test_check_warns_about_a_new_head_instead_of_a_wrong_base(capsys, reheaded) -> None:
    base, adapter, _ = reheaded
    rc = main(["check", str(base), str(adapter), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    codes = {(f["code"], f["severity"], f["tensor"]) for f in report["findings"]}
    assert rc == 0, report["findings"]
    assert ("LI103", "error", "classifier.weight") not in codes
    assert {("LI405", "warning", "classifier.weight"), ("LI405", "warning", "classifier.bias")} <= codes
    message = next(f["message"] for f in report["findings"] if f["tensor"] == "classifier.weight")
    assert "[5, 16]" in message and "[2, 16]" in message and "5 labels" in message


def test_merge_writes_the_adapters_head_as_peft_does(capsys, tmp_path: Path, reheaded) -> None:
    base, adapter, peft_merged = reheaded
    rc = main(["merge", str(base), str(adapter), "--out", str(tmp_path / "merged"), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    assert merged["classifier.weight"].shape == (5, 16) and merged["classifier.bias"].shape == (5,)
    for name, tensor in merged.items():
        assert torch.allclose(tensor, peft_merged[name], atol=1e-6), name


def test_merged_model_loads_with_its_five_labels(capsys, tmp_path: Path, reheaded) -> None:
    from transformers import AutoModelForSequenceClassification

    base, adapter, peft_merged = reheaded
    assert main(["merge", str(base), str(adapter), "--out", str(tmp_path / "merged"), "--device", "cpu"]) == 0, capsys.readouterr().err
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert model.config.num_labels == 5
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        from transformers import BertConfig, BertForSequenceClassification

        reference = BertForSequenceClassification(BertConfig.from_pretrained(tmp_path / "merged"))
        reference.load_state_dict(peft_merged)
        reference.eval()
        expected = reference(input_ids=ids).logits
    assert torch.allclose(ours, expected, atol=1e-5)


def test_verify_builds_the_base_with_the_adapters_labels(capsys, tmp_path: Path, reheaded) -> None:
    # PeftModel on the 2-label base cannot take the 5-label head; verify builds the base as training
    # did (num_labels=5, ignore_mismatched_sizes) and the merge agrees with it.
    base, adapter, _ = reheaded
    assert main(["merge", str(base), str(adapter), "--out", str(tmp_path / "merged"), "--device", "cpu"]) == 0
    capsys.readouterr()
    rc = main(["verify", str(base), str(adapter), str(tmp_path / "merged"), "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(out)
    assert report["head"] == "classification" and all(p["agrees"] for p in report["prompts"])
