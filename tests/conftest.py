"""Session-scoped tiny checkpoints, built once per test run into pytest's temporary directory.

Tests must treat these directories as read-only; a test that damages a checkpoint copies it first
(``tests.models.copy_checkpoint``) into its own ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.hostile_corpus import copy_dir
from tests.models import Built, make_bert, make_gpt2, make_llama, make_lora_adapter, make_qwen2

REPO = Path(__file__).resolve().parent.parent
SEED = REPO / "fixtures" / "seed"


def pytest_configure(config: pytest.Config) -> None:
    # Library chatter while building fixtures: transformers deprecations, PEFT's save-time advice (it
    # even flags lora_bias's 1-D lora_B.bias as a ZeRO-3 symptom). Not about lora-inspector.
    config.addinivalue_line("filterwarnings", "ignore::FutureWarning:transformers")
    config.addinivalue_line("filterwarnings", "ignore:::peft")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # GPU paths also run on CPU in CI; their GPU variants are skipped where no CUDA device exists.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def seed_dir() -> Path:
    """The committed seed case: base 32,000 rows, adapter 70,840 rows (fixtures/make_seed.py)."""
    return SEED


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def llama(models_root: Path) -> Built:
    """Untied fp32 Llama, vocab 64, hidden 16, 2 layers."""
    return make_llama(models_root / "llama")


@pytest.fixture(scope="session")
def llama_bin(models_root: Path) -> Built:
    """The same weights as ``llama`` (same seed) as a legacy pytorch_model.bin."""
    return make_llama(models_root / "llama_bin", fmt="bin")


@pytest.fixture(scope="session")
def llama_bf16(models_root: Path) -> Built:
    return make_llama(models_root / "llama_bf16", dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def llama_tied(models_root: Path) -> Built:
    return make_llama(models_root / "llama_tied", tie=True)


@pytest.fixture(scope="session")
def llama_grown(models_root: Path) -> Built:
    """``llama`` with an 80-row vocabulary: what a resized base looks like."""
    return make_llama(models_root / "llama_grown", vocab=80)


@pytest.fixture(scope="session")
def llama_sharded(models_root: Path) -> Built:
    """``llama`` written by save_pretrained in 4 KB shards (9 shards plus the index)."""
    return make_llama(models_root / "llama_sharded", max_shard_size="4KB")


@pytest.fixture(scope="session")
def qwen2(models_root: Path) -> Built:
    """Qwen2 with tied embeddings and q/k/v biases."""
    return make_qwen2(models_root / "qwen2", tied=True)


@pytest.fixture(scope="session")
def gpt2(models_root: Path) -> Built:
    return make_gpt2(models_root / "gpt2")


@pytest.fixture(scope="session")
def bert(models_root: Path) -> Built:
    return make_bert(models_root / "bert")


@pytest.fixture(scope="session")
def bert_mlm(models_root: Path) -> Built:
    return make_bert(models_root / "bert_mlm", mlm_head=True)


@pytest.fixture(scope="session")
def lora_llama(models_root: Path, llama: Built) -> Built:
    """r=4 LoRA on q_proj/v_proj of ``llama``."""
    return make_lora_adapter(llama.path, models_root / "lora_llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="session")
def lora_llama_bin(models_root: Path, llama: Built) -> Built:
    """``lora_llama`` saved as a legacy adapter_model.bin."""
    return make_lora_adapter(llama.path, models_root / "lora_llama_bin", fmt="bin", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="session")
def lora_llama_grown(models_root: Path, llama: Built) -> Built:
    """The seed case in miniature: trained on 80 tokens, embed_tokens and lm_head in modules_to_save."""
    return make_lora_adapter(
        llama.path,
        models_root / "lora_llama_grown",
        vocab=80,
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        modules_to_save=["embed_tokens", "lm_head"],
    )


@pytest.fixture(scope="session")
def dora_llama(models_root: Path, llama: Built) -> Built:
    return make_lora_adapter(llama.path, models_root / "dora_llama", r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"], use_dora=True)


@pytest.fixture(scope="session")
def lora_qwen2(models_root: Path, qwen2: Built) -> Built:
    """LoRA on the biased q/k/v of the tied Qwen2, with lora_bias."""
    return make_lora_adapter(qwen2.path, models_root / "lora_qwen2", r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"], lora_bias=True)


@pytest.fixture(scope="session")
def lora_gpt2(models_root: Path, gpt2: Built) -> Built:
    """LoRA on GPT-2's Conv1D c_attn (fan_in_fan_out, as PEFT requires for Conv1D)."""
    return make_lora_adapter(gpt2.path, models_root / "lora_gpt2", r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True)


@pytest.fixture(scope="session")
def lora_bert(models_root: Path, bert: Built) -> Built:
    return make_lora_adapter(bert.path, models_root / "lora_bert", r=2, lora_alpha=4, target_modules=["query", "value"])


@pytest.fixture
def work(tmp_path: Path, llama: Built, lora_llama: Built) -> Path:
    """A private copy of ``llama`` (``base/``) and ``lora_llama`` (``adapter/``) in ``tmp_path``, so
    a test may break them, and ``snapshot(tmp_path)`` sees every input."""
    copy_dir(llama.path, tmp_path / "base")
    copy_dir(lora_llama.path, tmp_path / "adapter")
    return tmp_path
