"""Build huge-shaped safetensors checkpoints whose data regions are sparse holes.

Headers are real (written by hand: 8-byte little-endian header length, JSON header with
dtype/shape/data_offsets, space-padded to 8 bytes as safetensors does); the data region is made
with ``os.truncate`` so it occupies no disk blocks and reads back as zeros. A reader that only
parses headers handles a 138 GB Llama-2-70B-shaped checkpoint instantly; one that touches tensor
data reads 138 GB of zeros.

Importable without torch (stdlib only), so tests and benchmarks can use it anywhere:

    from sparse_checkpoint import make_llama70b, make_adapter70840
    base = make_llama70b(tmp / "base")        # -> Facts(tensor_count=723, ...)
    adapter = make_adapter70840(tmp / "adapter")

Run it as a script to build both into a directory: ``python bench/sparse_checkpoint.py OUT_DIR``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4}

# Llama-2-70B (meta-llama/Llama-2-70b-hf config.json).
LLAMA70B = {
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
}
# transformers' "5GB" default max_shard_size is 5 * 10**9 bytes; with it Llama-2-70B in bf16
# splits into exactly 29 shards (and into 15 with "10GB", the layout on the Hub).
MAX_SHARD_BYTES = 5_000_000_000
NUM_SHARDS = 29
ADAPTER_VOCAB = 70840
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Facts:
    """What a correct scanner must report for a generated checkpoint."""

    path: Path  # the checkpoint directory
    tensor_count: int
    parameter_count: int
    total_bytes: int  # sum of tensor data bytes (= index metadata.total_size for a sharded model)
    files: tuple[str, ...]  # checkpoint files relative to path (index first for a sharded model)
    file_bytes: int  # apparent size of all the data files together (headers included)


def write_sparse_safetensors(path: str | os.PathLike, tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file for ``tensors`` ([(name, dtype, shape)], data in this order) whose
    data region is a hole. Returns the number of tensor data bytes."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the safetensors writer aligns the data start to 8 bytes
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
    os.truncate(path, 8 + len(blob) + offset)  # the data region: a sparse hole, no blocks written
    return offset


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def llama_tensors(hidden: int, inter: int, layers: int, heads: int, kv_heads: int, vocab: int, dtype: str = "BF16") -> list[tuple[str, str, tuple[int, ...]]]:
    """The tensors of a LlamaForCausalLM state dict, in the order save_pretrained walks them."""
    kv = hidden // heads * kv_heads
    out = [("model.embed_tokens.weight", dtype, (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.self_attn.q_proj.weight", dtype, (hidden, hidden)),
            (f"{p}.self_attn.k_proj.weight", dtype, (kv, hidden)),
            (f"{p}.self_attn.v_proj.weight", dtype, (kv, hidden)),
            (f"{p}.self_attn.o_proj.weight", dtype, (hidden, hidden)),
            (f"{p}.mlp.gate_proj.weight", dtype, (inter, hidden)),
            (f"{p}.mlp.up_proj.weight", dtype, (inter, hidden)),
            (f"{p}.mlp.down_proj.weight", dtype, (hidden, inter)),
            (f"{p}.input_layernorm.weight", dtype, (hidden,)),
            (f"{p}.post_attention_layernorm.weight", dtype, (hidden,)),
        ]
    out += [("model.norm.weight", dtype, (hidden,)), ("lm_head.weight", dtype, (vocab, hidden))]
    return out


def _split_shards(tensors: list[tuple[str, str, tuple[int, ...]]], max_bytes: int) -> list[list[tuple[str, str, tuple[int, ...]]]]:
    """huggingface_hub's split_torch_state_dict_into_shards rule: walk in order, start a new shard
    when the next tensor would push the current one past ``max_bytes``."""
    shards: list[list] = [[]]
    size = 0
    for t in tensors:
        nbytes = math.prod(t[2]) * DTYPE_BYTES[t[1]]
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    return shards


def llama70b_expected() -> tuple[int, int, int]:
    """(tensor_count, parameter_count, total_bytes) of Llama-2-70B in bf16, from the closed form
    (independent of the tensor list the generator writes)."""
    c = LLAMA70B
    h, i, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * kv * h + 3 * h * i + 2 * h  # q,o + k,v + gate,up,down + 2 norms
    params = n * per_layer + 2 * v * h + h  # layers + embed + lm_head + final norm
    return n * 9 + 3, params, params * 2


def make_llama70b(out_dir: str | os.PathLike) -> Facts:
    """A Llama-2-70B-shaped sharded bf16 checkpoint in the HF layout (29 shards of <= 5 GB, index,
    config.json) whose data regions are sparse holes: about 1 MB on disk, 138 GB apparent."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = LLAMA70B
    _write_json(
        out / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": c["hidden_size"],
            "initializer_range": 0.02,
            "intermediate_size": c["intermediate_size"],
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "num_attention_heads": c["num_attention_heads"],
            "num_hidden_layers": c["num_hidden_layers"],
            "num_key_value_heads": c["num_key_value_heads"],
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.31.0",
            "use_cache": True,
            "vocab_size": c["vocab_size"],
        },
    )
    tensors = llama_tensors(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"])
    shards = _split_shards(tensors, MAX_SHARD_BYTES)
    assert len(shards) == NUM_SHARDS, len(shards)
    weight_map: dict[str, str] = {}
    names = []
    total = 0
    file_bytes = 0
    for k, shard in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        total += write_sparse_safetensors(out / name, shard, {"format": "pt"})
        file_bytes += (out / name).stat().st_size
        names.append(name)
        for t in shard:
            weight_map[t[0]] = name
    _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "4.31.0"})

    count, params, nbytes = llama70b_expected()
    assert (count, params, nbytes) == (len(tensors), sum(math.prod(t[2]) for t in tensors), total)
    return Facts(out, count, params, nbytes, ("model.safetensors.index.json", *names), file_bytes)


