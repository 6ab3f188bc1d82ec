"""The base model as the diagnosis and the merge see it: name lookup and vocabulary layout.

Finds embeddings and heads by config and shape, not by Llama's names alone (BERT's
``embeddings.word_embeddings``, GPT-2's ``transformer.wte``, T5's ``shared``, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from inspector.io.checkpoint import MODEL_FIELDS, Checkpoint

_EMBED = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings|embed_in|shared|embedding|embeddings)\.weight$")
_NOT_VOCAB = re.compile(r"position|wpe|token_type|rotary|rel_pos")
# Vocabulary matrices live outside the repeated blocks; a per-layer tensor that happens to be
# [vocab, hidden] (GPT-2's Conv1D c_proj is [4*hidden, hidden]) or [vocab] is never one.
LAYER_INDEX = re.compile(r"\.(?:layers|h|layer|blocks|block)\.(\d+)\.")  # the repeated blocks, and the index
# Models that store Linear weights as [in, out] (transformers' Conv1D): PEFT sets fan_in_fan_out for them.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})


# Names transformers 5 gives a module in memory (so PEFT's adapter keys use them) against the names its
# checkpoints store the tensors under: this mirrors transformers' checkpoint conversion mapping
# (transformers/conversion_mapping.py renames file keys to module names at load, and back at save).
# (adapter side, base side): "^x." matches at the start of a name, ".x." anywhere on dot boundaries.
# Tried in order, only when a name has no exact (or prefix) match.
NAME_ALIASES: tuple[tuple[str, str], ...] = (
    ("^lm_head.", "^embed_out."),  # GPTNeoXForCausalLM
    (".mlp.gate.", ".block_sparse_moe.gate."),  # Mixtral-style MoE blocks
    (".mlp.experts.", ".block_sparse_moe.experts."),
    ("^model.language_model.", "^language_model.model."),  # LLaVA-style multimodal models
    ("^lm_head.", "^language_model.lm_head."),
    ("^model.vision_tower.", "^vision_tower.vision_model."),  # CLIP / SigLIP towers: transformers 5 drops vision_model.
    ("^model.vision_tower.", "^vision_tower."),
    ("^model.multi_modal_projector.", "^multi_modal_projector."),
)
# Checkpoint names of renamed modules that PEFT 0.21 does not map back for adapter keys (it converts
# LoRA keys only for model types with a conversion mapping; GPT-NeoX's is registered per class):
# (stale adapter-side name, the module's name in memory, model types). PEFT drops such keys silently.
STALE_NAMES: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("^embed_out.", "^lm_head.", frozenset({"gpt_neox"})),
)
# Output layers of tied architectures that are not ``lm_head``, which a tied checkpoint does not store:
# (a tensor that shows the layout, the head's weight, the head's own bias once untied, the bias it is
# tied to while tied). Checked in order; architectures not listed are asked of transformers at merge.
TIED_HEADS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("cls.predictions.bias", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "cls.predictions.bias"),  # BERT, MobileBERT, FNet *ForMaskedLM
    ("predictions.dense.weight", "predictions.decoder.weight", "predictions.decoder.bias", "predictions.bias"),  # ALBERT
    ("lm_head.dense.weight", "lm_head.decoder.weight", "lm_head.decoder.bias", "lm_head.bias"),  # RoBERTa, MPNet
    ("vocab_projector.bias", "vocab_projector.weight", None, None),  # DistilBERT
    ("generator_lm_head.bias", "generator_lm_head.weight", None, None),  # ELECTRA generator
    ("model.encoder.conv1.weight", "proj_out.weight", None, None),  # Whisper
    ("head.dense.weight", "decoder.weight", None, None),  # ModernBERT
    ("lm_loss.bias", "lm_loss.weight", None, None),  # XLNet
)


def known_tied_head(names) -> tuple[str, str | None, str | None] | None:
    """(head weight, own bias, tied bias) of a tied base whose layout TIED_HEADS knows, else None."""
    return next(((head, own, tied) for marker, head, own, tied in TIED_HEADS if marker in names), None)


# Tensors the model ties to another one and the checkpoint does not store (adapter side, base side):
# T5 / BART's encoder and decoder embed_tokens are the shared embedding; BERT's MLM decoder bias is
# cls.predictions.bias.
TIED_ALIASES: tuple[tuple[str, str], ...] = (
    (".encoder.embed_tokens.", ".shared."),
    (".decoder.embed_tokens.", ".shared."),
    (".predictions.decoder.bias.", ".predictions.bias."),
)


def swap(name: str, src: str, dst: str) -> str | None:
    """``name`` with the alias fragment ``src`` replaced by ``dst`` (see NAME_ALIASES), or None."""
    padded = f".{name}."
    if src.startswith("^"):
        head = "." + src[1:]
        if not padded.startswith(head):
            return None
        out = "." + dst.removeprefix("^") + padded[len(head):]
    elif src in padded:
        out = padded.replace(src, dst.removeprefix("^"), 1)
    else:
        return None
    return out.strip(".")


def config_value(config: dict, *names: str):
    """A config field by any of its aliases, falling back to a nested ``text_config``."""
    for src in (config, config.get("text_config") if isinstance(config.get("text_config"), dict) else {}):
        for name in names:
            if src.get(name) is not None:
                return src[name]
    return None


class BaseIndex:
    """Look up base tensors by the names an adapter uses, tolerating a missing or extra model prefix
    (an adapter trained on ``GPT2LMHeadModel`` says ``transformer.h.0``; an old checkpoint says ``h.0``)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.by_name = ckpt.by_name
        model_type = ckpt.config.get("model_type") if isinstance(ckpt.config, dict) else None
        model_type = model_type if isinstance(model_type, str) else None  # a list would be unhashable below
        self._stale = tuple((src, dst) for src, dst, types in STALE_NAMES if model_type in types)

    @cached_property
    def _by_suffix(self) -> dict[str, str | None]:
        index: dict[str, str | None] = {}
        for name in self.by_name:
            parts = name.split(".")
            for i in range(1, len(parts)):
                suffix = ".".join(parts[i:])
                index[suffix] = None if suffix in index and index[suffix] != name else name
        return index

    @cached_property
    def modules(self) -> frozenset[str]:
        """Module names as the checkpoint stores them."""
        return frozenset(name.rpartition(".")[0] for name in self.by_name)

    @cached_property
    def memory_modules(self) -> frozenset[str]:
        """Module names an adapter may use (PEFT matches target_modules against these): the stored
        names and their in-memory aliases (NAME_ALIASES, TIED_ALIASES), less the stale ones."""
        out = set()
        for module in self.modules:
            if self.renamed(module) is None:
                out.add(module)
            for memory, stored in NAME_ALIASES + TIED_ALIASES:
                alias = swap(module, stored, memory)
                if alias is not None:
                    out.add(alias)
        return frozenset(out)

    def renamed(self, name: str) -> str | None:
        """The in-memory name of a module transformers 5 renames, when ``name`` is its stale checkpoint
        name (STALE_NAMES): PEFT finds no module under it and drops the tensor."""
        for stale, memory in self._stale:
            found = swap(name, stale, memory)
            if found is not None:
                return found
        return None

    def _lookup(self, name: str) -> str | None:
        if name in self.by_name:
            return name
        parts = name.split(".")
        for i in range(1, len(parts) - 1):  # adapter has a prefix the base lacks
            if ".".join(parts[i:]) in self.by_name:
                return ".".join(parts[i:])
        return self._by_suffix.get(name)  # base has a prefix the adapter lacks (unique match only)

    def resolve(self, name: str, *, tied: bool = True) -> str | None:
        """The base tensor the adapter-side ``name`` refers to, or None. ``tied``: also follow
        TIED_ALIASES (a name the checkpoint does not store because it is another tensor)."""
        if self.renamed(name) is not None:
            return None
        found = self._lookup(name)
        if found is not None:
            return found
        for memory, stored in NAME_ALIASES + (TIED_ALIASES if tied else ()):
            alias = swap(name, memory, stored)
            if alias is not None and (found := self._lookup(alias)) is not None:
                return found
        return None

    def is_tied_alias(self, name: str) -> bool:
        """``name`` is not stored because the model ties it to another tensor (TIED_ALIASES)."""
        return self.resolve(name, tied=False) is None and self.resolve(name) is not None

    def tied_aliases_of(self, name: str) -> list[str]:
        """The names the model ties to the stored tensor ``name`` without storing them (T5's
        encoder.embed_tokens.weight and decoder.embed_tokens.weight for shared.weight)."""
        out = []
        for memory, stored in TIED_ALIASES:
            alias = swap(name, stored, memory)
            if alias is not None and alias not in self.by_name and self.resolve(alias) == name:
                out.append(alias)
        return out


