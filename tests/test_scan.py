"""scan(): exact counts on every built checkpoint and on the committed seed case; tensor selection."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors import safe_open

from inspector.errors import InvalidInputError, UsageError
from inspector.io.tensor import DTYPE_BITS
from inspector.scan import MAX_PATTERN, scan
from tests.models import Built

ALL = ["llama", "llama_bin", "llama_bf16", "llama_tied", "llama_sharded", "qwen2", "gpt2", "bert", "bert_mlm", "lora_llama", "lora_llama_bin", "lora_llama_grown", "dora_llama", "lora_qwen2", "lora_gpt2", "lora_bert"]


@pytest.mark.parametrize("name", ALL)
def test_scan_counts_equal_torch(request: pytest.FixtureRequest, name: str) -> None:
    built: Built = request.getfixturevalue(name)
    (entry,) = scan([built.path]).checkpoints
    ckpt = entry.checkpoint
    assert entry.shown is None
    assert ckpt.kind == ("adapter" if name.startswith(("lora", "dora")) else "model")
    assert ckpt.format == ("pytorch-bin" if name.endswith("_bin") else "safetensors")
    assert (ckpt.tensor_count, ckpt.parameter_count, ckpt.total_bytes, ckpt.dtypes) == (
        built.tensor_count,
        built.parameter_count,
        built.total_bytes,
        built.dtypes,
    )
    assert {t.name: (t.shape, t.dtype) for t in ckpt.tensors} == {n: (s, d) for n, (s, d, _) in built.tensors.items()}


def _reference_facts(path: Path) -> tuple[int, int, int, dict[str, tuple[int, ...]]]:
    """Counts from the safetensors library itself: tensors, parameters, bytes, shapes."""
    with safe_open(str(path), "pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        dtypes = {k: fh.get_slice(k).get_dtype() for k in fh.keys()}
    params = sum(math.prod(s) for s in shapes.values())
    nbytes = sum(math.prod(s) * DTYPE_BITS[dtypes[k]] // 8 for k, s in shapes.items())
    return len(shapes), params, nbytes, shapes


def test_seed_case(seed_dir: Path) -> None:
    base_path, adapter_path = seed_dir / "base", seed_dir / "adapter"
    result = scan([base_path, adapter_path], match="embed|lm_head")
    base, adapter = (e.checkpoint for e in result.checkpoints)
    assert (base.kind, adapter.kind) == ("model", "adapter")

    count, params, nbytes, shapes = _reference_facts(base_path / "model.safetensors")
    assert (base.tensor_count, base.parameter_count, base.total_bytes) == (count, params, nbytes) == (21, 513_192, 1_026_384)
    assert base.dtypes == {"BF16": 21}
    assert shapes["model.embed_tokens.weight"] == shapes["lm_head.weight"] == (32_000, 8)

    count, params, nbytes, shapes = _reference_facts(adapter_path / "adapter_model.safetensors")
    assert (adapter.tensor_count, adapter.parameter_count, adapter.total_bytes) == (count, params, nbytes) == (10, 1_133_664, 2_267_776)
    assert adapter.dtypes == {"BF16": 2, "F32": 8}
    assert shapes["base_model.model.model.embed_tokens.weight"] == shapes["base_model.model.lm_head.weight"] == (70_840, 8)

    # --match keeps exactly the embedding and head of each side: [32000, 8] vs [70840, 8].
    shown = [{t.name: t.shape for t in e.shown} for e in result.checkpoints]
    assert shown == [
        {"lm_head.weight": (32_000, 8), "model.embed_tokens.weight": (32_000, 8)},
        {"base_model.model.lm_head.weight": (70_840, 8), "base_model.model.model.embed_tokens.weight": (70_840, 8)},
    ]
    assert result.match == "embed|lm_head"
    assert (base.config["vocab_size"], base.tokenizer.length, adapter.tokenizer.length) == (32_000, 32_000, 70_840)
    assert adapter.key_config()["modules_to_save"] == ["embed_tokens", "lm_head"]


def test_paths_keep_their_order_and_spelling(llama: Built, lora_llama: Built) -> None:
    given = [str(lora_llama.path), str(llama.path) + "/"]
    result = scan(given)
    assert [e.checkpoint.path for e in result.checkpoints] == given
    assert [e.checkpoint.kind for e in result.checkpoints] == ["adapter", "model"]


def test_tensors_flag_lists_every_tensor_in_file_order(llama_sharded: Built) -> None:
    (entry,) = scan([llama_sharded.path], tensors=True).checkpoints
    assert entry.shown == entry.checkpoint.tensors
    assert len(entry.shown) == 21
    assert len({t.file for t in entry.shown}) == 9


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("embed|lm_head", {"model.embed_tokens.weight", "lm_head.weight"}),
        ("^lm_head", {"lm_head.weight"}),
        (r"layers\.1\..*_proj", {f"model.layers.1.{m}.weight" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}),
        ("no-such-tensor", set()),
    ],
)
def test_match_filters_with_search_semantics(llama: Built, pattern: str, expected: set[str]) -> None:
    (entry,) = scan([llama.path], match=pattern).checkpoints  # --match implies --tensors
    assert {t.name for t in entry.shown} == expected
    assert entry.checkpoint.tensor_count == 21  # the summary still counts everything


@pytest.mark.parametrize(("pattern", "reason"), [("(", "is not a regular expression"), ("a" * (MAX_PATTERN + 1), "longer than 1000 characters")])
def test_bad_match_is_a_usage_error(llama: Built, pattern: str, reason: str) -> None:
    with pytest.raises(UsageError) as info:
        scan([llama.path], match=pattern)
    assert reason in info.value.why and info.value.exit_code == 2 and info.value.path is None


def test_one_unreadable_path_fails_the_scan(llama: Built, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as info:
        scan([llama.path, tmp_path / "missing"])
    assert info.value.path == str(tmp_path / "missing")