def adapter70840_expected(r: int = 16, dtype: str = "F32") -> tuple[int, int, int]:
    """(tensor_count, parameter_count, total_bytes) of make_adapter70840's adapter, closed form."""
    c = LLAMA70B
    h, i, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    # LoRA on W [out, in]: A [r, in] + B [out, r] = r * (in + out)
    per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
    params = n * per_layer + 2 * ADAPTER_VOCAB * h
    return n * len(LINEAR_MODULES) * 2 + 2, params, params * DTYPE_BYTES[dtype]


def make_adapter70840(out_dir: str | os.PathLike, *, r: int = 16, dtype: str = "F32") -> Facts:
    """A PEFT LoRA adapter for make_llama70b's base trained on a 70,840-token vocabulary: r=16 on all
    seven linear layers of all 80 layers, plus embed_tokens and lm_head saved whole as
    modules_to_save ([70840, 8192] each, the way PEFT 0.21 saves them). Data regions are holes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = LLAMA70B
    h, i = c["hidden_size"], c["intermediate_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    _write_json(
        out / "adapter_config.json",
        {
            "alpha_pattern": {},
            "auto_mapping": None,
            "base_model_name_or_path": "meta-llama/Llama-2-70b-hf",
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "layers_pattern": None,
            "layers_to_transform": None,
            "lora_alpha": 32,
            "lora_bias": False,
            "lora_dropout": 0.05,
            "modules_to_save": ["embed_tokens", "lm_head"],
            "peft_type": "LORA",
            "r": r,
            "rank_pattern": {},
            "revision": None,
            "target_modules": list(LINEAR_MODULES),
            "task_type": "CAUSAL_LM",
            "use_dora": False,
            "use_rslora": False,
        },
    )
    shapes = {  # module -> (out, in) of the base weight
        "self_attn.q_proj": (h, h),
        "self_attn.k_proj": (kv, h),
        "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, h),
        "mlp.gate_proj": (i, h),
        "mlp.up_proj": (i, h),
        "mlp.down_proj": (h, i),
    }
    tensors = [("base_model.model.model.embed_tokens.weight", dtype, (ADAPTER_VOCAB, h))]
    for layer in range(c["num_hidden_layers"]):
        for module, (fan_out, fan_in) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors.append((f"{key}.lora_A.weight", dtype, (r, fan_in)))
            tensors.append((f"{key}.lora_B.weight", dtype, (fan_out, r)))
    tensors.append(("base_model.model.lm_head.weight", dtype, (ADAPTER_VOCAB, h)))
    tensors.sort(key=lambda t: t[0])  # safetensors' writer lays data out by name within a dtype
    name = "adapter_model.safetensors"
    total = write_sparse_safetensors(out / name, tensors, {"format": "pt"})

    count, params, nbytes = adapter70840_expected(r, dtype)
    assert (count, params, nbytes) == (len(tensors), sum(math.prod(t[2]) for t in tensors), total)
    return Facts(out, count, params, nbytes, (name,), (out / name).stat().st_size)


def disk_usage(path: str | os.PathLike) -> int:
    """Bytes actually allocated on disk under ``path`` (st_blocks), to confirm the holes are holes."""
    used = 0
    for root, _, files in os.walk(path):
        for f in files:
            used += os.lstat(os.path.join(root, f)).st_blocks * 512
    return used


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (for the benchmark tables)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cli_path() -> list[str]:
    """The lora-inspector console script of this interpreter's environment (else `python -m inspector`)."""
    beside = Path(sys.executable).with_name("lora-inspector")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("lora-inspector")
    return [found] if found else [sys.executable, "-m", "inspector"]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/sparse_checkpoint.py OUT_DIR")
    target = Path(sys.argv[1])
    for facts in (make_llama70b(target / "llama70b"), make_adapter70840(target / "adapter70840")):
        print(f"{facts.path}: {facts.tensor_count} tensors, {facts.parameter_count:,} parameters, "
              f"{facts.total_bytes:,} data bytes, {disk_usage(facts.path):,} bytes on disk")
