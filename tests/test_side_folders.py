"""Side folders: a sentence-transformers model keeps its modules in the folders
modules.json names (1_Pooling, 2_Dense, 3_Normalize); resize and merge carry them, so that
``SentenceTransformer(out)`` loads the written model. Built at test time with the real package."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402

import inspector.io.writer as writer_mod  # noqa: E402
from inspector.cli import main  # noqa: E402
from inspector.errors import InvalidInputError  # noqa: E402
from inspector.io.sidefiles import module_folders, output_side_folders, side_bytes, tree_bytes  # noqa: E402
from inspector.io.writer import CheckpointWriter  # noqa: E402
from tests.models import HIDDEN, VOCAB, copy_checkpoint, make_bert, make_lora_adapter, make_tokenizer  # noqa: E402

TEXTS = ["w3 w4 w5 w6", "w10 w11", "w40 w41 w42 w43 w44 w45"]
MODULES = ["Transformer", "Pooling", "Dense", "Normalize"]


def _modules():
    try:  # sentence-transformers >= 6
        from sentence_transformers.base.modules import Dense, Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    return Transformer, Pooling, Dense, Normalize


def run(*argv: object) -> int:
    return main([str(a) for a in argv])


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT + WordLevel tokenizer as a SentenceTransformer: mean pooling, a Dense layer
    (its own model.safetensors in 2_Dense) and Normalize, saved with SentenceTransformer.save."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("st")
    make_bert(root / "bert")
    make_tokenizer(root / "bert")
    tok = AutoTokenizer.from_pretrained(root / "bert")
    tok.pad_token = tok.unk_token  # sentence-transformers pads every batch
    tok.save_pretrained(root / "bert")
    Transformer, Pooling, Dense, Normalize = _modules()
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SentenceTransformer(modules=[Transformer(str(root / "bert")), Pooling(HIDDEN), Dense(HIDDEN, 8), Normalize()], device="cpu")
        model.save(str(root / "model"))
    return root / "model"


@pytest.fixture(scope="module")
def st_lora(st_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter trained on the model's BertModel (query/value)."""
    out = tmp_path_factory.mktemp("st_lora") / "adapter"
    make_lora_adapter(st_dir, out, r=2, lora_alpha=4, target_modules=["query", "value"])
    return out


def load_st(path: Path) -> SentenceTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SentenceTransformer(str(path), device="cpu")


def encode(model: SentenceTransformer) -> torch.Tensor:
    return model.encode(TEXTS, convert_to_tensor=True)


def assert_modules_carried(out: Path, st_dir: Path) -> SentenceTransformer:
    for name in module_folders(st_dir):
        assert files_of(out / name) == files_of(st_dir / name), name  # byte for byte, Dense weights included
    model = load_st(out)
    assert [type(m).__name__ for m in model] == MODULES
    base = load_st(st_dir)
    torch.testing.assert_close(model[2].linear.weight, base[2].linear.weight, rtol=0, atol=0)
    return model


def test_the_fixture_has_module_folders(st_dir: Path) -> None:
    assert module_folders(st_dir) == ["1_Pooling", "2_Dense", "3_Normalize"]
    assert (st_dir / "2_Dense" / "model.safetensors").is_file()


