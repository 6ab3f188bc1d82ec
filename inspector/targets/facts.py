"""What the serving rules look at, read once from a binding, and the conditions their tables use.

Each condition factory returns a function of ``AdapterFacts`` that gives None when its rule does
not apply, or the values the rule's message and fix quote. Headers and config only, like check.
"""

from __future__ import annotations

from dataclasses import dataclass

from inspector.binding import Binding


@dataclass(frozen=True)
class AdapterFacts:
    peft_type: str
    model_type: str  # the base's config model_type ("" when unknown)
    architectures: tuple[str, ...]  # the base's config architectures
    r: int
    max_rank: int  # the largest rank stored in the tensors (rank_pattern included), r when none
    use_rslora: bool
    use_dora: bool
    lora_bias: bool  # lora_bias with lora_B.bias tensors saved
    patterns: tuple[str, ...]  # "rank_pattern" / "alpha_pattern" when set
    modules_to_save: tuple[str, ...]  # the config's list
    full_weights: tuple[str, ...]  # base tensors the adapter replaces with trained copies
    frozen_copies: tuple[str, ...]  # base_layer / original_module copies (redundant to a server)
    trainable_tokens: bool
    lora_modules: tuple[str, ...]  # module paths with a LoRA pair
    lora_kinds: tuple[str, ...]  # their last names, sorted: ("q_proj", "v_proj")
    embedding_lora: tuple[str, ...]  # LoRA modules on a vocabulary matrix (embedding or output layer)
    vocab_rows: int | None  # the vocabulary a merge would need when it differs from the base's, else None
    base_vocab_rows: int | None

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
            use_rslora=c.use_rslora,
            use_dora=c.use_dora,
            lora_bias=c.lora_bias and any(lm.B_bias is not None for lm in b.adapter.lora.values()),
            patterns=tuple(n for n, v in (("rank_pattern", c.rank_pattern), ("alpha_pattern", c.alpha_pattern)) if v),
            modules_to_save=tuple(c.modules_to_save),
            full_weights=tuple(sorted(f.target for f in trained)),
            frozen_copies=tuple(sorted(frozen)),
            trainable_tokens=bool(b.adapter.trainable_tokens) or any(c.trainable_token_indices.values()),
            lora_modules=tuple(sorted(lora)),
            lora_kinds=tuple(sorted({m.rpartition(".")[2] for m in lora})),
            embedding_lora=tuple(sorted(m for m in lora if (w := b.lora_targets[m][1]) is not None and w.name in vocab)),
            vocab_rows=b.target.rows if b.target.grows else None,
            base_vocab_rows=b.target.base_rows,
        )


def _listed(items) -> str:
    items = list(items)
    return ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")


# -- conditions ----------------------------------------------------------------------------------


def method_is_not(*types: str):
    return lambda f: {"peft_type": f.peft_type} if f.peft_type.upper() not in types else None


def model_type_not_in(supported: frozenset[str]):
    return lambda f: {"model_type": f.model_type or "unknown"} if f.model_type not in supported else None


def rank_above(limit: int, *, below: int | None = None):
    """The stored rank exceeds ``limit`` (and, with ``below``, is at most ``below``): ``{rank}``, ``{limit}``."""

    def when(f: AdapterFacts):
        if f.max_rank > limit and (below is None or f.max_rank <= below):
            return {"rank": f.max_rank, "limit": limit}
        return None

    return when


def lora_on_modules_other_than(allowed: frozenset[str]):
    """LoRA on modules whose last name is not in ``allowed``: ``{modules}``."""

    def when(f: AdapterFacts):
        outside = [k for k in f.lora_kinds if k not in allowed]
        return {"modules": _listed(outside)} if outside else None

    return when


def has_full_weights(f: AdapterFacts):
    return {"modules": _listed(f.full_weights or f.modules_to_save)} if f.full_weights or f.modules_to_save else None


def has_frozen_copies(f: AdapterFacts):
    return {"keys": _listed(f.frozen_copies)} if f.frozen_copies else None


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


def has_embedding_lora(f: AdapterFacts):
    return {"modules": _listed(f.embedding_lora)} if f.embedding_lora else None
