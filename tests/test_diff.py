"""diff_checkpoints(): added, removed, reshaped, re-typed, on real checkpoints with known differences."""

from __future__ import annotations

from pathlib import Path

from inspector.diff import DiffResult, diff_checkpoints
from inspector.io.checkpoint import read_checkpoint
from tests.models import Built


def diff(a: Path, b: Path) -> DiffResult:
    return diff_checkpoints(read_checkpoint(a), read_checkpoint(b))


def test_same_weights_in_three_layouts_are_identical(llama: Built, llama_bin: Built, llama_sharded: Built) -> None:
    for other in (llama_bin, llama_sharded):
        result = diff(llama.path, other.path)
        assert result.identical
        assert (result.added, result.removed, result.reshaped, result.retyped, result.unchanged) == ((), (), (), (), 21)


def test_grown_vocabulary_reshapes_embedding_and_head(llama: Built, llama_grown: Built) -> None:
    result = diff(llama.path, llama_grown.path)
    assert not result.identical
    assert {c.name: (c.a.shape, c.b.shape) for c in result.reshaped} == {
        "model.embed_tokens.weight": ((64, 16), (80, 16)),
        "lm_head.weight": ((64, 16), (80, 16)),
    }
    assert (result.added, result.removed, result.retyped, result.unchanged) == ((), (), (), 19)


def test_dtype_change_retypes_every_tensor(llama: Built, llama_bf16: Built) -> None:
    result = diff(llama.path, llama_bf16.path)
    assert len(result.retyped) == 21
    assert {(c.a.dtype, c.b.dtype) for c in result.retyped} == {("F32", "BF16")}
    assert (result.reshaped, result.unchanged) == ((), 0)


def test_reshaped_and_retyped_at_once_is_listed_in_both(llama_grown: Built, llama_bf16: Built) -> None:
    result = diff(llama_grown.path, llama_bf16.path)
    assert {c.name for c in result.reshaped} == {"model.embed_tokens.weight", "lm_head.weight"}
    assert len(result.retyped) == 21 and result.unchanged == 0


def test_tying_removes_lm_head(llama: Built, llama_tied: Built) -> None:
    result = diff(llama.path, llama_tied.path)
    assert [(t.name, t.shape, t.dtype) for t in result.removed] == [("lm_head.weight", (64, 16), "F32")]
    assert (result.added, result.reshaped, result.retyped, result.unchanged) == ((), (), (), 20)
    # Swapping the sides swaps added and removed.
    back = diff(llama_tied.path, llama.path)
    assert back.added == result.removed and back.removed == ()


def test_adapter_with_saved_modules_adds_the_copies(lora_llama: Built, lora_llama_grown: Built) -> None:
    result = diff(lora_llama.path, lora_llama_grown.path)
    assert {t.name for t in result.added} == {
        f"base_model.model.{m}.{s}" for m in ("model.embed_tokens", "lm_head") for s in ("weight", "modules_to_save.weight", "original_module.weight")
    }
    assert {t.shape for t in result.added} == {(80, 16)}
    assert (result.removed, result.reshaped, result.retyped, result.unchanged) == ((), (), (), 8)


def test_seed_base_against_adapter_aligns_keys_like_peft(seed_dir: Path) -> None:
    # Model vs adapter: each full tensor the adapter carries stands against the base tensor it replaces.
    result = diff(seed_dir / "base" / "model.safetensors", seed_dir / "adapter")
    assert result.aligned
    assert {c.name: (c.a.shape, c.b.shape) for c in result.reshaped} == {
        "model.embed_tokens.weight": ((32_000, 8), (70_840, 8)),
        "lm_head.weight": ((32_000, 8), (70_840, 8)),
    }
    assert len(result.added) == 8 and all(".lora_" in t.name for t in result.added)
    assert (result.removed, result.retyped, result.unchanged, result.untouched) == ((), (), 0, 19)
    back = diff(seed_dir / "adapter", seed_dir / "base")  # sides swapped: LoRA tensors are "removed"
    assert {t.name for t in back.removed} == {t.name for t in result.added} and back.added == ()
    assert {c.name: (c.a.shape, c.b.shape) for c in back.reshaped} == {n: (b, a) for n, (a, b) in {c.name: (c.a.shape, c.b.shape) for c in result.reshaped}.items()}


def test_grown_adapter_against_its_base_picks_one_copy_of_each_module(llama: Built, lora_llama_grown: Built) -> None:
    # Three stored copies per saved module, one of which PEFT loads: exactly one reshape per base tensor.
    result = diff(llama.path, lora_llama_grown.path)
    assert {c.name: (c.a.shape, c.b.shape) for c in result.reshaped} == {
        "model.embed_tokens.weight": ((64, 16), (80, 16)),
        "lm_head.weight": ((64, 16), (80, 16)),
    }
    added = {t.name for t in result.added}
    lora = {n for n in lora_llama_grown.tensors if ".lora_" in n}
    assert len(lora) == 8 and lora <= added
    # The copy PEFT loads is aligned, never listed again as an added tensor.
    loaded = {f"base_model.model.{m}.{s}" for m in ("model.embed_tokens", "lm_head") for s in ("weight", "modules_to_save.weight")}
    assert not added & loaded
    assert (result.aligned, result.untouched, result.unchanged, result.removed) == (True, 19, 0, ())


def test_plain_lora_against_its_base(llama: Built, lora_llama: Built) -> None:
    result = diff(llama.path, lora_llama.path)
    assert {t.name for t in result.added} == set(lora_llama.tensors)
    assert (result.reshaped, result.retyped, result.removed, result.unchanged, result.untouched) == ((), (), (), 0, 21)
    assert not result.identical
