"""``check``: base checkpoint x PEFT adapter (x tokenizer facts) -> findings.

One ``check_*`` function per family of SPEC.md's "What check must find"; each returns findings and
none raises for problems inside a readable checkpoint. Headers and small JSON only (and LI1004's
4 KiB peek at two tensors of a second local model): no torch.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from inspector.adapter import (
    BASE_MUTATING_INITS,
    HEAD_MODULES,
    HEAD_TASKS,
    Adapter,
    AdapterTensor,
    FullTensor,
    LoraModule,
    is_transposed,
    matches_target,
)
from inspector.base import (
    CONV1D_MODEL_TYPES,
    LAYER_INDEX,
    BaseIndex,
    VocabLayout,
    config_value,
    known_tied_head,
    vocab_layout,
)
from inspector.checkpoint import MODEL_FIELDS, Checkpoint, read_checkpoint
from inspector.errors import InspectorError
from inspector.findings import Code, Finding, severity_rank
from inspector.tensor import FLOAT_DTYPES, STREAM_BLOCK_BYTES, TensorInfo
from inspector.tokenizer import TokenizerFacts
from inspector.units import human_bytes, shape_str

# Output layers by name (Whisper's proj_out, DistilBERT's vocab_projector, BERT's cls.predictions.decoder, ...).
_HEAD = re.compile(r"(^|\.)(lm_head|embed_out|output|decoder|proj_out|vocab_projector)\.weight$")
_LAYER_NUMBER = re.compile(r"\.\d+(?=\.)")  # ".12" before a dot: a layer index, grouped as ".*"
_QUANT_KEYS = re.compile(r"\.(absmax|quant_map|quant_state(\..*)?|nested_absmax|nested_quant_map|SCB|weight_format|qweight|qzeros|scales|g_idx|weight_scale|weight_scale_inv|input_scale)$")
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


@dataclass(frozen=True)
class VocabPlan:
    """The vocabulary size a merge produces, and why (SPEC: the adapter's saved matrices' rows, else
    max(trainable_token_indices) + 1, else the tokenizer's length)."""

    base_rows: int | None
    rows: int | None
    source: str
    carried: dict[str, int]  # base vocab tensor -> rows of the full copy the adapter carries
    lora_rows: dict[str, int]  # base vocab tensor -> rows its LoRA tensors imply
    basis: str = "base"  # what set ``rows``: "adapter" | "trainable_tokens" | "tokenizer" | "base"

    @property
    def grows(self) -> bool:
        return self.rows is not None and self.base_rows is not None and self.rows != self.base_rows


@dataclass(frozen=True)
class Diagnosis:
    base: Checkpoint
    adapter: Adapter
    tokenizer: TokenizerFacts | None
    plan: VocabPlan
    findings: tuple[Finding, ...]
    context: "CheckContext"  # the lookups the checks used (name resolution, vocab layout): merge reuses them

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def summary(self) -> dict[str, int]:
        return {s: self.count(s) for s in ("error", "warning", "info")}

    def fails(self, fail_on: str) -> bool:
        return any(severity_rank(f.severity) <= severity_rank(fail_on) for f in self.findings)


def _cmd(*words: str) -> str:
    return " ".join(shlex.quote(w) if not w.startswith("--") and w != "lora-inspector" else w for w in words)


class CheckContext:
    """What every check (and the merge) reads: the base, the adapter, and lookups derived from them once."""

    def __init__(self, base: Checkpoint, adapter: Adapter, tokenizer: TokenizerFacts | None) -> None:
        self.base, self.adapter, self.tokenizer = base, adapter, tokenizer
        self.index = BaseIndex(base)
        self.vocab: VocabLayout = vocab_layout(base)
        self.config = adapter.config
        self.fan_in_fan_out = self.config.fan_in_fan_out or base.config.get("model_type") in CONV1D_MODEL_TYPES

    # -- commands the hints name --------------------------------------------------------------
    @property
    def merge_cmd(self) -> str:
        return _cmd("lora-inspector", "merge", self.base.path, self.adapter.checkpoint.path, "--out", "merged")

    @property
    def resize_like_cmd(self) -> str:
        return _cmd("lora-inspector", "resize", self.base.path, "--like", self.adapter.checkpoint.path, "--out", "base-resized")

    # -- lookups ------------------------------------------------------------------------------
    def resolve(self, name: str) -> str | None:
        """Base tensor for an adapter-side name (module names transformers 5 uses in memory included);
        a tied head that is not stored is the embedding; T5 / BART's encoder and decoder embed_tokens
        are the shared embedding."""
        found = self.index.resolve(name)
        if found is None and self.index.renamed(name) is None and self.vocab.tied and self.vocab.embeddings and (_HEAD.search(name) or name in self._shape_heads):
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
        return _module(known[0]) if known else "lm_head"

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
                            if f.chosen.copy in ("plain", "modules_to_save") and self.is_tied_alias(f.target) and _in_modules_to_save(self, f.chosen.module)}
        out: dict[str, tuple[str, list[str]]] = {}
        candidates = [(m, f"{m}.weight") for m, (lm, w) in self.lora_targets.items() if w is not None and (lm.A or lm.B)]
        candidates += [(f.chosen.module, f.target) for f in self.adapter.full.values()
                       if f.chosen.copy in ("plain", "modules_to_save") and _in_modules_to_save(self, f.chosen.module)]
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
        return tuple(f for f in self.adapter.full.values() if f.chosen.copy != "original_module" and self.resolve(f.target) is None and _new_head(self, f))

    @cached_property
    def lora_targets(self) -> dict[str, tuple[LoraModule, TensorInfo | None]]:
        return {m: (lm, self.tensor(f"{m}.weight")) for m, lm in self.adapter.lora.items()}

    @cached_property
    def token_embedding_for(self) -> dict[str, TensorInfo | None]:
        return {m: self.tensor(f"{m}.weight") for m in self.adapter.trainable_tokens}

    @cached_property
    def plan(self) -> VocabPlan:
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
            if weight is None or weight.name not in vocab.matrices or lm.A is None or lm.B is None or _empty(lm.A, lm.B):
                continue
            if lm.embedding and len(lm.A.info.shape) == 2:
                lora_rows[weight.name] = lm.A.info.shape[1]
            elif not lm.embedding and len(lm.B.info.shape) == 2:
                lora_rows[weight.name] = lm.B.info.shape[0]
        base_rows = vocab.rows
        implied = list(carried.values()) + list(lora_rows.values())
        if implied:
            return VocabPlan(base_rows, max(implied), "the adapter's saved matrices", carried, lora_rows, "adapter")
        indices = [i for idx in self.config.trainable_token_indices.values() for i in idx]
        tok = self.tokenizer
        if base_rows is not None and indices and max(indices) + 1 > base_rows:
            if tok is not None and tok.size > max(indices) + 1:
                # Training embedded every token of the extended tokenizer, not only the adapted ones.
                return VocabPlan(base_rows, tok.size, f"the tokenizer in {tok.directory} (more than max(trainable_token_indices) + 1)",
                                 carried, lora_rows, "tokenizer")
            return VocabPlan(base_rows, max(indices) + 1, "trainable_token_indices", carried, lora_rows, "trainable_tokens")
        if base_rows is not None and tok is not None and tok.size > base_rows:
            return VocabPlan(base_rows, tok.size, f"the tokenizer in {tok.directory}", carried, lora_rows, "tokenizer")
        return VocabPlan(base_rows, base_rows, "the base", carried, lora_rows)


