"""LI7xx: a tied weight the adapter changes on one side only (modules_to_save copies, LoRA)."""

from __future__ import annotations

from collections.abc import Iterator

from inspector.adapter import FullTensor
from inspector.binding import Binding, module_of
from inspector.checks.registry import check
from inspector.findings import Code, Hit


def _replacing(b: Binding) -> list[FullTensor]:
    return [f for f in b.adapter.full.values() if f.chosen.copy in ("plain", "modules_to_save")]


def _embedding(b: Binding) -> str | None:
    return b.vocab.embeddings[0] if b.vocab.embeddings else None


def _never_called(b: Binding) -> Iterator[Hit]:
    """T5 / BART `shared`: LoRA or a modules_to_save copy on a module the model never calls."""
    replacing, embed = _replacing(b), _embedding(b)
    head_replaced = any(b.is_tied_head(f.target) and b.config.saves(f.chosen.module) for f in replacing)
    for module, (name, users) in b.never_called.items():
        who = " and ".join(module_of(u) for u in users) + (" (and lm_head)" if b.vocab.tied and name == embed and not head_replaced else "")
        base_shape = b.base.by_name[name].shape
        lm = b.adapter.lora.get(module)
        if lm is not None and (lm.A or lm.B):
            key = lm.A or lm.B
            yield Hit(f"LoRA on {module} changes {name}, but the model never calls {module}: it looks tokens up through {who}, which share that weight, "
                      "so the delta had no effect in training; PEFT's merge_and_unload would apply it to all of them.",
                      f"Leave it out of the merge (delete {module}'s LoRA tensors from the adapter): the trained model never used it; target embed_tokens to train the embeddings.",
                      tensor=name, adapter_key=key.key, adapter_shape=key.info.shape, base_shape=base_shape)  # fmt: skip
        for full in (f for f in replacing if f.chosen.module == module):
            yield Hit(f"modules_to_save replaces {module} ({full.chosen.key}), but the model never calls {module}: it looks tokens up "
                      f"through {who}, which share its weight, so the trained copy had no effect in training. PEFT's merge_and_unload keeps it aside; "
                      f"a checkpoint that stores it as {name} changes all of them.",
                      "Leave it out of the merge (the trained model never used it); list embed_tokens in modules_to_save to train the embeddings.",
                      tensor=name, adapter_key=full.chosen.key, adapter_shape=full.chosen.info.shape, base_shape=base_shape)  # fmt: skip


def _one_side_replaced(b: Binding) -> Iterator[Hit]:
    embed = _embedding(b)
    if not (b.vocab.tied and embed):
        return
    replacing = _replacing(b)
    heads, embeds = [], []
    for full in replacing:
        # base_layer copies are the frozen weights PEFT saves beside a LoRA layer (LoRA is judged below).
        if b.resolve(full.target) == embed and not b.is_tied_alias(full.target) and full.chosen.module not in b.never_called:
            (heads if b.is_tied_head(full.target) else embeds).append(full)
    if any(f.chosen.module in b.never_called for f in replacing):  # beside an uncalled `shared` copy, a plain head copy is PEFT's save of the resized weight
        heads = [h for h in heads if b.config.saves(h.chosen.module)]
    if bool(heads) == bool(embeds):
        return
    head = module_of(heads[0].target) if heads else b.head_module  # proj_out, vocab_projector, ... by their own name
    which, other = ("the embedding", head) if embeds else (head, "the embedding")
    full = (embeds or heads)[0]
    yield Hit(f"the base ties {head} to {embed} and the adapter replaces only {which} ({full.chosen.key}): after the merge they differ.",
              f"`{b.merge_cmd}` unties them as PEFT does: it writes both and sets tie_word_embeddings: false; {other} keeps the base's values.",
              tensor=embed, adapter_key=full.chosen.key, adapter_shape=full.chosen.info.shape, base_shape=b.base.by_name[embed].shape)  # fmt: skip


def _aliases_replaced(b: Binding) -> Iterator[Hit]:
    """T5 / BART: modules_to_save=["embed_tokens"] wraps encoder.embed_tokens and decoder.embed_tokens,
    which the base stores only as the shared embedding: PEFT trains a separate copy of each."""
    aliased: dict[str, list[FullTensor]] = {}
    for full in _replacing(b):
        if b.is_tied_alias(full.target) and b.config.saves(full.chosen.module):
            aliased.setdefault(b.resolve(full.target), []).append(full)
    for shared, fulls in aliased.items():
        names = " and ".join(f.target for f in fulls)
        copies = "them with their own copies" if len(fulls) > 1 else "it with its own copy"
        yield Hit(f"the base ties {names} to {shared} (the checkpoint stores only {shared}); the adapter replaces {copies} (modules_to_save): after the merge they differ from {shared}.",
                  f"`{b.merge_cmd}` unties them as PEFT does: it writes {names} beside {shared}, which keeps its own values.",
                  tensor=shared, adapter_key=fulls[0].chosen.key, adapter_shape=fulls[0].chosen.info.shape, base_shape=b.base.by_name[shared].shape)  # fmt: skip


def _lora_on_tied(b: Binding) -> Iterator[Hit]:
    """LoRA on the tied weight: training applied the delta where the wrapped module sits (the embedding
    or the head); merging it into the shared weight applies it to both. ensure_weight_tying: PEFT
    trained the same delta on both sides, so the tied weight takes it once and stays tied."""
    embed = _embedding(b)
    if not embed or b.config.ensure_weight_tying:
        return
    for module, side in b.tied_lora.items():
        if module in b.never_called:
            continue
        lm, _ = b.lora_targets[module]
        key = lm.A or lm.B
        head = module if side == "head" else b.head_module
        this = head if side == "head" else "the embedding"
        yield Hit(f"LoRA on {module} changes {embed}, which the base ties to {head}: training applied the delta to {this} only, "
                  "but PEFT's merge_and_unload would apply it to the shared weight, i.e. to both sides.",
                  f"`{b.merge_cmd}` unties them: it writes the embedding and the head separately (each with only its own delta) "
                  "and sets tie_word_embeddings: false.",
                  tensor=embed, adapter_key=key.key, adapter_shape=key.info.shape, base_shape=b.base.by_name[embed].shape)  # fmt: skip


@check(Code.TIED_ONE_SIDE)
def tied_one_side(b: Binding) -> Iterator[Hit]:
    yield from _never_called(b)
    yield from _one_side_replaced(b)
    yield from _aliases_replaced(b)
    yield from _lora_on_tied(b)
