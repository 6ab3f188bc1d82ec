"""What the serving rules look at, read once from a binding, and the conditions their tables use.

Each condition factory returns a function of ``AdapterFacts`` that gives None when its rule does
not apply, or the values the rule's message and fix quote. Headers and config only, like check.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from inspector.binding import Binding, layer_of


@dataclass(frozen=True)
class AdapterFacts:
    peft_type: str
    model_type: str  # the base's config model_type ("" when unknown)
    architectures: tuple[str, ...]  # the base's config architectures
    r: int
    max_rank: int  # the largest rank stored in the tensors (rank_pattern included), r when none
    use_rslora: bool  # rsLoRA, where it changes some module's scale (not with r = 1 or alpha = 0)
    use_dora: bool
    lora_bias: bool  # lora_bias with lora_B.bias tensors saved
    patterns: tuple[str, ...]  # "rank_pattern" / "alpha_pattern" where they change some module's rank or alpha
    modules_to_save: tuple[str, ...]  # the config's list
    full_weights: tuple[str, ...]  # base tensors the adapter replaces with trained copies
    frozen_copies: tuple[str, ...]  # base_layer / original_module copies (redundant to a server)
    trainable_tokens: bool
    lora_modules: tuple[str, ...]  # module paths with a LoRA pair
    lora_kinds: tuple[str, ...]  # their last names, sorted: ("q_proj", "v_proj")
    embedding_lora: tuple[str, ...]  # LoRA modules on a vocabulary matrix (embedding or output layer)
    vocab_rows: int | None  # the vocabulary a merge would need when it differs from the base's, else None
    base_vocab_rows: int | None
    tied_head_lora: tuple[str, ...] = ()  # LoRA on an output layer the base ties to its embedding (not stored)
    partial_kinds: tuple[str, ...] = ()  # LoRA kinds in some of the base's layers but not all (layers_to_transform)

    @classmethod
    def of(cls, b: Binding) -> AdapterFacts:
        c = b.config
        ranks = [lm.A.info.shape[0] for lm in b.adapter.lora.values() if lm.A is not None and lm.A.info.shape]
        lora = [m for m, lm in b.adapter.lora.items() if lm.A is not None and lm.B is not None]
        trained = [f for f in b.adapter.full.values() if f.chosen.copy in ("plain", "modules_to_save") and c.saves(f.chosen.module)]
        frozen = [cp.key for f in b.adapter.full.values() for cp in f.copies if cp.copy in ("base_layer", "original_module")]
        vocab = {t.name for t in b.base.tensors if b.vocab.is_vocab(t.name)}
        return cls(
            peft_type=c.peft_type,
            model_type=str(b.base.config.get("model_type") or ""),
            architectures=tuple(a for a in b.base.config.get("architectures") or () if isinstance(a, str)),
            r=c.r,
            max_rank=max(ranks, default=c.r),
            # Only what changes some module's scale counts: rsLoRA with r = 1 or alpha = 0 scales as
            # alpha / r does, and a pattern matching no module (or restating r / alpha) changes nothing.
            use_rslora=c.use_rslora and any(c.rank_for(m) != 1 and c.alpha_for(m) != 0 for m in lora),
            use_dora=c.use_dora,
            lora_bias=c.lora_bias and any(lm.B_bias is not None for lm in b.adapter.lora.values()),
            patterns=tuple(n for n, differs in (("rank_pattern", lambda m: c.rank_for(m) != c.r), ("alpha_pattern", lambda m: c.alpha_for(m) != c.lora_alpha))
                           if any(differs(m) for m in lora)),
            modules_to_save=tuple(c.modules_to_save),
            full_weights=tuple(sorted(f.target for f in trained)),
            frozen_copies=tuple(sorted(frozen)),
            trainable_tokens=bool(b.adapter.trainable_tokens) or any(c.trainable_token_indices.values()),
            lora_modules=tuple(sorted(lora)),
            lora_kinds=tuple(sorted({m.rpartition(".")[2] for m in lora})),
            embedding_lora=tuple(sorted(m for m in lora if (w := b.lora_targets[m][1]) is not None and w.name in vocab)),
            vocab_rows=b.target.rows if b.target.grows else None,
            base_vocab_rows=b.target.base_rows,
            tied_head_lora=tuple(sorted(m for m, side in b.tied_lora.items() if side == "head")),
            partial_kinds=_partial_kinds(lora, b.base_layers),
        )


def _partial_kinds(modules: list[str], layers: int | None) -> tuple[str, ...]:
    """Kinds (last names) whose LoRA sits in some decoder layers but not in all ``layers`` of the base."""
    if not layers:
        return ()
    seen: dict[str, set[int]] = {}
    for m in modules:
        if (i := layer_of(m)) is not None:
            seen.setdefault(m.rpartition(".")[2], set()).add(i)
    return tuple(sorted(k for k, found in seen.items() if not set(range(layers)) <= found))


def _listed(items) -> str:
    items = list(items)
    return ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")


# -- conditions ----------------------------------------------------------------------------------


def method_is_not(*types: str):
    return lambda f: {"peft_type": f.peft_type} if f.peft_type.upper() not in types else None


def model_type_not_in(supported: frozenset[str]):
    return lambda f: {"model_type": f.model_type or "unknown"} if f.model_type not in supported else None


def architecture_in(names: frozenset[str]):
    """The base's architecture (config.json ``architectures``) is one of ``names``: ``{architecture}``."""

    def when(f: AdapterFacts):
        found = next((a for a in f.architectures if a in names), None)
        return {"architecture": found} if found else None

    return when


def architecture_not_in(names: frozenset[str]):
    """The base names architectures and none is in ``names`` (silent when config.json names none)."""

    def when(f: AdapterFacts):
        if f.architectures and not any(a in names for a in f.architectures):
            return {"architecture": f.architectures[0]}
        return None

    return when