def _empty(*tensors: AdapterTensor | None) -> bool:
    """A 0 in a shape: a ZeRO-3 save without gathering. check_empty reports it; the other checks
    skip such tensors rather than read a size or a layout out of a shape that has none."""
    return any(t is not None and 0 in t.info.shape for t in tensors)


def _layer_of(name: str) -> int | None:
    m = LAYER_INDEX.search("." + name)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# One check per family. Each takes the context and returns findings.
# ---------------------------------------------------------------------------------------------


def check_vocabulary(ctx: CheckContext) -> list[Finding]:
    """Family 1 (+ hidden size of vocabulary matrices): full vocab tensors against the base."""
    out: list[Finding] = []
    for full in ctx.adapter.full.values():
        if full.chosen.copy == "original_module":
            continue
        name = ctx.resolve(full.target)
        if name is None or _empty(full.chosen):
            continue  # an orphan (check_orphans) or an empty tensor (check_empty)
        base_t = ctx.base.by_name[name]
        a_shape, b_shape = full.chosen.info.shape, base_t.shape
        if a_shape == b_shape:
            continue
        # A tied head is not stored in the base: name it as the adapter does, and say what it shares.
        tied_head = ctx.is_tied_head(full.target) or ctx.is_tied_alias(full.target)
        label = f"{full.target} (tied to {name})" if tied_head else name
        common = dict(tensor=full.target if tied_head else name, adapter_key=full.chosen.key, adapter_shape=a_shape, base_shape=b_shape)
        vocab_tensor = ctx.vocab.is_vocab(name)
        rows_only = len(a_shape) == len(b_shape) and (a_shape[1:] == b_shape[1:] if name not in ctx.vocab.biases else a_shape[:-1] == b_shape[:-1])
        if vocab_tensor and rows_only:
            a_rows, b_rows = (a_shape[-1], b_shape[-1]) if name in ctx.vocab.biases else (a_shape[0], b_shape[0])
            # Fewer rows: usually resize_token_embeddings(len(tokenizer)) dropped padding rows (Qwen2 keeps ~270).
            fewer = " (fewer rows: resized to the tokenizer's length, dropping padding rows?)" if a_rows < b_rows else ""
            out.append(Finding(
                Code.VOCAB_ROWS,
                f"{label}: the adapter carries {shape_str(a_shape)}, the base has {shape_str(b_shape)}{fewer}; "
                f"PEFT's merge fails here with 'size mismatch'.",
                f"Run `{ctx.merge_cmd}` ({'shrinks' if (ctx.plan.rows or a_rows) < b_rows else 'grows'} the model to the adapter's "
                f"{ctx.plan.rows or a_rows} rows), or `{ctx.resize_like_cmd}` first.",
                **common,
                repair="resize",
            ))
        elif vocab_tensor:
            out.append(Finding(
                Code.HIDDEN_SIZE,
                f"{label}: the adapter carries {shape_str(a_shape)}, the base has {shape_str(b_shape)}: "
                f"the adapter was trained on a model with hidden size {a_shape[-1]}, not {b_shape[-1]}.",
                "Use the base model the adapter was trained on (see base_model_name_or_path in adapter_config.json).",
                **common,
            ))
        else:
            out.append(Finding(
                Code.FULL_SHAPE,
                f"{name}: the adapter replaces it with {shape_str(a_shape)}, the base has {shape_str(b_shape)}.",
                "Use the base model the adapter was trained on (see base_model_name_or_path in adapter_config.json).",
                **common,
            ))
    rows = set(ctx.plan.carried.values()) | set(ctx.plan.lora_rows.values())
    if len(rows) > 1:
        detail = ", ".join(f"{n}: {r}" for n, r in {**ctx.plan.lora_rows, **ctx.plan.carried}.items())
        out.append(Finding(
            Code.VOCAB_DISAGREE,
            f"the adapter's vocabulary-sized tensors imply different vocabulary sizes ({detail}).",
            f"Check which tokenizer the adapter was trained with; `lora-inspector merge` would use the largest ({max(rows)}).",
        ))
    return out


def check_tokenizer(ctx: CheckContext) -> list[Finding]:
    """Family 2: tokenizer length, config.vocab_size and embedding rows agree."""
    out: list[Finding] = []
    v = ctx.vocab
    if isinstance(v.config_vocab, int) and v.rows is not None and v.config_vocab != v.rows:
        out.append(Finding(
            Code.CONFIG_VOCAB,
            f"config.json says vocab_size {v.config_vocab} but {v.embeddings[0] if v.embeddings else 'the embedding'} has {v.rows} rows.",
            f"Set vocab_size to {v.rows} in {ctx.base.root / 'config.json'}, or resize with `lora-inspector resize`.",
            tensor=v.embeddings[0] if v.embeddings else None,
        ))
    tok, plan = ctx.tokenizer, ctx.plan
    # A plan grown to the tokenizer's length is what merge would do about it, not rows anybody has:
    # token ids index the base's rows then (SPEC family 2: tokenizer larger than the embedding is an error).
    by_adapter = plan.grows and plan.basis != "tokenizer"
    rows = plan.rows if by_adapter else plan.base_rows
    if tok is None or rows is None:
        return out
    size = tok.size
    after = f" after the adapter ({plan.source})" if by_adapter else ""
    embed = v.embeddings[0] if v.embeddings else None
    if size > rows:
        out.append(Finding(
            Code.TOKENIZER_LARGER,
            f"the tokenizer in {tok.directory} has {size} tokens but the embedding has {rows} rows{after}: "
            f"token ids {rows}..{size - 1} are out of range.",
            f"Run `{_cmd('lora-inspector', 'resize', ctx.base.path, '--tokenizer', tok.directory, '--out', 'base-resized')}`, "
            "or use the tokenizer the adapter was trained with (--tokenizer DIR).",
            tensor=embed,
            base_shape=(rows, v.width) if v.width else None,
            repair="resize" if (plan.rows or 0) >= size else None,  # merge grows to the tokenizer only when nothing larger-ranked sets the size
        ))
    elif by_adapter and size <= (plan.base_rows or 0) and Path(tok.directory).resolve() == ctx.base.root.resolve():
        # The adapter's new rows have no tokens: the extended tokenizer was not saved with the adapter.
        out.append(Finding(
            Code.TOKENIZER_NOT_EXTENDED,
            f"the adapter grows the vocabulary to {rows} rows ({plan.source}) but the only tokenizer found is the base's ({size} tokens, in {tok.directory}): "
            f"probably the one from before the extension; a merged model would ship it, and rows {size}..{rows - 1} would have no token.",
            "Pass the extended tokenizer training used with --tokenizer DIR (check and merge take it), or save it into the adapter directory.",
            tensor=embed,
        ))
    elif size < rows:
        out.append(Finding(
            Code.EMBEDDING_LARGER,
            f"the embedding has {rows} rows{after} and the tokenizer in {tok.directory} has {size} tokens: "
            f"{rows - size} rows are padding no token uses.",
            "Nothing to do unless the tokenizer is the wrong one; pass --tokenizer DIR to check another.",
            tensor=embed,
        ))
    return out


