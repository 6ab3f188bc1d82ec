"""The binding step: base x adapter (x tokenizer) -> what each adapter tensor does to which base tensor.

Both ``check`` (the rules in ``inspector/checks/``) and ``merge`` (``plan_merge``) read a ``Binding``:
name resolution (transformers 5 renames, tied heads, T5's shared embedding), the vocabulary layout,
LoRA modules with their base weights, modules the model never calls, new task heads, orphans, and
the vocabulary size a merged model needs (``VocabTarget``). Headers and small JSON only: no torch.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from inspector.adapter import Adapter, AdapterTensor, FullTensor, LoraModule
from inspector.adapter_config import HEAD_MODULES, HEAD_TASKS
from inspector.base import CONV1D_MODEL_TYPES, LAYER_INDEX, BaseIndex, VocabLayout, config_value, known_tied_head, vocab_layout
from inspector.io.checkpoint import MODEL_FIELDS, Checkpoint
from inspector.io.tensor import TensorInfo
from inspector.io.tokenizer import TokenizerFacts

if TYPE_CHECKING:
    from inspector.targets.facts import AdapterFacts
    from inspector.values import ValueScan

# Output layers by name (Whisper's proj_out, DistilBERT's vocab_projector, BERT's cls.predictions.decoder, ...).
HEAD = re.compile(r"(^|\.)(lm_head|embed_out|output|decoder|proj_out|vocab_projector)\.weight$")


@dataclass(frozen=True)
class VocabTarget:
    """The vocabulary size a merged model needs, and why: the adapter's saved matrices' rows, else
    max(trainable_token_indices) + 1, else the tokenizer's length (docs/design.md). How the tensors
    grow to it is ``repair.ResizePlan``'s business, for merge and resize alike."""

    base_rows: int | None
    rows: int | None
    source: str
    carried: dict[str, int]  # base vocab tensor -> rows of the full copy the adapter carries
    lora_rows: dict[str, int]  # base vocab tensor -> rows its LoRA tensors imply
    basis: str = "base"  # what set ``rows``: "adapter" | "trainable_tokens" | "tokenizer" | "base"

    @property
    def grows(self) -> bool:
        return self.rows is not None and self.base_rows is not None and self.rows != self.base_rows


def shell_command(*words: str) -> str:
    return " ".join(shlex.quote(w) if not w.startswith("--") and w != "lora-inspector" else w for w in words)