def rank_above(limit: int, *, below: int | None = None):
    """The stored rank exceeds ``limit`` (and, with ``below``, is at most ``below``): ``{rank}``, ``{limit}``."""

    def when(f: AdapterFacts):
        if f.max_rank > limit and (below is None or f.max_rank <= below):
            return {"rank": f.max_rank, "limit": limit}
        return None

    return when


def rank_needs_flag(default: int, allowed: tuple[int, ...]):
    """The rank is above the server's ``default`` limit but within its largest allowed value:
    ``{rank}``, ``{limit}`` (the default) and ``{value}``, the smallest allowed value that fits."""

    def when(f: AdapterFacts):
        fits = [v for v in sorted(allowed) if v >= f.max_rank]
        if f.max_rank > default and fits:
            return {"rank": f.max_rank, "limit": default, "value": fits[0]}
        return None

    return when


def _kinds(f: AdapterFacts, vocab: bool) -> list[str]:
    """LoRA kinds on vocabulary matrices (``vocab``) or on every other module."""
    on_vocab = {m.rpartition(".")[2] for m in f.embedding_lora}
    others = {m.rpartition(".")[2] for m in f.lora_modules if m not in f.embedding_lora}
    return sorted(on_vocab if vocab else others)


def lora_on_modules_outside(allowed_by_model_type: Mapping[str, frozenset[str]], *, vocab: bool):
    """LoRA on modules whose last name is not in the base's model_type's list (a server whose adaptable
    layers differ per model; ``vocab``: look at LoRA on vocabulary matrices only, or only at the others):
    ``{modules}`` and ``{allowed}``. Silent for a model_type not in the mapping."""

    def when(f: AdapterFacts):
        allowed = allowed_by_model_type.get(f.model_type)
        if allowed is None:
            return None
        outside = [k for k in _kinds(f, vocab) if k not in allowed]
        return {"modules": _listed(outside), "allowed": ", ".join(sorted(allowed))} if outside else None

    return when


def lora_on_paths_other_than(pattern: str):
    """LoRA on (non-vocabulary) modules whose full path does not match ``pattern``: ``{modules}``, the
    paths with layer numbers written ``*`` (a server that looks LoRA up by exact path, not last name)."""
    full = re.compile(pattern)

    def when(f: AdapterFacts):
        outside = sorted({re.sub(r"\.\d+\.", ".*.", m) for m in f.lora_modules if m not in f.embedding_lora and not full.fullmatch(m)})
        return {"modules": _listed(outside)} if outside else None

    return when


def lora_without_partner(group: frozenset[str], needed: frozenset[str]):
    """LoRA on a kind of ``group`` without every kind of ``needed`` (a server that stacks q/k/v LoRA
    into one fused matrix and reads some of them unconditionally): ``{modules}``, ``{missing}``."""

    def when(f: AdapterFacts):
        present = [k for k in f.lora_kinds if k in group]
        missing = sorted(needed - set(f.lora_kinds))
        return {"modules": _listed(present), "missing": " and ".join(missing)} if present and missing else None

    return when


def has_partial_layers(f: AdapterFacts):
    return {"modules": _listed(f.partial_kinds)} if f.partial_kinds else None


def has_tied_head_lora(f: AdapterFacts):
    return {"modules": _listed(f.tied_head_lora)} if f.tied_head_lora else None


def has_full_weights(f: AdapterFacts):
    return {"modules": _listed(f.full_weights or f.modules_to_save)} if f.full_weights or f.modules_to_save else None


def full_weights_matching(pattern: str, *, invert: bool = False):
    """``has_full_weights`` for the full weights (or modules_to_save names) that ``pattern`` finds
    (with ``invert``, those it does not): a server that treats some modules apart (norms, heads)."""
    found = re.compile(pattern)

    def when(f: AdapterFacts):
        names = [n for n in (f.full_weights or f.modules_to_save) if bool(found.search(n)) != invert]
        return {"modules": _listed(names)} if names else None

    return when


def has_frozen_copies(f: AdapterFacts):
    return {"keys": _listed(f.frozen_copies)} if f.frozen_copies else None


def has_base_layer_copies(*, except_suffixes: tuple[str, ...] = ()):
    """Frozen ``base_layer`` copies of LoRA-wrapped weights (PEFT's save_embedding_layers writes them
    for embeddings), but for keys ending in ``except_suffixes``: ``{keys}``. The ``original_module``
    copies that come with modules_to_save are left to the modules_to_save rules."""

    def when(f: AdapterFacts):
        keys = [k for k in f.frozen_copies if ".base_layer." in k and not k.endswith(except_suffixes)]
        return {"keys": _listed(keys)} if keys else None

    return when


def changes_vocabulary(f: AdapterFacts):
    return {"rows": f.vocab_rows, "base_rows": f.base_vocab_rows} if f.vocab_rows is not None else None


def uses_dora(f: AdapterFacts):
    return {} if f.use_dora else None


def uses_lora_bias(f: AdapterFacts):
    return {} if f.lora_bias else None


def uses_trainable_tokens(f: AdapterFacts):
    return {} if f.trainable_tokens else None


def uses_rslora(f: AdapterFacts):
    return {"r": f.r} if f.use_rslora else None


def uses_patterns(f: AdapterFacts):
    return {"fields": " and ".join(f.patterns)} if f.patterns else None


def uses_rank_pattern(f: AdapterFacts):
    return {} if "rank_pattern" in f.patterns else None


def uses_alpha_pattern(f: AdapterFacts):
    return {} if "alpha_pattern" in f.patterns else None


def has_embedding_lora(f: AdapterFacts):
    return {"modules": _listed(f.embedding_lora)} if f.embedding_lora else None