def _lora_shapes(ctx: CheckContext, lm: LoraModule, weight: TensorInfo) -> list[Finding]:
    out: list[Finding] = []
    a, b = lm.A, lm.B
    if a is None or b is None:
        present = a or b or lm.B_bias or lm.magnitude
        missing = "lora_B" if b is None else "lora_A"
        return [Finding(Code.LORA_PAIR, f"{lm.module}: {missing} is missing; PEFT would merge a zero or random delta.",
                        "Re-save the adapter from the trained model; the file is incomplete.",
                        tensor=weight.name, adapter_key=present.key, adapter_shape=present.info.shape)]
    if len(a.info.shape) != 2 or len(b.info.shape) != 2:
        return [Finding(Code.UNSUPPORTED_LAYER, f"{lm.module}: LoRA tensors of rank {len(a.info.shape)} (a Conv LoRA); lora-inspector merges Linear, Conv1D and Embedding LoRA only.",
                        "Merge this adapter with PEFT's merge_and_unload.", tensor=weight.name, adapter_key=a.key, adapter_shape=a.info.shape, base_shape=weight.shape)]
    r_a, r_b = a.info.shape[0], b.info.shape[1]
    if r_a != r_b:
        out.append(Finding(Code.LORA_PAIR, f"{lm.module}: lora_A has rank {r_a} but lora_B has rank {r_b}.",
                           "Re-save the adapter; A and B must come from the same layer.", tensor=weight.name, adapter_key=b.key, adapter_shape=b.info.shape, base_shape=weight.shape))
    expected_r = ctx.config.rank_for(lm.module)
    if r_a != expected_r:
        out.append(Finding(Code.LORA_RANK, f"{lm.module}: the tensors have rank {r_a} but the config says r={expected_r}"
                           + (" (rank_pattern)" if expected_r != ctx.config.r else "") + "; PEFT fails to load it.",
                           f"Set r (or rank_pattern for {lm.module}) to {r_a} in adapter_config.json.",
                           tensor=weight.name, adapter_key=a.key, adapter_shape=a.info.shape, base_shape=weight.shape))
    if len(weight.shape) != 2:
        return out
    vocab_rows_ok = weight.name in ctx.vocab.matrices  # grown rows are judged by check_new_rows
    if lm.embedding:
        rows, hidden = weight.shape
        if b.info.shape[0] != hidden:
            out.append(Finding(Code.EMBEDDING_LORA, f"{lm.module}: lora_embedding_B is {shape_str(b.info.shape)} but the embedding is {shape_str(weight.shape)} (hidden {hidden}).",
                               "Use the base model the adapter was trained on.", tensor=weight.name, adapter_key=b.key, adapter_shape=b.info.shape, base_shape=weight.shape))
        if a.info.shape[1] != rows and not vocab_rows_ok:
            out.append(Finding(Code.EMBEDDING_LORA, f"{lm.module}: lora_embedding_A is {shape_str(a.info.shape)} but the embedding has {rows} rows.",
                               "Use the base model the adapter was trained on.", tensor=weight.name, adapter_key=a.key, adapter_shape=a.info.shape, base_shape=weight.shape))
        out_dim = hidden
    else:
        fits = is_transposed(weight.shape, a.info.shape, b.info.shape, ctx.fan_in_fan_out, rows_may_differ=vocab_rows_ok)
        fan = ctx.fan_in_fan_out if fits is None else fits
        out_dim, in_dim = weight.shape[::-1] if fan else weight.shape
        layout = " (fan_in_fan_out: the base stores [in, out])" if fan else ""
        if a.info.shape[1] != in_dim:
            out.append(Finding(Code.LORA_A_SHAPE, f"{lm.module}: lora_A is {shape_str(a.info.shape)}, expected [{r_a}, {in_dim}] for the base weight {shape_str(weight.shape)}{layout}.",
                               "Use the base model the adapter was trained on.",
                               tensor=weight.name, adapter_key=a.key, adapter_shape=a.info.shape, base_shape=weight.shape))
        if b.info.shape[0] != out_dim and not (vocab_rows_ok and not fan):
            out.append(Finding(Code.LORA_B_SHAPE, f"{lm.module}: lora_B is {shape_str(b.info.shape)}, expected [{out_dim}, {r_b}] for the base weight {shape_str(weight.shape)}{layout}.",
                               "Use the base model the adapter was trained on.", tensor=weight.name, adapter_key=b.key, adapter_shape=b.info.shape, base_shape=weight.shape))
        out_dim = b.info.shape[0] if vocab_rows_ok else out_dim
    for extra, enabled, code, field_name in ((lm.magnitude, ctx.config.use_dora, Code.DORA_MAGNITUDE, "use_dora"), (lm.B_bias, ctx.config.lora_bias, Code.LORA_BIAS, "lora_bias")):
        if extra is None:
            continue
        if not enabled:
            out.append(Finding(code, f"{extra.key} is saved but {field_name} is false in adapter_config.json: PEFT ignores it and the merge differs from training.",
                               f"Set {field_name}: true in adapter_config.json.", tensor=weight.name, adapter_key=extra.key, adapter_shape=extra.info.shape))
        elif extra.info.shape != (out_dim,):
            out.append(Finding(code, f"{extra.key} is {shape_str(extra.info.shape)}, expected [{out_dim}] for the base weight {shape_str(weight.shape)}.",
                               "Use the base model the adapter was trained on.", tensor=weight.name, adapter_key=extra.key, adapter_shape=extra.info.shape, base_shape=weight.shape))
        elif code is Code.LORA_BIAS and ctx.resolve(f"{lm.module}.bias") is None:
            out.append(Finding(code, f"{extra.key}: lora_bias is true but the base layer {lm.module} has no bias; PEFT refuses to merge it "
                               "('Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias') and the merged model has no bias there to hold it.",
                               "Use the adapter unmerged (PeftModel.from_pretrained), or retrain with lora_bias: false.",
                               tensor=weight.name, adapter_key=extra.key, adapter_shape=extra.info.shape))
    if ctx.config.use_dora and lm.magnitude is None:
        out.append(Finding(Code.DORA_MAGNITUDE, f"{lm.module}: use_dora is true but no lora_magnitude_vector is saved; PEFT would re-initialize it from the base weight.",
                           "Re-save the adapter with PEFT >= 0.9, or set use_dora: false if the adapter is plain LoRA.", tensor=weight.name, adapter_key=a.key))
    return out


