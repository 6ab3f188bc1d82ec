"""The safe streaming writer: round trips, sharding, transformers loading, refusals and cleanup.

Every failure test snapshots the whole temporary tree before and after: a refusal creates nothing,
a failure or Ctrl-C leaves no staging directory and the old output byte-for-byte as it was.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import inspector.io.writer as writer_mod
from inspector.errors import InspectorError, InvalidInputError, UsageError
from inspector.io.header import read_header
from inspector.io.shards import INDEX_FILE, OutputTensor, parse_size
from inspector.io.writer import SPACE_MARGIN, CheckpointWriter
from tests.models import TORCH_TO_ST, untied_state

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------- helpers


def plan(tensors: dict[str, torch.Tensor]) -> list[OutputTensor]:
    return [OutputTensor(name, TORCH_TO_ST[t.dtype], tuple(t.shape)) for name, t in tensors.items()]


def write_all(out: Path, tensors: dict[str, torch.Tensor], inputs: tuple[Path, ...] = (), **kw) -> Path:
    with CheckpointWriter(out, inputs=inputs, tensors=plan(tensors), **kw) as w:
        for name, t in tensors.items():
            w.write(name, t)
        return w.commit()


def read_back(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want) or set(got) == set(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype, name
        assert got[name].shape == t.shape, name
        # bitwise: compare the raw bytes, so -0.0 vs 0.0 or NaN payloads would show up too
        assert torch.equal(got[name].reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8)), name


def tree(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (hidden ones included) with its content: the before/after snapshot."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes()
    return out


def mixed() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "bf16": torch.randn(5, 2, generator=g).to(torch.bfloat16),
        "f16": torch.randn(2, 3, generator=g).to(torch.float16),
        "i64": torch.arange(-6, 6, dtype=torch.int64).reshape(3, 4),
        "bool": torch.rand(7, generator=g) > 0.5,
        "empty": torch.zeros(0, 7, dtype=torch.bfloat16),
        "scalar": torch.tensor(3.5, dtype=torch.float32),
        "transposed": torch.randn(4, 6, generator=g).t(),  # not contiguous: the writer must fix that
    }


@pytest.fixture
def old_out(tmp_path: Path) -> Path:
    """A pre-existing output directory a failed run must leave exactly as it is."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"old weights")
    (out / "sub" / "notes.txt").write_text("keep me")
    return out


# ------------------------------------------------------------------------------------ round trip


def test_round_trip_all_dtypes_single_file(tmp_path: Path) -> None:
    tensors = mixed()
    out = write_all(tmp_path / "out", tensors, metadata={"source": "test"})
    assert out == tmp_path / "out"
    assert sorted(os.listdir(out)) == ["model.safetensors"]  # one shard: no index, transformers' name
    got, meta = read_back(out / "model.safetensors")
    assert_same(got, tensors)
    assert meta == {"format": "pt", "source": "test"}
    assert got["scalar"].shape == () and got["empty"].shape == (0, 7)
    # the header is padded so data starts 8-byte aligned, and data follows the plan order
    infos, _ = read_header(out / "model.safetensors")
    assert infos[0].start % 8 == 0
    assert [t.name for t in infos] == list(tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left beside it


def test_empty_plan_gives_valid_empty_file(tmp_path: Path) -> None:
    out = write_all(tmp_path / "out", {})
    got, meta = read_back(out / "model.safetensors")
    assert got == {} and meta == {"format": "pt"}


def test_missing_parents_are_created(tmp_path: Path) -> None:
    out = write_all(tmp_path / "a" / "b" / "out", {"x": torch.ones(2)})
    assert sorted(os.listdir(out)) == ["model.safetensors"]
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["out"]


def test_add_and_copy_files(tmp_path: Path) -> None:
    src = tmp_path / "tokenizer.json"
    src.write_bytes(b'{"vocab": 3}')
    with CheckpointWriter(tmp_path / "out", inputs=[src], tensors=plan({"x": torch.ones(1)})) as w:
        w.write("x", torch.ones(1))
        w.add_file("config.json", '{"a": "\u00e9"}')
        w.add_file("raw.bin", b"\x00\x01")
        w.copy_file(src)
        w.copy_file(src, "tok-copy.json")
        out = w.commit()
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "raw.bin", "tok-copy.json", "tokenizer.json"]
    assert (out / "config.json").read_text("utf-8") == '{"a": "\u00e9"}'
    assert (out / "raw.bin").read_bytes() == b"\x00\x01"
    assert (out / "tokenizer.json").read_bytes() == (out / "tok-copy.json").read_bytes() == b'{"vocab": 3}'


