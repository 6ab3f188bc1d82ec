"""Usage errors of the writing commands: each an Error:/Hint: pair for the command that was run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inspector.cli import main
from tests.models import Built


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("device", ["cudafoo", "cuda:", "cuda1", "tpu"])
def test_malformed_device_is_a_usage_error(capsys, tmp_path: Path, llama: Built, lora_llama: Built, device: str) -> None:
    rc, out, err = run(capsys, "merge", llama.path, lora_llama.path, "--out", tmp_path / "m", "--device", device)
    assert (rc, out) == (2, "")
    assert err.startswith(f"Error: Invalid --device: '{device}' is not auto, cpu, cuda or cuda:N.\nHint: ")
    assert not (tmp_path / "m").exists()


def test_swapped_merge_arguments_name_merge(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    rc, _, err = run(capsys, "merge", lora_llama.path, llama.path, "--out", tmp_path / "m")
    assert rc == 2
    assert f"Hint: Run `lora-inspector merge {llama.path} {lora_llama.path} --out DIR`." in err


def test_resize_like_a_model_names_the_option(capsys, tmp_path: Path, llama: Built) -> None:
    rc, _, err = run(capsys, "resize", llama.path, "--like", llama.path, "--out", tmp_path / "r")
    assert rc == 2
    assert err.startswith(f"Error: Not an adapter for '{llama.path}': --like ADAPTER has no adapter_config.json")
    assert not (tmp_path / "r").exists()


def test_merge_does_not_offer_subword_mean(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    rc, _, err = run(capsys, "merge", llama.path, lora_llama.path, "--out", tmp_path / "m", "--init", "subword_mean")
    assert rc == 2 and "Error: Invalid value for '--init'" in err and "Hint: " in err


def test_broken_tokenizer_for_subword_mean_is_an_input_error(capsys, tmp_path: Path, llama: Built) -> None:
    # tokenizer.json that lora-inspector's own reader accepts but transformers cannot load.
    bad = tmp_path / "tok"
    bad.mkdir()
    vocab = {f"w{i}": i for i in range(80)}
    (bad / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": vocab}}))
    base = tmp_path / "base"
    import shutil

    shutil.copytree(llama.path, base)
    shutil.copy(bad / "tokenizer.json", base / "tokenizer.json")
    rc, out, err = run(capsys, "resize", base, "--tokenizer", bad, "--out", tmp_path / "r", "--init", "subword_mean")
    assert (rc, out) == (2, "")
    assert err.startswith("Error: Cannot load tokenizer for ") and "transformers could not load it" in err
    assert "Internal error" not in err and not (tmp_path / "r").exists()