def check_lora_shapes(ctx: CheckContext) -> list[Finding]:
    """Family 3: lora_A/B, embedding LoRA, DoRA magnitude, lora_bias and rank against the base."""
    out: list[Finding] = []
    for module, (lm, weight) in ctx.lora_targets.items():
        if weight is not None:
            if not _empty(lm.A, lm.B, lm.B_bias, lm.magnitude):
                out += _lora_shapes(ctx, lm, weight)
            # ensure_weight_tying: PEFT adds the tied partner (lm_head for embed_tokens) itself.
            tied_partner = ctx.config.ensure_weight_tying and module in ctx.tied_lora
            if not tied_partner and (not matches_target(ctx.config, module) or (ctx.config.layers_to_transform and _layer_of(module) not in ctx.config.layers_to_transform)):
                key = (lm.A or lm.B).key
                out.append(Finding(Code.NOT_TARGETED, f"{module} has LoRA tensors but target_modules {ctx.config.target_modules!r} does not select it: PEFT never loads them.",
                                   "Add the module to target_modules in adapter_config.json (or remove the tensors).", tensor=weight.name, adapter_key=key))
    return out


def _wraps_target_parameter(ctx: CheckContext, module: str) -> bool:
    """LoRA PEFT put on a raw parameter (target_parameters): its keys name the owning module in memory
    (``mlp.experts``, nested ``.base_layer`` for several parameters), which the checkpoint may store
    otherwise (per-expert tensors). LI1403 reports these; they are not orphans."""
    owner = module
    while owner.endswith(".base_layer"):
        owner = owner.removesuffix(".base_layer")
    for param in ctx.config.target_parameters:
        param_owner = param.rpartition(".")[0]
        if not param_owner or owner == param_owner or owner.endswith("." + param_owner):
            return True
    return False


def _new_head(ctx: CheckContext, full: FullTensor) -> bool:
    """A modules_to_save head that the adapter's task type adds (SEQ_CLS's score, ...) and the base lacks."""
    return _head_class(ctx, full) is not None


def _head_class(ctx: CheckContext, full: FullTensor) -> str | None:
    """The Auto class whose model has the modules_to_save head ``full`` (by task_type, else by the
    head's name), or None when it is not such a head."""
    module = full.chosen.module
    if not ctx.config.saves(module):
        return None
    if ctx.config.task_type in HEAD_TASKS:
        return HEAD_TASKS[ctx.config.task_type]
    return HEAD_MODULES.get(full.target.split(".")[0])


def _module(name: str) -> str:
    return name.rpartition(".")[0]


def check_orphans(ctx: CheckContext) -> list[Finding]:
    """Family 4 (+ layer count, unknown keys, new task heads): adapter tensors that touch no base tensor."""
    out: list[Finding] = []
    orphans: list[tuple[str, TensorInfo]] = []  # (what it targets, the adapter tensor)
    for module, (lm, weight) in ctx.lora_targets.items():
        if weight is None and not (ctx.config.target_parameters and _wraps_target_parameter(ctx, module)):
            orphans += [(f"{module}.weight", t.info) for t in (lm.A, lm.B, lm.B_bias, lm.magnitude) if t is not None]
    for full in ctx.adapter.full.values():
        if ctx.resolve(full.target) is not None:
            continue
        if full in ctx.new_heads:
            task, cls = ctx.config.task_type, _head_class(ctx, full)
            why = f"task_type {task}" if task in HEAD_TASKS else "modules_to_save"
            out.append(Finding(Code.NEW_HEAD,
                               f"{full.target} is a new head ({why}) the base does not have: load the merged model with the matching {cls} class.",
                               f"Expected for an adapter trained on a task model built from this base: load the merged model with {cls}.from_pretrained.",
                               tensor=full.target, adapter_key=full.chosen.key, adapter_shape=full.chosen.info.shape))
        else:
            orphans += [(full.target, c.info) for c in full.copies]
    for module, delta in ctx.adapter.trainable_tokens.items():
        if ctx.token_embedding_for[module] is None:
            orphans.append((f"{module}.weight", delta.info))
    layers = config_value(ctx.base.config, *MODEL_FIELDS["num_hidden_layers"])
    beyond = [(t, info) for t, info in orphans if isinstance(layers, int) and (_layer_of(t) or -1) >= layers]
    if beyond and not ctx.config.layer_replication:  # layer_replication's extra layers: LI1402
        top = max(_layer_of(t) for t, _ in beyond)
        out.append(Finding(Code.LAYER_COUNT, f"the adapter has tensors for layers up to {top} ({len(beyond)} tensors) but the base has {layers} layers.",
                           "Use the base model the adapter was trained on (see base_model_name_or_path in adapter_config.json).",
                           adapter_key=beyond[0][1].name))
    plain: dict[str, list[tuple[str, TensorInfo]]] = {}
    for target, info in orphans:
        if (target, info) in beyond:
            continue
        memory = ctx.index.renamed(target)
        if memory is not None:
            out.append(Finding(Code.ORPHAN,
                               f"{info.name} targets {target}, the checkpoint name of a module transformers 5 loads as {_module(memory)}: "
                               f"PEFT finds no module {_module(target)} and silently drops the tensor.",
                               f"Rename the adapter keys (and target_modules) from {_module(target)} to {_module(memory)}.",
                               tensor=target, adapter_key=info.name, adapter_shape=info.shape))
            continue
        plain.setdefault(_LAYER_NUMBER.sub(".*", f".{info.name}.").strip("."), []).append((target, info))
    # One finding per key pattern across layers (a tower the base lacks is one cause, not 144 rows).
    for pattern, group in plain.items():
        target, info = group[0]
        if len(group) == 1:
            what = f"{info.name} targets {target}, which the base does not have"
        else:
            what = f"{info.name} and {len(group) - 1} more like it ({pattern}) target modules the base does not have, such as {target}"
        out.append(Finding(Code.ORPHAN, f"{what}: the adapter silently does nothing there.",
                           "Use the base model the adapter was trained on, or rename the keys to the base's module names.",
                           tensor=target, adapter_key=info.name, adapter_shape=info.shape))
    unprefixed = [t for t in ctx.adapter.tensors if not t.prefixed]
    if unprefixed:
        first = unprefixed[0]
        more = f" and {len(unprefixed) - 1} more" if len(unprefixed) > 1 else ""
        out.append(Finding(Code.UNPREFIXED_KEY,
                           f"{first.key}{more} lack the base_model.model. prefix: PeftModel.from_pretrained drops such keys unused, "
                           "so the adapter silently does nothing there.",
                           "Rename the keys to base_model.model.<key>, as PeftModel.save_pretrained writes them; then check and merge use them as PEFT does.",
                           adapter_key=first.key, adapter_shape=first.info.shape))
    for t in ctx.adapter.unknown:
        out.append(Finding(Code.UNKNOWN_KEY, f"{t.key} is not a LoRA tensor lora-inspector knows (another PEFT method's key?).",
                           "Check peft_type in adapter_config.json; merge such adapters with PEFT itself.", adapter_key=t.key, adapter_shape=t.info.shape))
    targets = ctx.config.target_modules
    modules = ctx.index.memory_modules  # the names PEFT matches target_modules against
    if isinstance(targets, tuple):
        for t in targets:
            if not any(m == t or m.endswith("." + t) for m in modules) and not (ctx.vocab.tied and _HEAD.search(f"{t}.weight")):
                memory = ctx.index.renamed(t)
                renamed = f" (transformers 5 calls that module {memory})" if memory else ""
                out.append(Finding(Code.TARGET_UNMATCHED, f"target_modules entry {t!r} matches no module of the base{renamed}.",
                                   f"Use {memory!r} instead; the entry has no effect." if memory else
                                   "Check the spelling against `lora-inspector scan BASE --tensors`; the entry has no effect."))
    elif isinstance(targets, str) and targets != "all-linear":
        if not any(ctx.config.regex_matches("target_modules", targets, m) for m in modules):
            out.append(Finding(Code.TARGET_UNMATCHED, f"target_modules regex {targets!r} matches no module of the base.",
                               "Check the pattern against `lora-inspector scan BASE --tensors`."))
    return out


