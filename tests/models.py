"""Tiny real checkpoints built with transformers and PEFT at test time.

Every builder writes a directory exactly as the library's own ``save_pretrained`` does and returns
a ``Built`` whose expected tensors come from the *torch model* (``state_dict`` or PEFT's
``get_peft_model_state_dict``), never from the files: tests compare lora-inspector's header-only
reading against what the libraries hold in memory. Sizes are tiny (hidden 16, 2 layers, vocab 64)
so that the whole suite builds its models in well under a second.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.utils import logging as hf_logging

# Transformers and PEFT log progress bars and config advice that only clutter test output.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", module="peft")
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

Format = Literal["safetensors", "bin"]

TORCH_TO_ST: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}

HIDDEN = 16
LAYERS = 2
VOCAB = 64


@dataclass(frozen=True)
class Built:
    """A checkpoint on disk plus what torch says it must contain."""

    path: Path
    # name -> (shape, safetensors dtype, bytes), taken from the in-memory torch tensors
    tensors: dict[str, tuple[tuple[int, ...], str, int]]
    config: dict = field(default_factory=dict)
    # sum(p.numel() for p in model.parameters()) for models (tied parameters counted once); None for adapters
    torch_parameters: int | None = None

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(shape) for shape, _, _ in self.tensors.values())

    @property
    def total_bytes(self) -> int:
        return sum(nbytes for _, _, nbytes in self.tensors.values())

    @property
    def dtypes(self) -> dict[str, int]:
        return dict(sorted(Counter(dtype for _, dtype, _ in self.tensors.values()).items()))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, (shape, _, _) in self.tensors.items()}


def describe(state: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """name -> (shape, dtype, bytes) of a state dict, as a header would describe it."""
    return {name: (tuple(t.shape), TORCH_TO_ST[t.dtype], t.numel() * t.element_size()) for name, t in state.items()}


def untied_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` without tied aliases: the first name of each shared storage wins.

    That is the set ``save_pretrained`` writes (safetensors forbids aliasing): Llama/Qwen2/GPT-2 keep
    the input embedding and drop ``lm_head.weight``; BERT drops ``cls.predictions.decoder.*``.
    """
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor
    return out


def _save(model: PreTrainedModel, out_dir: Path, fmt: Format, max_shard_size: int | str | None) -> Built:
    out_dir = Path(out_dir)
    state = {k: v.detach().contiguous() for k, v in untied_state(model).items()}
    if fmt == "safetensors":
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
        model.save_pretrained(out_dir, **kwargs)
    else:
        # transformers 5 no longer writes pytorch_model.bin; this is what 4.x's safe_serialization=False did.
        out_dir.mkdir(parents=True, exist_ok=True)
        model.config.architectures = [type(model).__name__]  # save_pretrained records these two itself
        model.config.dtype = next(iter(state.values())).dtype
        model.config.save_pretrained(out_dir)
        torch.save(state, out_dir / "pytorch_model.bin")
    config = json.loads((out_dir / "config.json").read_text())
    return Built(out_dir, describe(state), config, sum(p.numel() for p in model.parameters()))


def _finish(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    model = model.to(dtype)
    model.eval()
    return model


def _decoder_config(vocab: int, hidden: int, layers: int, tie: bool) -> dict:
    """The tiny decoder shape Llama and Qwen2 builders share (GQA: 2 heads, 1 KV head)."""
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )


def make_llama(
    out_dir: Path,
    *,
    vocab: int = VOCAB,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
    tie: bool = False,
    dtype: torch.dtype = torch.float32,
    fmt: Format = "safetensors",
    max_shard_size: int | str | None = None,
    seed: int = 0,
) -> Built:
    """A Llama (GQA: 2 heads, 1 KV head, so v_proj is [hidden/2, hidden])."""
    torch.manual_seed(seed)
    config = LlamaConfig(**_decoder_config(vocab, hidden, layers, tie))
    return _save(_finish(LlamaForCausalLM(config), dtype), out_dir, fmt, max_shard_size)


def make_qwen2(
    out_dir: Path,
    *,
    vocab: int = VOCAB,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
    tied: bool = True,
    dtype: torch.dtype = torch.float32,
    fmt: Format = "safetensors",
    seed: int = 0,
) -> Built:
    """A Qwen2: q/k/v projections carry biases; small Qwen2 checkpoints tie lm_head to the embedding."""
    torch.manual_seed(seed)
    config = Qwen2Config(**_decoder_config(vocab, hidden, layers, tied))
    return _save(_finish(Qwen2ForCausalLM(config), dtype), out_dir, fmt, None)


