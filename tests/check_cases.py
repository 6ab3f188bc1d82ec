"""Builders for ``check`` tests: tokenizers, and minimal edits of real PEFT adapters.

Where PEFT cannot write the broken file a user meets (a ZeRO-3 empty tensor, a hand-edited config,
a dropped ``lora_B``), the tests save a real adapter with PEFT first and then change exactly one
thing: a field of ``adapter_config.json`` / ``config.json``, or one tensor of the safetensors file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DROP = object()  # edit_json: remove the field

SPECIALS = ["<unk>", "<s>", "</s>"]


def make_tokenizer(out_dir: Path, size: int) -> Path:
    """A WordLevel tokenizer of exactly ``size`` tokens saved as transformers does (fixtures/make_seed.py)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + [f"w{i}" for i in range(size - len(SPECIALS))]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert len(fast) == size  # the count transformers reports is the one check compares
    fast.save_pretrained(out_dir)
    return Path(out_dir)


def edit_json(src: Path, dst: Path, filename: str, **changes) -> Path:
    """Copy checkpoint ``src`` to ``dst`` and set (or, with ``DROP``, remove) fields of one JSON file."""
    shutil.copytree(src, dst)
    path = Path(dst) / filename
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DROP:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2))
    return Path(dst)


def edit_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of adapter ``src`` with ``adapter_config.json`` fields changed."""
    return edit_json(src, dst, "adapter_config.json", **changes)


def edit_tensors(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], filename: str = "adapter_model.safetensors") -> Path:
    """A copy of checkpoint ``src`` whose safetensors file is rewritten as ``edit(tensors)`` returns it."""
    shutil.copytree(src, dst)
    path = Path(dst) / filename
    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    save_file({k: v.contiguous() for k, v in edit(tensors).items()}, str(path), metadata=metadata)
    return Path(dst)


def drop(*keys: str) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    def edit(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for key in keys:
            del tensors[key]  # KeyError: the test names a key PEFT did not write
        return tensors

    return edit


def rename(old: str, new: str) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    def edit(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors[new] = tensors.pop(old)
        return tensors

    return edit


def replace(key: str, tensor: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Put ``tensor`` under ``key`` (a reshaped or empty stand-in for the saved one, or a new key)."""

    def edit(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors[key] = tensor
        return tensors

    return edit


# ---------------------------------------------------------------------------------------------
# Other architectures: a tiny model of any transformers class, and a PEFT adapter trained on it
# ---------------------------------------------------------------------------------------------


def make_model(out_dir: Path, model_cls: type, config, seed: int = 0) -> Path:
    """``model_cls(config)`` (a transformers class and its config, tiny sizes) saved with save_pretrained."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(out_dir)
    return Path(out_dir)


def make_adapter(model_dir: Path, out_dir: Path, model_cls: type, *, vocab: int | None = None, seed: int = 0, **lora_kwargs) -> Path:
    """A LoRA adapter saved by PEFT for ``model_cls.from_pretrained(model_dir)`` (tests.models'
    make_lora_adapter for a model class of the test's choosing: seq2seq, classification, multimodal)."""
    from tests.models import save_trained_adapter

    torch.manual_seed(seed)
    save_trained_adapter(model_cls.from_pretrained(model_dir), out_dir, vocab=vocab, **lora_kwargs)
    return Path(out_dir)


def adapter_keys(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), "pt") as fh:
        return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