def check_new_rows(ctx: CheckContext) -> list[Finding]:
    """Family 5: grown vocabulary rows that LoRA changes but nobody carries, or that nobody carries at all."""
    out: list[Finding] = []
    plan = ctx.plan
    if not plan.grows:
        return out
    new = f"rows {plan.base_rows}..{plan.rows - 1}" if plan.rows > plan.base_rows else "the rows"
    for name, rows in plan.lora_rows.items():
        if rows != plan.base_rows and plan.carried.get(name) != rows:
            key = next(lm.A.key for lm, w in ctx.lora_targets.values() if w is not None and w.name == name and lm.A)
            out.append(Finding(Code.ROWS_NOT_CARRIED,
                               f"{name}: LoRA was trained on {rows} rows but the base has {plan.base_rows} and the adapter does not carry {new} "
                               "(saved with save_embedding_layers=False?): the rows training saw are lost.",
                               f"Re-save the adapter with the resized embedding, or accept new rows by merging with an explicit --init: `{ctx.merge_cmd} --init mean`.",
                               tensor=name, adapter_key=key, adapter_shape=(rows, ctx.base.by_name[name].shape[1]), base_shape=ctx.base.by_name[name].shape,
                               repair="init"))
    changed_by_tokens = {w.name for w in ctx.token_embedding_for.values() if w is not None}
    candidates = [n for n in ctx.vocab.matrices + ctx.vocab.biases if n not in plan.carried and n not in plan.lora_rows and n not in changed_by_tokens]
    if ctx.config.task_type in HEAD_TASKS:  # a classification / QA model has no lm_head to grow
        candidates = [n for n in candidates if n not in ctx.vocab.heads and n not in ctx.vocab.biases]
    for name in candidates:
        base_shape = ctx.base.by_name[name].shape
        bias = name in ctx.vocab.biases
        grown = (plan.rows, *base_shape[1:]) if not bias else (*base_shape[:-1], plan.rows)
        what = new.replace("rows", "entries") if bias else new
        if name.endswith("final_logits_bias"):
            how = f"the merge fills {what} with zeros, as transformers' resize_token_embeddings pads final_logits_bias."
            hint = "Nothing to do: zeros are what training saw (whatever --init says)."
        else:
            how = f"the merge fills {what} with --init (default mean, as transformers' resize_token_embeddings)."
            hint = f"Nothing to do if that is intended; pick the init with `{ctx.merge_cmd} --init mean` (or hf_mvn, normal, zero)."
        out.append(Finding(Code.ROWS_UNCARRIED,
                           f"{name} must grow from {shape_str(base_shape)} to {shape_str(grown)} ({plan.source}) but the adapter does not carry it: {how}",
                           hint, tensor=name, base_shape=base_shape, adapter_shape=grown))
    return out


def check_trainable_tokens(ctx: CheckContext) -> list[Finding]:
    """Family 6: trainable_token_indices against the base's rows, and the deltas' shapes."""
    out: list[Finding] = []
    rows = ctx.vocab.rows
    for key, indices in ctx.config.trainable_token_indices.items():
        if not indices or rows is None:
            continue
        top = max(indices)
        where = key or "the input embedding"
        if top >= rows:
            out.append(Finding(Code.TOKEN_INDICES,
                               f"trainable_token_indices for {where} reach token {top} but the base has {rows} rows: the merged model needs {top + 1} rows.",
                               f"Run `{ctx.merge_cmd}` (grows to {max(top + 1, ctx.plan.rows or 0)} rows; rows no index covers get --init), or resize the base first.",
                               tensor=ctx.vocab.embeddings[0] if ctx.vocab.embeddings else None, base_shape=(rows, ctx.vocab.width) if ctx.vocab.width else None,
                               repair="resize"))
    for module, delta in ctx.adapter.trainable_tokens.items():
        name = module.rpartition(".")[2]
        indices = ctx.config.trainable_token_indices.get(name, ctx.config.trainable_token_indices.get(None))
        weight = ctx.token_embedding_for[module]
        if indices is not None and delta.info.shape and delta.info.shape[0] != len(indices):
            out.append(Finding(Code.TOKEN_DELTA_ROWS, f"{delta.key} has {delta.info.shape[0]} rows but trainable_token_indices lists {len(indices)} tokens.",
                               "Re-save the adapter; the delta and the config disagree.", adapter_key=delta.key, adapter_shape=delta.info.shape))
        if weight is not None and len(delta.info.shape) == 2 and len(weight.shape) == 2 and delta.info.shape[1] != weight.shape[1]:
            out.append(Finding(Code.HIDDEN_SIZE, f"{delta.key} is {shape_str(delta.info.shape)} but {weight.name} is {shape_str(weight.shape)}.",
                               "Use the base model the adapter was trained on.", tensor=weight.name, adapter_key=delta.key, adapter_shape=delta.info.shape, base_shape=weight.shape))
    return out


def _in_modules_to_save(ctx: CheckContext, module: str) -> bool:
    return ctx.config.saves(module)


