"""``resize``: vocabulary matrices grown (or shrunk) on tiny real models with real tokenizers.

Tokenizers are trained at test time with ``tokenizers`` on a few sentences (a BERT WordPiece, a
Llama-style BPE with the 256 ``<0x..>`` byte-fallback pieces, a GPT-2/Qwen2-style byte-level BPE),
saved with transformers, then extended with ``add_tokens`` (medical words, Chinese characters, an
emoji) into a second directory. Each base model has exactly the old tokenizer's length in rows and
carries the old tokenizer files, as a hub checkpoint does.

Expected values never come from lora-inspector: old rows from the base file, new rows from each
init's formula computed here in fp32, subword pieces from the ``tokenizers`` library directly, and
transformers' own ``resize_token_embeddings(mean_resizing=True)`` as the reference for ``hf_mvn``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers import models as tok_models
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

from inspector.cli import main
from inspector.resize import resize_checkpoint
from tests import check_cases
from tests.check_cases import edit_tensors, replace
from tests.models import make_bert, make_llama, make_lora_adapter, make_qwen2

INITS = ("subword_mean", "mean", "hf_mvn", "normal", "zero")
CORPUS = [
    "the heart muscle pumps blood through the body",
    "doctors measure blood pressure in the clinic every morning",
    "a patient with chest pain needs an electrocardiogram today",
    "the cardiologist reads the heart rhythm and writes a short report",
    "muscle cells need oxygen and the lungs bring it in",
    "high pressure in the arteries strains the heart over the years",
] * 3
# New vocabulary: words the old tokenizers split into subwords, Chinese characters (byte-fallback
# pieces for the Llama-style BPE, [UNK] for WordPiece), an emoji (4 bytes, unknown to all).
ADDED = ("cardiomyopathy", "hypertension", "electrocardiography", "heartbeat", "Ménière", "心", "肌", "心肌", "🧬")
BYTE_PIECE = re.compile(r"^<0x[0-9A-F]{2}>$")
SP_SPACE = "\u2581"  # sentencepiece's word-boundary marker "▁"


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- tokenizers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tok:
    old: Path  # what the base was trained with (also saved in the base dir)
    new: Path  # old + ADDED, saved by transformers
    unk: str | None

    @cached_property
    def old_len(self) -> int:
        return len(AutoTokenizer.from_pretrained(self.old))

    @cached_property
    def new_len(self) -> int:
        return len(AutoTokenizer.from_pretrained(self.new))


def _extend(old_dir: Path, new_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(old_dir)
    before = len(tok)
    assert tok.add_tokens(list(ADDED)) == len(ADDED)
    tok.save_pretrained(new_dir)
    again = AutoTokenizer.from_pretrained(new_dir)
    assert again.convert_tokens_to_ids(list(ADDED)) == list(range(before, before + len(ADDED)))


def build_wordpiece(root: Path) -> Tok:
    """BERT-style: lower-casing normalizer, BERT pre-tokenizer (splits CJK characters), WordPiece."""
    wp = Tokenizer(tok_models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=130, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    fast = BertTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(root / "wordpiece_old")
    _extend(root / "wordpiece_old", root / "wordpiece_new")
    return Tok(root / "wordpiece_old", root / "wordpiece_new", "[UNK]")


def build_byte_fallback_bpe(root: Path) -> Tok:
    """Llama-style: "▁" for spaces and a dummy prefix, BPE with byte fallback, <0x00>..<0xFF> in the vocab."""
    byte_pieces = [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(tok_models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend(SP_SPACE), normalizers.Replace(" ", SP_SPACE)])
    bpe.decoder = decoders.Sequence([decoders.Replace(SP_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=420, special_tokens=["<unk>", "<s>", "</s>", *byte_pieces], show_progress=False))
    assert all(bpe.token_to_id(p) is not None for p in byte_pieces)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(root / "bpe_old")
    _extend(root / "bpe_old", root / "bpe_new")
    return Tok(root / "bpe_old", root / "bpe_new", "<unk>")


def build_byte_level_bpe(root: Path) -> Tok:
    """GPT-2 / Qwen2-style byte-level BPE: every text splits into known pieces, no <0x..> pieces."""
    bl = Tokenizer(tok_models.BPE())
    bl.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bl.decoder = decoders.ByteLevel()
    bl.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=330, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"], show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=bl, eos_token="<|endoftext|>")
    fast.save_pretrained(root / "bytelevel_old")
    _extend(root / "bytelevel_old", root / "bytelevel_new")
    return Tok(root / "bytelevel_old", root / "bytelevel_new", None)


def expected_pieces(tok: Tok, text: str) -> list[str]:
    """The old tokenizer's pieces of ``text`` (no special tokens, unknown dropped), via ``tokenizers`` itself."""
    raw = Tokenizer.from_file(str(tok.old / "tokenizer.json"))
    enc = raw.encode(text, add_special_tokens=False)
    return [t for t in enc.tokens if t != tok.unk]


