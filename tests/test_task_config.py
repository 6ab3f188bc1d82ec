"""Merged classification adapters: the merged config.json names the task class
and the head's labels, so the task's Auto class loads the model and its logits equal PeftModel's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForSequenceClassification,
    BertForTokenClassification,
    LlamaForSequenceClassification,
)

from inspector.cli import main
from inspector.task_config import label_count, task_class, task_config
from tests.models import HIDDEN, VOCAB, make_bert, make_llama, save_trained_adapter

REPO = Path(__file__).resolve().parent.parent
IDS = torch.tensor([[5, 9, 17, 33, 2, 40, 7], [3, 11, 60, 12, 8, 1, 30]])

# (task class the adapter was trained on, its PEFT task type, labels, Auto class, LoRA targets, base builder)
CASES = {
    "bert-seq": (BertForSequenceClassification, "SEQ_CLS", 3, AutoModelForSequenceClassification, ["query", "value"], make_bert),
    "bert-token": (BertForTokenClassification, "TOKEN_CLS", 5, AutoModelForTokenClassification, ["query", "value"], make_bert),
    "llama-seq": (LlamaForSequenceClassification, "SEQ_CLS", 3, AutoModelForSequenceClassification, ["q_proj", "v_proj"], make_llama),
}


def run(*argv: object) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Path]]:
    """Per case: the base (BertModel / LlamaForCausalLM, as the issue has it), a PEFT adapter trained
    on the task model built from it, and ``lora-inspector merge`` of the two."""
    root = tmp_path_factory.mktemp("tasks")
    out = {}
    for case, (cls, task, labels, _, targets, make) in CASES.items():
        base = root / case / "base"
        if not base.exists():
            make(base)
        torch.manual_seed(1)
        model = cls.from_pretrained(base, num_labels=labels)
        save_trained_adapter(model, root / case / "adapter", task_type=task, r=2, lora_alpha=4, target_modules=targets)
        assert run("merge", base, root / case / "adapter", "--out", root / case / "merged", "--device", "cpu", "-q") == 0
        out[case] = (base, root / case / "adapter", root / case / "merged")
    return out


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("case", list(CASES))
def test_task_auto_class_loads_the_merge_and_matches_peft(built, case: str) -> None:
    from peft import PeftModel

    cls, task, labels, auto, _, _ = CASES[case]
    base, adapter, merged = built[case]
    model, info = auto.from_pretrained(merged, output_loading_info=True)  # before the fix: a classifier size mismatch
    assert type(model) is cls
    assert info["missing_keys"] == set() and not info["mismatched_keys"], info  # the trained head, not a fresh one
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == [cls.__name__]
    assert config["id2label"] == {str(i): f"LABEL_{i}" for i in range(labels)}
    assert config["label2id"] == {f"LABEL_{i}": i for i in range(labels)}
    reference = PeftModel.from_pretrained(cls.from_pretrained(base, num_labels=labels), adapter)
    # A decoder without pad_token_id classifies one sequence at a time (its base config has none).
    rows = [IDS[i : i + 1] for i in range(len(IDS))] if case.startswith("llama") else [IDS]
    for ids in rows:
        got, want = logits(model, ids), logits(reference, ids)
        assert got.shape[-1] == labels
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_base_config_is_kept_otherwise(built) -> None:
    base, _, merged = built["llama-seq"]
    before = json.loads((base / "config.json").read_text())
    after = json.loads((merged / "config.json").read_text())
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {"architectures", "id2label", "label2id"}
    assert after.get("pad_token_id") == before.get("pad_token_id")  # not invented: the adapter does not say


def test_a_plain_lora_merge_keeps_the_config(tmp_path: Path) -> None:
    from tests.models import make_lora_adapter

    base = make_bert(tmp_path / "base").path
    adapter = make_lora_adapter(base, tmp_path / "adapter", r=2, lora_alpha=4, target_modules=["query"]).path
    assert run("merge", base, adapter, "--out", tmp_path / "merged", "--device", "cpu", "-q") == 0
    assert json.loads((tmp_path / "merged" / "config.json").read_text()) == json.loads((base / "config.json").read_text())


# ---- the pure part

BERT = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": HIDDEN, "vocab_size": VOCAB}
CLASSIFIER = {"classifier.weight": (3, HIDDEN), "classifier.bias": (3,)}


def test_labels_come_from_the_heads_output_layer() -> None:
    assert label_count(CLASSIFIER) == 3
    assert label_count({"score.weight": (1, HIDDEN)}) == 1
    roberta = {"classifier.dense.weight": (HIDDEN, HIDDEN), "classifier.dense.bias": (HIDDEN,),
               "classifier.out_proj.weight": (4, HIDDEN), "classifier.out_proj.bias": (4,)}  # fmt: skip
    assert label_count(roberta) == 4
    assert label_count({"pre_classifier.weight": (HIDDEN, HIDDEN), "classifier.weight": (7, HIDDEN)}) == 7  # DistilBERT
    assert label_count({"classifier.dense.weight": (HIDDEN, HIDDEN), "classifier.out_proj.weight": (HIDDEN, HIDDEN)}) is None  # ambiguous
    assert label_count({"classifier.bias": (3,)}) is None


def test_task_class_names() -> None:
    assert task_class(BERT, "SEQ_CLS") == "BertForSequenceClassification"
    assert task_class(BERT, "TOKEN_CLS") == "BertForTokenClassification"
    assert task_class(BERT, "QUESTION_ANS") == "BertForQuestionAnswering"
    assert task_class({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "SEQ_CLS") == "LlamaForSequenceClassification"
    assert task_class({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "TOKEN_CLS") == "GPT2ForTokenClassification"
    # transformers' own name where it differs from the prefix rule (Gemma3ForCausalLM -> Gemma3Text...).
    assert task_class({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text"}, "SEQ_CLS") == "Gemma3TextForSequenceClassification"
    # A model type this transformers does not know: the naming every transformers model follows.
    assert task_class({"architectures": ["NovelForCausalLM"], "model_type": "novel-xyz"}, "SEQ_CLS") == "NovelForSequenceClassification"
    # Remote code: its own class, or none.
    remote = {"architectures": ["XModel"], "model_type": "x", "auto_map": {"AutoModelForSequenceClassification": "org/x--modeling_x.XForSequenceClassification"}}
    assert task_class(remote, "SEQ_CLS") == "XForSequenceClassification"
    assert task_class(remote, "TOKEN_CLS") is None
    assert task_class(BERT, "CAUSAL_LM") is None and task_class(BERT, None) is None


def test_task_config() -> None:
    assert task_config(BERT, "SEQ_CLS", {}) == BERT  # no new head: nothing to say
    merged = task_config(BERT, "SEQ_CLS", CLASSIFIER)
    assert merged == {**BERT, "architectures": ["BertForSequenceClassification"],
                      "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}}  # fmt: skip
    assert BERT["architectures"] == ["BertModel"]  # the input is not changed
    named = {**BERT, "id2label": {"0": "neg", "1": "neu", "2": "pos"}, "label2id": {"neg": 0, "neu": 1, "pos": 2}}
    assert task_config(named, "SEQ_CLS", CLASSIFIER)["id2label"] == named["id2label"]  # the base's names, when they fit
    stale = {**BERT, "id2label": {"0": "a", "1": "b"}, "num_labels": 2, "problem_type": "single_label_classification"}
    one = task_config(stale, "SEQ_CLS", {"score.weight": (1, HIDDEN)})
    assert (one["id2label"], one["num_labels"], "problem_type" in one) == ({"0": "LABEL_0"}, 1, False)
    # Without task_type (modules_to_save=["classifier"]): labels only, the class is not guessed.
    untyped = task_config(BERT, None, CLASSIFIER)
    assert untyped["architectures"] == ["BertModel"] and len(untyped["id2label"]) == 3


def test_module_imports_without_torch() -> None:
    code = "import sys, inspector.task_config; assert not {'torch', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("case", ["bert-seq", "bert-token"])
def test_verify_runs_the_trained_head(built, case: str, capsys) -> None:
    # verify compares the task model's own head (sequence or token labels), built with the adapter's
    # label count, not the bare encoder.
    from inspector.cli import main

    base, adapter, merged = built[case]
    rc = main(["verify", str(base), str(adapter), str(merged), "--format", "json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(out)
    assert report["head"] == {"bert-seq": "classification", "bert-token": "token-classification"}[case]
    assert all(p["agrees"] for p in report["prompts"])
