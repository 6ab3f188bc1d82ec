"""``merge``: lora-inspector's streaming merge against PEFT's own ``merge_and_unload``.

Every case builds a tiny base and a PEFT adapter at test time (``tests.models``), merges it with
``lora-inspector merge`` and with PEFT's path on the torch model (``tests.merge_cases.peft_reference``),
then compares every tensor PEFT's merged model holds and the outputs of both models on a fixed
input. Expected values never come from lora-inspector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inspector.cli import main
from inspector.merge import merge_adapter
from tests import check_cases
from tests.check_cases import edit_config, edit_tensors, rename
from tests.failures import assert_json_error, assert_no_report
from tests.merge_cases import (
    DEVICE_TENSOR_TOL,
    LOGIT_TOL,
    TENSOR_TOL,
    assert_same_tensors,
    copy_without,
    drop_keys,
    header_dtypes,
    load,
    make_mlm_adapter,
    model_output,
    peft_reference,
    read_merged,
    sample_ids,
    untie,
)
from tests.models import Built, copy_checkpoint, make_bert, make_llama, make_lora_adapter, make_other_head, untied_state

QV = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
SEED_ROWS = 70_840


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def merge_json(capsys: pytest.CaptureFixture[str], base: Path, adapter: Path, out: Path, *extra: object, device: str = "cpu") -> dict:
    rc, stdout, err = run(capsys, "merge", base, adapter, "--out", out, "--device", device, "--format", "json", *extra)
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["command"] == "merge" and report["schema"] == 1
    return report


# ---- module-scoped extra bases (the session ones live in conftest) -----------------------------------


@pytest.fixture(scope="module")
def extra_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("merge_models")


@pytest.fixture(scope="module")
def llama_fp16(extra_root: Path) -> Built:
    return make_llama(extra_root / "llama_fp16", dtype=torch.float16)


@pytest.fixture(scope="module")
def bert_mlm_base(extra_root: Path) -> Built:
    return make_bert(extra_root / "bert_mlm", mlm_head=True)


@pytest.fixture(scope="module")
def modernbert_mlm(extra_root: Path) -> Built:
    return make_other_head(extra_root / "modernbert", "modernbert")


@pytest.fixture(scope="module")
def albert_mlm(extra_root: Path) -> Built:
    return make_other_head(extra_root / "albert", "albert")


@pytest.fixture(scope="module")
def xlnet_lm(extra_root: Path) -> Built:
    return make_other_head(extra_root / "xlnet", "xlnet")


# ---- the feature matrix ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One base + adapter. ``adapter`` names a conftest fixture, or ``lora`` holds LoraConfig kwargs
    for ``make_lora_adapter`` (``vocab``: trained on a resized model; ``drop``: saved keys removed)."""

    id: str
    base: str  # fixture name
    adapter: str | None = None
    lora: dict = field(default_factory=dict)
    vocab: int | None = None
    drop: tuple[str, ...] = ()
    rows: int | None = None  # rows of the merged vocabulary (PEFT's path resizes to it); None: unchanged
    tied_out: bool | None = None  # a tied base: is the merged model still tied?
    peft_unties: bool = False  # modules_to_save on a tied base: PEFT's own merge unties
    mlm: bool = False  # a *ForMaskedLM base (tests.models' adapter builder loads AutoModel)
    tokenizer: int | None = None  # save a tokenizer of this many tokens in the adapter dir
    args: tuple[str, ...] = ()


