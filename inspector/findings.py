"""Finding codes (stable, never renumbered) and the Finding record every check returns.

The hundreds digit is the family (LI1xx vocabulary, ..., LI16xx values; docs/design.md lists
the families). docs/findings.md documents every code with its causes and fix; each code is raised by
exactly one registered check in inspector/checks/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

SEVERITIES = ("error", "warning", "info")


class Code(Enum):
    """code -> (slug, default severity, one-line meaning)."""

    VOCAB_ROWS = ("LI101", "vocab-size-mismatch", "error", "the adapter's full embedding / lm_head has a different number of rows than the base")
    VOCAB_DISAGREE = ("LI102", "adapter-vocab-disagrees", "error", "the adapter's vocabulary-sized tensors disagree on the vocabulary size")
    FULL_SHAPE = ("LI103", "full-tensor-shape-mismatch", "error", "a full tensor the adapter replaces has another shape in the base")
    TOKENIZER_LARGER = ("LI201", "tokenizer-larger-than-embedding", "error", "the tokenizer has more tokens than the embedding has rows")
    EMBEDDING_LARGER = ("LI202", "embedding-larger-than-tokenizer", "info", "the embedding has more rows than the tokenizer has tokens (padding rows)")
    CONFIG_VOCAB = ("LI203", "config-vocab-size-mismatch", "warning", "config.json vocab_size differs from the embedding's rows")
    TOKENIZER_NOT_EXTENDED = ("LI204", "tokenizer-not-extended", "warning", "the adapter grows the vocabulary but the only tokenizer found is the base's, without the new tokens")
    LORA_A_SHAPE = ("LI301", "lora-a-shape", "error", "lora_A does not fit the base weight's input dimension")
    LORA_B_SHAPE = ("LI302", "lora-b-shape", "error", "lora_B does not fit the base weight's output dimension")
    LORA_RANK = ("LI303", "lora-rank", "error", "the rank stored in the tensors differs from r / rank_pattern")
    DORA_MAGNITUDE = ("LI304", "dora-magnitude", "error", "a DoRA magnitude vector has the wrong length or DoRA is off in the config")
    EMBEDDING_LORA = ("LI305", "embedding-lora-shape", "error", "lora_embedding_A/B do not fit the embedding")
    LORA_BIAS = ("LI306", "lora-bias-shape", "error", "lora_B.bias does not fit, lora_bias is off in the config, or the base layer has no bias to merge it into")
    LORA_PAIR = ("LI307", "lora-pair-incomplete", "error", "lora_A without lora_B (or the reverse), or their ranks differ")
    ORPHAN = ("LI401", "orphan-tensor", "error", "an adapter tensor matches no base tensor: it would silently do nothing")
    TARGET_UNMATCHED = ("LI402", "target-module-unmatched", "warning", "a target_modules entry matches no base module")
    NOT_TARGETED = ("LI403", "tensor-not-targeted", "error", "LoRA tensors for a module the config does not target: PEFT ignores them")
    UNKNOWN_KEY = ("LI404", "unknown-key", "error", "an adapter key no PEFT LoRA layout explains")
    NEW_HEAD = ("LI405", "new-head", "warning", "a modules_to_save head of the adapter's task type (score, classifier) that the base does not have")
    UNPREFIXED_KEY = ("LI406", "key-without-prefix", "error", "an adapter key lacks the base_model.model. prefix: PEFT's loader drops it unused")
    ROWS_NOT_CARRIED = ("LI501", "new-rows-not-carried", "error", "LoRA changes vocabulary rows the adapter does not carry: what training saw is lost")
    ROWS_UNCARRIED = ("LI502", "new-rows-uninitialized", "warning", "a vocabulary matrix must grow but nobody carries its new rows: merge fills them with --init")
    TOKEN_INDICES = ("LI601", "trainable-token-out-of-range", "error", "trainable_token_indices reach beyond the base's rows")
    TOKEN_DELTA_ROWS = ("LI602", "trainable-token-delta-rows", "error", "the saved trainable-token delta has another row count than trainable_token_indices")
    TIED_ONE_SIDE = ("LI701", "tied-embedding-one-side", "warning", "the base ties lm_head to the embedding and the adapter replaces or LoRA-adapts only one of them")
    EMPTY_TENSOR = ("LI801", "empty-tensor", "error", "a tensor has a 0 in its shape (a ZeRO-3 save without gathering)")
    EMPTY_ADAPTER = ("LI802", "empty-adapter", "error", "the adapter file holds no tensors: merging it changes nothing")
    QUANTIZED_BASE = ("LI901", "quantized-base", "error", "the base is quantized: a merge would have to dequantize it")
    HIDDEN_SIZE = ("LI1001", "hidden-size-mismatch", "error", "the adapter was trained on a model with another hidden size")
    LAYER_COUNT = ("LI1002", "layer-count-mismatch", "error", "the adapter addresses layers the base does not have")
    BASE_NAME = ("LI1003", "base-model-name-mismatch", "warning", "base_model_name_or_path names another architecture than the base's model_type")
    BASE_PATH = ("LI1004", "base-model-path-differs", "warning", "base_model_name_or_path is a local model directory other than BASE")
    DTYPE = ("LI1101", "dtype-difference", "info", "adapter and base store different dtypes")
    BLOAT = ("LI1201", "adapter-bloat", "info", "the adapter stores the same matrix several times")
    MEMORY_PLAN = ("LI1301", "memory-plan", "info", "memory the standard PEFT merge needs vs the streaming merge")
    UNSUPPORTED_METHOD = ("LI1401", "unsupported-peft-type", "error", "the adapter is not LoRA")
    UNSUPPORTED_LAYER = ("LI1402", "unsupported-layer", "error", "a LoRA variant no merge reproduces (Conv LoRA, aLoRA, layer_replication)")
    TARGET_PARAMETERS = ("LI1403", "target-parameters", "error", "target_parameters (LoRA on raw parameters) is not supported")
    BASE_MUTATING_INIT = ("LI1404", "base-mutating-init", "error", "init_lora_weights changed the base at init (PiSSA, OLoRA, CorDA, LoftQ): the adapter does not fit the original base")
    # Serving (check --target NAME): what a server refuses, computes differently from PEFT, or accepts
    # only with a non-default flag. One code per problem; each server's rules are in inspector/targets/.
    SERVE_METHOD = ("LI1501", "serve-method", "error", "the server serves no adapter of this PEFT method")
    SERVE_ARCHITECTURE = ("LI1502", "serve-architecture", "error", "the server has no LoRA support for the base's architecture")
    SERVE_RANK = ("LI1503", "serve-rank", "error", "the LoRA rank is above what the server accepts (by default, or at all)")
    SERVE_TARGET_MODULE = ("LI1504", "serve-target-module", "error", "LoRA on a module the server cannot adapt")
    SERVE_MODULES_TO_SAVE = ("LI1505", "serve-modules-to-save", "error", "full weights (modules_to_save, saved embeddings) the server refuses or drops")
    SERVE_VOCABULARY = ("LI1506", "serve-vocabulary", "error", "the adapter changes the vocabulary size, which the server does not support")
    SERVE_DORA = ("LI1507", "serve-dora", "error", "DoRA, which the server refuses or serves as plain LoRA")
    SERVE_LORA_BIAS = ("LI1508", "serve-lora-bias", "error", "lora_B.bias (lora_bias), which the server refuses or ignores")
    SERVE_TRAINABLE_TOKENS = ("LI1509", "serve-trainable-tokens", "error", "trainable tokens, which the server refuses or ignores")
    SERVE_SCALING = ("LI1510", "serve-scaling", "error", "a scaling the server computes differently (rsLoRA, rank_pattern / alpha_pattern)")
    SERVE_EMBEDDING_LORA = ("LI1511", "serve-embedding-lora", "error", "LoRA on the embedding or the output layer, which the server refuses or ignores")
    SERVE_PARTIAL_LAYERS = ("LI1512", "serve-partial-layers", "error", "LoRA on a module kind in only some layers, which the server drops in every layer")
    # Values (check --values): one streaming pass over the adapter's tensor values (inspector/values.py).
    VALUE_NONFINITE = ("LI1601", "value-nonfinite", "error", "an adapter tensor holds NaN or Inf (a diverged run, or an fp16 overflow)")
    LORA_B_ZERO = ("LI1602", "lora-b-zero", "error", "lora_B is all zeros: the LoRA delta is zero (every module: the adapter does nothing)")
    NEW_ROWS_UNTRAINED = ("LI1603", "new-rows-untrained", "warning", "new vocabulary rows equal the old rows' mean, zero, or each other: never trained")
    NEW_ROW_NORMS = ("LI1604", "new-row-norm-outlier", "warning", "new vocabulary rows' norms lie far outside the old rows' norms")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def slug(self) -> str:
        return self.value[1]

    @property
    def severity(self) -> str:
        return self.value[2]

    @property
    def meaning(self) -> str:
        return self.value[3]


@dataclass(frozen=True)
class Hit:
    """What one check found, before the registry stamps the check's code on it (inspector/checks/)."""

    message: str
    hint: str
    severity: str = ""  # the code's default severity unless a check says otherwise
    tensor: str | None = None
    adapter_key: str | None = None
    adapter_shape: tuple[int, ...] | None = None
    base_shape: tuple[int, ...] | None = None
    repair: str | None = None
    target: str | None = None  # the server a serving finding is about (check --target)
    outcome: str | None = None  # what that server does: "refused" | "diverges" | "flag"
    data: dict | None = field(default=None, compare=False)  # measured numbers (check --values), in JSON as "data"