def expected_subword(tok: Tok) -> tuple[list[list[int]], int, int]:
    """Old-vocabulary ids per new token, the count that fell back to the mean, the count split into bytes only."""
    raw = Tokenizer.from_file(str(tok.old / "tokenizer.json"))
    ids, fallbacks, byte_only = [], 0, 0
    for text in ADDED:
        pieces = expected_pieces(tok, text)
        ids.append([raw.token_to_id(p) for p in pieces])
        if not pieces:
            fallbacks += 1
        # "▁" alone is the dummy prefix sentencepiece-style tokenizers put before the bytes of "心".
        elif any(BYTE_PIECE.match(p) for p in pieces) and all(BYTE_PIECE.match(p) or p == SP_SPACE for p in pieces):
            byte_only += 1
    return ids, fallbacks, byte_only


# ---- base models ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    name: str
    path: Path
    tok: Tok
    embed: str
    head: str | None  # untied output matrix
    bias: str | None  # output bias [V]
    dtype: torch.dtype
    tied: bool

    @property
    def auto(self):
        return AutoModelForMaskedLM if self.name == "bert" else AutoModelForCausalLM

    def vocab_tensors(self) -> list[str]:
        return [n for n in (self.embed, self.head, self.bias) if n is not None]


@dataclass
class World:
    root: Path
    toks: dict[str, Tok]
    bases: dict[str, Base]
    cache: dict
    states: dict

    def state(self, path: Path) -> dict[str, torch.Tensor]:
        key = str(path)
        if key not in self.states:
            self.states[key] = load_file(str(Path(path) / "model.safetensors"))
        return self.states[key]

    def resize(self, base: Base, *args: object) -> tuple[Path, dict]:
        """Run ``lora-inspector resize`` once per argument set; the JSON report goes to a file."""
        key = (base.name, *map(str, args))
        if key not in self.cache:
            out = self.root / "out" / f"{base.name}-{len(self.cache)}"
            report = self.root / "out" / f"{base.name}-{len(self.cache)}.json"
            rc = main(["resize", str(base.path), "--out", str(out), *map(str, args), "--format", "json", "--output", str(report)])
            assert rc == 0
            self.cache[key] = (out, json.loads(report.read_text()))
        return self.cache[key]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("resize")
    (root / "out").mkdir()
    toks = {"wordpiece": build_wordpiece(root), "bpe": build_byte_fallback_bpe(root), "bytelevel": build_byte_level_bpe(root)}
    bases: dict[str, Base] = {}
    bpe = toks["bpe"]
    for name, dtype in (("llama", torch.float32), ("llama_bf16", torch.bfloat16)):
        make_llama(root / name, vocab=bpe.old_len, dtype=dtype, seed=1)
        bases[name] = Base(name, root / name, bpe, "model.embed_tokens.weight", "lm_head.weight", None, dtype, False)
    # BertForMaskedLM: decoder tied to the word embeddings, output bias cls.predictions.bias. A freshly
    # initialized bias is all zeros; give it values so that every init's bias formula is visible.
    wp = toks["wordpiece"]
    make_bert(root / "bert_raw", vocab=wp.old_len, mlm_head=True, seed=2)
    gen = torch.Generator().manual_seed(3)
    edit_tensors(root / "bert_raw", root / "bert", replace("cls.predictions.bias", torch.randn(wp.old_len, generator=gen) * 0.1), filename="model.safetensors")
    bases["bert"] = Base("bert", root / "bert", wp, "bert.embeddings.word_embeddings.weight", None, "cls.predictions.bias", torch.float32, True)
    bl = toks["bytelevel"]
    make_qwen2(root / "qwen2", vocab=bl.old_len, tied=True, seed=4)
    bases["qwen2"] = Base("qwen2", root / "qwen2", bl, "model.embed_tokens.weight", None, None, torch.float32, True)
    for base in bases.values():
        AutoTokenizer.from_pretrained(base.tok.old).save_pretrained(base.path)
        assert json.loads((base.path / "config.json").read_text())["vocab_size"] == base.tok.old_len
    return World(root, toks, bases, {}, {})


def raw_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_rest_unchanged(world: World, base: Base, out: Path, rows: int) -> dict[str, torch.Tensor]:
    """Same tensor names; vocabulary tensors resized with old rows bit-identical; all others byte-identical."""
    old, new = world.state(base.path), world.state(out)
    assert set(new) == set(old)
    keep = min(rows, base.tok.old_len)
    for name, tensor in old.items():
        assert new[name].dtype == tensor.dtype, name
        if name in base.vocab_tensors():
            assert new[name].shape[0] == rows and new[name].shape[1:] == tensor.shape[1:], name
            assert torch.equal(new[name][:keep], tensor[:keep]), name
        else:
            assert new[name].shape == tensor.shape and torch.equal(raw_bytes(new[name]), raw_bytes(tensor)), name
    if base.tied:
        assert "lm_head.weight" not in new
    return new


def assert_config(base: Base, out: Path, rows: int) -> None:
    before = json.loads((base.path / "config.json").read_text())
    after = json.loads((out / "config.json").read_text())
    assert after["vocab_size"] == rows
    assert {k: v for k, v in after.items() if k != "vocab_size"} == {k: v for k, v in before.items() if k != "vocab_size"}