# -------------------------------------------------------------------------------------- sharding


def test_sharding_names_index_and_total_size(tmp_path: Path) -> None:
    tensors = {
        "a": torch.arange(25, dtype=torch.float32),  # 100 bytes
        "b": torch.arange(25, dtype=torch.float32),  # 100: a+b = 200 <= 250
        "c": torch.arange(75, dtype=torch.float32),  # 300: over the limit, a shard of its own
        "d": torch.arange(10, dtype=torch.float32),  # 40
        "e": torch.zeros(0, dtype=torch.float32),  # 0
        "f": torch.arange(10, dtype=torch.int64),  # 80: d+e+f = 120
    }
    out = write_all(tmp_path / "out", tensors, max_shard_size=250)
    names = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]
    assert sorted(os.listdir(out)) == sorted([*names, INDEX_FILE])
    index = json.loads((out / INDEX_FILE).read_text())
    assert index == {
        "metadata": {"total_size": 620},
        "weight_map": {"a": names[0], "b": names[0], "c": names[1], "d": names[2], "e": names[2], "f": names[2]},
    }
    got: dict[str, torch.Tensor] = {}
    for n, want in zip(names, (["a", "b"], ["c"], ["d", "e", "f"])):
        part, meta = read_back(out / n)
        assert sorted(part) == want and meta == {"format": "pt"}
        got |= part
    assert_same(got, tensors)


def test_parse_size_feeds_max_shard_size(tmp_path: Path) -> None:
    tensors = {f"t{i}": torch.zeros(256, dtype=torch.float32) for i in range(4)}  # 1 KiB each
    out = write_all(tmp_path / "out", tensors, max_shard_size=parse_size("2KiB"))
    assert sorted(os.listdir(out)) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        INDEX_FILE,
    ]


def test_single_file_names_the_one_file_and_never_shards(tmp_path: Path) -> None:
    """An adapter's file (convert): PEFT loads adapter_model.safetensors and reads no index."""
    tensors = {f"t{i}": torch.full((256,), float(i)) for i in range(4)}  # 1 KiB each, over the shard limit together
    out = write_all(tmp_path / "out", tensors, max_shard_size=1024, single_file="adapter_model.safetensors")
    assert sorted(os.listdir(out)) == ["adapter_model.safetensors"]
    assert_same(read_back(out / "adapter_model.safetensors")[0], tensors)
    for taken in ("adapter_model.safetensors", "model.safetensors"):  # neither can be added as a side file
        with pytest.raises(ValueError, match="already part of the output"):
            with CheckpointWriter(tmp_path / "out2", inputs=[], tensors=plan({"x": torch.ones(1)}), single_file="adapter_model.safetensors") as w:
                w.write("x", torch.ones(1))
                w.add_file(taken, b"")
        assert not (tmp_path / "out2").exists()
    for bad in ("../x.safetensors", "adapter_model.bin", ""):
        with pytest.raises(ValueError, match="single_file"):
            CheckpointWriter(tmp_path / "out3", inputs=[], tensors=[], single_file=bad)


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.config.architectures = ["LlamaForCausalLM"]
    return model


@pytest.mark.parametrize("max_shard_size", [5_000_000_000, 6_000], ids=["single", "sharded"])
def test_transformers_loads_the_output(tmp_path: Path, max_shard_size: int) -> None:
    model = _tiny_llama()
    state = {k: v.detach() for k, v in untied_state(model).items()}
    with CheckpointWriter(tmp_path / "out", inputs=[], tensors=plan(state), max_shard_size=max_shard_size) as w:
        for name, t in state.items():
            w.write(name, t)
        w.add_file("config.json", model.config.to_json_string())
        out = w.commit()
    sharded = (out / INDEX_FILE).exists()
    assert sharded == (max_shard_size == 6_000)
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert_same(loaded.state_dict(), model.state_dict())
    if sharded:
        # the same split transformers itself makes for the same state dict and limit
        model.save_pretrained(tmp_path / "hf", max_shard_size=max_shard_size)
        ours = json.loads((out / INDEX_FILE).read_text())
        theirs = json.loads((tmp_path / "hf" / INDEX_FILE).read_text())
        assert ours["weight_map"] == theirs["weight_map"]
        assert ours["metadata"]["total_size"] == theirs["metadata"]["total_size"]


# ------------------------------------------------------------------------------------- refusals


