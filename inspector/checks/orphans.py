"""LI4xx: adapter tensors and target_modules entries that touch nothing in the base, or that PEFT drops."""

from __future__ import annotations

import re
from collections.abc import Iterator

from inspector.adapter import matches_target
from inspector.adapter_config import HEAD_TASKS
from inspector.binding import HEAD, Binding, layer_of, module_of
from inspector.checks import hints
from inspector.checks.registry import check
from inspector.findings import Code, Hit
from inspector.units import shape_str

_LAYER_NUMBER = re.compile(r"\.\d+(?=\.)")  # ".12" before a dot: a layer index, grouped as ".*"


@check(Code.ORPHAN)
def orphan(b: Binding) -> Iterator[Hit]:
    beyond = set(b.beyond_layers)  # LI1002's
    plain: dict[str, list] = {}
    for target, info in b.orphans:
        if (target, info) in beyond:
            continue
        memory = b.index.renamed(target)
        if memory is not None:
            yield Hit(f"{info.name} targets {target}, the checkpoint name of a module transformers 5 loads as {module_of(memory)}: "
                      f"PEFT finds no module {module_of(target)} and silently drops the tensor.",
                      f"Rename the adapter keys (and target_modules) from {module_of(target)} to {module_of(memory)}.",
                      tensor=target, adapter_key=info.name, adapter_shape=info.shape)  # fmt: skip
            continue
        plain.setdefault(_LAYER_NUMBER.sub(".*", f".{info.name}.").strip("."), []).append((target, info))
    # One finding per key pattern across layers (a tower the base lacks is one cause, not 144 rows).
    for pattern, group in plain.items():
        target, info = group[0]
        if len(group) == 1:
            what = f"{info.name} targets {target}, which the base does not have"
        else:
            what = f"{info.name} and {len(group) - 1} more like it ({pattern}) target modules the base does not have, such as {target}"
        yield Hit(f"{what}: the adapter silently does nothing there.",
                  "Use the base model the adapter was trained on, or rename the keys to the base's module names.",
                  tensor=target, adapter_key=info.name, adapter_shape=info.shape)  # fmt: skip


@check(Code.TARGET_UNMATCHED)
def target_unmatched(b: Binding) -> Iterator[Hit]:
    targets = b.config.target_modules
    modules = b.index.memory_modules  # the names PEFT matches target_modules against
    if isinstance(targets, tuple):
        for t in targets:
            if any(m == t or m.endswith("." + t) for m in modules) or (b.vocab.tied and HEAD.search(f"{t}.weight")):
                continue
            memory = b.index.renamed(t)
            renamed = f" (transformers 5 calls that module {memory})" if memory else ""
            hint = f"Use {memory!r} instead; the entry has no effect." if memory else f"Check the spelling against {hints.SCAN_BASE}; the entry has no effect."
            yield Hit(f"target_modules entry {t!r} matches no module of the base{renamed}.", hint)
    elif isinstance(targets, str) and targets != "all-linear":
        if not any(b.config.regex_matches("target_modules", targets, m) for m in modules):
            yield Hit(f"target_modules regex {targets!r} matches no module of the base.", f"Check the pattern against {hints.SCAN_BASE}.")


@check(Code.NOT_TARGETED)
def not_targeted(b: Binding) -> Iterator[Hit]:
    config = b.config
    for module, (lm, weight) in b.lora_targets.items():
        if weight is None:
            continue
        # ensure_weight_tying: PEFT adds the tied partner (lm_head for embed_tokens) itself.
        if config.ensure_weight_tying and module in b.tied_lora:
            continue
        outside_layers = bool(config.layers_to_transform) and layer_of(module) not in config.layers_to_transform
        if matches_target(config, module) and not outside_layers:
            continue
        key = next(t for t in (lm.A, lm.B, lm.B_bias, lm.magnitude) if t is not None).key
        yield Hit(f"{module} has LoRA tensors but target_modules {config.target_modules!r} does not select it: PEFT never loads them.",
                  "Add the module to target_modules in adapter_config.json (or remove the tensors).", tensor=weight.name, adapter_key=key)  # fmt: skip


@check(Code.UNKNOWN_KEY)
def unknown_key(b: Binding) -> Iterator[Hit]:
    for t in b.adapter.unknown:
        yield Hit(f"{t.key} is not a LoRA tensor lora-inspector knows (another PEFT method's key?).",
                  "Check peft_type in adapter_config.json; merge such adapters with PEFT itself.", adapter_key=t.key, adapter_shape=t.info.shape)  # fmt: skip


@check(Code.NEW_HEAD)
def new_head(b: Binding) -> Iterator[Hit]:
    task = b.config.task_type
    why = f"task_type {task}" if task in HEAD_TASKS else "modules_to_save"
    for full in b.new_heads:
        cls = b.head_class(full)
        yield Hit(f"{full.target} is a new head ({why}) the base does not have: load the merged model with the matching {cls} class.",
                  f"Expected for an adapter trained on a task model built from this base: load the merged model with {cls}.from_pretrained.",
                  tensor=full.target, adapter_key=full.chosen.key, adapter_shape=full.chosen.info.shape)  # fmt: skip
    for full in b.reheaded:
        name, cls = b.resolve(full.target), b.head_class(full)
        base_shape, shape = b.base.by_name[name].shape, full.chosen.info.shape
        yield Hit(f"{name}: the adapter's {why} head is {shape_str(shape)}, the base's {shape_str(base_shape)}: a new head for {shape[0]} labels "
                  f"(trained with num_labels={shape[0]}, ignore_mismatched_sizes=True); the merge writes the adapter's and sets num_labels to {shape[0]}.",
                  f"Expected when the task has another label count than the base's head: load the merged model with {cls}.from_pretrained.",
                  tensor=name, adapter_key=full.chosen.key, adapter_shape=shape, base_shape=base_shape)  # fmt: skip


@check(Code.UNPREFIXED_KEY)
def unprefixed_key(b: Binding) -> Iterator[Hit]:
    unprefixed = [t for t in b.adapter.tensors if not t.prefixed]
    if unprefixed:
        first = unprefixed[0]
        more = f" and {len(unprefixed) - 1} more" if len(unprefixed) > 1 else ""
        yield Hit(f"{first.key}{more} lack the base_model.model. prefix: PeftModel.from_pretrained drops such keys unused, "
                  "so the adapter silently does nothing there.",
                  "Rename the keys to base_model.model.<key>, as PeftModel.save_pretrained writes them; then check and merge use them as PEFT does.",
                  adapter_key=first.key, adapter_shape=first.info.shape)  # fmt: skip