def check_tied(ctx: CheckContext) -> list[Finding]:
    """Family 7: a tied weight the adapter changes on one side only (modules_to_save copies, LoRA)."""
    out: list[Finding] = []
    v = ctx.vocab
    embed = v.embeddings[0] if v.embeddings else None
    replacing = [f for f in ctx.adapter.full.values() if f.chosen.copy in ("plain", "modules_to_save")]
    # T5 / BART `shared`: LoRA or a modules_to_save copy on a module the model never calls.
    head_replaced = any(ctx.is_tied_head(f.target) and _in_modules_to_save(ctx, f.chosen.module) for f in replacing)
    for module, (name, users) in ctx.never_called.items():
        who = " and ".join(_module(u) for u in users) + (" (and lm_head)" if v.tied and name == embed and not head_replaced else "")
        lm = ctx.adapter.lora.get(module)
        if lm is not None and (lm.A or lm.B):
            key = lm.A or lm.B
            out.append(Finding(Code.TIED_ONE_SIDE,
                               f"LoRA on {module} changes {name}, but the model never calls {module}: it looks tokens up through {who}, which share that weight, "
                               "so the delta had no effect in training; PEFT's merge_and_unload would apply it to all of them.",
                               f"Leave it out of the merge (delete {module}'s LoRA tensors from the adapter): the trained model never used it; target embed_tokens to train the embeddings.",
                               tensor=name, adapter_key=key.key, adapter_shape=key.info.shape, base_shape=ctx.base.by_name[name].shape))
        for full in (f for f in replacing if f.chosen.module == module):
            out.append(Finding(Code.TIED_ONE_SIDE,
                               f"modules_to_save replaces {module} ({full.chosen.key}), but the model never calls {module}: it looks tokens up "
                               f"through {who}, which share its weight, so the trained copy had no effect in training. PEFT's merge_and_unload keeps it aside; "
                               f"a checkpoint that stores it as {name} changes all of them.",
                               "Leave it out of the merge (the trained model never used it); list embed_tokens in modules_to_save to train the embeddings.",
                               tensor=name, adapter_key=full.chosen.key, adapter_shape=full.chosen.info.shape, base_shape=ctx.base.by_name[name].shape))
    uncalled = any(f.chosen.module in ctx.never_called for f in replacing)
    if v.tied and embed:
        heads, embeds = [], []
        for full in replacing:
            # base_layer copies are the frozen weights PEFT saves beside a LoRA layer (LoRA is judged below).
            if ctx.resolve(full.target) == embed and not ctx.is_tied_alias(full.target) and full.chosen.module not in ctx.never_called:
                (heads if ctx.is_tied_head(full.target) else embeds).append(full)
        if uncalled:  # beside an uncalled `shared` copy, a plain head copy is PEFT's save of the resized weight
            heads = [h for h in heads if _in_modules_to_save(ctx, h.chosen.module)]
        if bool(heads) != bool(embeds):
            head = _module(heads[0].target) if heads else ctx.head_module  # proj_out, vocab_projector, ... by their own name
            which, other = ("the embedding", head) if embeds else (head, "the embedding")
            full = (embeds or heads)[0]
            out.append(Finding(Code.TIED_ONE_SIDE,
                               f"the base ties {head} to {embed} and the adapter replaces only {which} ({full.chosen.key}): after the merge they differ.",
                               f"`{ctx.merge_cmd}` unties them as PEFT does: it writes both and sets tie_word_embeddings: false; {other} keeps the base's values.",
                               tensor=embed, adapter_key=full.chosen.key, adapter_shape=full.chosen.info.shape, base_shape=ctx.base.by_name[embed].shape))
    # T5 / BART: modules_to_save=["embed_tokens"] wraps encoder.embed_tokens and decoder.embed_tokens,
    # which the base stores only as the shared embedding: PEFT trains a separate copy of each.
    aliased: dict[str, list[FullTensor]] = {}
    for full in replacing:
        if ctx.is_tied_alias(full.target) and _in_modules_to_save(ctx, full.chosen.module):
            aliased.setdefault(ctx.resolve(full.target), []).append(full)
    for shared, fulls in aliased.items():
        names = " and ".join(f.target for f in fulls)
        out.append(Finding(Code.TIED_ONE_SIDE,
                           f"the base ties {names} to {shared} (the checkpoint stores only {shared}); the adapter replaces "
                           f"{'them with their own copies' if len(fulls) > 1 else 'it with its own copy'} (modules_to_save): after the merge they differ from {shared}.",
                           f"`{ctx.merge_cmd}` unties them as PEFT does: it writes {names} beside {shared}, which keeps its own values.",
                           tensor=shared, adapter_key=fulls[0].chosen.key, adapter_shape=fulls[0].chosen.info.shape, base_shape=ctx.base.by_name[shared].shape))
    # LoRA on the tied weight: training applied the delta where the wrapped module sits (the embedding
    # or the head); merging it into the shared weight applies it to both. ensure_weight_tying: PEFT
    # trained the same delta on both sides, so the tied weight takes it once and stays tied.
    if embed and not ctx.config.ensure_weight_tying:
        for module, side in ctx.tied_lora.items():
            if module in ctx.never_called:
                continue
            lm, _ = ctx.lora_targets[module]
            key = lm.A or lm.B
            head = module if side == "head" else ctx.head_module
            this = head if side == "head" else "the embedding"
            out.append(Finding(Code.TIED_ONE_SIDE,
                               f"LoRA on {module} changes {embed}, which the base ties to {head}: training applied the delta to {this} only, "
                               "but PEFT's merge_and_unload would apply it to the shared weight, i.e. to both sides.",
                               f"`{ctx.merge_cmd}` unties them: it writes the embedding and the head separately (each with only its own delta) "
                               "and sets tie_word_embeddings: false.",
                               tensor=embed, adapter_key=key.key, adapter_shape=key.info.shape, base_shape=ctx.base.by_name[embed].shape))
    return out


def check_empty(ctx: CheckContext) -> list[Finding]:
    """Family 8: tensors with a 0 in their shape (ZeRO-3 saves without gathering), adapters with none."""
    out = []
    if not ctx.adapter.tensors:
        files = ", ".join(ctx.adapter.checkpoint.files)
        out.append(Finding(Code.EMPTY_ADAPTER, f"the adapter's {files} holds no tensors: merging it would change nothing.",
                           "The training script saved an empty state dict (e.g. alpaca-lora's 443-byte adapter_model.bin, from overriding "
                           "model.state_dict): save again with the trained PeftModel's save_pretrained(DIR)."))
    for t in ctx.adapter.tensors:
        if 0 in t.info.shape:
            out.append(Finding(Code.EMPTY_TENSOR, f"{t.key} is empty {shape_str(t.info.shape)}: saved from a sharded (ZeRO-3 / FSDP) model without gathering.",
                               "Re-save with the parameters gathered (DeepSpeed: stage3_gather_16bit_weights_on_model_save=true, or zero_to_fp32.py).",
                               adapter_key=t.key, adapter_shape=t.info.shape))
    for t in ctx.base.tensors:
        if 0 in t.shape:
            out.append(Finding(Code.EMPTY_TENSOR, f"base tensor {t.name} is empty {shape_str(t.shape)}.",
                               "Re-save the base model with its parameters gathered.", tensor=t.name, base_shape=t.shape))
    return out


