"""``adapter_config.json`` as validated data: ``AdapterConfig`` and its parser.

Every field PEFT's LoraConfig reads is type-checked (``"r": "eight"`` and ``"use_rslora": "false"``
are errors, not coerced), numbers are bounded, regexes go through ``inspector.patterns`` (bounded
work), and nothing a field names is ever imported (docs/threat-model.md #18-#20).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from inspector.errors import InvalidInputError
from inspector.patterns import Matcher, PatternRefused, parse, refusal

MAX_PATTERN = 1000  # longest regex accepted from a config (target_modules, rank_pattern keys)

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
