"""LI14xx: PEFT methods and LoRA variants no merged weight reproduces, or lora-inspector does not merge."""

from __future__ import annotations

from collections.abc import Iterator

from inspector.adapter_config import BASE_MUTATING_INITS
from inspector.binding import Binding
from inspector.checks import hints
from inspector.checks.lora import adapted
from inspector.checks.registry import check
from inspector.findings import Code, Hit


def unmergeable(b: Binding) -> str | None:
    """Why lora-inspector cannot merge this adapter at all (the LI14xx errors), or None."""
    c = b.config
    if c.peft_type != "LORA":
        return f"peft_type is {c.peft_type}"
    if c.target_parameters:
        return "it uses target_parameters"
    if c.alora_invocation_tokens is not None:
        return "it is an aLoRA adapter"
    if c.layer_replication is not None:
        return "it uses layer_replication"
    if c.mutating_init is not None:
        return f"init_lora_weights is {c.init_lora_weights!r}"
    if any(len(lm.A.info.shape) != 2 or len(lm.B.info.shape) != 2 for lm, _ in adapted(b) if lm.A is not None and lm.B is not None):
        return "it has Conv LoRA layers"
    return None


@check(Code.UNSUPPORTED_METHOD, always=True)
def unsupported_method(b: Binding) -> Iterator[Hit]:
    if b.config.peft_type != "LORA":
        yield Hit(f"peft_type is {b.config.peft_type}; lora-inspector checks and merges LoRA adapters only.",
                  "Merge it with PEFT's merge_and_unload (if the method supports merging).")


@check(Code.UNSUPPORTED_LAYER, always=True)
def unsupported_layer(b: Binding) -> Iterator[Hit]:
    config = b.config
    if config.peft_type == "LORA":
        for lm, weight in adapted(b):
            a = lm.A
            if a is not None and lm.B is not None and (len(a.info.shape) != 2 or len(lm.B.info.shape) != 2):
                yield Hit(f"{lm.module}: LoRA tensors of rank {len(a.info.shape)} (a Conv LoRA); lora-inspector merges Linear, Conv1D and Embedding LoRA only.",
                          hints.PEFT_MERGE, tensor=weight.name, adapter_key=a.key, adapter_shape=a.info.shape, base_shape=weight.shape)  # fmt: skip
    if config.alora_invocation_tokens is not None:
        yield Hit(f"alora_invocation_tokens {list(config.alora_invocation_tokens)} makes this an aLoRA adapter: it acts only on the tokens after its "
                  "invocation sequence, so no merged weight reproduces it (PEFT: 'aLoRA does not support merging').", hints.UNMERGED)
    if config.layer_replication is not None:
        yield Hit(f"layer_replication {[list(p) for p in config.layer_replication]} builds the model from copies of the base's layers and puts "
                  "LoRA on the copies: the adapter's layer indices are the replicated model's, and PEFT's merge_and_unload does not reproduce it.", hints.UNMERGED)


@check(Code.TARGET_PARAMETERS, always=True)
def target_parameters(b: Binding) -> Iterator[Hit]:
    if b.config.target_parameters:
        yield Hit(f"target_parameters {list(b.config.target_parameters)} puts LoRA on raw parameters (e.g. MoE experts), which lora-inspector does not merge.",
                  hints.PEFT_MERGE)


@check(Code.BASE_MUTATING_INIT, always=True)
def base_mutating_init(b: Binding) -> Iterator[Hit]:
    config = b.config
    init = config.mutating_init
    if init is None:
        return
    fix = ("Merge into the base LoftQ produced (the quantized weights it trained against), not the original."
           if init == "loftq" else
           "Convert it to plain LoRA first: PEFT's save_pretrained(..., path_initial_model_for_weight_conversion=<the adapter saved "
           "right after initialization>) writes an adapter for the original base; check and merge that one.")  # fmt: skip
    yield Hit(f"init_lora_weights is {config.init_lora_weights!r}: PEFT changed the base weights when it created this adapter ({BASE_MUTATING_INITS[init]}), "
              "and lora_A / lora_B were trained against that changed base; W += s * B @ A on the original base is not what training saw.", fix)