class Binding:
    """What every check and the merge read: the base, the adapter, and lookups derived from them once."""

    def __init__(self, base: Checkpoint, adapter: Adapter, tokenizer: TokenizerFacts | None, targets: tuple[str, ...] = (), values: bool = False) -> None:
        self.base, self.adapter, self.tokenizer = base, adapter, tokenizer
        self.targets = targets  # check --target: the servers whose rules apply (inspector/targets/)
        self.values = values  # check --values: the LI16xx checks read the tensors' values (value_scan)
        self.index = BaseIndex(base)
        self.vocab: VocabLayout = vocab_layout(base)
        self.config = adapter.config
        self.fan_in_fan_out = self.config.fan_in_fan_out or base.config.get("model_type") in CONV1D_MODEL_TYPES

    # -- commands the hints name --------------------------------------------------------------
    @property
    def merge_cmd(self) -> str:
        return shell_command("lora-inspector", "merge", self.base.path, self.adapter.checkpoint.path, "--out", "merged")

    @property
    def resize_like_cmd(self) -> str:
        return shell_command("lora-inspector", "resize", self.base.path, "--like", self.adapter.checkpoint.path, "--out", "base-resized")

    # -- lookups ------------------------------------------------------------------------------
    def resolve(self, name: str) -> str | None:
        """Base tensor for an adapter-side name (module names transformers 5 uses in memory included);
        a tied head that is not stored is the embedding; T5 / BART's encoder and decoder embed_tokens
        are the shared embedding."""
        found = self.index.resolve(name)
        if found is None and self.index.renamed(name) is None and self.vocab.tied and self.vocab.embeddings and (HEAD.search(name) or name in self._shape_heads):
            return self.vocab.embeddings[0]
        return found

    def tensor(self, name: str) -> TensorInfo | None:
        found = self.resolve(name)
        return self.base.by_name[found] if found else None

    @cached_property
    def head_module(self) -> str:
        """A tied base's output layer, by the name transformers gives it (``lm_head`` unless TIED_HEADS
        knows the layout: ``decoder``, ``lm_loss``, ``cls.predictions.decoder``, ...)."""
        known = known_tied_head(self.base.by_name)
        return module_of(known[0]) if known else "lm_head"

    def is_tied_head(self, name: str) -> bool:
        """``name`` is a tied base's output layer, which the base does not store (it is the embedding)."""
        return self.index.resolve(name) is None and self.resolve(name) is not None

    def is_tied_alias(self, name: str) -> bool:
        """``name`` is not stored because the model ties it to another tensor that is (T5 / BART's
        encoder.embed_tokens -> shared, BERT's cls.predictions.decoder.bias -> cls.predictions.bias):
        ``resolve`` gives that tensor. A modules_to_save copy of such a module is PEFT's own copy."""
        return self.index.is_tied_alias(name)

    @cached_property
    def _shape_heads(self) -> frozenset[str]:
        """Full copies that a tied base's output layer is under a name ``_HEAD`` does not know: not in
        the base, shaped [rows, hidden] with the vocabulary's rows (or the rows the adapter grows it to)."""
        v = self.vocab
        if not v.tied or not v.embeddings or v.width is None:
            return frozenset()
        rows = {v.rows} | {f.chosen.info.shape[0] for f in self.adapter.full.values() if self.index.resolve(f.target) == v.embeddings[0] and len(f.chosen.info.shape) == 2}
        return frozenset(
            f.target for f in self.adapter.full.values()
            if f.target.endswith(".weight") and self.index.resolve(f.target) is None and len(f.chosen.info.shape) == 2
            and f.chosen.info.shape[1] == v.width and f.chosen.info.shape[0] in rows
        )

    @cached_property
    def tied_lora(self) -> dict[str, str]:
        """LoRA modules whose weight is a tied base's shared embedding -> "embedding" or "head" (the side
        training applied the delta to). With ``config.ensure_weight_tying`` PEFT trained one delta on both
        sides (the saved embedding and head LoRA are the same delta): apply it once to the shared weight."""
        if not self.vocab.tied or not self.vocab.embeddings:
            return {}
        return {m: ("head" if self.is_tied_head(f"{m}.weight") else "embedding")
                for m, (lm, w) in self.lora_targets.items() if w is not None and w.name == self.vocab.embeddings[0] and (lm.A or lm.B)}

    @cached_property
    def never_called(self) -> dict[str, tuple[str, list[str]]]:
        """Adapter modules (LoRA or modules_to_save) on a module the model never calls -> (its base
        tensor, the tied names the model uses instead): T5 / BART look tokens up through
        encoder/decoder.embed_tokens, which only share ``shared``'s weight, so a LoRA delta or a trained
        copy of ``shared`` had no effect in training. A merge leaves them out."""
        replaced_aliases = {self.resolve(f.target) for f in self.adapter.full.values()
                            if f.chosen.copy in ("plain", "modules_to_save") and self.is_tied_alias(f.target) and self.config.saves(f.chosen.module)}
        out: dict[str, tuple[str, list[str]]] = {}
        candidates = [(m, f"{m}.weight") for m, (lm, w) in self.lora_targets.items() if w is not None and (lm.A or lm.B)]
        candidates += [(f.chosen.module, f.target) for f in self.adapter.full.values()
                       if f.chosen.copy in ("plain", "modules_to_save") and self.config.saves(f.chosen.module)]
        for module, target in candidates:
            name = self.index.resolve(target, tied=False)
            users = self.index.tied_aliases_of(name) if name is not None and name not in replaced_aliases else []
            if users:
                out[module] = (name, users)
        return out

    @cached_property
    def new_heads(self) -> tuple[FullTensor, ...]:
        """modules_to_save tensors of a head the adapter's task type adds and the base lacks (a SEQ_CLS
        adapter's score.weight on a causal LM): LI405; a merge writes them as new tensors."""
        return tuple(f for f in self.adapter.full.values() if f.chosen.copy != "original_module" and self.resolve(f.target) is None and self.head_class(f) is not None)

    @cached_property
    def reheaded(self) -> tuple[FullTensor, ...]:
        """modules_to_save task heads (classifier, score, ...) that the base has with another label count:
        a 2-label base and an adapter trained with num_labels=5, ignore_mismatched_sizes=True. PEFT loads
        and merges them; they are new heads (LI405), not a wrong base (LI103)."""
        found = []
        for full in self.adapter.full.values():
            name = self.index.resolve(full.target)
            if full.chosen.copy == "original_module" or name is None or full.target.split(".")[0] not in HEAD_MODULES or self.head_class(full) is None:
                continue
            mine, base = full.chosen.info.shape, self.base.by_name[name].shape
            if mine != base and len(mine) == len(base) and mine[1:] == base[1:] and 0 not in mine:
                found.append(full)
        return tuple(found)

    @cached_property
    def serving_facts(self) -> AdapterFacts:
        """What check --target's rules look at (inspector/targets/facts.py), read once."""
        from inspector.targets.facts import AdapterFacts  # the targets package reads bindings: imported late

        return AdapterFacts.of(self)

    @cached_property
    def value_scan(self) -> ValueScan | None:
        """check --values: one streaming pass over the adapter's values (torch is imported only then)."""
        if not self.values:
            return None
        from inspector.values import scan_values

        return scan_values(self)

    @cached_property
    def lora_targets(self) -> dict[str, tuple[LoraModule, TensorInfo | None]]:
        return {m: (lm, self.tensor(f"{m}.weight")) for m, lm in self.adapter.lora.items()}

    @cached_property
    def token_embedding_for(self) -> dict[str, TensorInfo | None]:
        return {m: self.tensor(f"{m}.weight") for m in self.adapter.trainable_tokens}

    def head_class(self, full: FullTensor) -> str | None:
        """The Auto class whose model has the modules_to_save head ``full`` (by task_type, else by the
        head's name), or None when it is not such a head."""
        if not self.config.saves(full.chosen.module):
            return None
        if self.config.task_type in HEAD_TASKS:
            return HEAD_TASKS[self.config.task_type]
        return HEAD_MODULES.get(full.target.split(".")[0])

    def wraps_target_parameter(self, module: str) -> bool:
        """LoRA PEFT put on a raw parameter (target_parameters): its keys name the owning module in memory
        (``mlp.experts``, nested ``.base_layer`` for several parameters), which the checkpoint may store
        otherwise (per-expert tensors). LI1403 reports these; they are not orphans."""
        owner = module
        while owner.endswith(".base_layer"):
            owner = owner.removesuffix(".base_layer")
        for param in self.config.target_parameters:
            param_owner = param.rpartition(".")[0]
            if not param_owner or owner == param_owner or owner.endswith("." + param_owner):
                return True
        return False

    @cached_property
    def orphans(self) -> tuple[tuple[str, TensorInfo], ...]:
        """Adapter tensors that touch no base tensor, as (what they target, the adapter tensor); new
        task heads (LI405) and LoRA on raw parameters (LI1403) are not orphans."""
        found: list[tuple[str, TensorInfo]] = []
        for module, (lm, weight) in self.lora_targets.items():
            if weight is None and not (self.config.target_parameters and self.wraps_target_parameter(module)):
                found += [(f"{module}.weight", t.info) for t in (lm.A, lm.B, lm.B_bias, lm.magnitude) if t is not None]
        for full in self.adapter.full.values():
            if self.resolve(full.target) is None and full not in self.new_heads:
                found += [(full.target, c.info) for c in full.copies]
        for module, delta in self.adapter.trainable_tokens.items():
            if self.token_embedding_for[module] is None:
                found.append((f"{module}.weight", delta.info))
        return tuple(found)

    @cached_property
    def base_layers(self) -> int | None:
        layers = config_value(self.base.config, *MODEL_FIELDS["num_hidden_layers"])
        return layers if isinstance(layers, int) else None

    @cached_property
    def beyond_layers(self) -> tuple[tuple[str, TensorInfo], ...]:
        """Orphans in layers the base does not have: LI1002 (or LI1402 with layer_replication), not LI401."""
        if self.base_layers is None:
            return ()
        return tuple((t, info) for t, info in self.orphans if (layer_of(t) or -1) >= self.base_layers)

    @cached_property
    def target(self) -> VocabTarget:
        vocab = self.vocab
        carried: dict[str, int] = {}
        for full in self.adapter.full.values():
            if full.chosen.copy == "original_module":
                continue
            name = self.resolve(full.target)
            shape = full.chosen.info.shape
            if name is None or not vocab.is_vocab(name) or not shape or 0 in shape:
                continue
            carried[name] = shape[-1] if name in vocab.biases else shape[0]
        lora_rows: dict[str, int] = {}
        for _module, (lm, weight) in self.lora_targets.items():
            if weight is None or weight.name not in vocab.matrices or lm.A is None or lm.B is None or empty(lm.A, lm.B):
                continue
            if lm.embedding and len(lm.A.info.shape) == 2:
                lora_rows[weight.name] = lm.A.info.shape[1]
            elif not lm.embedding and len(lm.B.info.shape) == 2:
                lora_rows[weight.name] = lm.B.info.shape[0]
        base_rows = vocab.rows
        implied = list(carried.values()) + list(lora_rows.values())
        if implied:
            return VocabTarget(base_rows, max(implied), "the adapter's saved matrices", carried, lora_rows, "adapter")
        indices = [i for idx in self.config.trainable_token_indices.values() for i in idx]
        tok = self.tokenizer
        if base_rows is not None and indices and max(indices) + 1 > base_rows:
            if tok is not None and tok.size > max(indices) + 1:
                # Training embedded every token of the extended tokenizer, not only the adapted ones.
                return VocabTarget(base_rows, tok.size, f"the tokenizer in {tok.directory} (more than max(trainable_token_indices) + 1)",
                                 carried, lora_rows, "tokenizer")
            return VocabTarget(base_rows, max(indices) + 1, "trainable_token_indices", carried, lora_rows, "trainable_tokens")
        if base_rows is not None and tok is not None and tok.size > base_rows:
            return VocabTarget(base_rows, tok.size, f"the tokenizer in {tok.directory}", carried, lora_rows, "tokenizer")
        return VocabTarget(base_rows, base_rows, "the base", carried, lora_rows)


def empty(*tensors: AdapterTensor | None) -> bool:
    """A 0 in a shape: a ZeRO-3 save without gathering. LI801 reports it; the other checks
    skip such tensors rather than read a size or a layout out of a shape that has none."""
    return any(t is not None and 0 in t.info.shape for t in tensors)


def layer_of(name: str) -> int | None:
    m = LAYER_INDEX.search("." + name)
    # A layer index is a small number; 5,000 digits from a crafted key name is none (and int() refuses it).
    return int(m.group(1)) if m and len(m.group(1)) <= 18 else None


def module_of(name: str) -> str:
    return name.rpartition(".")[0]


def bind(base: Checkpoint, adapter: Adapter, tokenizer: TokenizerFacts | None = None, targets: tuple[str, ...] = (), values: bool = False) -> Binding:
    return Binding(base, adapter, tokenizer, targets, values)