@dataclass(frozen=True)
class VocabLayout:
    rows: int | None  # vocabulary rows of the base's embedding
    width: int | None  # columns of those matrices: hidden_size, or ALBERT-style factorized embedding_size
    embeddings: tuple[str, ...]  # vocab-sized input embedding matrices
    heads: tuple[str, ...]  # vocab-sized output matrices stored in the base
    biases: tuple[str, ...]  # vocab-length output biases
    tied: bool  # the output layer reuses the input embedding
    config_vocab: int | None

    @property
    def matrices(self) -> tuple[str, ...]:
        return self.embeddings + self.heads

    def is_vocab(self, name: str) -> bool:
        return name in self.embeddings or name in self.heads or name in self.biases


def vocab_layout(base: Checkpoint) -> VocabLayout:
    """Which base tensors are indexed by token id, found by config and shape."""
    config = base.config
    config_vocab = config_value(config, *MODEL_FIELDS["vocab_size"])
    hidden = config_value(config, *MODEL_FIELDS["hidden_size"])
    two_d = [t for t in base.tensors if len(t.shape) == 2 and not _NOT_VOCAB.search(t.name) and not LAYER_INDEX.search("." + t.name)]
    named = [t for t in two_d if _EMBED.search(t.name)]
    rows = config_vocab if isinstance(config_vocab, int) and any(t.shape[0] == config_vocab for t in two_d) else None
    if rows is None and named:
        rows = named[0].shape[0]  # config missing or disagreeing: trust the embedding itself
    if rows is None:
        return VocabLayout(None, hidden, (), (), (), False, config_vocab)
    # ALBERT, MobileBERT, ELECTRA: embeddings (and the tied head) embedding_size wide, projected to hidden.
    factorized = config_value(config, "embedding_size")
    width = factorized if isinstance(factorized, int) and any(t.shape == (rows, factorized) for t in named) else hidden
    if width is None:
        width = next((t.shape[1] for t in named if t.shape[0] == rows), None)
    matrices = [t for t in two_d if t.shape[0] == rows and (width is None or t.shape[1] == width)]
    embeddings = tuple(t.name for t in matrices if _EMBED.search(t.name)) or tuple(t.name for t in matrices[:1])
    heads = tuple(t.name for t in matrices if t.name not in embeddings)
    biases = tuple(t.name for t in base.tensors if t.shape in ((rows,), (1, rows)) and not _NOT_VOCAB.search(t.name) and not LAYER_INDEX.search("." + t.name))
    tie = config_value(config, "tie_word_embeddings")
    # A bare encoder/decoder (BertModel, LlamaModel) has no output layer to tie, whatever the
    # config's tie_word_embeddings default says; *LMHeadModel, *ForCausalLM, ... have one.
    archs = config.get("architectures")
    headless = isinstance(archs, list) and bool(archs) and all(isinstance(a, str) and a.endswith("Model") and "Head" not in a for a in archs)
    tied = (tie is None or bool(tie)) and not heads and not headless
    return VocabLayout(rows, width, embeddings, heads, biases, tied, config_vocab)