@dataclass(frozen=True)
class Finding:
    code: Code
    message: str
    hint: str
    severity: str = ""  # defaults to the code's severity
    tensor: str | None = None  # the base tensor concerned
    adapter_key: str | None = None
    adapter_shape: tuple[int, ...] | None = None
    base_shape: tuple[int, ...] | None = None
    # How `merge` repairs an error itself: "resize" (it grows the vocabulary to the size the adapter
    # implies), "init" (only with an explicit --init: the rows training saw are lost), or None.
    repair: str | None = None
    target: str | None = None  # check --target: the server this finding is about (LI15xx)
    outcome: str | None = None  # what that server does with the adapter: "refused" | "diverges" | "flag"
    data: dict | None = field(default=None, compare=False)  # measured numbers (LI16xx); JSON "data" only when set

    def __post_init__(self) -> None:
        if not self.severity:
            object.__setattr__(self, "severity", self.code.severity)

    @classmethod
    def of(cls, code: Code, hit: Hit) -> Finding:
        return cls(code, hit.message, hit.hint, hit.severity, hit.tensor, hit.adapter_key, hit.adapter_shape, hit.base_shape, hit.repair, hit.target, hit.outcome, hit.data)

    def as_json(self) -> dict:
        return {
            "code": self.code.code,
            "name": self.code.slug,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
            "tensor": self.tensor,
            "adapter_key": self.adapter_key,
            "adapter_shape": list(self.adapter_shape) if self.adapter_shape is not None else None,
            "base_shape": list(self.base_shape) if self.base_shape is not None else None,
            "repair": self.repair,
            "target": self.target,
            "outcome": self.outcome,
        } | ({"data": self.data} if self.data is not None else {})


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)
