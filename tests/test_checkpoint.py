"""read_checkpoint on real transformers/PEFT output: every layout, exact tensors, broken layouts named."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer

from inspector.errors import InvalidInputError
from inspector.io.checkpoint import Checkpoint, read_checkpoint
from inspector.io.tokenizer import read_tokenizer
from tests.hostile import ExecGadget
from tests.models import Built, copy_checkpoint, make_llama, make_tokenizer, untied_state


def facts(ckpt: Checkpoint) -> dict[str, tuple[tuple[int, ...], str, int]]:
    return {t.name: (t.shape, t.dtype, t.nbytes) for t in ckpt.tensors}


def assert_matches(ckpt: Checkpoint, built: Built) -> None:
    """Every count lora-inspector reports equals what torch held in memory."""
    assert facts(ckpt) == built.tensors
    assert ckpt.tensor_count == built.tensor_count
    assert ckpt.parameter_count == built.parameter_count
    assert ckpt.total_bytes == built.total_bytes
    assert ckpt.dtypes == built.dtypes
    if built.torch_parameters is not None:  # models: nn.Module.parameters() counts tied weights once, as files do
        assert ckpt.parameter_count == built.torch_parameters
    assert ckpt.warnings == ()


# ---- model directories ------------------------------------------------------------------------------

MODELS = ["llama", "llama_bf16", "llama_tied", "qwen2", "gpt2", "bert", "bert_mlm"]


@pytest.mark.parametrize("name", MODELS)
def test_model_dir_matches_torch(request: pytest.FixtureRequest, name: str) -> None:
    built: Built = request.getfixturevalue(name)
    ckpt = read_checkpoint(built.path)
    assert (ckpt.kind, ckpt.format, ckpt.files) == ("model", "safetensors", ("model.safetensors",))
    assert ckpt.path == str(built.path) and ckpt.root == built.path
    assert ckpt.config == built.config
    assert ckpt.tokenizer is None
    assert_matches(ckpt, built)


def test_llama_exact_layout(llama: Built) -> None:
    shapes = {t.name: t.shape for t in read_checkpoint(llama.path).tensors}
    per_layer = {
        "self_attn.q_proj.weight": (16, 16),
        "self_attn.k_proj.weight": (8, 16),  # 1 KV head of 2: GQA halves k/v
        "self_attn.v_proj.weight": (8, 16),
        "self_attn.o_proj.weight": (16, 16),
        "mlp.gate_proj.weight": (32, 16),
        "mlp.up_proj.weight": (32, 16),
        "mlp.down_proj.weight": (16, 32),
        "input_layernorm.weight": (16,),
        "post_attention_layernorm.weight": (16,),
    }
    expected = {"model.embed_tokens.weight": (64, 16), "lm_head.weight": (64, 16), "model.norm.weight": (16,)}
    expected |= {f"model.layers.{i}.{k}": v for i in range(2) for k, v in per_layer.items()}
    assert shapes == expected
    ckpt = read_checkpoint(llama.path)
    assert (ckpt.tensor_count, ckpt.parameter_count, ckpt.total_bytes, ckpt.dtypes) == (21, 6736, 26944, {"F32": 21})
    assert ckpt.key_config() == {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 64,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "tie_word_embeddings": False,
        "dtype": "float32",
    }


def test_bf16_llama(llama_bf16: Built) -> None:
    ckpt = read_checkpoint(llama_bf16.path)
    assert (ckpt.parameter_count, ckpt.total_bytes, ckpt.dtypes) == (6736, 13472, {"BF16": 21})
    assert ckpt.key_config()["dtype"] == "bfloat16"


def test_qwen2_tied_with_qkv_biases(qwen2: Built) -> None:
    ckpt = read_checkpoint(qwen2.path)
    names = set(ckpt.by_name)
    assert "lm_head.weight" not in names  # tied: save_pretrained stores the embedding once
    assert ckpt.by_name["model.embed_tokens.weight"].shape == (64, 16)
    for i in range(2):
        assert ckpt.by_name[f"model.layers.{i}.self_attn.q_proj.bias"].shape == (16,)
        assert ckpt.by_name[f"model.layers.{i}.self_attn.k_proj.bias"].shape == (8,)
        assert ckpt.by_name[f"model.layers.{i}.self_attn.v_proj.bias"].shape == (8,)
        assert f"model.layers.{i}.self_attn.o_proj.bias" not in names
    assert ckpt.tensor_count == 26 and ckpt.parameter_count == 6736 - 1024 + 2 * (16 + 8 + 8)
    assert ckpt.key_config()["tie_word_embeddings"] is True
    assert ckpt.key_config()["model_type"] == "qwen2"


def test_gpt2_conv1d_layout_and_config_aliases(gpt2: Built) -> None:
    ckpt = read_checkpoint(gpt2.path)
    by = ckpt.by_name
    # Conv1D stores [in, out]: the transpose of nn.Linear.
    assert by["transformer.h.0.attn.c_attn.weight"].shape == (16, 48)
    assert by["transformer.h.0.attn.c_attn.bias"].shape == (48,)
    assert by["transformer.h.1.mlp.c_fc.weight"].shape == (16, 64)
    assert by["transformer.h.1.mlp.c_proj.weight"].shape == (64, 16)
    assert by["transformer.wte.weight"].shape == (64, 16) and by["transformer.wpe.weight"].shape == (32, 16)
    assert "lm_head.weight" not in by
    assert ckpt.tensor_count == 28
    cfg = ckpt.key_config()
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["model_type"]) == (16, 2, 64, "gpt2")
    assert "n_embd" in ckpt.config and "hidden_size" not in ckpt.config  # found through the alias


def test_bert_encoder_and_tied_mlm_head(bert: Built, bert_mlm: Built) -> None:
    enc = read_checkpoint(bert.path)
    assert enc.by_name["embeddings.word_embeddings.weight"].shape == (64, 16)
    assert enc.by_name["embeddings.position_embeddings.weight"].shape == (32, 16)
    assert enc.by_name["embeddings.token_type_embeddings.weight"].shape == (2, 16)
    assert enc.by_name["pooler.dense.weight"].shape == (16, 16)
    assert enc.tensor_count == 39
    mlm = read_checkpoint(bert_mlm.path)
    assert mlm.by_name["bert.embeddings.word_embeddings.weight"].shape == (64, 16)
    assert mlm.by_name["cls.predictions.bias"].shape == (64,)
    # The decoder shares the word embeddings and the prediction bias: not stored again.
    assert "cls.predictions.decoder.weight" not in mlm.by_name and "cls.predictions.decoder.bias" not in mlm.by_name
    assert mlm.tensor_count == 42


def test_tensor_spans_hold_the_saved_data(llama: Built) -> None:
    ckpt = read_checkpoint(llama.path)
    raw = (llama.path / "model.safetensors").read_bytes()
    with safe_open(str(llama.path / "model.safetensors"), "pt") as fh:
        for t in ckpt.tensors:
            assert raw[t.start : t.end] == fh.get_tensor(t.name).reshape(-1).view(torch.uint8).numpy().tobytes()


# ---- sharded -----------------------------------------------------------------------------------------


def test_sharded_totals_equal_index_metadata(llama_sharded: Built, llama: Built) -> None:
    index = json.loads((llama_sharded.path / "model.safetensors.index.json").read_text())
    ckpt = read_checkpoint(llama_sharded.path)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 9
    assert ckpt.files[0] == "model.safetensors.index.json" and sorted(ckpt.files[1:]) == shards
    assert ckpt.total_bytes == index["metadata"]["total_size"] == 26944
    assert ckpt.parameter_count == index["metadata"]["total_parameters"] == 6736
    assert {t.name: t.file for t in ckpt.tensors} == index["weight_map"]
    assert_matches(ckpt, llama_sharded)
    # Same seed, same tensors as the unsharded save.
    assert facts(ckpt) == facts(read_checkpoint(llama.path))
    # The index file itself is an accepted path, with the same result.
    assert facts(read_checkpoint(llama_sharded.path / "model.safetensors.index.json")) == facts(ckpt)


def test_single_shard_file_alone(llama_sharded: Built) -> None:
    shard = llama_sharded.path / "model-00001-of-00009.safetensors"
    ckpt = read_checkpoint(shard)
    with safe_open(str(shard), "pt") as fh:
        assert {t.name: list(t.shape) for t in ckpt.tensors} == {k: fh.get_slice(k).get_shape() for k in fh.keys()}
    assert ckpt.files == ("model-00001-of-00009.safetensors",)
    assert ckpt.config == {}  # not the canonical name: its directory's config.json does not describe it


@pytest.fixture
def sharded_copy(llama_sharded: Built, tmp_path: Path) -> Path:
    return copy_checkpoint(llama_sharded.path, tmp_path / "sharded")


def _edit_index(directory: Path, edit) -> Path:
    index = directory / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    edit(data)
    index.write_text(json.dumps(data))
    return index


def test_shards_listed_by_file_name(sharded_copy: Path) -> None:
    # Hub indexes sort weight_map by tensor name, so lm_head (last shard) often comes first: files are listed by name.
    _edit_index(sharded_copy, lambda data: data.update(weight_map=dict(reversed(list(data["weight_map"].items())))))
    files = read_checkpoint(sharded_copy).files
    assert files[0] == "model.safetensors.index.json" and list(files[1:]) == sorted(files[1:]) and len(files) > 2


def test_total_size_disagreement_is_a_warning(sharded_copy: Path) -> None:
    _edit_index(sharded_copy, lambda d: d["metadata"].update(total_size=12345))
    ckpt = read_checkpoint(sharded_copy)
    assert ckpt.warnings == ("index metadata.total_size is 12345 but the shards hold 26944 bytes of tensor data",)
    assert ckpt.total_bytes == 26944


def test_missing_shard(sharded_copy: Path) -> None:
    (sharded_copy / "model-00004-of-00009.safetensors").unlink()
    with pytest.raises(InvalidInputError, match="shard 'model-00004-of-00009.safetensors' is listed but missing"):
        read_checkpoint(sharded_copy)


def test_tensor_listed_but_absent_from_its_shard(sharded_copy: Path) -> None:
    def move(d: dict) -> None:
        name = next(k for k, v in d["weight_map"].items() if v == "model-00002-of-00009.safetensors")
        d["weight_map"][name] = "model-00003-of-00009.safetensors"

    _edit_index(sharded_copy, move)
    with pytest.raises(InvalidInputError) as info:
        read_checkpoint(sharded_copy)
    assert "index maps it elsewhere" in info.value.why or "absent from it" in info.value.why
    assert "disagree" in info.value.hint


def test_tensor_in_shard_but_not_in_index(sharded_copy: Path) -> None:
    def drop(d: dict) -> None:
        del d["weight_map"]["model.norm.weight"]

    _edit_index(sharded_copy, drop)
    with pytest.raises(InvalidInputError, match="tensor 'model.norm.weight' is in shard .* not at all"):
        read_checkpoint(sharded_copy)


@pytest.mark.parametrize("shard", ["../escape.safetensors", "/etc/passwd", "C:\\x.safetensors", "a\\..\\b.safetensors", "sub/../../x.safetensors", ""])
def test_shard_names_outside_the_checkpoint(sharded_copy: Path, shard: str) -> None:
    def point_outside(d: dict) -> None:
        # First in the map, so it is the first shard resolved: it must be refused before any open().
        d["weight_map"] = {"model.norm.weight": shard, **{k: v for k, v in d["weight_map"].items() if k != "model.norm.weight"}}

    _edit_index(sharded_copy, point_outside)
    with pytest.raises(InvalidInputError, match="points outside the checkpoint"):
        read_checkpoint(sharded_copy)


def test_shard_symlink_outside_the_checkpoint(sharded_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.safetensors"
    shard = sharded_copy / "model-00009-of-00009.safetensors"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    with pytest.raises(InvalidInputError, match="resolves outside the checkpoint"):
        read_checkpoint(sharded_copy)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level is a JSON list"),
        ('{"metadata": {}}', "weight_map is missing"),
        ('{"weight_map": {}}', "weight_map is missing"),
        ('{"weight_map": {"a": 1}}', "weight_map is missing"),
        ('{"weight_map": ["a"]}', "weight_map is missing"),
    ],
)
def test_malformed_index(sharded_copy: Path, text: str, reason: str) -> None:
    (sharded_copy / "model.safetensors.index.json").write_text(text)
    with pytest.raises(InvalidInputError) as info:
        read_checkpoint(sharded_copy)
    assert reason in info.value.why
    assert info.value.path == str(sharded_copy / "model.safetensors.index.json")


# ---- legacy pickles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("old_shards", [True, False], ids=["old-shards-left", "old-shards-gone"])
def test_single_file_wins_over_a_stale_index(tmp_path: Path, llama: Built, llama_sharded: Built, old_shards: bool) -> None:
    # Re-saving a sharded model unsharded into its directory: transformers deletes the old shards but
    # not the index, and loads model.safetensors. So does lora-inspector, and it says so.
    model = copy_checkpoint(llama_sharded.path, tmp_path / "model")
    if not old_shards:
        for shard in model.glob("model-*.safetensors"):
            shard.unlink()
    shutil.copy(llama.path / "model.safetensors", model / "model.safetensors")
    ckpt = read_checkpoint(model)
    assert ckpt.files == ("model.safetensors",)
    assert {t.name: t.file for t in ckpt.tensors} == {name: "model.safetensors" for name in llama.tensors}
    assert ckpt.warnings == ("model.safetensors.index.json is ignored: transformers loads model.safetensors when both are present "
                             "(a stale index of an older sharded save?)",)


def test_legacy_bin_matches_its_safetensors_twin(llama_bin: Built, llama: Built) -> None:
    twin = read_checkpoint(llama.path)
    legacy = read_checkpoint(llama_bin.path)
    assert (legacy.kind, legacy.format, legacy.files) == ("model", "pytorch-bin", ("pytorch_model.bin",))
    assert {t.name: (t.shape, t.dtype) for t in legacy.tensors} == {t.name: (t.shape, t.dtype) for t in twin.tensors}
    assert (legacy.tensor_count, legacy.parameter_count, legacy.total_bytes, legacy.dtypes) == (
        twin.tensor_count,
        twin.parameter_count,
        twin.total_bytes,
        twin.dtypes,
    )
    assert legacy.key_config() == twin.key_config()
    assert_matches(legacy, llama_bin)


def test_full_state_dict_bin_lists_tied_aliases(tmp_path: Path, llama_tied: Built) -> None:
    # torch.save(model.state_dict()) keeps both names of a tied weight, over one storage.
    from tests.models import load_model

    model = load_model(llama_tied.path)
    out = tmp_path / "tied_bin"
    out.mkdir()
    shutil.copy(llama_tied.path / "config.json", out / "config.json")
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    ckpt = read_checkpoint(out)
    assert set(ckpt.by_name) == set(model.state_dict()) == set(llama_tied.tensors) | {"lm_head.weight"}
    assert ckpt.by_name["lm_head.weight"].start == ckpt.by_name["model.embed_tokens.weight"].start
    assert ckpt.parameter_count == sum(t.numel() for t in model.state_dict().values())
    assert len(untied_state(model)) == ckpt.tensor_count - 1


def test_sharded_bin_index(tmp_path: Path, llama: Built) -> None:
    state = {}
    with safe_open(str(llama.path / "model.safetensors"), "pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    names = sorted(state)
    out = tmp_path / "bin_sharded"
    out.mkdir()
    halves = {"pytorch_model-00001-of-00002.bin": names[:10], "pytorch_model-00002-of-00002.bin": names[10:]}
    for shard, keys in halves.items():
        torch.save({k: state[k] for k in keys}, out / shard)
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 26944}, "weight_map": weight_map}))
    shutil.copy(llama.path / "config.json", out / "config.json")
    ckpt = read_checkpoint(out)
    assert (ckpt.format, ckpt.files) == ("pytorch-bin", ("pytorch_model.bin.index.json", *halves))
    assert facts(ckpt) == facts(read_checkpoint(llama.path))
    assert {t.name: t.file for t in ckpt.tensors} == weight_map
    assert ckpt.warnings == ()


def test_safetensors_twin_wins_over_a_malicious_pickle(tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    # HOSTILE 17: with a safetensors file present the pickle is never opened.
    sentinel = tmp_path / "pwned"
    model = copy_checkpoint(llama.path, tmp_path / "model")
    torch.save(ExecGadget(sentinel), model / "pytorch_model.bin")
    adapter = copy_checkpoint(lora_llama.path, tmp_path / "adapter")
    torch.save(ExecGadget(sentinel), adapter / "adapter_model.bin")
    assert read_checkpoint(model).format == "safetensors"
    assert facts(read_checkpoint(model)) == llama.tensors
    assert read_checkpoint(adapter).files == ("adapter_model.safetensors",)
    assert not sentinel.exists()


def test_malicious_pickle_alone_is_refused(tmp_path: Path, llama: Built) -> None:
    sentinel = tmp_path / "pwned"
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(llama.path / "config.json", model)
    torch.save({"w": torch.ones(1), "x": ExecGadget(sentinel)}, model / "pytorch_model.bin")
    with pytest.raises(InvalidInputError, match=r"Refusing to read pickle for '.*pytorch_model.bin': it references the global"):
        read_checkpoint(model)
    assert not sentinel.exists()


# ---- adapters ----------------------------------------------------------------------------------------

ADAPTERS = ["lora_llama", "lora_llama_grown", "dora_llama", "lora_qwen2", "lora_gpt2", "lora_bert"]


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_dir_matches_peft(request: pytest.FixtureRequest, name: str) -> None:
    built: Built = request.getfixturevalue(name)
    ckpt = read_checkpoint(built.path)
    assert (ckpt.kind, ckpt.format, ckpt.files) == ("adapter", "safetensors", ("adapter_model.safetensors",))
    assert ckpt.config == built.config
    assert_matches(ckpt, built)
    cfg = ckpt.key_config()
    assert cfg["peft_type"] == "LORA"
    assert cfg["r"] == built.config["r"]
    assert cfg["lora_alpha"] == built.config["lora_alpha"]
    assert sorted(cfg["target_modules"]) == sorted(built.config["target_modules"])


def test_lora_llama_exact(lora_llama: Built) -> None:
    ckpt = read_checkpoint(lora_llama.path)
    expected = {}
    for i in range(2):
        p = f"base_model.model.model.layers.{i}.self_attn"
        expected |= {f"{p}.q_proj.lora_A.weight": (4, 16), f"{p}.q_proj.lora_B.weight": (16, 4)}
        expected |= {f"{p}.v_proj.lora_A.weight": (4, 16), f"{p}.v_proj.lora_B.weight": (8, 4)}
    assert {t.name: t.shape for t in ckpt.tensors} == expected
    assert (ckpt.parameter_count, ckpt.dtypes) == (2 * (64 + 64 + 64 + 32), {"F32": 8})
    cfg = ckpt.key_config()
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"], cfg["use_dora"], cfg["modules_to_save"]) == (4, 8, False, False, None)


def test_modules_to_save_on_grown_vocab_stores_three_copies(lora_llama_grown: Built) -> None:
    # PEFT 0.21 writes the plain, modules_to_save and original_module copies of each saved module.
    ckpt = read_checkpoint(lora_llama_grown.path)
    for module in ("base_model.model.model.embed_tokens", "base_model.model.lm_head"):
        for suffix in ("weight", "modules_to_save.weight", "original_module.weight"):
            assert ckpt.by_name[f"{module}.{suffix}"].shape == (80, 16)
    assert ckpt.tensor_count == 14
    assert sorted(ckpt.key_config()["modules_to_save"]) == ["embed_tokens", "lm_head"]


def test_dora_qwen2_gpt2_bert_adapter_shapes(dora_llama: Built, lora_qwen2: Built, lora_gpt2: Built, lora_bert: Built) -> None:
    dora = read_checkpoint(dora_llama.path)
    assert dora.by_name["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"].shape == (16,)
    assert dora.by_name["base_model.model.model.layers.1.self_attn.o_proj.lora_magnitude_vector"].shape == (16,)
    assert dora.key_config()["use_dora"] is True and dora.tensor_count == 12
    qwen = read_checkpoint(lora_qwen2.path)
    assert qwen.by_name["base_model.model.model.layers.0.self_attn.k_proj.lora_B.bias"].shape == (8,)
    assert qwen.by_name["base_model.model.model.layers.1.self_attn.q_proj.lora_B.bias"].shape == (16,)
    assert qwen.key_config()["lora_bias"] is True and qwen.tensor_count == 18
    gpt2 = read_checkpoint(lora_gpt2.path)
    assert {t.name: t.shape for t in gpt2.tensors} == {
        f"base_model.model.transformer.h.{i}.attn.c_attn.{k}": s for i in range(2) for k, s in (("lora_A.weight", (2, 16)), ("lora_B.weight", (48, 2)))
    }
    assert gpt2.key_config()["fan_in_fan_out"] is True
    bert = read_checkpoint(lora_bert.path)
    assert bert.by_name["base_model.model.encoder.layer.1.attention.self.value.lora_B.weight"].shape == (16, 2)
    assert bert.tensor_count == 8


def test_legacy_adapter_bin(lora_llama_bin: Built, lora_llama: Built) -> None:
    ckpt = read_checkpoint(lora_llama_bin.path)
    assert (ckpt.kind, ckpt.format, ckpt.files) == ("adapter", "pytorch-bin", ("adapter_model.bin",))
    assert_matches(ckpt, lora_llama_bin)
    twin = read_checkpoint(lora_llama.path)
    assert {t.name: (t.shape, t.dtype) for t in ckpt.tensors} == {t.name: (t.shape, t.dtype) for t in twin.tensors}


def test_adapter_file_given_directly(lora_llama: Built, tmp_path: Path) -> None:
    direct = read_checkpoint(lora_llama.path / "adapter_model.safetensors")
    assert (direct.kind, direct.config) == ("adapter", lora_llama.config)  # canonical name: its config applies
    loose = tmp_path / "my_adapter.safetensors"
    shutil.copy(lora_llama.path / "adapter_model.safetensors", loose)
    ckpt = read_checkpoint(loose)
    assert (ckpt.kind, ckpt.config, ckpt.files) == ("adapter", {}, ("my_adapter.safetensors",))  # judged by its keys
    assert facts(ckpt) == lora_llama.tensors


# ---- single files, odd directories and errors --------------------------------------------------------


def test_model_file_given_directly(llama: Built, tmp_path: Path) -> None:
    ckpt = read_checkpoint(llama.path / "model.safetensors")
    assert (ckpt.kind, ckpt.files, ckpt.config) == ("model", ("model.safetensors",), llama.config)
    loose = tmp_path / "weights.safetensors"
    shutil.copy(llama.path / "model.safetensors", loose)
    ckpt = read_checkpoint(loose)
    assert (ckpt.kind, ckpt.config) == ("model", {})
    assert_matches(ckpt, llama)


def test_directory_with_one_loose_safetensors_file(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.float16)}, str(tmp_path / "w.safetensors"))
    ckpt = read_checkpoint(tmp_path)
    assert ckpt.files == ("w.safetensors",)
    assert {t.name: (t.shape, t.dtype) for t in ckpt.tensors} == {"a": ((2, 3), "F32"), "b": ((4,), "F16")}
    assert (ckpt.parameter_count, ckpt.total_bytes) == (10, 32)


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file or directory"):
        read_checkpoint(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="no checkpoint files found"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="unknown file type"):
        read_checkpoint(tmp_path / "config.json")
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInputError, match="not a regular file"):
        read_checkpoint(fifo)


def test_directories_without_readable_weights_say_what_they_hold(tmp_path: Path, llama_sharded: Built, llama: Built) -> None:
    shards = copy_checkpoint(llama_sharded.path, tmp_path / "no_index")
    (shards / "model.safetensors.index.json").unlink()
    with pytest.raises(InvalidInputError, match=r"\d+ \.safetensors files \(model-00001-of-\d+\.safetensors, .*\) but no model.safetensors.index.json") as exc:
        read_checkpoint(shards)
    assert exc.value.hint.startswith("Download the index too")
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "model-q4_k_m.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(InvalidInputError, match=r"it holds a GGUF file \(llama.cpp\) \(model-q4_k_m.gguf\)"):
        read_checkpoint(gguf)
    with pytest.raises(InvalidInputError, match=r"it is a GGUF file \(llama.cpp\), not safetensors or PyTorch weights"):
        read_checkpoint(gguf / "model-q4_k_m.gguf")
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(llama.path / "config.json", config_only / "config.json")
    with pytest.raises(InvalidInputError, match="it has a config.json but no weight files"):
        read_checkpoint(config_only)


def test_trainer_output_dir_names_its_checkpoints(tmp_path: Path, lora_llama: Built) -> None:
    # Trainer's output_dir holds checkpoint-<step>/ folders: say so, and name the latest step.
    for step in (500, 1000, 1500):
        copy_checkpoint(lora_llama.path, tmp_path / "out" / f"checkpoint-{step}")
    (tmp_path / "out" / "runs").mkdir()
    with pytest.raises(InvalidInputError) as exc:
        read_checkpoint(tmp_path / "out")
    assert exc.value.hint == f"It holds checkpoints in subdirectories (checkpoint-500, checkpoint-1000, checkpoint-1500): pass one, e.g. '{tmp_path / 'out' / 'checkpoint-1500'}'."


def test_truncated_model_file(llama: Built, tmp_path: Path) -> None:
    model = copy_checkpoint(llama.path, tmp_path / "model")
    blob = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(blob[: len(blob) - 100])
    with pytest.raises(InvalidInputError) as info:
        read_checkpoint(model)
    assert info.value.why == f"data is {26944 - 100} bytes but the header describes 26944"


@pytest.mark.parametrize(("text", "reason"), [("{", "not valid JSON"), ("[1]", "top level is a JSON list"), ('{"a": ' + "1" * 5000 + "}", "not valid JSON")])
def test_broken_config_json(llama: Built, tmp_path: Path, text: str, reason: str) -> None:
    model = copy_checkpoint(llama.path, tmp_path / "model")
    (model / "config.json").write_text(text)
    with pytest.raises(InvalidInputError) as info:
        read_checkpoint(model)
    assert reason in info.value.why and info.value.what == "Cannot read config.json"


# ---- tokenizers: length equals transformers' len(tokenizer) ------------------------------------------


def _hf_len(directory: Path) -> int:
    return len(AutoTokenizer.from_pretrained(directory))


def test_tokenizer_json_with_added_tokens(tmp_path: Path) -> None:
    # "w3" is already in the vocabulary: transformers does not count it twice.
    d = make_tokenizer(tmp_path / "tok", size=40, added=("<new1>", "<new2>", "w3"), special=("<pad>", "<x>"))
    facts_ = read_tokenizer(d)
    assert facts_.length == _hf_len(d) == 44
    assert (facts_.source, facts_.max_id, facts_.added) == ("tokenizer.json", 43, 4)


def test_byte_level_bpe_tokenizer_json(tmp_path: Path) -> None:
    # No sentencepiece anywhere: a GPT-2-style byte-level BPE trained with the tokenizers library.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    fast.add_tokens(["<med1>", "<med2>", "<|endoftext|>"])
    d = tmp_path / "bpe"
    fast.save_pretrained(d)
    facts_ = read_tokenizer(d)
    assert facts_.length == _hf_len(d) == bpe.get_vocab_size(with_added_tokens=False) + 2
    assert facts_.added == 2


def test_unigram_tokenizer_json(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    pieces = [("<unk>", 0.0)] + [(chr(ord("a") + i), -1.0 - i) for i in range(20)]
    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(Unigram(pieces, unk_id=0)), unk_token="<unk>")
    fast.add_tokens(["<zz>"])
    d = tmp_path / "unigram"
    fast.save_pretrained(d)
    assert read_tokenizer(d).length == _hf_len(d) == 22


def test_bert_vocab_txt(tmp_path: Path) -> None:
    d = tmp_path / "bert_tok"
    d.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij", "##s", "the"]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    decoder = {"17": {"content": "[NEW]", "special": True}, "0": {"content": "[PAD]", "special": True}}
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "added_tokens_decoder": decoder}))
    facts_ = read_tokenizer(d)
    assert facts_.length == _hf_len(d) == 18
    assert (facts_.source, facts_.added) == ("vocab.txt", 1)


def test_gpt2_vocab_json(tmp_path: Path) -> None:
    d = tmp_path / "gpt2_tok"
    d.mkdir()
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz\u0120")}
    vocab |= {"ab": 27, "<|endoftext|>": 28}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\na b\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    (d / "added_tokens.json").write_text(json.dumps({"<med>": 29, "ab": 27}))
    facts_ = read_tokenizer(d)
    assert facts_.length == _hf_len(d) == 30
    assert (facts_.source, facts_.added, facts_.max_id) == ("vocab.json", 1, 29)


def test_sentencepiece_model_with_added_tokens(tmp_path: Path) -> None:
    # transformers needs protobuf to convert tokenizer.model; sentencepiece's own count is the reference.
    spm = pytest.importorskip("sentencepiece")
    d = tmp_path / "spm"
    d.mkdir()
    model = io.BytesIO()
    text = ["the quick brown fox jumps over the lazy dog", "hello medical world", "lorem ipsum dolor sit amet"] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=50, model_type="bpe", minloglevel=2)
    (d / "tokenizer.model").write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    first = processor.id_to_piece(5)
    (d / "added_tokens.json").write_text(json.dumps({"<med1>": 50, "<med2>": 51, first: 5}))
    facts_ = read_tokenizer(d)
    assert processor.get_piece_size() == 50
    assert (facts_.length, facts_.added, facts_.max_id, facts_.source) == (52, 2, 51, "tokenizer.model")


def test_seed_tokenizers(seed_dir: Path) -> None:
    base, adapter = read_tokenizer(seed_dir / "base"), read_tokenizer(seed_dir / "adapter")
    assert base.length == _hf_len(seed_dir / "base") == 32_000
    assert adapter.length == _hf_len(seed_dir / "adapter") == 70_840


def test_checkpoint_carries_its_tokenizer(llama: Built, tmp_path: Path) -> None:
    model = copy_checkpoint(llama.path, tmp_path / "model")
    make_tokenizer(model, size=64, added=("<a>", "<b>"))
    ckpt = read_checkpoint(model)
    assert ckpt.tokenizer is not None and ckpt.tokenizer.length == _hf_len(model) == 66
    assert read_checkpoint(model, with_tokenizer=False).tokenizer is None
    assert read_checkpoint(make_llama(tmp_path / "plain").path).tokenizer is None  # no tokenizer files: None, no error


@pytest.mark.parametrize(
    ("name", "text"),
    [("tokenizer.json", "{"), ("tokenizer.json", '{"model": {}}'), ("tokenizer.json", "[" * 100_000), ("vocab.json", "[]")],
)
def test_broken_tokenizer_files(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(InvalidInputError) as info:
        read_tokenizer(tmp_path)
    assert info.value.what == "Cannot read tokenizer" and info.value.path == str(tmp_path / name)


@pytest.mark.parametrize(
    "extra",
    [[("<far>", 100)], [("<new>", 5)], [("<a>", 40), ("<b>", 40)]],
    ids=["id-beyond-a-hole", "id-of-another-token", "two-tokens-one-id"],
)
def test_tokenizer_json_odd_added_ids(tmp_path: Path, extra: list[tuple[str, int]]) -> None:
    # len(tokenizer) counts distinct token strings, not max id + 1; check uses max_id separately.
    d = make_tokenizer(tmp_path / "tok", size=40)
    data = json.loads((d / "tokenizer.json").read_text())
    data["added_tokens"] += [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True} for c, i in extra]
    (d / "tokenizer.json").write_text(json.dumps(data))
    facts_ = read_tokenizer(d)
    assert facts_.length == _hf_len(d) == 40 + len(extra)
    assert facts_.max_id == max(39, *(i for _, i in extra))


@pytest.mark.parametrize(
    "body",
    [
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\x85b\nc\u2028d\ne\n",  # NEL and LINE SEPARATOR inside tokens
        "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\n[MASK]\r\na\r\nb\r\n",
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\na\nb",  # duplicate line, no final newline
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n\nb\n",  # an empty line is a token
    ],
    ids=["unicode-line-breaks", "crlf", "duplicate", "blank-line"],
)
def test_bert_vocab_txt_lines_as_transformers_reads_them(tmp_path: Path, body: str) -> None:
    (tmp_path / "vocab.txt").write_bytes(body.encode())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    assert read_tokenizer(tmp_path).length == _hf_len(tmp_path)


def test_tokenizer_file_errors_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_bytes(b"a\n\xff\n")
    with pytest.raises(InvalidInputError, match="not readable UTF-8 text"):
        read_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    # Non-ASCII digits ("²".isdigit() is True) are not token ids: ignored, not a crash.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"\u00b2": {"content": "x"}, "2": {"content": "y"}}}))
    facts_ = read_tokenizer(tmp_path)
    assert (facts_.length, facts_.added, facts_.max_id) == (3, 1, 2)
