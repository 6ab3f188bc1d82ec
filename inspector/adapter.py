"""PEFT adapters as data: what each saved tensor is (the config is ``inspector/adapter_config.py``'s).

Knows every key layout PEFT has written (old and new): ``lora_A/B`` (+ ``lora_B.bias``),
``lora_embedding_A/B``, ``lora_magnitude_vector`` (DoRA), full tensors saved plain or under
``modules_to_save`` / ``original_module`` / ``base_layer``, and ``trainable_tokens_delta``.
Pure data: reads no tensor, imports no torch, never imports what a config names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from inspector.adapter_config import AdapterConfig, parse_config
from inspector.errors import InvalidInputError
from inspector.io.checkpoint import Checkpoint
from inspector.io.tensor import TensorInfo

PREFIX = "base_model.model."

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
