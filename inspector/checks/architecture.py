"""LI10xx: was the adapter trained on this base? Hidden size, layer count, the base it names."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

from inspector.binding import Binding, layer_of, shell_command
from inspector.checks import hints
from inspector.checks.registry import check
from inspector.checks.vocabulary import reshaped
from inspector.errors import InspectorError
from inspector.findings import Code, Hit
from inspector.io.checkpoint import Checkpoint, read_checkpoint
from inspector.io.tensor import TensorInfo
from inspector.units import shape_str

# Name tokens that tell a model family: a token matches a key when it is the key, or the key followed
# by a version number (qwen2, llama3, phi3, t5). Both base_model_name_or_path and the base's
# model_type are read this way (qwen3_moe -> qwen, deberta-v2 -> deberta, gemma3_text -> gemma), and
# LI1003 fires only when the name names families and none of them is the base's.
_NAME_FAMILIES = {
    "llama": "llama", "codellama": "llama", "tinyllama": "llama", "vicuna": "llama", "falcon3": "llama",  # Falcon3 is a Llama
    "mistral": "mistral", "ministral": "mistral", "mixtral": "mixtral",
    "qwen": "qwen", "qwq": "qwen", "gemma": "gemma", "codegemma": "gemma", "phi": "phi",
    "gpt": "gpt", "pythia": "neox", "neox": "neox", "falcon": "falcon", "bloom": "bloom", "bloomz": "bloom", "opt": "opt",
    "bert": "bert", "roberta": "roberta", "xlm": "roberta", "deberta": "deberta", "electra": "electra", "albert": "albert",
    "t5": "t5", "mt5": "t5", "bart": "bart", "mbart": "bart", "whisper": "whisper",
    "olmo": "olmo", "starcoder": "starcoder", "deepseek": "deepseek", "mpt": "mpt", "stablelm": "stablelm", "internlm": "internlm",
}


# Name families whose models are built on another family's architecture: deepseek-coder/-llm are
# Llamas (R1 distills Qwen or Llama), StarCoder is gpt_bigcode, and "bert" names span the encoder
# family (hfl/chinese-roberta-wwm-ext is a BERT, ai4bharat/indic-bert an ALBERT).
_ENCODERS = frozenset({"bert", "roberta", "albert", "electra", "deberta"})
_ALSO = {"deepseek": frozenset({"llama", "qwen"}), "starcoder": frozenset({"gpt"}), **{f: _ENCODERS for f in _ENCODERS}}


def _families(text: str) -> set[str]:
    """The families a repo name or model_type names, by its tokens (see _NAME_FAMILIES)."""
    out = set()
    for token in re.split(r"[^a-z0-9]+", text.lower()):
        if token in _NAME_FAMILIES:
            out.add(_NAME_FAMILIES[token])
            continue
        stem = token.rstrip("0123456789")
        if stem != token and stem in _NAME_FAMILIES:
            out.add(_NAME_FAMILIES[stem])
    return out


@check(Code.HIDDEN_SIZE)
def hidden_size(b: Binding) -> Iterator[Hit]:
    for r in reshaped(b):  # a vocabulary matrix of another width
        if r.vocab and not r.rows_only:
            yield Hit(f"{r.label}: the adapter carries {shape_str(r.adapter_shape)}, the base has {shape_str(r.base_shape)}: "
                      f"the adapter was trained on a model with hidden size {r.adapter_shape[-1]}, not {r.base_shape[-1]}.",
                      hints.TRAINED_BASE_SEE_CONFIG, **r.fields())  # fmt: skip
    for module, delta in b.adapter.trainable_tokens.items():
        weight = b.token_embedding_for[module]
        if weight is not None and len(delta.info.shape) == 2 and len(weight.shape) == 2 and delta.info.shape[1] != weight.shape[1]:
            yield Hit(f"{delta.key} is {shape_str(delta.info.shape)} but {weight.name} is {shape_str(weight.shape)}.", hints.TRAINED_BASE,
                      tensor=weight.name, adapter_key=delta.key, adapter_shape=delta.info.shape, base_shape=weight.shape)  # fmt: skip


@check(Code.LAYER_COUNT)
def layer_count(b: Binding) -> Iterator[Hit]:
    beyond = b.beyond_layers
    if beyond and not b.config.layer_replication:  # layer_replication's extra layers: LI1402
        top = max(layer_of(t) for t, _ in beyond)
        yield Hit(f"the adapter has tensors for layers up to {top} ({len(beyond)} tensors) but the base has {b.base_layers} layers.",
                  hints.TRAINED_BASE_SEE_CONFIG, adapter_key=beyond[0][1].name)


@check(Code.BASE_NAME)
def base_name(b: Binding) -> Iterator[Hit]:
    if _other_local_base(b) is not None:
        return  # LI1004 says it better: the local model the adapter was trained on is not BASE
    name = (b.config.base_model_name_or_path or "").lower()
    model_type = str(b.base.config.get("model_type") or "").lower()
    if not name or not model_type:
        return
    named, own = _families(name), _families(model_type)
    if not named or not own or any(({f} | _ALSO.get(f, frozenset())) & own for f in named):
        return
    yield Hit(f"the adapter was trained on {b.config.base_model_name_or_path!r} ({' / '.join(sorted(named))}?) but the base's model_type is {model_type!r}.",
              "Check that BASE is the model the adapter was trained on.")


@check(Code.BASE_PATH)
def base_path(b: Binding) -> Iterator[Hit]:
    found = _other_local_base(b)
    if found is not None:
        local, why = found
        merge = shell_command("lora-inspector", "merge", str(local), b.adapter.checkpoint.path, "--out", "merged")
        yield Hit(f"the adapter was trained on the local model '{local}', which is not BASE ('{b.base.root}'): {why}. "
                  "Merging into BASE drops what that model added (a stage-1 merge, a resize, further training).",
                  f"Merge into the model the adapter was trained on: `{merge}`.")


@functools.lru_cache(maxsize=4)
def _other_local_base(b: Binding) -> tuple[Path, str] | None:
    """The local model the adapter was trained on and how it differs from BASE, when it does."""
    local = _local_base(b)
    why = _not_a_copy(b, local) if local is not None else None
    return (local, why) if why is not None else None


def _local_base(b: Binding) -> Path | None:
    """base_model_name_or_path when it is a model directory on this machine other than BASE (as
    from_pretrained reads it: absolute, or relative to the working directory); None otherwise (a Hub
    id, another machine's path)."""
    name = b.config.base_model_name_or_path
    if not name:
        return None
    where = Path(name)
    try:
        if (where / "config.json").is_file():
            return None if where.resolve() == b.base.root.resolve() else where
    except (OSError, ValueError):
        return None
    return None


_PEEK = 4096  # bytes compared at the start of a tensor


def _not_a_copy(b: Binding, local: Path) -> str | None:
    """How the adapter's local training base differs from BASE, or None when it looks like a copy:
    the tensor tables (headers: names and shapes; another dtype is still a copy, and so is a
    vocabulary resized, as `resize --like` does), then the first 4 KiB of the weights the adapter's
    LoRA adapts, where both have one dtype (a merged LoRA changes every element of those).
    Unreadable: None (no finding without evidence)."""
    try:
        other = read_checkpoint(local, with_tokenizer=False)
    except InspectorError:
        return None
    mine = b.base.by_name
    for name, info in other.by_name.items():
        if name in mine and mine[name].shape != info.shape and not b.vocab.is_vocab(name):
            return f"{name} has another shape there"  # (what that path holds is not reported: the path came from a file)
    if len(other.by_name) != len(mine):  # (the same count under other names: a re-save, still a copy)
        return f"it has {len(other.by_name)} tensors and BASE {len(mine)}"
    for _, weight in b.lora_targets.values():
        theirs = other.by_name.get(weight.name) if weight is not None else None
        comparable = theirs is not None and theirs.dtype == weight.dtype and theirs.contiguous and weight.contiguous
        comparable = comparable and b.base.remote is None  # a base read from the Hub has headers, not data
        if comparable and _peek(b.base, weight) != _peek(other, theirs):
            return f"{weight.name} holds other values there (a merged or further-trained model)"
    return None


def _peek(ckpt: Checkpoint, info: TensorInfo) -> bytes | None:
    try:
        with open(ckpt.root / info.file, "rb") as fh:
            fh.seek(info.start)
            return fh.read(min(_PEEK, info.nbytes))
    except OSError:
        return None
