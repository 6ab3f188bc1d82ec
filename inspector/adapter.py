"""PEFT adapters as data: a validated ``adapter_config.json`` and what each saved tensor is.

Knows every key layout PEFT has written (old and new): ``lora_A/B`` (+ ``lora_B.bias``),
``lora_embedding_A/B``, ``lora_magnitude_vector`` (DoRA), full tensors saved plain or under
``modules_to_save`` / ``original_module`` / ``base_layer``, and ``trainable_tokens_delta``.
Pure data: reads no tensor, imports no torch, never imports what a config names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from inspector.errors import InvalidInputError
from inspector.io.checkpoint import Checkpoint
from inspector.io.tensor import TensorInfo
from inspector.patterns import Matcher, PatternRefused, parse, refusal

PREFIX = "base_model.model."
MAX_PATTERN = 1000  # longest regex accepted from a config (target_modules, rank_pattern keys)

Role = Literal["lora_A", "lora_B", "lora_B_bias", "lora_embedding_A", "lora_embedding_B", "magnitude", "trainable_tokens", "full"]
Copy = Literal["plain", "modules_to_save", "base_layer", "original_module"]

# Which stored copy of a full tensor PEFT's loader ends up using, best first. The plain key is
# what PEFT >= 0.15 writes for modules_to_save and what its load map reads; old files carry
# ``modules_to_save``; ``base_layer`` is the embedding PEFT saves when the vocabulary was resized.
# ``original_module`` is the frozen pre-training copy: never the trained module.
COPY_PREFERENCE: tuple[Copy, ...] = ("plain", "modules_to_save", "base_layer")

_SUFFIX_ROLES: tuple[tuple[str, Role], ...] = (
    (".lora_A.weight", "lora_A"),
    (".lora_B.weight", "lora_B"),
    (".lora_B.bias", "lora_B_bias"),
    (".lora_embedding_A", "lora_embedding_A"),
    (".lora_embedding_B", "lora_embedding_B"),
    (".lora_magnitude_vector", "magnitude"),
    (".lora_magnitude_vector.weight", "magnitude"),
    (".token_adapter.trainable_tokens_delta", "trainable_tokens"),
    # A PeftModel's own state_dict() names the adapter ("default"), as a hand-written torch.save of it
    # stores them: PEFT 0.21's loader passes such keys through, and under the default adapter name
    # they are exactly the model's parameters, so they load.
    (".lora_A.default.weight", "lora_A"),
    (".lora_B.default.weight", "lora_B"),
    (".lora_B.default.bias", "lora_B_bias"),
    (".lora_embedding_A.default", "lora_embedding_A"),
    (".lora_embedding_B.default", "lora_embedding_B"),
    (".lora_magnitude_vector.default.weight", "magnitude"),
    (".token_adapter.trainable_tokens_delta.default", "trainable_tokens"),
)
_COPY_SEGMENTS: tuple[tuple[str, Copy], ...] = (
    # Trainable tokens on a resized vocabulary: PEFT saves the grown embedding (or tied head) of the
    # TrainableTokens wrapper as <M>.token_adapter.base_layer.weight, a base_layer copy of <M>.weight.
    (".token_adapter.base_layer.", "base_layer"),
    (".modules_to_save.", "modules_to_save"),
    (".original_module.", "original_module"),
    (".base_layer.", "base_layer"),
)
# Keys of other PEFT methods (LoHa, LoKr, AdaLoRA, VeRA, IA3, OFT, BOFT, ...): named, never guessed at.
_FOREIGN = re.compile(r"\.(hada_|lokr_|lora_E|vera_|ia3_|oft_|boft_|lora_ranknum|fourierft_|vblora_|ln_tuning_)")
# init_lora_weights values with which PEFT changes the base weights when it creates the adapter
# (PiSSA / OLoRA / CorDA / LoRA-GA subtract the initial B @ A, LoftQ quantizes): the trained A/B
# only reproduce training on that changed base. "pissa_niter_<n>" counts as "pissa".
BASE_MUTATING_INITS = {
    "pissa": "PiSSA moved their principal components into the adapter",
    "olora": "OLoRA subtracted the QR-initialized B @ A",
    "corda": "CorDA moved context-oriented components into the adapter",
    "lora_ga": "LoRA-GA subtracted the gradient-aligned initial B @ A",
    "loftq": "LoftQ replaced them by a quantized approximation",
}
# Task types whose model puts a new head (score / classifier / qa_outputs) where a causal LM has lm_head.
HEAD_TASKS = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
}
# The heads those task models add, for adapters saved without task_type (modules_to_save=["classifier"]).
HEAD_MODULES = {
    "score": "AutoModelForSequenceClassification",
    "classifier": "AutoModelForSequenceClassification (or AutoModelForTokenClassification)",
    "qa_outputs": "AutoModelForQuestionAnswering",
}


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of ``adapter_config.json`` lora-inspector acts on, type-checked."""

    peft_type: str
    r: int
    lora_alpha: float
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    lora_bias: bool = False
    target_modules: tuple[str, ...] | str | None = None
    exclude_modules: tuple[str, ...] | str | None = None
    modules_to_save: tuple[str, ...] = ()
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    # module name (None: the model's input embedding) -> token ids
    trainable_token_indices: dict[str | None, tuple[int, ...]] = field(default_factory=dict)
    target_parameters: tuple[str, ...] = ()
    layers_to_transform: tuple[int, ...] = ()
    base_model_name_or_path: str | None = None
    task_type: str | None = None
    init_lora_weights: bool | str = True
    # aLoRA: the adapter only acts after these tokens at inference; PEFT cannot merge it.
    alora_invocation_tokens: tuple[int, ...] | None = None
    # [[start, end], ...]: PEFT stacks copies of base layers and puts LoRA on the copies.
    layer_replication: tuple[tuple[int, int], ...] | None = None
    # PEFT ties the LoRA of a tied embedding and its lm_head: one delta, trained on both sides.
    ensure_weight_tying: bool = False
    source: str | None = field(default=None, compare=False)  # the adapter_config.json read, for errors
    # Matches the config's regexes with one time budget for them all (patterns are untrusted input).
    matcher: Matcher = field(default_factory=Matcher, compare=False, repr=False)

    @property
    def mutating_init(self) -> str | None:
        """The BASE_MUTATING_INITS key of init_lora_weights, or None for inits that leave the base alone."""
        value = self.init_lora_weights
        if not isinstance(value, str):
            return None
        value = value.lower()
        return "pissa" if value.startswith("pissa") else (value if value in BASE_MUTATING_INITS else None)

    def saves(self, module: str) -> bool:
        """Is ``module`` (or a module it lies inside) in modules_to_save? Names match on dot boundaries."""
        parts = module.split(".")
        return any(m.split(".") == parts[i : i + len(m.split("."))] for m in self.modules_to_save for i in range(len(parts)))

    def rank_for(self, module: str) -> int:
        key = self._pattern_key("rank_pattern key", self.rank_pattern, module)
        return self.rank_pattern.get(key, self.r) if key is not None else self.r

    def alpha_for(self, module: str) -> float:
        key = self._pattern_key("alpha_pattern key", self.alpha_pattern, module)
        return self.alpha_pattern.get(key, self.lora_alpha) if key is not None else self.lora_alpha

    def regex_matches(self, name: str, pattern: str, module: str) -> bool:
        """PEFT's ``re.fullmatch(pattern, module)`` for the regex field ``name``, with bounded work."""
        try:
            return self.matcher.fullmatch(name, pattern, module)
        except PatternRefused as exc:
            raise _pattern_error(self.source, exc) from None

    def _pattern_key(self, name: str, patterns: dict, module: str) -> str | None:
        # PEFT's get_pattern_key: the first key that matches the end of the module name on a dot boundary.
        try:
            return next((key for key in patterns if self.matcher.peft_key(name, key, module)), None)
        except PatternRefused as exc:
            raise _pattern_error(self.source, exc) from None

    def scale_for(self, module: str) -> float:
        """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA, per-module r and alpha from the patterns."""
        r, alpha = self.rank_for(module), self.alpha_for(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _config_error(path: str | None, why: str, hint: str = "Fix the field in adapter_config.json (PEFT writes it with LoraConfig.save_pretrained).") -> InvalidInputError:
    return InvalidInputError("Invalid adapter_config.json", path, why, hint)


_PATTERN_HINT = ("Use a simpler regex, e.g. '.*\\.(q_proj|v_proj)$', or a list of module names; "
                 "PEFT matches it with Python's re, which has no time limit.")


def _pattern_error(path: str | None, exc: PatternRefused) -> InvalidInputError:
    return _config_error(path, f"{exc.field} {exc.pattern!r} {exc.why}", _PATTERN_HINT)


def _regex(path: str, name: str, pattern: str) -> str:
    # Refused here, before any module name is matched: the shapes PEFT's re would hang on (see patterns.refusal).
    if len(pattern) > MAX_PATTERN:
        raise _config_error(path, f"{name} is a regular expression longer than {MAX_PATTERN} characters")
    try:
        why = refusal(pattern)
    except re.error as exc:
        raise _config_error(path, f"{name} {pattern!r} is not a valid regular expression ({exc})") from exc
    if why is not None:
        raise _pattern_error(path, PatternRefused(name, pattern, why))
    return pattern


def _bool(path: str, raw: dict, name: str) -> bool:
    value = raw.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        # "false" is a truthy string: PEFT would silently switch the feature on.
        raise _config_error(path, f"{name} is {value!r} ({type(value).__name__}); it must be true or false")
    return value


def _names(path: str, raw: dict, name: str, allow_regex: bool) -> tuple[str, ...] | str | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        if not allow_regex:
            return (value,)
        return _regex(path, name, value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _config_error(path, f"{name} is {value!r}; expected a list of module names" + (" or a regex string" if allow_regex else ""))


# Numbers from a config are bounded: 10**400 is valid JSON, and math on it overflows. A rank or a
# token id past int64 is no model's; PEFT stores token ids as torch.long.
_MAX_INT = 2**63 - 1


def _is_number(v: object, kind: type) -> bool:
    """A JSON number usable as ``kind`` (int: a bounded integer; float: a finite int or float)."""
    if type(v) is int:
        return abs(v) <= _MAX_INT
    return kind is float and type(v) is float and math.isfinite(v)


def _number_map(path: str, raw: dict, name: str, kind: type) -> dict:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise _config_error(path, f"{name} is {value!r}; expected a map of module pattern -> number")
    out = {}
    for key, v in value.items():
        if not _is_number(v, kind) or v <= 0:
            raise _config_error(path, f"{name}[{key!r}] is {v!r}; expected a positive {'integer' if kind is int else 'number'}")
        out[_peft_key(path, f"{name} key", key)] = v
    return out


def _peft_key(path: str, name: str, key: str) -> str:
    # PEFT matches a key inside (.*\.)?(KEY)$: a key that breaks that regex (a global "(?i)") makes PEFT raise re.error.
    _regex(path, name, key)
    try:
        parse(rf"(.*\.)?({key})$")
    except re.error as exc:
        raise _config_error(path, f"{name} {key!r} is not valid inside the regex PEFT builds from it, (.*\\.)?(KEY)$ ({exc})") from exc
    return key


def _token_indices(path: str, raw: dict) -> dict[str | None, tuple[int, ...]]:
    value = raw.get("trainable_token_indices")
    if value is None:
        return {}

    def ints(v: object, where: str) -> tuple[int, ...]:
        if not isinstance(v, list) or not all(type(i) is int and 0 <= i <= _MAX_INT for i in v):
            raise _config_error(path, f"trainable_token_indices{where} is {v!r}; expected a list of non-negative token ids")
        return tuple(v)

    if isinstance(value, dict):
        return {str(k): ints(v, f"[{k!r}]") for k, v in value.items()}
    return {None: ints(value, "")}


def _optional_ints(path: str, raw: dict, name: str) -> tuple[int, ...] | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(type(i) is int for i in value):
        raise _config_error(path, f"{name} is {value!r}; expected a list of integers")
    return tuple(value)


def _layer_replication(path: str, raw: dict) -> tuple[tuple[int, int], ...] | None:
    value = raw.get("layer_replication")
    if value is None:
        return None
    ok = isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and all(type(i) is int for i in p) for p in value)
    if not ok:
        raise _config_error(path, f"layer_replication is {value!r}; expected a list of [start, end] layer ranges")
    return tuple((p[0], p[1]) for p in value)


def _init_lora_weights(path: str, raw: dict) -> bool | str:
    value = raw.get("init_lora_weights", True)
    if value is None:
        return True
    if not isinstance(value, (bool, str)):
        raise _config_error(path, f"init_lora_weights is {value!r}; expected true, false or an init name such as \"gaussian\" or \"pissa\"")
    return value


def parse_config(raw: dict, path: str) -> AdapterConfig:
    """Validate ``adapter_config.json``; wrong types are exit-2 errors, never silently coerced."""
    peft_type = raw.get("peft_type")
    if not isinstance(peft_type, str):
        raise _config_error(path, f"peft_type is {peft_type!r}; expected a string such as \"LORA\"")
    r = raw.get("r", 8)
    if not _is_number(r, int) or r <= 0:
        raise _config_error(path, f"r is {r!r}; the LoRA rank must be a positive integer")
    alpha = raw.get("lora_alpha", 8)
    if not _is_number(alpha, float):
        raise _config_error(path, f"lora_alpha is {alpha!r}; expected a number")
    layers = raw.get("layers_to_transform")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if layers is not None and not (isinstance(layers, list) and all(type(i) is int for i in layers)):
        raise _config_error(path, f"layers_to_transform is {layers!r}; expected a list of layer indices")
    target_parameters = raw.get("target_parameters") or []
    if not isinstance(target_parameters, list):
        raise _config_error(path, f"target_parameters is {target_parameters!r}; expected a list")
    target_modules = _names(path, raw, "target_modules", allow_regex=True)
    if peft_type.upper() == "LORA":  # combinations PEFT's LoraConfig itself rejects when it loads the file
        for name in ("layers_to_transform", "layers_pattern"):
            if isinstance(target_modules, str) and raw.get(name) is not None:
                raise _config_error(path, f"{name} is set while target_modules is a regex string, which PEFT's LoraConfig rejects")
        if raw.get("layers_pattern") and raw.get("layers_to_transform") is None:
            raise _config_error(path, "layers_pattern is set without layers_to_transform, which PEFT's LoraConfig rejects")
    base = raw.get("base_model_name_or_path")
    task_type = raw.get("task_type")
    if task_type is not None and not isinstance(task_type, str):
        raise _config_error(path, f"task_type is {task_type!r}; expected a string such as \"CAUSAL_LM\"")
    return AdapterConfig(
        peft_type=peft_type.upper(),
        r=r,
        lora_alpha=alpha,
        use_rslora=_bool(path, raw, "use_rslora"),
        use_dora=_bool(path, raw, "use_dora"),
        fan_in_fan_out=_bool(path, raw, "fan_in_fan_out"),
        lora_bias=_bool(path, raw, "lora_bias"),
        target_modules=target_modules,
        exclude_modules=_names(path, raw, "exclude_modules", allow_regex=True),
        modules_to_save=_names(path, raw, "modules_to_save", allow_regex=False) or (),
        rank_pattern=_number_map(path, raw, "rank_pattern", int),
        alpha_pattern=_number_map(path, raw, "alpha_pattern", float),
        trainable_token_indices=_token_indices(path, raw),
        target_parameters=tuple(str(t) for t in target_parameters),
        layers_to_transform=tuple(layers or ()),
        base_model_name_or_path=base if isinstance(base, str) else None,
        task_type=task_type.upper() if task_type else None,
        init_lora_weights=_init_lora_weights(path, raw),
        alora_invocation_tokens=_optional_ints(path, raw, "alora_invocation_tokens"),
        layer_replication=_layer_replication(path, raw),
        ensure_weight_tying=_bool(path, raw, "ensure_weight_tying"),
        source=path,
    )


@dataclass(frozen=True)
class AdapterTensor:
    """One saved adapter tensor and what it does: ``role`` on ``module`` (the module path in the base)."""

    info: TensorInfo
    module: str
    role: Role | None  # None: a key no supported layout explains
    target: str | None = None  # full tensors: the base tensor name it replaces (module + param)
    copy: Copy | None = None

    @property
    def key(self) -> str:
        return self.info.name

    @property
    def prefixed(self) -> bool:
        """PEFT's loader only maps keys under ``base_model.model.``; it drops the rest unused."""
        return self.info.name.startswith(PREFIX)


def classify_key(info: TensorInfo) -> AdapterTensor:
    """Split a saved key into (module path, role); the ``base_model.model.`` prefix is optional here
    (diff aligns such keys) and reported by check (LI406)."""
    name = info.name.removeprefix(PREFIX)
    if _FOREIGN.search("." + name):
        return AdapterTensor(info, name, None)
    for suffix, role in _SUFFIX_ROLES:
        if name.endswith(suffix):
            return AdapterTensor(info, name[: -len(suffix)], role)
    if ".lora_" in name:
        return AdapterTensor(info, name, None)
    for segment, copy in _COPY_SEGMENTS:
        if segment in name:
            module, _, param = name.partition(segment)
            return AdapterTensor(info, module, "full", f"{module}.{param}", copy)
    module, _, _param = name.rpartition(".")
    return AdapterTensor(info, module, "full", name, "plain")


@dataclass
class LoraModule:
    """The LoRA tensors saved for one base module."""

    module: str
    A: AdapterTensor | None = None
    B: AdapterTensor | None = None
    B_bias: AdapterTensor | None = None
    magnitude: AdapterTensor | None = None
    embedding: bool = False  # lora_embedding_A/B rather than lora_A/B



@dataclass(frozen=True)
class FullTensor:
    """A full tensor the adapter puts in place of a base tensor, and every copy it stored of it."""

    target: str
    chosen: AdapterTensor
    copies: tuple[AdapterTensor, ...]


@dataclass(frozen=True)
class Adapter:
    checkpoint: Checkpoint
    config: AdapterConfig
    tensors: tuple[AdapterTensor, ...]
    lora: dict[str, LoraModule]
    full: dict[str, FullTensor]
    trainable_tokens: dict[str, AdapterTensor]  # module -> delta
    unknown: tuple[AdapterTensor, ...]


# LoRA files of other tools, by their keys: kohya-ss and diffusers (Stable Diffusion, Flux) and mlx-lm.
_KOHYA_KEY = re.compile(r"^lora_(unet|te\d?)_|\.lora_(down|up)\.weight$|\.lora\.(down|up)\.weight$")
_DIFFUSERS_KEY = re.compile(r"^(unet|text_encoder(_\d)?|transformer)\..*\.lora_[AB]\.weight$")
_MLX_KEY = re.compile(r"\.lora_[ab]$")


def foreign_lora(ckpt: Checkpoint) -> tuple[str, str] | None:
    """(what it is, what to do) when ``ckpt`` is another tool's LoRA file rather than a PEFT adapter."""
    names = [t.name for t in ckpt.tensors]
    if "lora_parameters" in ckpt.config or (names and all(_MLX_KEY.search(n) for n in names)):
        return ("an mlx-lm adapter (lora_a / lora_b keys, stored transposed to PEFT's lora_A / lora_B)",
                "Fuse it with mlx-lm (`mlx_lm.fuse`); lora-inspector checks and merges PEFT adapters.")
    if not ckpt.config and names and (any(_KOHYA_KEY.search(n) for n in names) or all(_DIFFUSERS_KEY.search(n) for n in names)):
        return ("a kohya-ss / diffusers LoRA for a diffusion model (lora_unet_*, lora_down / lora_up or unet.* keys), not a PEFT adapter of a language model",
                "Load it with diffusers (pipe.load_lora_weights); lora-inspector checks and merges PEFT adapters of transformers models.")
    return None


def read_adapter(ckpt: Checkpoint) -> Adapter:
    """Interpret an adapter checkpoint's config and keys (headers only)."""
    path = str(ckpt.root / "adapter_config.json")
    foreign = foreign_lora(ckpt)
    if foreign is not None:
        raise InvalidInputError("Not a PEFT adapter", ckpt.path, f"it is {foreign[0]}", foreign[1])
    if not ckpt.config:
        raise InvalidInputError(
            "Cannot read adapter",
            ckpt.path,
            "no adapter_config.json beside the adapter weights",
            "Point at the directory PEFT's save_pretrained() wrote (adapter_config.json + adapter_model.safetensors).",
        )
    config = parse_config(ckpt.config, path)
    tensors = tuple(classify_key(t) for t in ckpt.tensors)
    lora: dict[str, LoraModule] = {}
    copies: dict[str, list[AdapterTensor]] = {}
    tokens: dict[str, AdapterTensor] = {}
    unknown = []
    for t in tensors:
        if t.role is None:
            unknown.append(t)
        elif t.role == "full":
            copies.setdefault(t.target, []).append(t)
        elif t.role == "trainable_tokens":
            tokens[t.module] = t
        else:
            m = lora.setdefault(t.module, LoraModule(t.module))
            if t.role in ("lora_A", "lora_embedding_A"):
                m.A, m.embedding = t, t.role == "lora_embedding_A"
            elif t.role in ("lora_B", "lora_embedding_B"):
                m.B = t
            elif t.role == "lora_B_bias":
                m.B_bias = t
            else:
                m.magnitude = t
    full = {}
    for target, found in copies.items():
        usable = [c for c in found if c.copy != "original_module"]
        if usable:
            chosen = min(usable, key=lambda c: COPY_PREFERENCE.index(c.copy))
            full[target] = FullTensor(target, chosen, tuple(found))
        else:
            # Only the frozen original was stored: it replaces nothing, but it still occupies bytes.
            full[target] = FullTensor(target, found[0], tuple(found))
    return Adapter(ckpt, config, tensors, lora, full, tokens, tuple(unknown))


def matches_target(config: AdapterConfig, module: str) -> bool:
    """Would PEFT put a LoRA layer on ``module``? (check_target_module_exists, without layer filters)."""
    if config.saves(module):
        return False
    excl = config.exclude_modules
    if isinstance(excl, str) and config.regex_matches("exclude_modules", excl, module):
        return False
    if isinstance(excl, tuple) and (module in excl or any(module.endswith("." + e) for e in excl)):
        return False
    # target_parameters ("mlp.down_proj.weight") also wraps the owning module; its LoRA tensors are
    # saved as <module>.lora_A/B.weight like target_modules' and PEFT loads them.
    for param in config.target_parameters:
        owner = param.rpartition(".")[0]
        if owner and (module == owner or module.endswith("." + owner)):
            return True
    targets = config.target_modules
    if targets is None:
        return False
    if isinstance(targets, str):
        return targets == "all-linear" or config.regex_matches("target_modules", targets, module)
    return module in targets or any(module.endswith("." + t) for t in targets)


def is_transposed(weight: tuple[int, ...], a: tuple[int, ...], b: tuple[int, ...], default: bool, rows_may_differ: bool = False) -> bool | None:
    """Does ``weight`` store [in, out] for this LoRA pair (transformers' Conv1D), or [out, in]?

    PEFT decides per layer (Conv1D -> fan_in_fan_out, nn.Linear -> not, whatever the config says);
    headers show it by which orientation fits. Square weights fit both: then ``default`` (the
    config / model type) decides. ``rows_may_differ``: a vocabulary head whose rows grow.
    None when neither fits.
    """
    if len(weight) != 2 or len(a) != 2 or len(b) != 2:
        return None
    linear = weight[1] == a[1] and (weight[0] == b[0] or rows_may_differ)
    conv1d = weight[0] == a[1] and weight[1] == b[0]
    if linear and conv1d:
        return default
    return True if conv1d else (False if linear else None)