def check_quantized(ctx: CheckContext) -> list[Finding]:
    """Family 9: a quantized base cannot be merged into without dequantizing."""
    quant = ctx.base.config.get("quantization_config")
    keys = [t.name for t in ctx.base.tensors if _QUANT_KEYS.search(t.name)]
    packed = [t.name for t in ctx.base.tensors if t.name.endswith(".weight") and len(t.shape) == 2 and t.dtype in _QUANT_DTYPES]
    if not (quant or keys or packed):
        return []
    method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
    # With a quantization_config, any tensor of a packed dtype counts (MXFP4 *_blocks, quanto ._data,
    # HQQ W_q are no 2-D ".weight"); only a base with none at all is full precision under a stale config.
    packed = packed or [t.name for t in ctx.base.tensors if t.dtype in _QUANT_DTYPES] if quant else packed
    if not (keys or packed):
        # Full-precision weights under a config that still says quantized (saved after dequantizing).
        return [Finding(Code.QUANTIZED_BASE, f"config.json carries a quantization_config ({method}) but every weight is full precision "
                        "(no packed tensors, no quant-state keys): a leftover of an earlier save.",
                        "Nothing blocks the merge, which leaves quantization_config out of the merged config.json; remove it from BASE's too, "
                        "or transformers tries to quantize the model when it loads it.", severity="warning")]
    evidence = f"quantization_config ({method})" if quant else f"quantized tensors such as {(keys or packed)[0]}"
    return [Finding(Code.QUANTIZED_BASE, f"the base is quantized ({evidence}); merging into packed weights would corrupt them "
                    "(LoRA shapes and targets are not checked against packed weights).",
                    "Merge into the original full-precision base model (the one the quantized copy was made from).",
                    tensor=(keys or packed or [None])[0])]