def _setup_refusal(tmp_path: Path, case: str) -> tuple[Path, list[Path], bool, str]:
    """Build one refusal case: (out, inputs, force, text the error's why must contain)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    weights = ckpt / "model.safetensors"
    weights.write_bytes(b"input weights")
    if case == "out is input":
        return ckpt, [ckpt], True, "it is the input"
    if case == "out inside input":
        return ckpt / "merged", [ckpt], True, "it is inside the input"
    if case == "input inside out":
        return tmp_path, [ckpt], True, "it contains the input"
    if case == "out is a symlink to input":
        (tmp_path / "link").symlink_to(ckpt)
        return tmp_path / "link", [ckpt], True, "it is the input"
    if case == "out inside input via symlink":
        (tmp_path / "link").symlink_to(ckpt)
        return tmp_path / "link" / "merged", [ckpt], True, "it is inside the input"
    if case == "input given through a symlink":
        (tmp_path / "link").symlink_to(ckpt)
        return ckpt / "merged", [tmp_path / "link"], True, "it is inside the input"
    if case == "out is the dir of an input file":
        return ckpt, [weights], True, "it contains the input"
    if case == "out is a hardlink to an input file":
        os.link(weights, tmp_path / "hardlink")
        return tmp_path / "hardlink", [weights], True, "under another name (a hard link"
    if case == "non-empty out without force":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "x").write_text("x")
        return tmp_path / "out", [ckpt], False, "exists and is not empty"
    if case == "out is a file":
        (tmp_path / "out").write_text("x")
        return tmp_path / "out", [ckpt], True, "exists and is not a directory"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "out is input",
        "out inside input",
        "input inside out",
        "out is a symlink to input",
        "out inside input via symlink",
        "input given through a symlink",
        "out is the dir of an input file",
        "out is a hardlink to an input file",
        "non-empty out without force",
        "out is a file",
    ],
)
def test_refusals_create_nothing(tmp_path: Path, case: str) -> None:
    out, inputs, force, why = _setup_refusal(tmp_path, case)
    before = tree(tmp_path)
    with pytest.raises(UsageError) as info:
        CheckpointWriter(out, inputs=inputs, tensors=plan({"x": torch.ones(2)}), force=force)
    err = info.value
    assert err.exit_code == 2
    assert why in err.why
    assert err.path == str(out)
    if "input" in why:
        assert str(inputs[0]) in err.hint
    assert tree(tmp_path) == before


def test_empty_existing_out_needs_no_force(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    out = write_all(tmp_path / "out", {"x": torch.ones(2)})
    assert sorted(os.listdir(out)) == ["model.safetensors"]


def test_symlinked_out_writes_through_the_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    out = write_all(tmp_path / "link", {"x": torch.ones(2)})
    assert out == tmp_path / "link"
    assert (tmp_path / "link").is_symlink()
    assert sorted(os.listdir(tmp_path / "real")) == ["model.safetensors"]


# ----------------------------------------------------------------------------------------- force


def test_force_replaces_existing_output(tmp_path: Path, old_out: Path) -> None:
    old_inode = old_out.stat().st_ino
    tensors = {"x": torch.arange(4, dtype=torch.float32)}
    out = write_all(old_out, tensors, force=True)
    assert sorted(os.listdir(out)) == ["model.safetensors"]  # old files and subdir are gone
    assert_same(read_back(out / "model.safetensors")[0], tensors)
    assert out.stat().st_ino != old_inode  # a new directory renamed in, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # neither staging nor the old one left


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_failed_swap_restores_the_old_output(tmp_path: Path, old_out: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool) -> None:
    import inspector.io.publish as publish_mod

    before = tree(tmp_path)
    real_rename = os.rename

    def rename(src, dst):
        if ".staging-" in str(src):  # the second rename of the swap: staging -> out
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(src, dst)

    def failed_exchange(a, b):
        raise OSError(errno.EIO, "Input/output error")

    if exchange:
        monkeypatch.setattr(publish_mod, "exchange", failed_exchange)
    else:  # a filesystem without RENAME_EXCHANGE
        monkeypatch.setattr(publish_mod, "exchange", lambda a, b: False)
        monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(InspectorError) as info:
        write_all(old_out, {"x": torch.ones(2)}, force=True)
    assert info.value.exit_code == 2 and info.value.what == "Cannot write checkpoint"
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------- failures and ^C


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_exception_in_with_block_leaves_target_untouched(tmp_path: Path, old_out: Path, exc_type: type) -> None:
    before = tree(tmp_path)
    tensors = mixed()
    with pytest.raises(exc_type):
        with CheckpointWriter(old_out, inputs=[], tensors=plan(tensors), force=True) as w:
            w.write("f32", tensors["f32"])
            assert any(".staging-" in p.name for p in tmp_path.iterdir())  # it was really writing
            raise exc_type("stop")
    assert tree(tmp_path) == before


def test_interrupt_inside_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = writer_mod._write_all

    def interrupted(fh, data):
        calls.append(1)
        if len(calls) == 3:  # header, first tensor, then Ctrl-C during the second tensor
            raise KeyboardInterrupt
        real(fh, data)

    monkeypatch.setattr(writer_mod, "_write_all", interrupted)
    tensors = mixed()
    with pytest.raises(KeyboardInterrupt):
        write_all(tmp_path / "a" / "out", tensors)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []  # the parent it created is gone too


@pytest.mark.parametrize("fail_at", [1, 2, 5, "add_file"], ids=["header", "first-tensor", "later-tensor", "add_file"])
def test_disk_full_is_a_clean_error(tmp_path: Path, old_out: Path, monkeypatch: pytest.MonkeyPatch, fail_at) -> None:
    before = tree(tmp_path)
    calls: list[int] = []
    real = writer_mod._write_all

    def full(fh, data):
        calls.append(1)
        if len(calls) == fail_at or (fail_at == "add_file" and isinstance(data, bytes) and data == b"{}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fh, data)

    monkeypatch.setattr(writer_mod, "_write_all", full)
    tensors = mixed()
    with pytest.raises(InspectorError) as info:
        with CheckpointWriter(old_out, inputs=[], tensors=plan(tensors), force=True) as w:
            for name, t in tensors.items():
                w.write(name, t)
            w.add_file("config.json", "{}")
            w.commit()
    err = info.value
    assert type(err) is InspectorError and err.exit_code == 2
    assert err.what == "Cannot write checkpoint" and err.why == "No space left on device"
    assert "is full" in err.hint and "Nothing was written" in err.hint
    assert isinstance(err.__cause__, OSError)
    assert tree(tmp_path) == before


def test_fsync_eio_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(InspectorError) as info:
        write_all(tmp_path / "out", {"x": torch.ones(3)})
    assert info.value.exit_code == 2 and "writable" in info.value.hint
    assert list(tmp_path.iterdir()) == []


DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.mark.parametrize("force", [False, True])
def test_free_space_is_checked_before_writing(tmp_path: Path, old_out: Path, monkeypatch: pytest.MonkeyPatch, force) -> None:
    tensors = {"x": torch.zeros(1000, dtype=torch.float32)}
    out = old_out if force else tmp_path / "new" / "out"
    free = 10**12
    seen: list[Path] = []

    def usage(path):
        seen.append(Path(path))
        return DiskUsage(10**12, 0, free)

    monkeypatch.setattr(writer_mod.shutil, "disk_usage", usage)
    # staging is created lazily, so a writer that is never used writes nothing
    planned = CheckpointWriter(out, inputs=[], tensors=plan(tensors), force=force).planned_bytes
    assert 4000 + 8 < planned < 4000 + 8 + 200  # data plus a small header
    free = planned + SPACE_MARGIN  # exactly enough passes
    CheckpointWriter(out, inputs=[], tensors=plan(tensors), force=force)
    free -= 1  # one byte less is refused, and nothing is created (not even the missing parent)
    before = tree(tmp_path)
    with pytest.raises(UsageError) as info:
        CheckpointWriter(out, inputs=[], tensors=plan(tensors), force=force)
    assert info.value.what == "Not enough disk space" and info.value.exit_code == 2
    assert ("--force" in info.value.hint) == force  # the old output's space does not count as free
    assert seen[-1] == (old_out.parent if force else tmp_path)  # nearest existing parent of the target
    assert tree(tmp_path) == before


# ------------------------------------------------------------------------------- programming errors


@pytest.mark.parametrize(
    "name, tensor",
    [
        ("wrong", torch.ones(2, 3)),
        ("x", torch.ones(2, 3, dtype=torch.float16)),
        ("x", torch.ones(3, 2)),
    ],
    ids=["name", "dtype", "shape"],
)
def test_write_checks_the_plan(tmp_path: Path, name: str, tensor: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        with CheckpointWriter(tmp_path / "out", inputs=[], tensors=[OutputTensor("x", "F32", (2, 3))]) as w:
            w.write(name, tensor)
    assert list(tmp_path.iterdir()) == []


def test_unplanned_extra_tensor_and_missing_tensor(tmp_path: Path) -> None:
    tensors = {"x": torch.ones(2), "y": torch.ones(2)}
    with pytest.raises(ValueError, match="were not written, starting with 'y'"):
        with CheckpointWriter(tmp_path / "out", inputs=[], tensors=plan(tensors)) as w:
            w.write("x", tensors["x"])
            w.commit()
    with pytest.raises(ValueError, match="was not planned"):
        with CheckpointWriter(tmp_path / "out", inputs=[], tensors=plan({"x": torch.ones(2)})) as w:
            w.write("x", torch.ones(2))
            w.write("z", torch.ones(2))
    assert list(tmp_path.iterdir()) == []


def test_leaving_without_commit_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without commit"):
        with CheckpointWriter(tmp_path / "out", inputs=[], tensors=plan({"x": torch.ones(2)})) as w:
            w.write("x", torch.ones(2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "model.safetensors", INDEX_FILE])
def test_add_file_needs_a_plain_new_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        with CheckpointWriter(tmp_path / "out", inputs=[], tensors=[]) as w:
            w.add_file(name, "{}")
    assert list(tmp_path.iterdir()) == []


def test_bad_plan_is_rejected_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="planned twice"):
        CheckpointWriter(tmp_path / "o", inputs=[], tensors=[OutputTensor("x", "F32", (1,))] * 2)
    with pytest.raises(ValueError, match="unknown safetensors dtype"):
        CheckpointWriter(tmp_path / "o", inputs=[], tensors=[OutputTensor("x", "FP32", (1,))])
    with pytest.raises(UsageError):
        CheckpointWriter(tmp_path / "o", inputs=[], tensors=[], max_shard_size=0)
    assert list(tmp_path.iterdir()) == []


def test_copy_file_missing_source(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as info:
        with CheckpointWriter(tmp_path / "out", inputs=[], tensors=[]) as w:
            w.copy_file(tmp_path / "nope.json")
    assert info.value.what == "Cannot read" and info.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_copy_file_refuses_a_file_that_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in" / "tokenizer.json"
    src.parent.mkdir()
    src.write_bytes(b"x" * 10)
    real = writer_mod._write_all

    def growing(fh, data):
        real(fh, data)
        with open(src, "ab") as f:  # another process appends while we copy
            f.write(b"more")

    monkeypatch.setattr(writer_mod, "_write_all", growing)
    with pytest.raises(InvalidInputError, match="changed while it was being copied"):
        with CheckpointWriter(tmp_path / "out", inputs=[src.parent], tensors=[]) as w:
            w.copy_file(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


# ------------------------------------------------------------------------------------ parse_size


@pytest.mark.parametrize(
    "text, value",
    [
        ("5GB", 5_000_000_000),
        ("500MB", 500_000_000),
        ("2GiB", 2 * 1024**3),
        ("10kb", 10_000),
        ("3 MiB", 3 * 1024**2),
        (" 1.5GB ", 1_500_000_000),
        ("1TB", 10**12),
        ("7B", 7),
        ("1024", 1024),
        ("5_000_000_000", 5_000_000_000),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "5XB", "-1", "0", "0GB", 0, -5, "1.5", "0.1KiB", "1e9", "5 G B", True, None])
def test_parse_size_rejects_junk(text) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text)
    assert info.value.exit_code == 2 and "500MB" in info.value.hint


# ------------------------------------------------------------------------------------ processes


def test_module_imports_without_torch() -> None:
    code = "import sys, inspector.io.writer; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


SIGINT_SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    import torch
    import inspector.io.writer as W

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores SIGINT
    out, force = Path(sys.argv[1]), sys.argv[2] == "force"
    tensors = {f"t{i}": torch.full((64,), float(i)) for i in range(3)}
    plan = [W.OutputTensor(k, "F32", tuple(v.shape)) for k, v in tensors.items()]
    real, calls = W._write_all, []

    def slow(fh, data):
        calls.append(1)
        if len(calls) == 3:  # header, t0, then stall inside the write of t1
            print("ready", flush=True)
            time.sleep(60)
        real(fh, data)

    W._write_all = slow
    with W.CheckpointWriter(out, inputs=[], tensors=plan, force=force) as w:
        for k, v in tensors.items():
            w.write(k, v)
        w.commit()
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "forced-over-old"])
def test_sigint_mid_write_leaves_no_staging(tmp_path: Path, existing: bool) -> None:
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("old")
    before = tree(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGINT_SCRIPT, str(out), "force" if existing else "no"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert any(".staging-" in p.name for p in tmp_path.iterdir())  # interrupted mid-write
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr and "finished" not in stdout
    assert tree(tmp_path) == before  # no staging; the old output (or its absence) unchanged


@pytest.mark.gpu
def test_cuda_tensors_are_written(tmp_path: Path) -> None:
    tensors = {"x": torch.randn(8, 4, device="cuda").to(torch.bfloat16)}
    out = write_all(tmp_path / "out", tensors)
    assert_same(read_back(out / "model.safetensors")[0], {"x": tensors["x"].cpu()})


def test_a_second_interrupt_during_cleanup_is_held_until_the_staging_dir_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C pressed again while abort() removes the staging directory arrives only afterwards."""
    import os
    import shutil as real_shutil
    import signal

    import torch

    import inspector.io.writer as writer_module

    out = tmp_path / "out"
    plan = [OutputTensor("a", "F32", (4,)), OutputTensor("b", "F32", (4,))]
    writer = CheckpointWriter(out, inputs=[], tensors=plan)
    writer.write("a", torch.zeros(4))
    staging = next(p for p in tmp_path.iterdir() if p.name.startswith(".out.staging"))
    rmtree = real_shutil.rmtree
    seen: list[bool] = []

    def interrupted_rmtree(path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # held: no KeyboardInterrupt inside the cleanup
        seen.append(True)
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(writer_module.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        writer.abort()  # the held SIGINT is delivered once the cleanup is done
    assert seen == [True] and not staging.exists() and not out.exists()


@pytest.mark.parametrize("force", [False, True], ids=["new", "force-replace"])
def test_interrupt_while_publishing_completes_the_swap_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                                   llama_path_and_adapter: tuple[Path, Path], force: bool) -> None:
    """Ctrl-C during the final rename (or while --force deletes the old output): the swap runs to the
    end, no hidden directory is left, and the message says the output is complete, not "nothing was written"."""
    from inspector.cli import main

    base, adapter = llama_path_and_adapter
    out = tmp_path / "merged"
    if force:
        out.mkdir()
        for i in range(50):
            (out / f"old-{i}.txt").write_text("old")
    rename, remove_tree = writer_mod.os.rename, writer_mod.remove_tree

    def interrupted(fn):
        def wrapper(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # held until the output is in place
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(writer_mod, "remove_tree", interrupted(remove_tree)) if force else monkeypatch.setattr(writer_mod.os, "rename", interrupted(rename))
    rc = main(["merge", str(base), str(adapter), "--out", str(out), "--device", "cpu", *(["--force"] if force else [])])
    stdout, err = capsys.readouterr()
    assert rc == 130 and stdout == ""
    assert err.lstrip("\n") == (f"Error: interrupted after '{out}' was written.\n"
                   f"Hint: the output is complete and verified; only the report was not printed (`lora-inspector scan {out}` shows it).\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no .merged.staging-* / .merged.old-*
    assert (out / "model.safetensors").is_file() and not (out / "old-0.txt").exists()


@pytest.fixture
def llama_path_and_adapter(llama, lora_llama) -> tuple[Path, Path]:
    return llama.path, lora_llama.path


def test_old_output_that_cannot_be_removed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # --force over an old output with read-only parts: the new output is in place; what is left is said.
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    monkeypatch.setattr(writer_mod, "remove_tree", lambda path, forbidden: False)  # nothing can be deleted
    write_all(out, {"x": torch.zeros(2)}, force=True)
    err = capsys.readouterr().err
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert len(left) == 1 and (left[0] / "old.txt").exists() and (out / "model.safetensors").is_file()
    assert err == f"Warning: the old output could not be fully removed; what is left of it is in '{left[0]}'. Delete it by hand.\n"


def test_a_run_that_published_first_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two runs into one new --out: the second one's rename finds it taken, and says so (no --force).
    out = tmp_path / "out"
    writer = CheckpointWriter(out, inputs=[], tensors=[OutputTensor("x", "F32", (2,))])
    writer.write("x", torch.zeros(2))
    out.mkdir()
    (out / "first.txt").write_text("the other run")
    with pytest.raises(UsageError, match=r"the directory exists and is not empty \(another run wrote it meanwhile\)"):
        writer.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "first.txt").exists()