CASES = [
    Case("llama-qv", "llama", adapter="lora_llama"),
    Case("llama-qv-adapter-bin", "llama", adapter="lora_llama_bin"),
    Case("llama-sharded-base", "llama_sharded", adapter="lora_llama"),
    Case("llama-legacy-bin-base", "llama_bin", adapter="lora_llama"),
    Case("llama-qv-bf16", "llama_bf16", lora=QV),
    Case("llama-qv-fp16", "llama_fp16", lora=QV),
    Case("llama-all-linear", "llama", lora=dict(r=4, lora_alpha=8, target_modules="all-linear")),
    Case("llama-rslora", "llama", lora=dict(QV, use_rslora=True)),
    Case(
        "llama-rank-alpha-pattern",
        "llama",
        lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                  rank_pattern={"v_proj": 2, "layers.1.self_attn.q_proj": 8}, alpha_pattern={"down_proj": 3, "q_proj": 5}),
    ),
    Case("llama-dora", "llama", adapter="dora_llama"),
    Case("llama-dora-bf16", "llama_bf16", lora=dict(r=2, lora_alpha=4, target_modules=["q_proj", "o_proj"], use_dora=True)),
    Case("gpt2-conv1d", "gpt2", adapter="lora_gpt2"),
    Case("gpt2-conv1d-all", "gpt2", lora=dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    Case("gpt2-dora-conv1d", "gpt2", lora=dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_dora=True)),
    Case("llama-embedding-lora", "llama", lora=dict(r=4, lora_alpha=8, target_modules=["embed_tokens"])),
    Case("llama-embedding-and-head-lora", "llama", lora=dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "lm_head", "q_proj"])),
    Case("gpt2-tied-wte-lora", "gpt2", lora=dict(r=2, lora_alpha=4, target_modules=["wte"]), tied_out=False),
    Case("qwen2-lora-bias", "qwen2", adapter="lora_qwen2", tied_out=True),
    Case("qwen2-tied-mts-embed", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
         tied_out=False, peft_unties=True),
    Case("qwen2-tied-mts-embed-resized", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
         vocab=72, rows=72, tied_out=False, peft_unties=True),
    Case("qwen2-tied-mts-embed-resized-no-head", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
         vocab=72, rows=72, drop=("base_model.model.lm_head.weight",), tied_out=False, peft_unties=True),
    Case("qwen2-tied-mts-head", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["lm_head"]),
         tied_out=False, peft_unties=True),
    Case("qwen2-tied-embedding-lora", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["embed_tokens"]), tied_out=False),
    # Trained on a resized tied model, LoRA elsewhere: PEFT saves both sides' grown layer (plain keys), still tied.
    Case("qwen2-tied-resized-lora", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["q_proj"]), vocab=72, rows=72, tied_out=True),
    Case("qwen2-tied-head-lora", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["lm_head"]), tied_out=False),
    Case("qwen2-tied-head-lora-mts-embed", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["lm_head"], modules_to_save=["embed_tokens"]),
         tied_out=False),
    Case("qwen2-tied-resized-embedding-lora", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["embed_tokens"]), vocab=72, rows=72, tied_out=False),
    Case("qwen2-tied-resized-head-lora", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["lm_head"]), vocab=72, rows=72, tied_out=False),
    Case("qwen2-tied-trainable-tokens", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["q_proj"], trainable_token_indices=[3, 10, 60]),
         tied_out=True),
    Case("seed", "seed", rows=SEED_ROWS),
    Case("llama-resized-mts-embed-head", "llama", adapter="lora_llama_grown", rows=80),
    Case("llama-trainable-tokens", "llama", lora=dict(QV, trainable_token_indices=[3, 10, 60])),
    # Indices beyond the base's rows: the adapter carries lm_head (80 rows) but not the embedding ...
    Case("llama-trainable-tokens-grown-head-carried", "llama", lora=dict(QV, trainable_token_indices=[3, 70, 75]), vocab=80,
         drop=(".token_adapter.base_layer.weight",), rows=80),
    # As PEFT saves it: the grown embedding as <M>.token_adapter.base_layer.weight, and lm_head.
    Case("llama-trainable-tokens-grown", "llama", lora=dict(QV, trainable_token_indices=[3, 70, 75]), vocab=80, rows=80),
    Case("qwen2-tied-trainable-tokens-grown", "qwen2", lora=dict(r=2, lora_alpha=4, target_modules=["q_proj"], trainable_token_indices=[3, 66, 70]),
         vocab=72, rows=72, tied_out=True),
    # ... or nothing at all: max(indices) + 1 rows.
    Case("llama-trainable-tokens-grown-by-indices", "llama", lora=dict(QV, trainable_token_indices=[3, 70, 75]), vocab=80,
         drop=(".token_adapter.base_layer.weight", "base_model.model.lm_head.weight"), rows=76),
    Case("bert-query-value", "bert", adapter="lora_bert"),
    Case("bert-mlm-tied-word-embeddings", "bert_mlm_base", lora=dict(r=2, lora_alpha=4, target_modules=["word_embeddings", "query"]),
         tied_out=False, mlm=True),
    # Tied heads under other names (decoder, predictions.decoder, lm_loss), written there when untied;
    # ALBERT's embedding is narrower than hidden_size (embedding_size).
    Case("modernbert-tied-mts-embed", "modernbert_mlm", lora=dict(r=2, lora_alpha=4, target_modules=["Wqkv"], modules_to_save=["tok_embeddings"]),
         tied_out=False, peft_unties=True, mlm=True),
    Case("modernbert-tied-embedding-lora", "modernbert_mlm", lora=dict(r=2, lora_alpha=4, target_modules=["tok_embeddings", "Wo"]), tied_out=False, mlm=True),
    Case("albert-factorized-tied-mts-embed", "albert_mlm", lora=dict(r=2, lora_alpha=4, target_modules=["query"], modules_to_save=["word_embeddings"]),
         tied_out=False, peft_unties=True, mlm=True),
    Case("albert-factorized-tied-embedding-lora", "albert_mlm", lora=dict(r=2, lora_alpha=4, target_modules=["word_embeddings", "query"]),
         tied_out=False, mlm=True),
    Case("albert-factorized-resized-mts-embed", "albert_mlm", lora=dict(r=2, lora_alpha=4, target_modules=["query"], modules_to_save=["word_embeddings"]),
         vocab=72, rows=72, tied_out=False, peft_unties=True, mlm=True),
    Case("xlnet-tied-embedding-lora", "xlnet_lm", lora=dict(r=2, lora_alpha=4, target_modules=["word_embedding", "layer_1"]), tied_out=False),
    # Nothing vocabulary-sized in the adapter, but its tokenizer has 72 tokens: grow to it, rows by --init mean.
    Case("llama-qv-tokenizer-grows", "llama", lora=QV, tokenizer=72, rows=72),
    Case("llama-mts-norms", "llama", lora=dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["norm"])),
    # LoRA on grown embedding rows the adapter does not carry: accepted with an explicit --init (LI501).
    Case("llama-embedding-lora-grown-uncarried-init-mean", "llama", lora=dict(r=4, lora_alpha=8, target_modules=["embed_tokens"]), vocab=80,
         drop=("embed_tokens.base_layer.weight",), rows=80, args=("--init", "mean")),
]
BY_ID = {c.id: c for c in CASES}