def test_resize_carries_the_module_folders(st_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "resized"
    assert run("resize", st_dir, "--out", out, "--vocab", VOCAB + 8, "-q") == 0
    model = assert_modules_carried(out, st_dir)
    # Old tokens keep their rows, so every embedding of these texts is unchanged.
    torch.testing.assert_close(encode(model), encode(load_st(st_dir)), rtol=0, atol=1e-6)
    assert model[0].auto_model.get_input_embeddings().weight.shape[0] == VOCAB + 8


def test_merge_carries_the_module_folders(st_dir: Path, st_lora: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    out = tmp_path / "merged"
    assert run("merge", st_dir, st_lora, "--out", out, "--device", "cpu", "-q") == 0
    model = assert_modules_carried(out, st_dir)
    reference = load_st(st_dir)
    merged = PeftModel.from_pretrained(reference[0].auto_model, st_lora).merge_and_unload()
    reference[0].model = merged  # the same SentenceTransformer around PEFT's merged BertModel
    assert reference[0].auto_model is merged
    torch.testing.assert_close(encode(model), encode(reference), rtol=0, atol=1e-5)
    assert not torch.allclose(encode(model), encode(load_st(st_dir)), atol=1e-4)  # the adapter did change them


# ---- what is copied of a folder, and what never is


def test_only_folders_inside_the_model_are_copied(st_dir: Path, tmp_path: Path) -> None:
    model = copy_checkpoint(st_dir, tmp_path / "model")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE")
    (model / "4_Out").symlink_to(secret, target_is_directory=True)  # a module folder leading out
    (model / "1_Pooling" / "leak.txt").symlink_to(secret / "id_rsa")  # a file leading out
    (model / "1_Pooling" / "same.json").symlink_to("config.json")  # a link that stays inside: copied
    (model / "1_Pooling" / ".git").mkdir()  # hidden: left out
    (model / "1_Pooling" / ".git" / "HEAD").write_text("ref")
    os.mkfifo(model / "2_Dense" / "pipe")  # not a regular file: left out (and never opened)
    (model / "2_Dense" / "sub").mkdir()
    (model / "2_Dense" / "sub" / "loop").symlink_to("..", target_is_directory=True)  # a cycle: walked once
    modules = json.loads((st_dir / "modules.json").read_text())
    modules += [{"idx": 9, "name": n, "path": n, "type": "x"} for n in ("4_Out", "../secret", str(secret), "1_Pooling/../..", "model.safetensors", ".", "3_Normalize/")]
    (model / "modules.json").write_text(json.dumps(modules))

    assert module_folders(model) == ["1_Pooling", "2_Dense", "3_Normalize"]
    out = tmp_path / "out"
    assert run("resize", model, "--out", out, "--vocab", VOCAB, "-q") == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["1_Pooling", "2_Dense", "3_Normalize"]
    assert sorted(files_of(out / "1_Pooling")) == ["config.json", "same.json"]
    assert (out / "1_Pooling" / "same.json").read_bytes() == (model / "1_Pooling" / "config.json").read_bytes()
    assert not (out / "1_Pooling" / "same.json").is_symlink()
    assert sorted(files_of(out / "2_Dense")) == ["config.json", "model.safetensors"]
    assert [p.name for p in (out / "2_Dense").iterdir() if p.is_dir()] == ["sub"]
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert "PRIVATE" not in "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    (out / "modules.json").write_bytes((st_dir / "modules.json").read_bytes())  # sentence-transformers refuses "../secret" itself
    assert [type(m).__name__ for m in load_st(out)] == MODULES


def test_a_broken_modules_json_copies_no_folders(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    for text in ("not json", '{"path": "1_Pooling"}', "[1, null, {\"path\": 5}]", " " * 2_000_000):
        (tmp_path / "modules.json").write_text(text)
        assert module_folders(tmp_path) == []


def test_chat_template_folder_travels_with_the_tokenizer(tmp_path: Path) -> None:
    """transformers saves named chat templates in additional_chat_templates/; AutoTokenizer reads them there."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    make_bert(base)
    make_tokenizer(base)
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = {"default": "{{ messages[0]['content'] }}", "tool_use": "{{ tools }}"}
    tok.save_pretrained(base)
    assert (base / "additional_chat_templates" / "tool_use.jinja").is_file()
    out = tmp_path / "out"
    assert run("resize", base, "--out", out, "--vocab", VOCAB + 8, "-q") == 0
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template
    # Another tokenizer written with the model brings its own folder, never the base's.
    other = make_tokenizer(tmp_path / "other", size=VOCAB + 8)
    assert [f.name for f in output_side_folders(base, other)] == []
    assert run("resize", base, "--out", tmp_path / "out2", "--tokenizer", other, "-q") == 0
    assert not (tmp_path / "out2" / "additional_chat_templates").exists()


# ---- the writer's copy_tree


def test_copy_tree_counts_and_copies(tmp_path: Path) -> None:
    src = tmp_path / "in" / "mod"
    (src / "deep").mkdir(parents=True)
    (src / "a.json").write_bytes(b"x" * 10)
    (src / "deep" / "b.bin").write_bytes(b"y" * 100)
    assert tree_bytes(src, src.parent) == 110
    assert side_bytes([src / "a.json"], output_side_folders(src.parent, src.parent)) == 10  # no modules.json: no folders
    with CheckpointWriter(tmp_path / "out", inputs=[src.parent], tensors=[]) as w:
        w.copy_tree(src, "mod", root=src.parent)
        w.copy_tree(src, "nested/mod", root=src.parent)
        w.copy_tree(src, "nested/other", root=src.parent)  # folders may share a parent
        w.commit()
    assert files_of(tmp_path / "out" / "mod") == files_of(src) == files_of(tmp_path / "out" / "nested" / "mod")


@pytest.mark.parametrize("bad", ["", "../x", "/abs", "a//b", "a/./b", "mod", "mod/inner", "nested", "model.safetensors", "config.json"])
def test_copy_tree_needs_a_new_relative_name(tmp_path: Path, bad: str) -> None:
    src = tmp_path / "in" / "mod"
    src.mkdir(parents=True)
    with pytest.raises(ValueError):
        with CheckpointWriter(tmp_path / "out", inputs=[src.parent], tensors=[]) as w:
            w.add_file("config.json", "{}")
            w.copy_tree(src, "mod", root=src.parent)
            w.copy_tree(src, "nested/mod", root=src.parent)
            w.copy_tree(src, bad, root=src.parent)
    assert not (tmp_path / "out").exists()


def test_copy_tree_refuses_a_file_that_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in" / "mod"
    src.mkdir(parents=True)
    (src / "a.json").write_bytes(b"x" * 10)
    real = writer_mod._write_all

    def growing(fh, data):
        real(fh, data)
        with open(src / "a.json", "ab") as f:  # another process appends while we copy
            f.write(b"more")

    monkeypatch.setattr(writer_mod, "_write_all", growing)
    with pytest.raises(InvalidInputError, match="changed while it was being copied"):
        with CheckpointWriter(tmp_path / "out", inputs=[src.parent], tensors=[]) as w:
            w.copy_tree(src, "mod", root=src.parent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_copy_tree_refuses_a_link_swapped_after_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in" / "mod"
    src.mkdir(parents=True)
    (src / "a.json").write_text("{}")
    (tmp_path / "secret").write_text("PRIVATE")
    listed = list(writer_mod.tree_entries(src, src.parent))
    (src / "a.json").unlink()
    (src / "a.json").symlink_to(tmp_path / "secret")  # swapped between the listing and the copy
    monkeypatch.setattr(writer_mod, "tree_entries", lambda *_: iter(listed))
    with pytest.raises(InvalidInputError, match="resolves outside the input directory"):
        with CheckpointWriter(tmp_path / "out", inputs=[src.parent], tensors=[]) as w:
            w.copy_tree(src, "mod", root=src.parent)
    assert not (tmp_path / "out").exists()