# Dtypes quantized weights are stored in (packed nibbles, int8, FP8/FP4/FP6, GPTQ's int32 words).
_QUANT_DTYPES = frozenset({"U8", "I8", "I32", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"})
# What a quantized base's packed tensors (U8 [n/2, 1], GPTQ qweight) make meaningless to compare.
_PACKED_NOISE = frozenset({Code.LORA_A_SHAPE, Code.LORA_B_SHAPE, Code.LORA_RANK, Code.DORA_MAGNITUDE, Code.EMBEDDING_LORA, Code.LORA_BIAS,
                           Code.ORPHAN, Code.TARGET_UNMATCHED, Code.NOT_TARGETED, Code.HIDDEN_SIZE, Code.FULL_SHAPE})


def _local_base(ctx: CheckContext) -> Path | None:
    """base_model_name_or_path when it is a model directory on this machine other than BASE (as
    from_pretrained reads it: absolute, or relative to the working directory); None otherwise (a Hub
    id, another machine's path)."""
    name = ctx.config.base_model_name_or_path
    if not name:
        return None
    where = Path(name)
    try:
        if (where / "config.json").is_file():
            return None if where.resolve() == ctx.base.root.resolve() else where
    except (OSError, ValueError):
        return None
    return None


_PEEK = 4096  # bytes compared at the start of a tensor


def _not_a_copy(ctx: CheckContext, local: Path) -> str | None:
    """How the adapter's local training base differs from BASE, or None when it looks like a copy:
    the tensor tables (headers: names and shapes; another dtype is still a copy, and so is a
    vocabulary resized, as `resize --like` does), then the first 4 KiB of the weights the adapter's
    LoRA adapts, where both have one dtype (a merged LoRA changes every element of those).
    Unreadable: None (no finding without evidence)."""
    try:
        other = read_checkpoint(local, with_tokenizer=False)
    except InspectorError:
        return None
    mine = ctx.base.by_name
    for name, info in other.by_name.items():
        if name in mine and mine[name].shape != info.shape and not ctx.vocab.is_vocab(name):
            return f"{name} has another shape there"  # (what that path holds is not reported: the path came from a file)
    if len(other.by_name) != len(mine):  # (the same count under other names: a re-save, still a copy)
        return f"it has {len(other.by_name)} tensors and BASE {len(mine)}"
    for _, weight in ctx.lora_targets.values():
        theirs = other.by_name.get(weight.name) if weight is not None else None
        comparable = theirs is not None and theirs.dtype == weight.dtype and theirs.contiguous and weight.contiguous
        if comparable and _peek(ctx.base, weight) != _peek(other, theirs):
            return f"{weight.name} holds other values there (a merged or further-trained model)"
    return None


def _peek(ckpt: Checkpoint, info: TensorInfo) -> bytes | None:
    try:
        with open(ckpt.root / info.file, "rb") as fh:
            fh.seek(info.start)
            return fh.read(min(_PEEK, info.nbytes))
    except OSError:
        return None


def check_architecture(ctx: CheckContext) -> list[Finding]:
    """Family 10: base_model_name_or_path against the base's model_type (layer and hidden sizes are
    reported where the tensors show them)."""
    local = _local_base(ctx)
    why = _not_a_copy(ctx, local) if local is not None else None
    if why is not None:
        return [Finding(Code.BASE_PATH,
                        f"the adapter was trained on the local model '{local}', which is not BASE ('{ctx.base.root}'): {why}. "
                        "Merging into BASE drops what that model added (a stage-1 merge, a resize, further training).",
                        f"Merge into the model the adapter was trained on: `{_cmd('lora-inspector', 'merge', str(local), ctx.adapter.checkpoint.path, '--out', 'merged')}`.")]
    name = (ctx.config.base_model_name_or_path or "").lower()
    model_type = str(ctx.base.config.get("model_type") or "").lower()
    if not name or not model_type:
        return []
    named, own = _families(name), _families(model_type)
    if not named or not own or any(({f} | _ALSO.get(f, frozenset())) & own for f in named):
        return []
    others = sorted(named)
    return [Finding(Code.BASE_NAME, f"the adapter was trained on {ctx.config.base_model_name_or_path!r} ({' / '.join(others)}?) but the base's model_type is {model_type!r}.",
                    "Check that BASE is the model the adapter was trained on.")]


def check_dtypes(ctx: CheckContext) -> list[Finding]:
    """Family 11: dtype differences (the merge computes in fp32 and writes the base dtype)."""
    base_dtypes = Counter(t.dtype for t in ctx.base.tensors if t.dtype in FLOAT_DTYPES)
    adapter_dtypes = Counter(t.info.dtype for t in ctx.adapter.tensors if t.info.dtype in FLOAT_DTYPES)
    if not base_dtypes or not adapter_dtypes or set(adapter_dtypes) <= set(base_dtypes) and len(base_dtypes) == 1:
        return []
    base_main = base_dtypes.most_common(1)[0][0]
    if set(adapter_dtypes) == {base_main}:
        return []
    listing = ", ".join(f"{d} x{n}" for d, n in adapter_dtypes.items())
    return [Finding(Code.DTYPE, f"the adapter stores {listing}; the base stores {base_main}.",
                    f"Nothing to do: the merge computes in fp32 and writes {base_main} (choose with --dtype).")]


def check_bloat(ctx: CheckContext) -> list[Finding]:
    """Family 12: the same matrix stored several times (plain + modules_to_save + original_module)."""
    out = []
    for full in ctx.adapter.full.values():
        waste = sum(c.info.nbytes for c in full.copies) - full.chosen.info.nbytes
        if len(full.copies) < 2 or waste <= 0:  # no bytes to save: empty copies are LI801's
            continue
        kinds = ", ".join(c.copy for c in full.copies)
        out.append(Finding(Code.BLOAT, f"{full.target} is stored {len(full.copies)} times ({kinds}); {human_bytes(waste)} are copies PEFT does not use "
                           f"(it loads the {full.chosen.copy} one).",
                           f"Harmless: PEFT loads the {full.chosen.copy} copy; the others only take disk space.",
                           tensor=ctx.resolve(full.target), adapter_key=full.chosen.key, adapter_shape=full.chosen.info.shape))
    return out


def check_memory(ctx: CheckContext) -> list[Finding]:
    """Family 13: what the standard PEFT merge needs in RAM vs the streaming merge."""
    base_bytes = ctx.base.total_bytes
    if ctx.plan.grows and ctx.vocab.rows:
        per_row = sum(ctx.base.by_name[n].nbytes // max(ctx.base.by_name[n].shape[0], 1) for n in ctx.vocab.matrices)
        base_bytes += per_row * (ctx.plan.rows - ctx.vocab.rows)
    peft = 2 * base_bytes + ctx.adapter.checkpoint.total_bytes
    # The streaming merge holds a row block (64 MiB of fp32 at most) a few times over, the LoRA pair
    # of the module at hand, and, when it must invent grown rows nobody carries, that matrix in fp32.
    largest = max([t.numel for t in ctx.base.tensors] + [0])
    block = min(4 * largest, STREAM_BLOCK_BYTES)
    lora = max([4 * (lm.A.info.numel + lm.B.info.numel) for lm, _ in ctx.lora_targets.values() if lm.A and lm.B] + [0])
    invented = 0
    if ctx.plan.grows and ctx.vocab.width:
        uncarried = [n for n in ctx.vocab.matrices if n not in ctx.plan.carried]
        # the old matrix, its fp32 copy for the statistics, and the grown copy (at most 4 + 2 x 4 bytes a value)
        invented = 12 * ctx.plan.rows * ctx.vocab.width if uncarried else 0
    stream = 3 * block + lora + invented
    return [Finding(Code.MEMORY_PLAN, f"the standard PEFT merge holds about {human_bytes(peft)} of tensors (the model twice plus the adapter); "
                    f"lora-inspector's streaming merge about {human_bytes(stream)} (row blocks of at most {human_bytes(STREAM_BLOCK_BYTES)} in fp32"
                    + (", plus one grown vocabulary matrix and its fp32 statistics" if invented else "") + "), both on top of the Python/torch runtime.",
                    f"`{ctx.merge_cmd}` streams one row block at a time." if stream < peft else
                    f"Either fits easily at this size; `{ctx.merge_cmd}` also repairs what PEFT's path cannot.")]


def check_unsupported(ctx: CheckContext) -> list[Finding]:
    """Family 14: PEFT methods and LoRA variants the merge does not handle."""
    out = []
    if ctx.config.peft_type != "LORA":
        out.append(Finding(Code.UNSUPPORTED_METHOD, f"peft_type is {ctx.config.peft_type}; lora-inspector checks and merges LoRA adapters only.",
                           "Merge it with PEFT's merge_and_unload (if the method supports merging)."))
    if ctx.config.target_parameters:
        out.append(Finding(Code.TARGET_PARAMETERS, f"target_parameters {list(ctx.config.target_parameters)} puts LoRA on raw parameters (e.g. MoE experts), which lora-inspector does not merge.",
                           "Merge it with PEFT's merge_and_unload."))
    config = ctx.config
    if config.alora_invocation_tokens is not None:
        out.append(Finding(Code.UNSUPPORTED_LAYER,
                           f"alora_invocation_tokens {list(config.alora_invocation_tokens)} makes this an aLoRA adapter: it acts only on the tokens after its "
                           "invocation sequence, so no merged weight reproduces it (PEFT: 'aLoRA does not support merging').",
                           "Use the adapter unmerged with PEFT (PeftModel.from_pretrained)."))
    if config.layer_replication is not None:
        out.append(Finding(Code.UNSUPPORTED_LAYER,
                           f"layer_replication {[list(p) for p in config.layer_replication]} builds the model from copies of the base's layers and puts "
                           "LoRA on the copies: the adapter's layer indices are the replicated model's, and PEFT's merge_and_unload does not reproduce it.",
                           "Use the adapter unmerged with PEFT (PeftModel.from_pretrained)."))
    init = config.mutating_init
    if init is not None:
        fix = ("Merge into the base LoftQ produced (the quantized weights it trained against), not the original."
               if init == "loftq" else
               "Convert it to plain LoRA first: PEFT's save_pretrained(..., path_initial_model_for_weight_conversion=<the adapter saved "
               "right after initialization>) writes an adapter for the original base; check and merge that one.")
        out.append(Finding(Code.BASE_MUTATING_INIT,
                           f"init_lora_weights is {config.init_lora_weights!r}: PEFT changed the base weights when it created this adapter ({BASE_MUTATING_INITS[init]}), "
                           "and lora_A / lora_B were trained against that changed base; W += s * B @ A on the original base is not what training saw.",
                           fix))
    return out


CHECKS = (
    check_unsupported,
    check_vocabulary,
    check_tokenizer,
    check_lora_shapes,
    check_orphans,
    check_new_rows,
    check_trainable_tokens,
    check_tied,
    check_empty,
    check_quantized,
    check_architecture,
    check_dtypes,
    check_bloat,
    check_memory,
)


def diagnose(base: Checkpoint, adapter: Adapter, tokenizer: TokenizerFacts | None = None) -> Diagnosis:
    """Run every check; findings come sorted by severity, then code, then tensor."""
    ctx = CheckContext(base, adapter, tokenizer)
    if ctx.config.peft_type != "LORA":
        findings = check_unsupported(ctx) + check_empty(ctx)
    else:
        findings = [f for check in CHECKS for f in check(ctx)]
        if any(f.code is Code.QUANTIZED_BASE and f.severity == "error" for f in findings):
            findings = [f for f in findings if f.code not in _PACKED_NOISE]  # LI901 says it all
    order = {code: i for i, code in enumerate(Code)}
    findings.sort(key=lambda f: (severity_rank(f.severity), order[f.code], f.tensor or "", f.adapter_key or ""))
    return Diagnosis(base, adapter, tokenizer, ctx.plan, tuple(findings), ctx)