def assert_loads(base: Base, out: Path, rows: int) -> None:
    """transformers loads the result with no missing, unexpected or mismatched keys; a forward pass runs."""
    state = load_file(str(out / "model.safetensors"))
    model, info = base.auto.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    embed = model.get_input_embeddings().weight
    assert embed.dtype == base.dtype and torch.equal(embed, state[base.embed])
    head = model.get_output_embeddings()
    if base.tied:
        assert head.weight.data_ptr() == embed.data_ptr()  # still tied
    else:
        assert torch.equal(head.weight, state[base.head])
    if base.bias:
        assert torch.equal(model.cls.predictions.decoder.bias, state[base.bias])
    ids = torch.tensor([[0, 5, min(base.tok.old_len, rows) - 1, rows - 1]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, 4, rows) and torch.isfinite(logits).all()


def expected_rows(old: torch.Tensor, count: int, init: str, *, subword: list[list[int]] | None = None) -> torch.Tensor:
    """The deterministic inits' formulas, computed in fp32 (for a [V] bias, per entry)."""
    old32 = old.float().reshape(old.shape[0], -1)
    mean = old32.mean(dim=0)
    if init == "zero":
        rows = torch.zeros(count, old32.shape[1])
    elif init == "subword_mean":
        rows = torch.stack([old32[ids].mean(dim=0) if ids else mean for ids in subword])
    else:
        rows = mean.expand(count, -1)
    return rows.reshape(count, *old.shape[1:])


def assert_new_rows(base: Base, init: str, name: str, old: torch.Tensor, new: torch.Tensor, *, seed_note: str = "") -> None:
    count = new.shape[0] - old.shape[0]
    added = new[old.shape[0]:]
    old32 = old.float()
    mean = old32.mean(dim=0)
    is_bias = name == base.bias
    if is_bias and base.tied:  # a tied MLM head's bias: transformers pads it with zeros, whatever the init
        assert torch.equal(added, torch.zeros_like(added))
    elif init in ("mean", "zero", "subword_mean"):
        subword = expected_subword(base.tok)[0] if init == "subword_mean" else None
        want = expected_rows(old, count, init, subword=subword).to(old.dtype)
        torch.testing.assert_close(added.float(), want.float(), atol=1e-5, rtol=0)
    elif init == "normal":
        if is_bias:  # transformers' _init_weights zeroes Linear biases
            assert torch.equal(added, torch.zeros_like(added))
        else:
            values = added.float()
            assert abs(values.mean().item()) < 0.01
            assert 0.01 < values.std().item() < 0.03  # initializer_range 0.02
    elif init == "hf_mvn":
        # mean + N(0, 1e-9 * covariance): within ~1e-3 of the mean (in fact ~1e-6 at these scales)
        torch.testing.assert_close(added.float(), mean.expand_as(added).to(old.dtype).float(), atol=1e-5 if old.dtype == torch.float32 else 1e-3, rtol=0)
        if old.dtype == torch.float32 and not is_bias:
            assert not torch.equal(added, mean.expand_as(added)), "hf_mvn added no noise"
    else:  # pragma: no cover
        raise AssertionError(init)


# ---- the main matrix: every base x every init --------------------------------------------------------


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("name", ["llama", "llama_bf16", "bert", "qwen2"])
def test_resize_to_extended_tokenizer(world: World, name: str, init: str) -> None:
    base = world.bases[name]
    tok = base.tok
    out, report = world.resize(base, "--tokenizer", tok.new, "--init", init)
    rows = tok.new_len
    assert rows == tok.old_len + len(ADDED)

    # the report
    assert (report["schema"], report["command"], report["out"]) == (1, "resize", str(out))
    assert (report["old_rows"], report["rows"], report["requested_rows"], report["init"]) == (tok.old_len, rows, rows, init)
    assert report["tokenizer_from"] == str(tok.new)
    assert {m["name"]: (m["old_shape"], m["new_shape"], m["init"]) for m in report["matrices"]} == {
        n: (list(world.state(base.path)[n].shape), [rows, *world.state(base.path)[n].shape[1:]], "zero" if n == base.bias and base.tied else init)
        for n in base.vocab_tensors()
    }
    if init == "subword_mean":
        _, fallbacks, byte_only = expected_subword(tok)
        assert report["subword"] == {
            "tokens": len(ADDED),
            "fallbacks": fallbacks,
            "byte_only": byte_only,
            "byte_only_share": round(byte_only / len(ADDED), 4),
            "padding_rows": 0,
        }
    else:
        assert report["subword"] is None

    # the checkpoint
    new = assert_rest_unchanged(world, base, out, rows)
    old = world.state(base.path)
    for tensor_name in base.vocab_tensors():
        assert_new_rows(base, init, tensor_name, old[tensor_name], new[tensor_name])
    assert_config(base, out, rows)
    for path in sorted(tok.new.iterdir()):  # the new tokenizer's files, byte for byte
        assert (out / path.name).read_bytes() == path.read_bytes()
    assert len(AutoTokenizer.from_pretrained(out)) == rows
    assert_loads(base, out, rows)


def test_subword_counts_exercise_every_path(world: World) -> None:
    """The test tokenizers do reach each branch: byte-only splits (BPE), fallbacks (WordPiece), neither."""
    assert expected_subword(world.toks["bpe"])[1:] == (0, 4)  # 心 肌 心肌 🧬 -> "▁" + <0x..> pieces
    # CJK and emoji -> [UNK] only; "heartbeat" too (WordPiece learnt no "##b" continuation piece)
    assert expected_subword(world.toks["wordpiece"])[1:] == (5, 0)
    assert expected_subword(world.toks["bytelevel"])[1:] == (0, 0)
    pieces = expected_pieces(world.toks["bpe"], "心")
    assert pieces[0] == SP_SPACE and all(BYTE_PIECE.match(p) for p in pieces[1:])
    assert len(expected_pieces(world.toks["wordpiece"], "cardiomyopathy")) > 1


def test_json_on_stdout_and_rich_summary(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = world.bases["llama"]
    rc, out, err = run(capsys, "resize", base.path, "--out", tmp_path / "a", "--tokenizer", base.tok.new, "--format", "json")
    assert (rc, err) == (0, "")
    report = json.loads(out)
    assert report["init"] == "subword_mean"  # the default when both tokenizers are known
    assert report["subword"]["byte_only"] == 4 and report["subword"]["fallbacks"] == 0
    rc, out, err = run(capsys, "resize", world.bases["bert"].path, "--out", tmp_path / "b", "--tokenizer", world.toks["wordpiece"].new, "--no-color")
    assert (rc, err) == (0, "")
    text = " ".join(out.split())
    assert f"{world.toks['wordpiece'].old_len} -> {world.toks['wordpiece'].new_len} rows" in text
    assert "bert.embeddings.word_embeddings.weight" in text and "cls.predictions.bias" in text
    assert "5 fell back to the mean" in text and "0 (0.0%) split into byte-fallback pieces only" in text


# ---- seeded inits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["normal", "hf_mvn"])
def test_seeded_inits_are_reproducible(world: World, tmp_path: Path, init: str) -> None:
    base = world.bases["llama"]
    old_rows = base.tok.old_len

    def added(tag: str, seed: int) -> dict[str, torch.Tensor]:
        resize_checkpoint(str(base.path), str(tmp_path / tag), vocab=old_rows + 32, init=init, seed=seed)
        state = load_file(str(tmp_path / tag / "model.safetensors"))
        return {n: state[n][old_rows:] for n in base.vocab_tensors()}

    a, b, c = added("a", 7), added("b", 7), added("c", 8)
    for name in base.vocab_tensors():
        assert torch.equal(a[name], b[name])
        assert not torch.equal(a[name], c[name])
    if init == "normal":
        values = torch.cat([a[n] for n in base.vocab_tensors()]).float()
        assert abs(values.std().item() - 0.02) < 0.002 and abs(values.mean().item()) < 0.002  # 1024 draws


def _whitened(rows: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """(rows - mean) in units of transformers' sampling covariance 1e-9 * cov: N(0, I) if hf_mvn."""
    old64 = old.double()
    mean = old64.mean(dim=0)
    centered = old64 - mean
    chol = torch.linalg.cholesky(1e-9 * centered.T @ centered / old64.shape[0])
    return torch.linalg.solve_triangular(chol, (rows.double() - mean).T, upper=False).T


def test_hf_mvn_equals_transformers_in_distribution(world: World, tmp_path: Path) -> None:
    """Ours and transformers' resize_token_embeddings(mean_resizing=True) both sample mean + N(0, 1e-9 cov)."""
    base = world.bases["llama"]
    old_rows, extra = base.tok.old_len, 256
    resize_checkpoint(str(base.path), str(tmp_path / "ours"), vocab=old_rows + extra, init="hf_mvn", seed=0)
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base.path)
    model.resize_token_embeddings(old_rows + extra, mean_resizing=True)
    theirs = {base.embed: model.get_input_embeddings().weight.detach(), base.head: model.get_output_embeddings().weight.detach()}
    old = world.state(base.path)
    for name in base.vocab_tensors():
        mean = old[name].float().mean(dim=0)
        for rows in (ours[name][old_rows:], theirs[name][old_rows:]):
            assert rows.shape == (extra, old[name].shape[1])
            torch.testing.assert_close(rows, mean.expand_as(rows), atol=1e-5, rtol=0)  # both ~ the mean
            z = _whitened(rows, old[name])
            # 256 x 16 standard normal draws (fp32 rounding of mean + 1e-6 noise adds a little spread)
            assert abs(z.mean().item()) < 0.1, name
            assert 0.85 < z.std().item() < 1.2, name
        torch.testing.assert_close(ours[name][old_rows:].float().mean(0), theirs[name][old_rows:].float().mean(0), atol=1e-6, rtol=0)
        assert torch.equal(ours[name][:old_rows], theirs[name][:old_rows])  # old rows: same bits as transformers keeps


def test_hf_mvn_bias_and_bf16(world: World) -> None:
    """A tied MLM head's bias: zeros, as transformers 5 pads it even with mean_resizing (checked against
    BertForMaskedLM.resize_token_embeddings); bf16 matrices: the mean, rounded."""
    bert = world.bases["bert"]
    out, _ = world.resize(bert, "--tokenizer", bert.tok.new, "--init", "hf_mvn")
    old = world.state(bert.path)["cls.predictions.bias"]
    added = world.state(out)["cls.predictions.bias"][old.shape[0]:]
    assert old.abs().sum() > 0 and torch.equal(added, torch.zeros_like(added))
    llama = world.bases["llama_bf16"]
    out, _ = world.resize(llama, "--tokenizer", llama.tok.new, "--init", "hf_mvn")
    for name in llama.vocab_tensors():
        old = world.state(llama.path)[name]
        added = world.state(out)[name][old.shape[0]:]
        mean = old.float().mean(dim=0).to(torch.bfloat16)
        torch.testing.assert_close(added, mean.expand_as(added), atol=1e-5, rtol=2**-7)  # mean + ~1e-6 noise, rounded


def test_statistics_in_fp32_for_bf16(world: World) -> None:
    """A bf16 mean accumulated in bf16 differs from the fp32 mean cast to bf16; resize uses the latter."""
    base = world.bases["llama_bf16"]
    out, _ = world.resize(base, "--tokenizer", base.tok.new, "--init", "mean")
    old = world.state(base.path)[base.embed]
    added = world.state(out)[base.embed][old.shape[0]:]
    assert torch.equal(added[0], old.float().mean(dim=0).to(torch.bfloat16))


# ---- padding, shrinking, default init -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_pad_to_multiple_of(world: World, name: str) -> None:
    base = world.bases[name]
    out, report = world.resize(base, "--tokenizer", base.tok.new, "--pad-to-multiple-of", 64)
    requested = base.tok.new_len
    rows = math.ceil(requested / 64) * 64
    assert rows > requested
    assert (report["requested_rows"], report["rows"], report["init"]) == (requested, rows, "subword_mean")
    assert (report["subword"]["tokens"], report["subword"]["padding_rows"]) == (len(ADDED), rows - requested)
    new = assert_rest_unchanged(world, base, out, rows)
    old = world.state(base.path)
    subword = expected_subword(base.tok)[0]
    for tensor_name in base.vocab_tensors():
        o, n = old[tensor_name], new[tensor_name]
        if tensor_name == base.bias and base.tied:  # transformers pads a tied MLM head's bias with zeros
            assert torch.equal(n[o.shape[0]:], torch.zeros_like(n[o.shape[0]:]))
            continue
        torch.testing.assert_close(n[o.shape[0]:requested].float(), expected_rows(o, len(ADDED), "subword_mean", subword=subword), atol=1e-5, rtol=0)
        pad = n[requested:]
        torch.testing.assert_close(pad.float(), o.float().mean(dim=0).expand_as(pad), atol=1e-5, rtol=0)
    assert_config(base, out, rows)
    assert len(AutoTokenizer.from_pretrained(out)) == requested  # padding rows have no token
    assert_loads(base, out, rows)


@pytest.mark.parametrize("name", ["llama_bf16", "bert"])
def test_shrink(world: World, name: str) -> None:
    base = world.bases[name]
    rows = base.tok.old_len - 10
    out, report = world.resize(base, "--vocab", rows)
    assert (report["old_rows"], report["rows"], report["subword"]) == (base.tok.old_len, rows, None)
    # The base's tokenizer travels along and no longer fits: written, with a warning (ids past the rows).
    assert report["warnings"] == [f"the tokenizer written with the model ({base.tok.old_len} tokens, from {base.path}) needs {base.tok.old_len} rows "
                                  f"but the model has {rows}: token ids {rows}..{base.tok.old_len - 1} are out of range (check reports LI201)"]
    new = assert_rest_unchanged(world, base, out, rows)  # rows truncated, the rest bit-identical
    for tensor_name in base.vocab_tensors():
        assert torch.equal(new[tensor_name], world.state(base.path)[tensor_name][:rows])
    assert_config(base, out, rows)
    for path in sorted(base.tok.old.iterdir()):  # no --tokenizer: the base's own files travel along
        assert (out / path.name).read_bytes() == (base.path / path.name).read_bytes()
    assert_loads(base, out, rows)


def test_padding_rows_taken_by_new_tokens_are_initialized(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Qwen2 keeps padding rows past its tokenizer. New tokens that land in them get subword_mean rows
    # (from the real tokens' rows), not the never-trained padding values; the rest is kept bit for bit.
    tok = world.toks["bytelevel"]
    padded = tmp_path / "qwen2_padded"
    make_qwen2(padded, vocab=tok.old_len + 16, tied=True, seed=4)
    AutoTokenizer.from_pretrained(tok.old).save_pretrained(padded)
    rc, out, err = run(capsys, "resize", padded, "--tokenizer", tok.new, "--out", tmp_path / "out", "--format", "json")
    report = json.loads(out)
    assert (rc, report["old_rows"], report["rows"], report["reused_padding_rows"]) == (0, tok.old_len + 16, tok.new_len, len(ADDED))
    assert report["subword"]["tokens"] == len(ADDED) and report["warnings"] == []
    old = load_file(str(padded / "model.safetensors"))["model.embed_tokens.weight"]
    new = load_file(str(tmp_path / "out" / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(new[: tok.old_len], old[: tok.old_len])
    want = expected_rows(old[: tok.old_len], len(ADDED), "subword_mean", subword=expected_subword(tok)[0])
    torch.testing.assert_close(new[tok.old_len:], want, atol=1e-6, rtol=0)


def test_normal_rows_are_drawn_per_matrix(world: World) -> None:
    # transformers samples the embedding's and the head's new rows apart; so does resize.
    base = world.bases["llama"]
    out, _ = world.resize(base, "--tokenizer", base.tok.new, "--init", "normal")
    new = load_file(str(out / "model.safetensors"))
    rows = slice(base.tok.old_len, None)
    assert not torch.equal(new["model.embed_tokens.weight"][rows], new["lm_head.weight"][rows])


def test_quantized_vocabulary_matrix_is_refused(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An FP8 lm_head (with its weight_scale_inv) has no values to average: refuse, write nothing.
    base = world.bases["llama"]
    fp8 = edit_tensors(base.path, tmp_path / "fp8", lambda t: {**t, "lm_head.weight": t["lm_head.weight"].to(torch.float8_e4m3fn),
                                                                  "lm_head.weight_scale_inv": torch.ones(1, 1)}, filename="model.safetensors")
    rc, out, err = run(capsys, "resize", fp8, "--vocab", base.tok.old_len + 8, "--out", tmp_path / "out")
    assert rc == 1 and out == "" and not (tmp_path / "out").exists()
    assert err.startswith(f"Error: Resize refused for '{fp8}': lm_head.weight is F8_E4M3, a quantized vocabulary matrix.")


def test_vocab_defaults_to_mean(world: World) -> None:
    base = world.bases["qwen2"]
    rows = base.tok.old_len + 5
    out, report = world.resize(base, "--vocab", rows)
    assert report["init"] == "mean" and report["rows"] == rows
    new = assert_rest_unchanged(world, base, out, rows)
    assert_new_rows(base, "mean", base.embed, world.state(base.path)[base.embed], new[base.embed])
    assert_loads(base, out, rows)


def test_without_old_tokenizer_default_is_mean(world: World, llama, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A base without tokenizer files cannot do subword_mean: the default falls back to mean."""
    tok = check_cases.make_tokenizer(tmp_path / "tok", 80)
    rc, out, err = run(capsys, "resize", llama.path, "--out", tmp_path / "out", "--tokenizer", tok, "--format", "json")
    assert (rc, err) == (0, "")
    report = json.loads(out)
    assert (report["init"], report["old_rows"], report["rows"], report["subword"]) == ("mean", 64, 80, None)


# ---- --like, then check ------------------------------------------------------------------------------


def check_json(capsys: pytest.CaptureFixture[str], base: Path, adapter: Path) -> tuple[int, dict]:
    rc, out, err = run(capsys, "check", base, adapter, "--format", "json")
    assert err == ""
    return rc, json.loads(out)


def test_like_seed_adapter(tmp_path: Path, seed_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, adapter, out = seed_dir / "base", seed_dir / "adapter", tmp_path / "base-resized"
    rc, report = check_json(capsys, base, adapter)
    assert rc == 1 and report["summary"]["error"] > 0
    rc, stdout, err = run(capsys, "resize", base, "--out", out, "--like", adapter, "--format", "json")
    assert (rc, err) == (0, "")
    report = json.loads(stdout)
    # Both tokenizers known (the base's, and the extended one beside the adapter): subword_mean by default.
    # The seed's added tokens are synthetic, so every one falls back to the mean.
    assert (report["old_rows"], report["rows"], report["init"]) == (32000, 70840, "subword_mean")
    assert (report["subword"]["tokens"], report["subword"]["fallbacks"]) == (38840, 38840)
    old, new = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert new[name].shape == (70840, 8) and new[name].dtype == torch.bfloat16
        assert torch.equal(new[name][:32000], old[name])
        assert torch.equal(new[name][32000:], old[name].float().mean(0).to(torch.bfloat16).expand(38840, -1))
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 70840
    assert (out / "tokenizer.json").read_bytes() == (adapter / "tokenizer.json").read_bytes()  # training's tokenizer
    rc, report = check_json(capsys, out, adapter)
    assert rc == 0 and report["summary"]["error"] == 0, report["findings"]


@pytest.fixture(scope="module")
def llama_adapter(world: World) -> Path:
    """Trained on the extended tokenizer: embed_tokens and lm_head in modules_to_save; tokenizer saved beside it."""
    base = world.bases["llama"]
    path = world.root / "lora_llama_ext"
    make_lora_adapter(base.path, path, vocab=base.tok.new_len, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens", "lm_head"])
    AutoTokenizer.from_pretrained(base.tok.new).save_pretrained(path)
    return path


def test_like_with_padding_is_refused(tmp_path: Path, seed_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 70,840 padded to 70,848 rows: PEFT could no longer load the adapter's 70,840-row matrices.
    rc, out, err = run(capsys, "resize", seed_dir / "base", "--like", seed_dir / "adapter", "--pad-to-multiple-of", 64, "--out", tmp_path / "out")
    assert (rc, out) == (2, "") and not (tmp_path / "out").exists()
    assert err.startswith("Error: Invalid options: --pad-to-multiple-of 64 would make 70848 rows, but the adapter needs exactly 70840.")


def test_default_subword_mean_falls_back_when_transformers_cannot_load_a_tokenizer(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # transformers cannot load a tokenizer (a lone tokenizer.model without protobuf, ...): the default
    # init says so and uses the mean; an explicit --init subword_mean fails with the reason.
    import inspector.resize as resize_module
    from inspector.errors import InvalidInputError

    def cannot(old_dir, new_dir, *args):
        raise InvalidInputError("Cannot load tokenizer", new_dir, "transformers could not load it (ImportError: protobuf)", "Use --init mean.")

    monkeypatch.setattr(resize_module, "subword_pieces", cannot)
    base = world.bases["llama"]
    broken = base.tok.new
    rc, out, err = run(capsys, "resize", base.path, "--tokenizer", broken, "--out", tmp_path / "out", "--format", "json")
    report = json.loads(out)
    assert rc == 0 and report["init"] == "mean" and report["warnings"][0].startswith("subword_mean (the default here) fell back to mean: Cannot load tokenizer")
    rc, out, err = run(capsys, "resize", base.path, "--tokenizer", broken, "--init", "subword_mean", "--out", tmp_path / "out2")
    assert rc == 2 and err.startswith("Error: Cannot load tokenizer")


def test_like_peft_adapter_then_check_is_clean(world: World, llama_adapter: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = world.bases["llama"]
    rc, report = check_json(capsys, base.path, llama_adapter)
    assert rc == 1 and report["summary"]["error"] > 0  # the size mismatch PEFT dies on
    out, report = world.resize(base, "--like", llama_adapter)
    assert (report["rows"], report["init"]) == (base.tok.new_len, "subword_mean")  # the adapter dir has the extended tokenizer
    assert_rest_unchanged(world, base, out, base.tok.new_len)
    assert_loads(base, out, base.tok.new_len)
    rc, report = check_json(capsys, out, llama_adapter)
    assert rc == 0 and report["summary"]["error"] == 0, report["findings"]
    # Trained on BASE (a local directory), checked against BASE resized: a copy, not another model (no LI1004).
    assert "LI1004" not in {f["code"] for f in report["findings"]}


def test_llama_extended_tokenizer_then_check_is_clean(world: World, llama_adapter: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's done-when, Llama-style: resize to the extended tokenizer, then check against the adapter."""
    base = world.bases["llama"]
    out, _ = world.resize(base, "--tokenizer", base.tok.new, "--init", "subword_mean")
    rc, report = check_json(capsys, out, llama_adapter)
    assert rc == 0 and report["summary"]["error"] == 0, report["findings"]


def make_mlm_adapter(base: Base, out: Path, vocab: int, save_embedding_layers: bool | str) -> Path:
    """A LoRA adapter trained with BertForMaskedLM on the extended tokenizer (word embeddings in modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(5)
    model = AutoModelForMaskedLM.from_pretrained(base.path)
    model.resize_token_embeddings(vocab, mean_resizing=False)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], modules_to_save=["word_embeddings"]))
    with torch.no_grad():
        for _, param in peft_model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.02)
    peft_model.save_pretrained(out, save_embedding_layers=save_embedding_layers)
    AutoTokenizer.from_pretrained(base.tok.new).save_pretrained(out)
    return out


def test_bert_extended_tokenizer_then_check_is_clean(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's done-when, BERT-style (tied decoder, output bias)."""
    base = world.bases["bert"]
    adapter = make_mlm_adapter(base, world.root / "lora_bert_ext", base.tok.new_len, save_embedding_layers=False)
    rc, report = check_json(capsys, base.path, adapter)
    assert rc == 1 and report["summary"]["error"] > 0
    out, _ = world.resize(base, "--tokenizer", base.tok.new, "--init", "subword_mean")
    rc, report = check_json(capsys, out, adapter)
    assert rc == 0 and report["summary"]["error"] == 0, report["findings"]


def test_bert_adapter_with_saved_output_layer_then_check_is_clean(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """PEFT's default save_embedding_layers="auto" sees the resize and also saves the tied decoder (weight and bias)."""
    base = world.bases["bert"]
    adapter = make_mlm_adapter(base, world.root / "lora_bert_ext_auto", base.tok.new_len, save_embedding_layers="auto")
    out, _ = world.resize(base, "--tokenizer", base.tok.new, "--init", "subword_mean")
    rc, report = check_json(capsys, out, adapter)
    assert rc == 0 and report["summary"]["error"] == 0, report["findings"]


@pytest.mark.parametrize("init", ["mean", "normal"])
def test_bart_final_logits_bias_grows_with_zeros(tmp_path: Path, capsys: pytest.CaptureFixture[str], init: str) -> None:
    """BART's final_logits_bias [1, V] is a buffer transformers pads with zeros on resize: zeros whatever --init."""
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)
    base = check_cases.make_model(tmp_path / "bart", BartForConditionalGeneration, config)
    old = load_file(str(base / "model.safetensors"))
    old["final_logits_bias"] = torch.linspace(-1, 1, 64).reshape(1, 64)  # a trained-looking bias: the mean is not 0
    save_file(old, str(base / "model.safetensors"), metadata={"format": "pt"})
    rc, out, err = run(capsys, "resize", base, "--out", tmp_path / "out", "--vocab", 80, "--init", init)
    assert rc == 0, err
    new = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert new["final_logits_bias"].shape == (1, 80)
    assert torch.equal(new["final_logits_bias"][:, :64], old["final_logits_bias"])
    assert torch.equal(new["final_logits_bias"][:, 64:], torch.zeros(1, 16))
    # transformers' own resize does the same
    reference = BartForConditionalGeneration.from_pretrained(base)
    reference.resize_token_embeddings(80)
    assert torch.equal(reference.final_logits_bias[:, 64:], torch.zeros(1, 16))
    if init == "mean":  # the embedding itself still follows --init
        assert torch.allclose(new["model.shared.weight"][64:], old["model.shared.weight"].mean(dim=0).expand(16, -1))


# ---- refusals: exit 2, Error:/Hint:, nothing written -----------------------------------------------------


def snapshot(*dirs: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for d in dirs:
        for dirpath, dirnames, filenames in os.walk(d):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                st = p.lstat()
                out[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


@pytest.fixture
def sandbox(world: World, tmp_path: Path) -> Path:
    """A private copy of the Llama base (with its tokenizer) and the extended tokenizer, in tmp_path."""
    shutil.copytree(world.bases["llama"].path, tmp_path / "base")
    shutil.copytree(world.toks["bpe"].new, tmp_path / "tok")
    return tmp_path


def assert_refused(capsys: pytest.CaptureFixture[str], root: Path, *argv: object, code: int = 2) -> str:
    before = snapshot(root)
    rc, out, err = run(capsys, "resize", *argv)
    assert rc == code, err
    assert out == ""
    assert re.fullmatch(r"Error: [^\n]+\.\nHint: [^\n]+\n", err), err
    assert snapshot(root) == before  # nothing written, no staging directory left behind
    return err


@pytest.mark.parametrize(
    "sizes",
    [(), ("--vocab", 500, "--tokenizer", "TOK"), ("--vocab", 500, "--like", "ADAPTER"), ("--tokenizer", "TOK", "--like", "ADAPTER")],
    ids=["none", "vocab+tokenizer", "vocab+like", "tokenizer+like"],
)
def test_refuses_not_exactly_one_size(sandbox: Path, llama_adapter: Path, capsys: pytest.CaptureFixture[str], sizes: tuple) -> None:
    args = [{"TOK": sandbox / "tok", "ADAPTER": llama_adapter}.get(a, a) for a in sizes]
    err = assert_refused(capsys, sandbox, sandbox / "base", "--out", sandbox / "out", *args)
    assert "--vocab" in err and "--tokenizer" in err and "--like" in err
    assert not (sandbox / "out").exists()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_refuses_out_on_the_input(sandbox: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    base = sandbox / "base"
    out = base if where == "same" else base / "resized"
    assert_refused(capsys, sandbox, base, "--out", out, "--vocab", 500, "--init", "mean")
    assert_refused(capsys, sandbox, base, "--out", out, "--tokenizer", sandbox / "tok")


def test_refuses_out_equal_to_tokenizer_dir(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(capsys, sandbox, sandbox / "base", "--out", sandbox / "tok", "--tokenizer", sandbox / "tok", "--force")


def test_non_empty_out_needs_force(world: World, sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = sandbox / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = assert_refused(capsys, sandbox, sandbox / "base", "--out", out, "--vocab", 500)
    assert "--force" in err
    rc, stdout, err = run(capsys, "resize", sandbox / "base", "--out", out, "--vocab", 500, "--force", "--format", "json")
    assert (rc, err) == (0, "")
    assert not (out / "keep.txt").exists()  # replaced, not merged into
    assert load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"].shape[0] == 500
    assert sorted(p.name for p in sandbox.iterdir()) == ["base", "out", "tok"]  # no staging left beside it
    # an empty --out needs no --force
    (sandbox / "empty").mkdir()
    assert run(capsys, "resize", sandbox / "base", "--out", sandbox / "empty", "--vocab", 500, "--format", "json")[0] == 0


def test_refuses_subword_mean_without_tokenizer(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = assert_refused(capsys, sandbox, sandbox / "base", "--out", sandbox / "out", "--vocab", 500, "--init", "subword_mean")
    assert "--tokenizer" in err


def test_refuses_subword_mean_without_old_tokenizer(llama, sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The conftest Llama has no tokenizer files: nothing to split the new tokens with."""
    tok = check_cases.make_tokenizer(sandbox / "tok80", 80)
    err = assert_refused(capsys, sandbox, llama.path, "--out", sandbox / "out", "--tokenizer", tok, "--init", "subword_mean")
    assert "subword_mean" in err and "--init mean" in err


def test_refuses_adapter_as_base(sandbox: Path, llama_adapter: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(llama_adapter)
    err = assert_refused(capsys, sandbox, llama_adapter, "--out", sandbox / "out", "--vocab", 500)
    assert "adapter" in err
    assert snapshot(llama_adapter) == before


def test_random_rows_keep_stored_copies_of_a_tied_weight_equal(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A tied model saved with both matrices (a legacy torch.save of state_dict()): one weight, one set of
    # new rows, or transformers loads it untied. An untied head (Llama) draws its own.
    base = world.bases["qwen2"]
    state = load_file(str(base.path / "model.safetensors"))
    both = tmp_path / "qwen2_both"
    shutil.copytree(base.path, both)
    save_file({**state, "lm_head.weight": state["model.embed_tokens.weight"].clone()}, str(both / "model.safetensors"), metadata={"format": "pt"})
    rc, _, err = run(capsys, "resize", both, "--vocab", base.tok.old_len + 8, "--init", "normal", "--out", tmp_path / "out")
    assert rc == 0, err
    new = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(new["model.embed_tokens.weight"], new["lm_head.weight"])