def build(case: Case, request: pytest.FixtureRequest, tmp: Path) -> tuple[Path, Path]:
    if case.base == "seed":
        seed = request.getfixturevalue("seed_dir")
        return seed / "base", seed / "adapter"
    base = request.getfixturevalue(case.base).path
    if case.adapter:
        adapter = request.getfixturevalue(case.adapter).path
    elif case.mlm:
        adapter = make_mlm_adapter(base, tmp / "adapter", vocab=case.vocab, **case.lora)
    else:
        adapter = make_lora_adapter(base, tmp / "adapter", vocab=case.vocab, **case.lora).path
    if case.drop:
        adapter = drop_keys(adapter, tmp / "adapter-edited", *case.drop)
    if case.tokenizer:
        adapter = check_cases.make_tokenizer(copy_checkpoint(adapter, tmp / "adapter-tokenizer"), case.tokenizer)
    return base, adapter


def check_against_peft(case: Case, base: Path, adapter: Path, out: Path, report: dict, *, tol: dict = TENSOR_TOL) -> None:
    base_config = json.loads((base / "config.json").read_text())
    base_rows = base_config["vocab_size"]
    rows = case.rows or base_rows
    untie_first = case.tied_out is False and not case.peft_unties
    ref = peft_reference(base, adapter, rows=rows, untie_first=untie_first)
    if case.peft_unties:
        assert ref.config.tie_word_embeddings is False  # PEFT's own merge unties: both matrices differ now
        untie(ref)  # ... but leaves a bias tied along with them (ALBERT's) shared: a saved model holds both

    assert_same_tensors(read_merged(out), {k: v.detach() for k, v in untied_state(ref).items()}, tol)

    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == rows
    assert report["vocab"]["merged_rows"] == rows and report["vocab"]["base_rows"] == base_rows
    if case.tied_out is not None:
        assert config.get("tie_word_embeddings", True) is case.tied_out
        assert report["untied"] is (not case.tied_out)
        if not case.tied_out:
            head = next(name for name, module in ref.named_modules() if module is ref.get_output_embeddings())
            assert report["untied_head"] == f"{head}.weight"
    else:
        assert config.get("tie_word_embeddings") == base_config.get("tie_word_embeddings")
        assert report["untied"] is False

    ours = load(out, strict=True)
    assert ours.config.tie_word_embeddings == ref.config.tie_word_embeddings
    ids = sample_ids(rows, base_rows)
    expected = model_output(ref, ids)
    torch.testing.assert_close(model_output(ours, ids), expected, **LOGIT_TOL[expected.dtype])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_merge_matches_peft(case: Case, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, adapter = build(case, request, tmp_path)
    out = tmp_path / "merged"
    report = merge_json(capsys, base, adapter, out, *case.args)
    assert report["out"] == str(out) and report["device"] == "cpu"
    check_against_peft(case, base, adapter, out, report)
    if case.tokenizer:
        assert report["tokenizer_from"] == str(adapter)
        assert (out / "tokenizer.json").read_bytes() == (adapter / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("base", ["qwen2", "gpt2", "bert_mlm_base", "modernbert_mlm", "albert_mlm", "xlnet_lm"])
def test_tied_head_table_agrees_with_transformers(base: str, request: pytest.FixtureRequest) -> None:
    """TIED_HEADS (what check and merge use without importing transformers) names the same output
    layer and tied biases as transformers' own model, which merge asks for layouts the table lacks."""
    from inspector.base import known_tied_head
    from inspector.merge_plan import head_from_transformers

    built = request.getfixturevalue(base)
    names = frozenset(built.tensors)
    head, biases = head_from_transformers(built.path, names)
    known = known_tied_head(names)
    assert (head, biases) == ((known[0], [known[1:]] if known[1] else []) if known else ("lm_head.weight", []))


def test_merge_adapter_api(llama: Built, lora_llama: Built, tmp_path: Path) -> None:
    result = merge_adapter(str(llama.path), str(lora_llama.path), str(tmp_path / "merged"), device="cpu")
    assert result.out == tmp_path / "merged"
    assert result.stats["lora"] == 4 and result.stats["replaced"] == 0 and result.stats["grown"] == 0
    assert result.stats["copied"] == result.stats["tensors"] - 4
    ref = peft_reference(llama.path, lora_llama.path)
    assert_same_tensors(read_merged(tmp_path / "merged"), {k: v.detach() for k, v in untied_state(ref).items()})


# ---- new rows nobody carries ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_only_grown(extra_root: Path, llama: Built) -> Path:
    """Trained on 80 rows with modules_to_save=["embed_tokens"] only: lm_head's rows 64..79 are nobody's."""
    saved = make_lora_adapter(llama.path, extra_root / "embed_only_saved", vocab=80, **QV, modules_to_save=["embed_tokens"]).path
    keys = load_file(saved / "adapter_model.safetensors")
    return drop_keys(saved, extra_root / "embed_only", "base_model.model.lm_head.weight") if "base_model.model.lm_head.weight" in keys else saved


@pytest.mark.parametrize("init", [None, "mean", "zero"])
def test_uncarried_rows_filled_by_init(init: str | None, llama: Built, embed_only_grown: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    report = merge_json(capsys, llama.path, embed_only_grown, out, *(("--init", init) if init else ()))
    assert report["init"] == (init or "mean")
    assert [f["tensor"] for f in report["warnings"] if f["code"] == "LI502"] == ["lm_head.weight"]
    base_head = load_file(llama.path / "model.safetensors")["lm_head.weight"]
    head = read_merged(out)["lm_head.weight"]
    assert head.shape == (80, base_head.shape[1]) and head.dtype == base_head.dtype
    assert torch.equal(head[:64], base_head)  # old rows bit for bit
    expected = torch.zeros(16, base_head.shape[1]) if init == "zero" else base_head.float().mean(dim=0).expand(16, -1)
    assert torch.equal(head[64:], expected.to(base_head.dtype))
    if init != "zero":  # the default (mean) equals the reference (PEFT after an exact mean resize) everywhere
        check_against_peft(Case("embed-only", "llama", rows=80), llama.path, embed_only_grown, out, report)


@pytest.mark.parametrize("fmt", ["github", "markdown"])
def test_merge_reports_name_what_the_merge_acted_on(fmt: str, llama: Built, embed_only_grown: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Like the JSON report's "repaired" and "warnings": a CI annotation per finding, a table in markdown.
    rc, out, err = run(capsys, "merge", llama.path, embed_only_grown, "--out", tmp_path / "merged", "--device", "cpu", "--format", fmt)
    assert rc == 0 and err == ""
    if fmt == "github":
        lines = out.splitlines()
        assert any(line.startswith("::warning title=LI502 new-rows-uninitialized::") and "lm_head.weight" in line for line in lines)
        assert any(line.startswith("::notice title=LI101 vocab-size-mismatch::repaired by the merge: ") for line in lines)
        assert lines[-1].startswith("::notice title=merge::merged into ")
    else:
        assert "| ⚠️ warning | `LI502` |" in out and "| ❌ error | `LI101` |" in out and "| repaired |" in out


def test_uncarried_rows_bf16_mean_is_rounded_fp32_mean(llama_bf16: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = make_lora_adapter(llama_bf16.path, tmp_path / "saved", vocab=72, **QV, modules_to_save=["embed_tokens"]).path
    if "base_model.model.lm_head.weight" in load_file(adapter / "adapter_model.safetensors"):
        adapter = drop_keys(adapter, tmp_path / "adapter", "base_model.model.lm_head.weight")
    merge_json(capsys, llama_bf16.path, adapter, tmp_path / "merged")
    base_head = load_file(llama_bf16.path / "model.safetensors")["lm_head.weight"]
    head = read_merged(tmp_path / "merged")["lm_head.weight"]
    assert head.dtype == torch.bfloat16
    assert torch.equal(head[:64], base_head)
    assert torch.equal(head[64:], base_head.float().mean(dim=0).to(torch.bfloat16).expand(8, -1))


# ---- refusals: exit 1, nothing written -----------------------------------------------------------


def assert_refused(rc: int, out: str, err: str, target: Path, code: str) -> None:
    assert rc == 1, err
    assert_no_report(out, err)  # with --format json, the refusal as JSON
    assert err.startswith("Error: Merge refused for ") and "\nHint: " in err and code in err
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".") or "merged" in p.name]  # no staging left


def test_refuses_orphan_tensor(llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A whole LoRA pair for a module the base does not have (a typo, another architecture's name).
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    adapter = edit_tensors(lora_llama.path, tmp_path / "adapter", lambda t: rename(key.format("B"), key.format("B").replace("q_proj", "qq_proj"))(
        rename(key.format("A"), key.format("A").replace("q_proj", "qq_proj"))(t)))
    rc, out, err = run(capsys, "merge", llama.path, adapter, "--out", tmp_path / "merged", "--device", "cpu", "--format", "json")
    assert_refused(rc, out, err, tmp_path / "merged", "LI401")
    assert "qq_proj" in err and f"lora-inspector check {llama.path} {adapter}" in err


def test_refuses_rank_mismatch(llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = edit_config(lora_llama.path, tmp_path / "adapter", r=8)
    rc, out, err = run(capsys, "merge", llama.path, adapter, "--out", tmp_path / "merged", "--device", "cpu")
    assert_refused(rc, out, err, tmp_path / "merged", "LI303")


def test_embedding_lora_on_uncarried_rows_needs_init(llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = make_lora_adapter(llama.path, tmp_path / "saved", vocab=80, r=4, lora_alpha=8, target_modules=["embed_tokens"]).path
    adapter = drop_keys(saved, tmp_path / "adapter", "embed_tokens.base_layer.weight")
    rc, out, err = run(capsys, "merge", llama.path, adapter, "--out", tmp_path / "merged", "--device", "cpu", "--format", "json")
    assert_refused(rc, out, err, tmp_path / "merged", "LI501")
    assert "--init" in err.split("\nHint: ")[1]
    report = merge_json(capsys, llama.path, adapter, tmp_path / "merged", "--init", "mean")
    assert ([f["code"] for f in report["accepted"]], report["repaired"]) == (["LI501"], [])
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_refuses_token_delta_rows_mismatch(llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Config and delta disagree (3 indices, 2 saved rows): LI602, never an IndexError mid-merge.
    saved = make_lora_adapter(llama.path, tmp_path / "saved", r=2, target_modules=["q_proj"], trainable_token_indices=[5, 6, 7]).path
    adapter = edit_config(saved, tmp_path / "adapter", trainable_token_indices=[5, 6])
    rc, out, err = run(capsys, "merge", llama.path, adapter, "--out", tmp_path / "merged", "--device", "cpu")
    assert_refused(rc, out, err, tmp_path / "merged", "LI602")
    assert "Internal error" not in err


def test_tokenizer_larger_than_the_adapters_rows_is_not_repaired(seed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The adapter's saved matrices set 70,840 rows; a 71,040-token tokenizer would index past them.
    # Growing to the adapter's rows does not repair LI201: the merge refuses instead of claiming it.
    tokenizer = check_cases.make_tokenizer(tmp_path / "bigtok", 71_040)
    rc, out, err = run(capsys, "merge", seed_dir / "base", seed_dir / "adapter", "--out", tmp_path / "merged", "--device", "cpu", "--tokenizer", tokenizer)
    assert_refused(rc, out, err, tmp_path / "merged", "LI201")
    rc, out, _ = run(capsys, "check", seed_dir / "base", seed_dir / "adapter", "--tokenizer", tokenizer, "--format", "json")
    li201 = [f for f in json.loads(out)["findings"] if f["code"] == "LI201"]
    assert [f["repair"] for f in li201] == [None]


# ---- what is written beside the tensors ----------------------------------------------------------


@pytest.fixture(scope="module")
def seed_merged(tmp_path_factory: pytest.TempPathFactory, seed_dir: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("seed_merge") / "merged"
    result = merge_adapter(str(seed_dir / "base"), str(seed_dir / "adapter"), str(out), device="cpu")
    return out, {"tokenizer_from": result.tokenizer_from, "stats": result.stats}


def test_seed_output_files(seed_dir: Path, seed_merged: tuple[Path, dict]) -> None:
    out, report = seed_merged
    base, adapter = seed_dir / "base", seed_dir / "adapter"
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == SEED_ROWS
    assert {k: v for k, v in config.items() if k != "vocab_size"} == {k: v for k, v in json.loads((base / "config.json").read_text()).items() if k != "vocab_size"}
    assert (out / "generation_config.json").read_bytes() == (base / "generation_config.json").read_bytes()
    # The adapter dir's tokenizer (70,840 tokens), not the base's.
    assert report["tokenizer_from"] == str(adapter)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (adapter / name).read_bytes()
    assert report["stats"]["replaced"] == 2 and report["stats"]["grown"] == 0
    assert header_dtypes(out)["model.embed_tokens.weight"] == "BF16"


def test_tokenizer_from_base_when_adapter_has_none(seed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = copy_without(seed_dir / "adapter", tmp_path / "adapter", "tokenizer*")
    report = merge_json(capsys, seed_dir / "base", adapter, tmp_path / "merged")
    assert report["tokenizer_from"] == str(seed_dir / "base")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "merged" / name).read_bytes() == (seed_dir / "base" / name).read_bytes()


def test_chat_template_travels_with_the_tokenizer(seed_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # transformers 5 saves the chat template as chat_template.jinja: the fine-tuning one comes with the
    # adapter's tokenizer, never the base's. Mistral's params.json (consolidated.* weights) is not copied.
    base, adapter = copy_checkpoint(seed_dir / "base", tmp_path / "base"), copy_checkpoint(seed_dir / "adapter", tmp_path / "adapter")
    (base / "chat_template.jinja").write_text("BASE {{ messages }}")
    (base / "params.json").write_text('{"dim": 8, "vocab_size": 32000}')
    (adapter / "chat_template.jinja").write_text("SFT <|user|>{{ messages }}")
    merge_json(capsys, base, adapter, tmp_path / "merged")
    assert (tmp_path / "merged" / "chat_template.jinja").read_text() == "SFT <|user|>{{ messages }}"
    assert not (tmp_path / "merged" / "params.json").exists()


def test_no_tokenizer_anywhere_is_reported_as_none(llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = merge_json(capsys, llama.path, lora_llama.path, tmp_path / "merged")
    assert report["tokenizer_from"] is None
    rc, out, _ = run(capsys, "merge", llama.path, lora_llama.path, "--out", tmp_path / "again", "--device", "cpu")
    assert rc == 0 and "no tokenizer files in the inputs" in out


def test_small_shards_load_in_transformers(llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    merge_json(capsys, llama.path, lora_llama.path, out, "--max-shard-size", "8KB")
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    n = len(shards)
    assert n > 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    tensors = read_merged(out)
    assert set(index["weight_map"]) == set(tensors) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    check_against_peft(BY_ID["llama-qv"], llama.path, lora_llama.path, out, {"vocab": {"merged_rows": 64, "base_rows": 64}, "untied": False})


def test_dtype_fp32_from_bf16_base(llama_bf16: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = make_lora_adapter(llama_bf16.path, tmp_path / "adapter", **QV).path
    out = tmp_path / "merged"
    merge_json(capsys, llama_bf16.path, adapter, out, "--dtype", "fp32")
    assert set(header_dtypes(out).values()) == {"F32"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    # The bf16 base widened to fp32 exactly, then PEFT merges in fp32: the same numbers.
    ref = peft_reference(llama_bf16.path, adapter, dtype=torch.float32)
    assert_same_tensors(read_merged(out), {k: v.detach() for k, v in untied_state(ref).items()})
    ours = load(out, strict=True)
    assert ours.dtype == torch.float32
    ids = sample_ids(64, 64)
    torch.testing.assert_close(model_output(ours, ids), model_output(ref, ids), **LOGIT_TOL[torch.float32])


def test_dtype_bf16_from_fp32_base_rounds_once(llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    merge_json(capsys, llama.path, lora_llama.path, out, "--dtype", "bf16")
    assert set(header_dtypes(out).values()) == {"BF16"}
    ref = peft_reference(llama.path, lora_llama.path)  # fp32 merge, then one rounding: bit-identical
    assert_same_tensors(read_merged(out), {k: v.detach().to(torch.bfloat16) for k, v in untied_state(ref).items()}, {torch.bfloat16: dict(atol=0, rtol=0)})


# ---- output safety -------------------------------------------------------------------------------


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_non_empty_out_needs_force(llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, stdout, err = run(capsys, "merge", llama.path, lora_llama.path, "--out", out, "--device", "cpu", "--format", "json")
    assert rc == 2 and assert_json_error(stdout, err, "merge")["path"] == str(out)
    assert err.startswith("Error: ") and "\nHint: " in err and "--force" in err
    assert tree(out) == {"keep.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    merge_json(capsys, llama.path, lora_llama.path, out, "--force")
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("where", ["inside-base", "base-itself", "inside-adapter"])
def test_out_inside_an_input_is_refused(where: str, llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = {"inside-base": llama.path / "merged", "base-itself": llama.path, "inside-adapter": lora_llama.path / "merged"}[where]
    before = tree(llama.path), tree(lora_llama.path)
    rc, stdout, err = run(capsys, "merge", llama.path, lora_llama.path, "--out", out, "--device", "cpu", "--force", "--format", "json")
    assert rc == 2 and assert_json_error(stdout, err, "merge")["path"] == str(out)
    assert err.startswith("Error: ") and "\nHint: " in err
    assert (tree(llama.path), tree(lora_llama.path)) == before


def test_nan_in_lora_tensor_writes_nothing(llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"

    def poison(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors[key] = tensors[key].clone()
        tensors[key][0, 0] = float("nan")
        return tensors

    adapter = edit_tensors(lora_llama.path, tmp_path / "adapter", poison)
    rc, stdout, err = run(capsys, "merge", llama.path, adapter, "--out", tmp_path / "merged", "--device", "cpu", "--format", "json")
    assert rc == 2 and assert_json_error(stdout, err, "merge")
    assert err.startswith("Error: ") and "non-finite" in err and "\nHint: " in err
    assert "model.layers.1.self_attn.v_proj.weight" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no output, no staging dir


def test_fp16_overflow_is_named_as_such(llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Finite inputs whose values exceed fp16's 65504: not "NaN or Inf in the inputs" but a dtype too narrow.
    def big(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tensors["lm_head.weight"] = tensors["lm_head.weight"].clone()
        tensors["lm_head.weight"][0, 0] = 1e6
        return tensors

    base = edit_tensors(llama.path, tmp_path / "base", big, filename="model.safetensors")
    rc, stdout, err = run(capsys, "merge", base, lora_llama.path, "--out", tmp_path / "merged", "--device", "cpu", "--dtype", "fp16")
    assert rc == 2 and stdout == ""
    assert err == ("Error: Refusing to write an overflowed result for 'lm_head.weight': merged values up to 1e+06 do not fit F16 (largest 65504).\n"
                   "Hint: Write a wider dtype: --dtype bf16 (same range as fp32) or --dtype fp32; nothing was written.\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
    assert merge_json(capsys, base, lora_llama.path, tmp_path / "merged", "--dtype", "bf16")["out"] == str(tmp_path / "merged")


# ---- GPU ----------------------------------------------------------------------------------------

GPU_CASES = ["llama-qv", "llama-qv-bf16", "llama-dora", "gpt2-dora-conv1d", "llama-embedding-lora", "qwen2-tied-mts-embed-resized", "llama-resized-mts-embed-head", "seed"]


@pytest.mark.gpu
@pytest.mark.parametrize("case_id", GPU_CASES)
def test_merge_on_cuda_matches_peft_on_cpu(case_id: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = BY_ID[case_id]
    base, adapter = build(case, request, tmp_path)
    out = tmp_path / "merged"
    report = merge_json(capsys, base, adapter, out, *case.args, device="cuda")
    assert report["device"].startswith("cuda")
    check_against_peft(case, base, adapter, out, report, tol=DEVICE_TENSOR_TOL)


# ---- task heads the base does not have ----------------------------------------------------------------


@pytest.mark.parametrize("task_type", ["SEQ_CLS", None], ids=["task-type", "modules-to-save-only"])
def test_classification_head_is_written_as_a_new_tensor(task_type: str | None, llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An adapter trained on LlamaForSequenceClassification of a causal-LM base: its score head (saved by
    modules_to_save, with or without task_type) is LI405 and becomes a tensor of the merged model."""
    from peft import PeftModel
    from transformers import LlamaForSequenceClassification

    lora = dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], modules_to_save=["score"], **({"task_type": task_type} if task_type else {}))
    adapter = check_cases.make_adapter(llama.path, tmp_path / "adapter", LlamaForSequenceClassification, **lora)
    report = merge_json(capsys, llama.path, adapter, tmp_path / "merged")
    assert [(f["code"], f["tensor"]) for f in report["warnings"]] == [("LI405", "score.weight")]
    merged = read_merged(tmp_path / "merged")
    assert merged["score.weight"].shape == (2, 16)
    ref = PeftModel.from_pretrained(LlamaForSequenceClassification.from_pretrained(llama.path), adapter).merge_and_unload().eval()
    ours = LlamaForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    ids = sample_ids(64, 64)
    torch.testing.assert_close(model_output(ours, ids), model_output(ref, ids), **LOGIT_TOL[torch.float32])


# ---- keys as a hand-written save stores them ---------------------------------------------------------


def _rekey(adapter: Path, dst: Path, how) -> Path:
    return edit_tensors(adapter, dst, lambda tensors: {how(k): v for k, v in tensors.items()})


def test_keys_with_the_adapter_name_merge_as_peft_loads_them(llama: Built, dora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """torch.save(peft_model.state_dict()) keeps ".default" in the LoRA keys; PEFT 0.21 loads them as they are."""
    import re

    adapter = _rekey(dora_llama.path, tmp_path / "adapter", lambda k: re.sub(r"\.(lora_A|lora_B)\.weight$", r".\1.default.weight", k)
                     .replace(".lora_magnitude_vector", ".lora_magnitude_vector.default.weight"))
    assert any(".lora_A.default.weight" in k for k in check_cases.adapter_keys(adapter))
    rc, out, err = run(capsys, "check", llama.path, adapter, "--format", "json")
    assert (rc, [f["code"] for f in json.loads(out)["findings"]]) == (0, ["LI1301"])
    report = merge_json(capsys, llama.path, adapter, tmp_path / "merged")
    check_against_peft(BY_ID["llama-dora"], llama.path, adapter, tmp_path / "merged", report)
    assert_same_tensors(read_merged(tmp_path / "merged"), {k: v.detach() for k, v in untied_state(peft_reference(llama.path, dora_llama.path)).items()})


def test_keys_without_the_prefix_are_refused(llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """PeftModel.from_pretrained drops keys without base_model.model.: check says so, merge does not apply them."""
    adapter = _rekey(lora_llama.path, tmp_path / "adapter", lambda k: k.removeprefix("base_model.model."))
    rc, out, err = run(capsys, "check", llama.path, adapter, "--format", "json")
    errors = [f for f in json.loads(out)["findings"] if f["severity"] == "error"]
    assert rc == 1 and [(f["code"], f["adapter_key"]) for f in errors] == [("LI406", "model.layers.0.self_attn.q_proj.lora_A.weight")]
    assert errors[0]["message"].startswith("model.layers.0.self_attn.q_proj.lora_A.weight and 7 more lack the base_model.model. prefix")
    rc, out, err = run(capsys, "merge", llama.path, adapter, "--out", tmp_path / "merged", "--device", "cpu")
    assert rc == 1 and "LI406" in err and not (tmp_path / "merged").exists()


def test_legacy_bin_base_with_strided_views(llama: Built, lora_llama: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pytorch_model.bin whose tensors are saved as views (a transposed copy's .T): merged from their strides."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_bytes((llama.path / "config.json").read_bytes())
    state = load_file(llama.path / "model.safetensors")
    torch.save({k: v.T.contiguous().T if v.dim() == 2 else v for k, v in state.items()}, base / "pytorch_model.bin")
    report = merge_json(capsys, base, lora_llama.path, tmp_path / "merged")
    check_against_peft(BY_ID["llama-qv"], llama.path, lora_llama.path, tmp_path / "merged", report)


# ---- the tied head's name: never code from the checkpoint -------------------------------------------


def test_tied_head_lookup_never_runs_checkpoint_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown model_type with auto_map would make transformers ask to run configuration_*.py from
    the base directory (on stdout, with a 15 s timeout): the lookup must not even ask."""
    from inspector.merge_plan import head_from_transformers

    base = tmp_path / "evil"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "evil-lm", "architectures": ["EvilForMaskedLM"],
                                                  "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    (base / "configuration_evil.py").write_text(f"open({str(tmp_path / 'PWNED')!r}, 'w').close()\n")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("y\n"))  # a "yes" waiting on stdin is never read
    assert head_from_transformers(base, frozenset()) is None
    assert not (tmp_path / "PWNED").exists()
    # Only transformers' own model classes are built: not any other name it exports.
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["AutoConfig"]}))
    assert head_from_transformers(base, frozenset()) is None


def test_tied_causal_lm_head_is_lm_head_without_asking_transformers(qwen2: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    # Llama-3.2, Qwen2.5, Gemma: the commonest tied layout needs no 2.5 s transformers import.
    from types import SimpleNamespace

    import inspector.merge_plan as merge_module
    from inspector.io.checkpoint import read_checkpoint

    def forbidden(*args):
        raise AssertionError("transformers was asked")

    monkeypatch.setattr(merge_module, "head_from_transformers", forbidden)
    assert merge_module.tied_head(SimpleNamespace(base=read_checkpoint(qwen2.path))) == ("lm_head.weight", [])