def make_gpt2(
    out_dir: Path,
    *,
    vocab: int = VOCAB,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
    dtype: torch.dtype = torch.float32,
    fmt: Format = "safetensors",
    seed: int = 0,
) -> Built:
    """A GPT-2: Conv1D layers store weights as [in, out]; lm_head is tied to transformer.wte."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    return _save(_finish(GPT2LMHeadModel(config), dtype), out_dir, fmt, None)


def make_bert(
    out_dir: Path,
    *,
    vocab: int = VOCAB,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
    mlm_head: bool = False,
    dtype: torch.dtype = torch.float32,
    fmt: Format = "safetensors",
    seed: int = 0,
) -> Built:
    """A BERT encoder (``BertModel``), or ``BertForMaskedLM`` whose decoder is tied to the word embeddings."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
    )
    model = BertForMaskedLM(config) if mlm_head else BertModel(config)
    return _save(_finish(model, dtype), out_dir, fmt, None)


def make_other_head(out_dir: Path, arch: Literal["modernbert", "albert", "xlnet"], *, vocab: int = VOCAB, seed: int = 0) -> Built:
    """Tied bases whose output layer is not ``lm_head`` and not stored: ModernBERT (``decoder``),
    XLNet (``lm_loss``), and ALBERT with a factorized embedding (``embedding_size`` 8, narrower than
    hidden 16, as ALBERT / MobileBERT / ELECTRA-small keep it; the head is ``predictions.decoder``)."""
    from transformers import AlbertConfig, AlbertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM, XLNetConfig, XLNetLMHeadModel

    torch.manual_seed(seed)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "modernbert":
        model = ModernBertForMaskedLM(ModernBertConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                                                       num_attention_heads=2, cls_token_id=1, sep_token_id=2, **ids))
    elif arch == "albert":
        model = AlbertForMaskedLM(AlbertConfig(vocab_size=vocab, embedding_size=HIDDEN // 2, hidden_size=HIDDEN, intermediate_size=3 * HIDDEN,
                                               num_hidden_layers=LAYERS, num_attention_heads=2, max_position_embeddings=32, **ids))
    else:
        model = XLNetLMHeadModel(XLNetConfig(vocab_size=vocab, d_model=HIDDEN, n_layer=LAYERS, n_head=2, d_inner=2 * HIDDEN, **ids))
    return _save(_finish(model, torch.float32), out_dir, "safetensors", None)


def load_model(model_dir: Path) -> PreTrainedModel:
    """Load a built model with the auto class its config names (BERT encoders have no LM head)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    auto = AutoModelForCausalLM if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel") else AutoModel
    return auto.from_pretrained(model_dir)


def save_trained_adapter(model: PreTrainedModel, out_dir: Path, *, vocab: int | None = None, **lora_kwargs):
    """Wrap ``model`` with PEFT's get_peft_model, perturb every trainable tensor (so lora_B is
    non-zero, as after training) and save it with PEFT's own save_pretrained. Returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    if vocab is not None:
        model.resize_token_embeddings(vocab, mean_resizing=False)
    peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    with torch.no_grad():
        for _, param in peft_model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.02)
    peft_model.save_pretrained(out_dir)
    (Path(out_dir) / "README.md").unlink(missing_ok=True)  # PEFT's model-card template
    return peft_model


def make_lora_adapter(
    model_dir: Path,
    out_dir: Path,
    *,
    vocab: int | None = None,
    fmt: Format = "safetensors",
    seed: int = 0,
    **lora_kwargs,
) -> Built:
    """Save a PEFT LoRA adapter for the model in ``model_dir`` with PEFT's own ``save_pretrained``.

    ``vocab`` resizes the embeddings first (the seed case: training on an extended tokenizer).
    Trainable parameters are perturbed so lora_B is non-zero, as after training; merge tests rely on it.
    ``fmt="bin"`` writes a legacy ``adapter_model.bin`` (torch.save of the same state dict).
    """
    from peft import get_peft_model_state_dict

    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    peft_model = save_trained_adapter(load_model(model_dir), out_dir, vocab=vocab, **lora_kwargs)
    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    if fmt == "bin":
        (out_dir / "adapter_model.safetensors").unlink()
        torch.save(state, out_dir / "adapter_model.bin")
    config = json.loads((out_dir / "adapter_config.json").read_text())
    return Built(out_dir, describe(state), config)


def make_tokenizer(out_dir: Path, *, size: int = VOCAB, added: tuple[str, ...] = (), special: tuple[str, ...] = ()) -> Path:
    """A WordLevel ``tokenizer.json`` with ``size`` model tokens (``<unk>``, ``<s>``, ``</s>``, ``w3``...),
    then ``added`` tokens and ``special`` tokens appended by transformers, saved with save_pretrained."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, size)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if added:
        fast.add_tokens(list(added))
    if special:
        fast.add_special_tokens({"additional_special_tokens": list(special)})
    fast.save_pretrained(out_dir)
    return Path(out_dir)


def copy_checkpoint(src: Path, dst: Path) -> Path:
    """A private copy that a test may damage without touching the session fixture."""
    shutil.copytree(src, dst)
    return Path(dst)
