"""``lora-inspector check``: every finding family on real PEFT adapters, and the CLI contract.

Adapters are written by PEFT's own ``save_pretrained`` at test time (tests/models.py); a broken file
that PEFT cannot write is a real adapter with exactly one minimal edit (tests/check_cases.py).
Each test asserts the exact findings: code, severity, base tensor, adapter key and both shapes.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from inspector.check import run_check
from inspector.cli import main
from inspector.report import terminal
from tests.check_cases import DROP, adapter_keys, drop, edit_config, edit_json, edit_tensors, make_adapter, make_model, make_tokenizer, rename, replace
from tests.models import Built, copy_checkpoint, load_model, make_llama, make_lora_adapter

REPO = Path(__file__).resolve().parent.parent
P = "base_model.model."  # PEFT's key prefix
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
Q0 = "model.layers.0.self_attn.q_proj"


def attn(layer: int, proj: str) -> str:
    return f"model.layers.{layer}.self_attn.{proj}"


# ---------------------------------------------------------------------------------------------
# Running check
# ---------------------------------------------------------------------------------------------


def run(capsys, *argv: object) -> tuple[int, str, str]:
    rc = main(["check", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def check_json(capsys, base: object, adapter: object, *extra: object) -> tuple[int, dict]:
    rc, out, err = run(capsys, base, adapter, "--format", "json", *extra)
    assert "Traceback" not in err
    report = json.loads(out)
    assert report["schema"] == 1 and report["command"] == "check"
    return rc, report


def rows(report: dict) -> list[tuple]:
    """Findings as (code, severity, tensor, adapter_key, adapter_shape, base_shape), the memory plan
    excepted: every LoRA report carries exactly one LI1301 info, checked here once for all tests."""
    plans = [f for f in report["findings"] if f["code"] == "LI1301"]
    assert [(f["severity"], f["tensor"]) for f in plans] == [("info", None)]
    counted = {s: sum(f["severity"] == s for f in report["findings"]) for s in ("error", "warning", "info")}
    assert report["summary"] == counted
    out = []
    for f in report["findings"]:
        if f["code"] == "LI1301":
            continue
        assert f["message"] and f["hint"]
        out.append((f["code"], f["severity"], f["tensor"], f["adapter_key"], _tuple(f["adapter_shape"]), _tuple(f["base_shape"])))
    return sorted(out, key=lambda r: tuple("" if v is None else str(v) for v in r))


def _tuple(shape):
    return tuple(shape) if shape is not None else None


def expect(*items: tuple) -> list[tuple]:
    return sorted(items, key=lambda r: tuple("" if v is None else str(v) for v in r))


def by_code(report: dict, code: str) -> list[dict]:
    return [f for f in report["findings"] if f["code"] == code]


# ---------------------------------------------------------------------------------------------
# Adapters built once for this module (the conftest session fixtures cover the common ones)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("check")


@pytest.fixture(scope="module")
def rslora_llama(root: Path, llama: Built) -> Built:
    return make_lora_adapter(llama.path, root / "rslora", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True)


@pytest.fixture(scope="module")
def pattern_llama(root: Path, llama: Built) -> Built:
    return make_lora_adapter(
        llama.path,
        root / "pattern",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"v_proj": 2, "model.layers.1.self_attn.q_proj": 6},
        alpha_pattern={"down_proj": 3},
    )


@pytest.fixture(scope="module")
def lora_gpt2_all(root: Path, gpt2: Built) -> Built:
    """Conv1D c_attn, c_fc and c_proj: GPT-2's c_proj is [4*hidden, hidden] = [64, 16], the vocabulary's shape."""
    return make_lora_adapter(gpt2.path, root / "gpt2_all", r=2, lora_alpha=4, target_modules=["c_attn", "c_fc", "c_proj"], fan_in_fan_out=True)


@pytest.fixture(scope="module")
def mts_norm(root: Path, llama: Built) -> Built:
    """modules_to_save on a module that is not a vocabulary matrix (the final norm)."""
    return make_lora_adapter(llama.path, root / "mts_norm", r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["model.norm"])


@pytest.fixture(scope="module")
def embed_lora(root: Path, llama: Built) -> Built:
    return make_lora_adapter(llama.path, root / "embed_lora", r=2, lora_alpha=4, target_modules=["embed_tokens", "q_proj"])


@pytest.fixture(scope="module")
def tokens_llama(root: Path, llama: Built) -> Built:
    return make_lora_adapter(llama.path, root / "tokens", r=2, lora_alpha=4, target_modules=["q_proj"], trainable_token_indices=[3, 5, 60])


@pytest.fixture(scope="module")
def embed_lora_grown(root: Path, llama: Built) -> Built:
    """Embedding LoRA trained on an 80-token vocabulary: PEFT saves the resized embedding as base_layer."""
    return make_lora_adapter(llama.path, root / "embed_lora_grown", vocab=80, r=2, lora_alpha=4, target_modules=["embed_tokens"])


@pytest.fixture(scope="module")
def mts_embed_grown(root: Path, llama: Built) -> Built:
    return make_lora_adapter(llama.path, root / "mts_embed_grown", vocab=80, r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"])


@pytest.fixture(scope="module")
def llama_wide(root: Path) -> Built:
    """A Llama with hidden 32 (intermediate 64): another model than ``llama``."""
    return make_llama(root / "llama_wide", hidden=32)


@pytest.fixture(scope="module")
def llama_4layers(root: Path) -> Built:
    return make_llama(root / "llama_4layers", layers=4)


@pytest.fixture(scope="module")
def tok80(root: Path) -> Path:
    return make_tokenizer(root / "tok80", 80)


@pytest.fixture(scope="module")
def tok50(root: Path) -> Path:
    return make_tokenizer(root / "tok50", 50)


# ---------------------------------------------------------------------------------------------
# Clean adapters: exit 0, nothing but the memory plan
# ---------------------------------------------------------------------------------------------

CLEAN = [
    ("llama", "lora_llama"),
    ("llama", "rslora_llama"),
    ("llama", "dora_llama"),
    ("llama", "pattern_llama"),
    ("gpt2", "lora_gpt2"),
    ("gpt2", "lora_gpt2_all"),
    ("qwen2", "lora_qwen2"),
    ("bert", "lora_bert"),
    ("llama", "mts_norm"),
    ("llama", "embed_lora"),
    ("llama", "tokens_llama"),
    ("llama_sharded", "lora_llama"),  # 9 shards behind model.safetensors.index.json
    ("llama_bin", "lora_llama_bin"),  # legacy pytorch_model.bin + adapter_model.bin
]


@pytest.mark.parametrize(("base", "adapter"), CLEAN, ids=[f"{b}-{a}" for b, a in CLEAN])
def test_clean_adapters_pass(capsys, request, base: str, adapter: str) -> None:
    base_dir, adapter_dir = request.getfixturevalue(base).path, request.getfixturevalue(adapter).path
    rc, report = check_json(capsys, base_dir, adapter_dir)
    assert rows(report) == []
    assert report["summary"] == {"error": 0, "warning": 0, "info": 1}
    assert rc == 0
    assert run(capsys, base_dir, adapter_dir, "--fail-on", "warning")[0] == 0


def test_clean_fixtures_are_what_they_claim(pattern_llama: Built, lora_qwen2: Built, dora_llama: Built, embed_lora: Built, tokens_llama: Built) -> None:
    # The clean cases only prove something if PEFT really wrote the layouts they stand for.
    shapes = pattern_llama.shapes()
    assert shapes[f"{P}{attn(1, 'q_proj')}.lora_A.weight"] == (6, 16)  # rank_pattern
    assert shapes[f"{P}{attn(0, 'v_proj')}.lora_A.weight"] == (2, 16)
    assert shapes[f"{P}{attn(0, 'q_proj')}.lora_A.weight"] == (4, 16)
    assert lora_qwen2.shapes()[f"{P}{attn(0, 'k_proj')}.lora_B.bias"] == (8,)
    assert dora_llama.shapes()[f"{P}{attn(0, 'o_proj')}.lora_magnitude_vector"] == (16,)
    assert embed_lora.shapes()[f"{P}model.embed_tokens.lora_embedding_A"] == (2, 64)
    assert tokens_llama.shapes()[f"{P}model.embed_tokens.token_adapter.trainable_tokens_delta"] == (3, 16)


# ---------------------------------------------------------------------------------------------
# LI101 vocabulary mismatch: the seed case, in every format
# ---------------------------------------------------------------------------------------------

SEED_BASE_SHAPE, SEED_ADAPTER_SHAPE = [32000, 8], [70840, 8]


def seed_findings(seed_dir: Path) -> list[dict]:
    """The two LI101 findings of the seed case, field by field (the JSON golden)."""
    base, adapter = seed_dir / "base", seed_dir / "adapter"
    hint = (
        f"Run `lora-inspector merge {base} {adapter} --out merged` (grows the model to the adapter's 70840 rows), "
        f"or `lora-inspector resize {base} --like {adapter} --out base-resized` first."
    )
    return [
        {
            "code": "LI101",
            "name": "vocab-size-mismatch",
            "severity": "error",
            "message": f"{name}: the adapter carries [70840, 8], the base has [32000, 8]; PEFT's merge fails here with 'size mismatch'.",
            "hint": hint,
            "tensor": name,
            "adapter_key": P + name,
            "adapter_shape": SEED_ADAPTER_SHAPE,
            "base_shape": SEED_BASE_SHAPE,
            "repair": "resize",
            "target": None,
            "outcome": None,
        }
        for name in (HEAD, EMBED)
    ]


def test_seed_json_golden(capsys, seed_dir: Path) -> None:
    rc, report = check_json(capsys, seed_dir / "base", seed_dir / "adapter")
    assert rc == 1
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert errors == seed_findings(seed_dir)
    assert report["summary"] == {"error": 2, "warning": 0, "info": 2}
    assert rows(report) == expect(
        ("LI101", "error", HEAD, P + HEAD, (70840, 8), (32000, 8)),
        ("LI101", "error", EMBED, P + EMBED, (70840, 8), (32000, 8)),
        ("LI1101", "info", None, None, None, None),
    )
    # The adapter dir's extended tokenizer agrees with the adapter's 70,840 rows: no LI201.
    assert report["vocab"] == {"base_rows": 32000, "merged_rows": 70840, "source": "the adapter's saved matrices"}
    assert report["tokenizer"]["length"] == 70840
    assert report["base"]["kind"] == "model" and report["adapter"]["kind"] == "adapter"
    assert report["adapter"]["config"]["modules_to_save"] == ["embed_tokens", "lm_head"]


def test_seed_github_annotations(capsys, seed_dir: Path) -> None:
    rc, out, err = run(capsys, seed_dir / "base", seed_dir / "adapter", "--format", "github")
    assert rc == 1 and err == ""
    lines = out.splitlines()
    expected = [f"::error title=LI101 vocab-size-mismatch::{f['message']} Hint: {f['hint']}" for f in seed_findings(seed_dir)]
    assert [line for line in lines if line.startswith("::error")] == expected
    assert [line.split("::")[1] for line in lines if line.startswith("::notice")] == [
        "notice title=LI1101 dtype-difference",
        "notice title=LI1301 memory-plan",
        "notice title=lora-inspector check",
    ]
    assert lines[-1] == "::notice title=lora-inspector check::2 errors, 0 warnings, 2 info"
    assert not any(line.startswith("::warning") for line in lines)


def test_seed_markdown_table(capsys, seed_dir: Path) -> None:
    rc, out, err = run(capsys, seed_dir / "base", seed_dir / "adapter", "--format", "markdown")
    assert rc == 1 and err == ""
    lines = out.splitlines()
    assert lines[0] == "### lora-inspector check fails: 2 errors, 0 warnings, 2 info"
    assert "| severity | code | tensor | adapter | base | what | fix |" in lines
    expected = [f"| ❌ error | `LI101` | `{f['tensor']}` | [70840, 8] | [32000, 8] | {f['message']} | {f['hint']} |" for f in seed_findings(seed_dir)]
    assert [line for line in lines if "`LI101`" in line] == expected
    assert sum(line.startswith("| ℹ️ info | `LI1") for line in lines) == 2


def test_seed_rich_console(seed_dir: Path) -> None:
    console = Console(file=io.StringIO(), width=100, no_color=True)
    console.print(terminal.check(run_check(str(seed_dir / "base"), str(seed_dir / "adapter"))))
    text = console.file.getvalue()
    assert text.count("LI101") == 2
    assert text.count("[70840, 8]") >= 2 and text.count("[32000, 8]") >= 2
    assert "2 errors, 0 warnings, 2 info" in text
    assert "32000 -> 70840 (the adapter's saved matrices)" in text


def test_seed_rich_via_main(capsys, seed_dir: Path) -> None:
    rc, out, err = run(capsys, seed_dir / "base", seed_dir / "adapter", "--no-color")
    assert rc == 1 and err == ""
    assert out.count("LI101") == 2
    for needle in ("lm_head.weight", "model.embed_tokens.weight", "[70840, 8]", "[32000, 8]", "2 errors, 0 warnings, 2 info"):
        assert needle in out


def test_seed_check_never_imports_torch_or_transformers(seed_dir: Path) -> None:
    # SPEC: scan/check read headers and small JSON only; checked in a fresh interpreter.
    code = (
        "import sys\n"
        "from inspector.cli import main\n"
        f"codes = [main(['check', {str(seed_dir / 'base')!r}, {str(seed_dir / 'adapter')!r}, '--format', f]) for f in ('json', 'rich', 'markdown', 'github')]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'))\n"
        "sys.stderr.write(repr((codes, heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == repr(([1, 1, 1, 1], []))


def test_grown_llama_modules_to_save(capsys, llama: Built, lora_llama_grown: Built) -> None:
    rc, report = check_json(capsys, llama.path, lora_llama_grown.path)
    assert rc == 1
    # PEFT 0.21 writes each modules_to_save matrix three times (plain, modules_to_save, original_module).
    assert rows(report) == expect(
        ("LI101", "error", HEAD, P + HEAD, (80, 16), (64, 16)),
        ("LI101", "error", EMBED, P + EMBED, (80, 16), (64, 16)),
        ("LI1201", "info", HEAD, P + HEAD, (80, 16), None),
        ("LI1201", "info", EMBED, P + EMBED, (80, 16), None),
    )
    assert report["vocab"]["merged_rows"] == 80


# Which copies of a modules_to_save matrix PEFT versions wrote: 0.21 all three; older ones only the
# ``modules_to_save`` copy; an adapter re-saved by a script only the plain key.
LAYOUTS = {
    "plain": ("",),
    "modules_to_save": (".modules_to_save",),
    "modules_to_save+original_module": (".modules_to_save", ".original_module"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_vocab_mismatch_in_every_key_layout(capsys, root: Path, llama: Built, lora_llama_grown: Built, layout: str) -> None:
    kept = LAYOUTS[layout]

    def keep_layout(tensors):
        for module in ("model.embed_tokens", "lm_head"):
            for copy in ("", ".modules_to_save", ".original_module"):
                if copy not in kept:
                    del tensors[f"{P}{module}{copy}.weight"]
        return tensors

    adapter = edit_tensors(lora_llama_grown.path, root / f"layout_{layout}", keep_layout)
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    chosen = kept[0]  # original_module is the frozen pre-training copy, never the trained one
    expected = [("LI101", "error", name, f"{P}{name[:-len('.weight')]}{chosen}.weight", (80, 16), (64, 16)) for name in (EMBED, HEAD)]
    if len(kept) > 1:
        expected += [("LI1201", "info", name, f"{P}{name[:-len('.weight')]}{chosen}.weight", (80, 16), None) for name in (EMBED, HEAD)]
    assert rows(report) == expect(*expected)


def test_sharded_base(capsys, llama_sharded: Built, lora_llama_grown: Built) -> None:
    rc, report = check_json(capsys, llama_sharded.path, lora_llama_grown.path)
    assert rc == 1
    assert [r for r in rows(report) if r[0] == "LI101"] == expect(
        ("LI101", "error", HEAD, P + HEAD, (80, 16), (64, 16)),
        ("LI101", "error", EMBED, P + EMBED, (80, 16), (64, 16)),
    )


def test_bert_word_embeddings_grown(capsys, root: Path, bert: Built) -> None:
    # Found by config and shape, not by Llama's names; BertModel has no output layer, so nothing is
    # "tied" to the embedding and there is no LI701.
    adapter = make_lora_adapter(bert.path, root / "bert_grown", vocab=80, r=2, lora_alpha=4, target_modules=["query", "value"], modules_to_save=["word_embeddings"])
    rc, report = check_json(capsys, bert.path, adapter.path)
    assert rc == 1
    name = "embeddings.word_embeddings.weight"
    assert rows(report) == expect(
        ("LI101", "error", name, P + name, (80, 16), (64, 16)),
        ("LI1201", "info", name, P + name, (80, 16), None),
    )


def test_gpt2_wte_grown(capsys, root: Path, gpt2: Built) -> None:
    # GPT-2 ties lm_head to transformer.wte; PEFT's save_embedding_layers="auto" saw the resize and
    # also saved lm_head, so both sides are carried (no LI701). The head is not stored in the base:
    # its finding names lm_head.weight (and the message says it is tied to wte).
    adapter = make_lora_adapter(gpt2.path, root / "gpt2_grown", vocab=80, r=2, lora_alpha=4, target_modules=["c_attn"], modules_to_save=["wte"], fan_in_fan_out=True)
    rc, report = check_json(capsys, gpt2.path, adapter.path)
    assert rc == 1
    wte = "transformer.wte.weight"
    assert rows(report) == expect(
        ("LI101", "error", "lm_head.weight", P + HEAD, (80, 16), (64, 16)),
        ("LI101", "error", wte, P + wte, (80, 16), (64, 16)),
        ("LI1201", "info", wte, P + wte, (80, 16), None),
    )
    head = next(f for f in report["findings"] if f["tensor"] == "lm_head.weight")
    assert head["message"].startswith("lm_head.weight (tied to transformer.wte.weight): ")


# ---------------------------------------------------------------------------------------------
# LI2xx tokenizer / config / embedding
# ---------------------------------------------------------------------------------------------


def test_tokenizer_larger_than_embedding(capsys, llama: Built, lora_llama: Built, tok80: Path) -> None:
    rc, report = check_json(capsys, llama.path, lora_llama.path, "--tokenizer", tok80)
    assert rc == 1
    assert rows(report) == expect(
        ("LI201", "error", EMBED, None, None, (64, 16)),
        # merge would grow both matrices to the tokenizer's length and fill the new rows
        ("LI502", "warning", HEAD, None, (80, 16), (64, 16)),
        ("LI502", "warning", EMBED, None, (80, 16), (64, 16)),
    )
    (li201,) = by_code(report, "LI201")
    assert "80 tokens" in li201["message"] and "64 rows" in li201["message"] and "64..79" in li201["message"]
    assert f"--tokenizer {tok80}" in li201["hint"]


def test_tokenizer_in_adapter_dir_is_used(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    adapter = copy_checkpoint(lora_llama.path, root / "lora_with_tok80")
    make_tokenizer(adapter, 80)  # where MedicalGPT-style training saves the extended tokenizer
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert [(f["code"], f["tensor"], f["base_shape"]) for f in by_code(report, "LI201")] == [("LI201", EMBED, [64, 16])]


def test_embedding_larger_than_tokenizer_is_info(capsys, llama: Built, lora_llama: Built, tok50: Path) -> None:
    rc, report = check_json(capsys, llama.path, lora_llama.path, "--tokenizer", tok50)
    assert rc == 0
    assert rows(report) == [("LI202", "info", EMBED, None, None, None)]
    assert "14 rows are padding" in by_code(report, "LI202")[0]["message"]
    assert run(capsys, llama.path, lora_llama.path, "--tokenizer", tok50, "--fail-on", "warning")[0] == 0


def test_config_vocab_size_disagrees(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    base = edit_json(llama.path, root / "llama_vocab100", "config.json", vocab_size=100)
    rc, report = check_json(capsys, base, lora_llama.path)
    assert rc == 0
    assert rows(report) == [("LI203", "warning", EMBED, None, None, None)]
    assert "vocab_size 100" in report["findings"][0]["message"] and "64 rows" in report["findings"][0]["message"]
    assert run(capsys, base, lora_llama.path, "--fail-on", "warning")[0] == 1


# ---------------------------------------------------------------------------------------------
# LI3xx LoRA shapes
# ---------------------------------------------------------------------------------------------


def test_adapter_from_wider_model(capsys, root: Path, llama: Built, llama_wide: Built) -> None:
    adapter = make_lora_adapter(llama_wide.path, root / "lora_wide", r=2, lora_alpha=4, target_modules=["q_proj", "down_proj"])
    rc, report = check_json(capsys, llama.path, adapter.path)
    assert rc == 1
    expected = []
    for layer in (0, 1):
        q, down = attn(layer, "q_proj"), f"model.layers.{layer}.mlp.down_proj"
        expected += [
            ("LI301", "error", f"{q}.weight", f"{P}{q}.lora_A.weight", (2, 32), (16, 16)),
            ("LI302", "error", f"{q}.weight", f"{P}{q}.lora_B.weight", (32, 2), (16, 16)),
            ("LI301", "error", f"{down}.weight", f"{P}{down}.lora_A.weight", (2, 64), (16, 32)),
            ("LI302", "error", f"{down}.weight", f"{P}{down}.lora_B.weight", (32, 2), (16, 32)),
        ]
    # base_model_name_or_path is the wide model's directory, here on this machine: LI1004 says so.
    assert rows(report) == expect(*expected, ("LI1004", "warning", None, None, None, None))
    assert by_code(report, "LI1004")[0]["message"] == (
        f"the adapter was trained on the local model '{llama_wide.path}', which is not BASE ('{llama.path}'): model.layers.0.input_layernorm.weight has another shape "
        "there. Merging into BASE drops what that model added (a stage-1 merge, a resize, further training)."
    )


def test_reshaped_lora_a(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    key = f"{P}{Q0}.lora_A.weight"
    adapter = edit_tensors(lora_llama.path, root / "reshaped_a", replace(key, torch.zeros(4, 12)))
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == [("LI301", "error", f"{Q0}.weight", key, (4, 12), (16, 16))]
    assert "expected [4, 16]" in by_code(report, "LI301")[0]["message"]


def test_reshaped_lora_b(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    v1 = attn(1, "v_proj")
    key = f"{P}{v1}.lora_B.weight"
    adapter = edit_tensors(lora_llama.path, root / "reshaped_b", replace(key, torch.zeros(10, 4)))
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == [("LI302", "error", f"{v1}.weight", key, (10, 4), (8, 16))]
    assert "expected [8, 4]" in by_code(report, "LI302")[0]["message"]


def test_gpt2_without_fan_in_fan_out_layout_is_still_conv1d(capsys, root: Path, gpt2: Built, lora_gpt2: Built) -> None:
    # model_type gpt2 stores [in, out] whatever the config says; a lora_B one row short is LI302.
    key = f"{P}transformer.h.0.attn.c_attn.lora_B.weight"
    adapter = edit_tensors(lora_gpt2.path, root / "gpt2_short_b", replace(key, torch.zeros(47, 2)))
    rc, report = check_json(capsys, gpt2.path, adapter)
    assert rc == 1
    assert rows(report) == [("LI302", "error", "transformer.h.0.attn.c_attn.weight", key, (47, 2), (16, 48))]


def test_rank_differs_from_config(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    adapter = edit_config(lora_llama.path, root / "r8", r=8)
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == expect(*[
        ("LI303", "error", f"{attn(layer, proj)}.weight", f"{P}{attn(layer, proj)}.lora_A.weight", (4, 16), (16, 16) if proj == "q_proj" else (8, 16))
        for layer in (0, 1) for proj in ("q_proj", "v_proj")
    ])
    assert "rank 4 but the config says r=8" in report["findings"][0]["message"]


def test_rank_differs_from_rank_pattern(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    adapter = edit_config(lora_llama.path, root / "rank_pattern_v2", rank_pattern={"v_proj": 2})
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == expect(*[
        ("LI303", "error", f"{attn(layer, 'v_proj')}.weight", f"{P}{attn(layer, 'v_proj')}.lora_A.weight", (4, 16), (8, 16)) for layer in (0, 1)
    ])
    assert "(rank_pattern)" in report["findings"][0]["message"]


def test_dora_magnitude_with_use_dora_false(capsys, root: Path, llama: Built, dora_llama: Built) -> None:
    adapter = edit_config(dora_llama.path, root / "dora_off", use_dora=False)
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == expect(*[
        ("LI304", "error", f"{attn(layer, proj)}.weight", f"{P}{attn(layer, proj)}.lora_magnitude_vector", (16,), None)
        for layer in (0, 1) for proj in ("q_proj", "o_proj")
    ])


def test_dora_magnitude_missing(capsys, root: Path, llama: Built, dora_llama: Built) -> None:
    o1 = attn(1, "o_proj")
    adapter = edit_tensors(dora_llama.path, root / "dora_no_magnitude", drop(f"{P}{o1}.lora_magnitude_vector"))
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == [("LI304", "error", f"{o1}.weight", f"{P}{o1}.lora_A.weight", None, None)]


def test_dora_magnitude_wrong_length(capsys, root: Path, llama: Built, dora_llama: Built) -> None:
    key = f"{P}{Q0}.lora_magnitude_vector"
    adapter = edit_tensors(dora_llama.path, root / "dora_short_magnitude", replace(key, torch.ones(12)))
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == [("LI304", "error", f"{Q0}.weight", key, (12,), (16, 16))]


def test_lora_bias_with_lora_bias_false(capsys, root: Path, qwen2: Built, lora_qwen2: Built) -> None:
    adapter = edit_config(lora_qwen2.path, root / "qwen_bias_off", lora_bias=False)
    rc, report = check_json(capsys, qwen2.path, adapter)
    assert rc == 1
    assert rows(report) == expect(*[
        ("LI306", "error", f"{attn(layer, proj)}.weight", f"{P}{attn(layer, proj)}.lora_B.bias", (16,) if proj == "q_proj" else (8,), None)
        for layer in (0, 1) for proj in ("q_proj", "k_proj", "v_proj")
    ])


def test_lora_b_missing(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    adapter = edit_tensors(lora_llama.path, root / "no_lora_b", drop(f"{P}{Q0}.lora_B.weight"))
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == [("LI307", "error", f"{Q0}.weight", f"{P}{Q0}.lora_A.weight", (4, 16), None)]
    assert "lora_B is missing" in by_code(report, "LI307")[0]["message"]


# ---------------------------------------------------------------------------------------------
# LI4xx orphans and targeting, LI1002 layer count
# ---------------------------------------------------------------------------------------------


def test_orphan_module(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    qq = attn(0, "qq_proj")

    def to_qq(tensors):
        for part in ("lora_A", "lora_B"):
            tensors[f"{P}{qq}.{part}.weight"] = tensors.pop(f"{P}{Q0}.{part}.weight")
        return tensors

    adapter = edit_config(edit_tensors(lora_llama.path, root / "orphan_tmp", to_qq), root / "orphan", target_modules=["q_proj", "v_proj", "qq_proj"])
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == expect(
        ("LI401", "error", f"{qq}.weight", f"{P}{qq}.lora_A.weight", (4, 16), None),
        ("LI401", "error", f"{qq}.weight", f"{P}{qq}.lora_B.weight", (16, 4), None),
        ("LI402", "warning", None, None, None, None),  # "qq_proj" matches no base module either
    )


def test_orphans_of_one_pattern_are_one_finding(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    # The same missing module in every layer (a vision tower the base lacks, a renamed projection) is one
    # cause: one LI401 per key pattern across layers, naming the first key and counting the rest.
    adapter = edit_tensors(lora_llama.path, root / "orphans_all_layers", lambda t: {k.replace(".q_proj.", ".qq_proj."): v for k, v in t.items()})
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert [(r[0], r[3]) for r in rows(report) if r[0] == "LI401"] == [
        ("LI401", f"{P}{attn(0, 'qq_proj')}.lora_A.weight"), ("LI401", f"{P}{attn(0, 'qq_proj')}.lora_B.weight")]
    assert by_code(report, "LI401")[0]["message"] == (
        f"{P}{attn(0, 'qq_proj')}.lora_A.weight and 1 more like it ({P}model.layers.*.self_attn.qq_proj.lora_A.weight) target modules the base "
        f"does not have, such as {attn(0, 'qq_proj')}.weight: the adapter silently does nothing there."
    )


def test_orphan_full_tensor(capsys, root: Path, llama: Built, mts_norm: Built) -> None:
    adapter = edit_tensors(mts_norm.path, root / "orphan_norm", rename(f"{P}model.norm.weight", f"{P}model.final_norm.weight"))
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == [("LI401", "error", "model.final_norm.weight", f"{P}model.final_norm.weight", (16,), None)]


def test_target_module_matches_nothing(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    adapter = edit_config(lora_llama.path, root / "target_nonexistent", target_modules=["q_proj", "v_proj", "nonexistent_proj"])
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 0
    assert rows(report) == [("LI402", "warning", None, None, None, None)]
    assert "'nonexistent_proj'" in report["findings"][0]["message"]
    rc, out, err = run(capsys, llama.path, adapter, "--fail-on", "warning", "--format", "github")
    assert rc == 1
    assert out.splitlines()[0].startswith("::warning title=LI402 target-module-unmatched::target_modules entry 'nonexistent_proj'")


def test_target_regex_matches_nothing(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    adapter = edit_config(lora_llama.path, root / "target_regex_nothing", target_modules=r".*\.(q_proj|v_proj|nope_proj)$")
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 0 and rows(report) == []  # matches q/v: clean
    adapter = edit_config(lora_llama.path, root / "target_regex_none", target_modules=r".*\.nope_proj")
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert sorted(r[0] for r in rows(report)) == ["LI402"] + ["LI403"] * 4


def test_tensors_for_untargeted_module(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    adapter = edit_config(lora_llama.path, root / "target_q_only", target_modules=["q_proj"])
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == expect(*[
        ("LI403", "error", f"{attn(layer, 'v_proj')}.weight", f"{P}{attn(layer, 'v_proj')}.lora_A.weight", None, None) for layer in (0, 1)
    ])


def test_layers_to_transform_excludes_tensors(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    adapter = edit_config(lora_llama.path, root / "layers_0", layers_to_transform=[0])
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == expect(*[
        ("LI403", "error", f"{attn(1, proj)}.weight", f"{P}{attn(1, proj)}.lora_A.weight", None, None) for proj in ("q_proj", "v_proj")
    ])


def test_foreign_key(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    key = f"{P}{Q0}.hada_w1_a"
    adapter = edit_tensors(lora_llama.path, root / "foreign_key", replace(key, torch.zeros(4, 16)))
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == [("LI404", "error", None, key, (4, 16), None)]


def test_adapter_from_deeper_model(capsys, root: Path, llama: Built, llama_4layers: Built) -> None:
    adapter = make_lora_adapter(llama_4layers.path, root / "lora_4layers", r=2, lora_alpha=4, target_modules=["q_proj"])
    rc, report = check_json(capsys, llama.path, adapter.path)
    assert rc == 1
    assert rows(report) == expect(("LI1002", "error", None, f"{P}{attn(2, 'q_proj')}.lora_A.weight", None, None), ("LI1004", "warning", None, None, None, None))
    assert "layers up to 3 (4 tensors) but the base has 2 layers" in by_code(report, "LI1002")[0]["message"]


def test_adapter_trained_on_a_local_stage_one_merge(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    # Stage 2 was trained on the merge of stage 1 (same shapes, other q_proj values); merging it into
    # the original base would drop stage 1. A copy of the base (another dtype too) is no such case.
    stage1 = root / "stage1_merged"
    assert main(["merge", str(llama.path), str(lora_llama.path), "--out", str(stage1), "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    stage2 = make_lora_adapter(stage1, root / "stage2", r=2, lora_alpha=4, target_modules=["q_proj"])
    rc, report = check_json(capsys, llama.path, stage2.path)
    assert rc == 0 and rows(report) == [("LI1004", "warning", None, None, None, None)]
    assert f"'{stage1}', which is not BASE ('{llama.path}'): model.layers.0.self_attn.q_proj.weight holds other values there" in report["findings"][0]["message"]
    assert report["findings"][0]["hint"] == f"Merge into the model the adapter was trained on: `lora-inspector merge {stage1} {stage2.path} --out merged`."
    rc, report = check_json(capsys, stage1, stage2.path)
    assert rc == 0 and rows(report) == []
    copy = copy_checkpoint(llama.path, root / "llama_copy")
    adapter = make_lora_adapter(copy, root / "lora_on_copy", r=2, lora_alpha=4, target_modules=["q_proj"])
    assert check_json(capsys, llama.path, adapter.path)[1]["summary"]["warning"] == 0


def test_target_parameters_is_unsupported_not_untargeted(capsys, root: Path, llama: Built) -> None:
    adapter = make_lora_adapter(llama.path, root / "target_parameters", r=2, lora_alpha=4, target_modules=[], target_parameters=["mlp.down_proj.weight"])
    assert f"{P}model.layers.0.mlp.down_proj.lora_A.weight" in adapter.tensors
    rc, report = check_json(capsys, llama.path, adapter.path)
    assert rc == 1
    # PEFT loads these tensors (target_parameters wraps down_proj): LI1403 only, no LI403.
    assert rows(report) == [("LI1403", "error", None, None, None, None)]
    assert "mlp.down_proj.weight" in report["findings"][0]["message"]


# ---------------------------------------------------------------------------------------------
# LI5xx grown rows, LI601 token indices, LI701 tied embeddings
# ---------------------------------------------------------------------------------------------


def test_embedding_lora_on_grown_vocab_without_base_layer(capsys, root: Path, llama: Built, embed_lora_grown: Built) -> None:
    adapter = edit_tensors(embed_lora_grown.path, root / "embed_lora_no_base_layer", drop(f"{P}model.embed_tokens.base_layer.weight"))
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == expect(
        ("LI501", "error", EMBED, f"{P}model.embed_tokens.lora_embedding_A", (80, 16), (64, 16)),
        ("LI502", "warning", HEAD, None, (80, 16), (64, 16)),
    )
    rc, out, _ = run(capsys, llama.path, adapter, "--format", "github")
    assert rc == 1 and out.startswith("::error title=LI501 new-rows-not-carried::model.embed_tokens.weight: LoRA was trained on 80 rows but the base has 64")


def test_embedding_lora_on_grown_vocab_with_base_layer(capsys, llama: Built, embed_lora_grown: Built) -> None:
    base_layer = f"{P}model.embed_tokens.base_layer.weight"
    assert embed_lora_grown.shapes()[base_layer] == (80, 16)  # PEFT saved the resized embedding
    rc, report = check_json(capsys, llama.path, embed_lora_grown.path)
    assert rc == 1
    assert rows(report) == expect(
        ("LI101", "error", EMBED, base_layer, (80, 16), (64, 16)),
        ("LI502", "warning", HEAD, None, (80, 16), (64, 16)),
    )


def test_untied_head_not_carried(capsys, root: Path, llama: Built, mts_embed_grown: Built) -> None:
    # PEFT's save_embedding_layers="auto" also saved lm_head (it saw the resize); an adapter saved
    # with save_embedding_layers=False, the case here, carries only modules_to_save's embedding.
    adapter = edit_tensors(mts_embed_grown.path, root / "mts_embed_only", drop(f"{P}lm_head.weight"))
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == expect(
        ("LI101", "error", EMBED, P + EMBED, (80, 16), (64, 16)),
        ("LI502", "warning", HEAD, None, (80, 16), (64, 16)),
        ("LI1201", "info", EMBED, P + EMBED, (80, 16), None),
    )
    assert "rows 64..79" in by_code(report, "LI502")[0]["message"]


@pytest.mark.parametrize("base", ["qwen2", "llama_tied"])
def test_tied_base_embedding_only(capsys, request, root: Path, base: str) -> None:
    built = request.getfixturevalue(base)
    adapter = make_lora_adapter(built.path, root / f"tied_mts_{base}", r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["embed_tokens"])
    rc, report = check_json(capsys, built.path, adapter.path)
    assert rc == 0
    assert rows(report) == [("LI701", "warning", EMBED, P + EMBED, (64, 16), (64, 16))]
    assert "tie_word_embeddings: false" in report["findings"][0]["hint"]
    assert run(capsys, built.path, adapter.path, "--fail-on", "warning")[0] == 1


def test_trainable_token_indices_beyond_base(capsys, root: Path, llama: Built, tokens_llama: Built) -> None:
    adapter = edit_config(tokens_llama.path, root / "tokens_70", trainable_token_indices=[3, 5, 70])
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == expect(
        ("LI601", "error", EMBED, None, None, (64, 16)),
        ("LI502", "warning", HEAD, None, (71, 16), (64, 16)),
    )
    assert "reach token 70 but the base has 64 rows: the merged model needs 71 rows" in by_code(report, "LI601")[0]["message"]


def test_adapter_with_fewer_rows_says_the_merge_shrinks(capsys, root: Path, llama: Built) -> None:
    # resize_token_embeddings(len(tokenizer)) on a base with padding rows: the adapter has fewer rows.
    adapter = make_lora_adapter(llama.path, root / "shrunk", vocab=60, r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"])
    rc, report = check_json(capsys, llama.path, adapter.path)
    li101 = by_code(report, "LI101")
    assert rc == 1 and report["vocab"]["merged_rows"] == 60 and len(li101) == 2
    assert "the base has [64, 16] (fewer rows: resized to the tokenizer's length, dropping padding rows?)" in li101[0]["message"]
    assert "(shrinks the model to the adapter's 60 rows)" in li101[0]["hint"]


def test_tokenizer_larger_than_trainable_indices_sets_the_size(capsys, root: Path, llama: Built, tokens_llama: Built) -> None:
    # Trainable tokens on some of the new ids (up to 70), the extended tokenizer (80 tokens) beside them:
    # training embedded all 80, so the merge (and resize --like) grow to 80, and LI201 is repaired.
    adapter = make_tokenizer(edit_config(tokens_llama.path, root / "tokens_tok80", trainable_token_indices=[3, 5, 70]), 80)
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1 and report["vocab"]["merged_rows"] == 80 and report["vocab"]["source"].startswith("the tokenizer in ")
    assert {f["code"]: f["repair"] for f in report["findings"] if f["severity"] == "error"} == {"LI201": "resize", "LI601": "resize"}


def test_adapter_without_its_extended_tokenizer(capsys, root: Path, seed_dir: Path) -> None:
    # The seed adapter grows 32,000 -> 70,840 rows; without its tokenizer only the base's (32,000) is found.
    adapter = root / "seed_adapter_no_tokenizer"
    shutil.copytree(seed_dir / "adapter", adapter, ignore=shutil.ignore_patterns("tokenizer*"))
    rc, report = check_json(capsys, seed_dir / "base", adapter)
    warnings = by_code(report, "LI204")
    assert rc == 1 and [(f["severity"], f["tensor"]) for f in warnings] == [("warning", "model.embed_tokens.weight")]
    assert warnings[0]["message"].startswith("the adapter grows the vocabulary to 70840 rows (the adapter's saved matrices) but the only tokenizer "
                                             f"found is the base's (32000 tokens, in {seed_dir / 'base'})")
    rc, report = check_json(capsys, seed_dir / "base", adapter, "--tokenizer", seed_dir / "adapter")
    assert by_code(report, "LI204") == [] and by_code(report, "LI202") == []


# ---------------------------------------------------------------------------------------------
# LI801 ... LI1403
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0,), (0, 16)], ids=["flat", "rows"])
def test_empty_tensor(capsys, root: Path, llama: Built, lora_llama: Built, shape: tuple[int, ...]) -> None:
    key = f"{P}{Q0}.lora_A.weight"
    adapter = edit_tensors(lora_llama.path, root / f"empty_{len(shape)}", replace(key, torch.zeros(shape)))
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == [("LI801", "error", None, key, shape, None)]


def test_empty_modules_to_save_embedding(capsys, root: Path, llama: Built, mts_embed_grown: Built) -> None:
    # ZeRO-3 without gathering: every copy of the saved embedding is torch.Size([0]).
    def empty(tensors):
        for key in list(tensors):
            if "embed_tokens" in key or "lm_head" in key:
                tensors[key] = torch.zeros(0)
        return tensors

    adapter = edit_tensors(mts_embed_grown.path, root / "empty_embed", empty)
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    # LI801 alone: no LI101/LI1001 read out of a [0] "shape", no vocabulary plan, no bloat of 0 bytes.
    assert rows(report) == expect(*[
        ("LI801", "error", None, key, (0,), None)
        for key in (P + EMBED, f"{P}model.embed_tokens.modules_to_save.weight", f"{P}model.embed_tokens.original_module.weight", P + HEAD)
    ])
    assert report["vocab"] == {"base_rows": 64, "merged_rows": 64, "source": "the base"}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_adapter_without_tensors(capsys, root: Path, llama: Built, lora_llama: Built, fmt: str) -> None:
    # alpaca-lora's 443-byte adapter_model.bin: an empty state dict, and a merge that changes nothing.
    adapter = edit_tensors(lora_llama.path, root / f"no_tensors_{fmt}", lambda tensors: {})
    if fmt == "bin":
        (adapter / "adapter_model.safetensors").unlink()
        torch.save({}, adapter / "adapter_model.bin")
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == [("LI802", "error", None, None, None, None)]
    assert report["findings"][0]["message"] == f"the adapter's adapter_model.{fmt} holds no tensors: merging it would change nothing."
    rc = main(["merge", str(llama.path), str(adapter), "--out", str(root / f"merged_empty_{fmt}"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 1 and "LI802" in out + err and not (root / f"merged_empty_{fmt}").exists()


def test_quantized_base(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    # As unsloth's -bnb-4bit repos store it: U8-packed [n/2, 1] weights and quant-state keys. One cause,
    # one finding: no LoRA shape errors read out of the packed shapes ("expected [4, 1]").
    def pack(tensors):
        for key in [k for k in tensors if k.endswith("_proj.weight")]:
            tensors[key] = torch.zeros(tensors[key].numel() // 2, 1, dtype=torch.uint8)
            tensors[key.removesuffix("weight") + "weight.absmax"] = torch.ones(4)
        return tensors

    packed = edit_tensors(llama.path, root / "llama_bnb_raw", pack, filename="model.safetensors")
    base = edit_json(packed, root / "llama_bnb", "config.json", quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    rc, report = check_json(capsys, base, lora_llama.path)
    assert rc == 1
    # LI1004 stays: it names the full-precision model the adapter was trained on, where LI901 says to merge.
    assert rows(report) == expect(("LI901", "error", "model.layers.0.mlp.down_proj.weight.absmax", None, None, None),
                                  ("LI1004", "warning", None, None, None, None))
    assert report["findings"][0]["message"].startswith("the base is quantized (quantization_config (bitsandbytes)); merging into packed weights")
    assert f"trained on the local model '{llama.path}'" in by_code(report, "LI1004")[0]["message"]
    rc = main(["merge", str(base), str(lora_llama.path), "--out", str(root / "merged_bnb"), "--device", "cpu"])
    assert rc == 1 and "Merge refused" in capsys.readouterr().err and not (root / "merged_bnb").exists()


@pytest.mark.parametrize("layout", ["mxfp4", "quanto"])
def test_quantized_tensors_under_other_names_are_not_a_leftover(capsys, root: Path, llama: Built, lora_llama: Built, layout: str, tmp_path: Path) -> None:
    # gpt-oss MXFP4 (3-D U8 *_blocks / *_scales) and optimum-quanto (.weight._data I8): no 2-D ".weight"
    # of a packed dtype, yet quantized. Still LI901 error: merge refuses instead of writing a broken model.
    def quantize(tensors):
        if layout == "mxfp4":
            tensors["model.layers.0.mlp.experts.gate_up_proj_blocks"] = torch.zeros(2, 8, 2, 16, dtype=torch.uint8)
            tensors["model.layers.0.mlp.experts.gate_up_proj_scales"] = torch.zeros(2, 8, 2, dtype=torch.uint8)
        else:
            tensors["model.layers.0.mlp.up_proj.weight._data"] = torch.zeros(32, 16, dtype=torch.int8)
        return tensors

    raw = edit_tensors(llama.path, root / f"llama_{layout}_raw", quantize, filename="model.safetensors")
    base = edit_json(raw, root / f"llama_{layout}", "config.json", quantization_config={"quant_method": layout})
    rc, report = check_json(capsys, base, lora_llama.path)
    assert rc == 1 and [(f["code"], f["severity"]) for f in report["findings"] if f["code"] == "LI901"] == [("LI901", "error")]
    assert main(["merge", str(base), str(lora_llama.path), "--out", str(tmp_path / "merged"), "--device", "cpu"]) == 1
    capsys.readouterr()
    assert not (tmp_path / "merged").exists()


def test_leftover_quantization_config_is_a_warning(capsys, root: Path, llama: Built, lora_llama: Built, tmp_path: Path) -> None:
    # Full-precision weights under a config that still says bitsandbytes (saved after dequantizing):
    # the merge goes ahead and leaves the stale quantization_config out of the merged config.
    base = edit_json(llama.path, root / "llama_bnb_leftover", "config.json", quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    rc, report = check_json(capsys, base, lora_llama.path)
    assert rc == 0 and rows(report) == [("LI901", "warning", None, None, None, None)]
    assert report["findings"][0]["message"].startswith("config.json carries a quantization_config (bitsandbytes) but every weight is full precision")
    assert main(["merge", str(base), str(lora_llama.path), "--out", str(tmp_path / "merged"), "--device", "cpu", "--quiet"]) == 0
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())


def test_base_model_name_of_another_family(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    adapter = edit_config(lora_llama.path, root / "named_qwen", base_model_name_or_path="Qwen/Qwen2-7B")
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 0
    assert rows(report) == [("LI1003", "warning", None, None, None, None)]
    assert "'Qwen/Qwen2-7B' (qwen?)" in report["findings"][0]["message"] and "'llama'" in report["findings"][0]["message"]


@pytest.mark.parametrize(("name", "model_type"), [
    ("microsoft/deberta-v3-base", "deberta-v2"), ("google/gemma-3-1b-it", "gemma3_text"), ("Qwen/Qwen3-30B-A3B", "qwen3_moe"),
    ("Qwen/Qwen1.5-MoE-A2.7B", "qwen2_moe"), ("tiiuae/Falcon3-7B-Base", "llama"), ("microsoft/codebert-base", "roberta"),
    ("EleutherAI/pythia-70m", "gpt_neox"), ("mistralai/Mistral-Small-3.1-24B-Base-2503", "mistral3"), ("/data/runs/stage1-merged", "llama"),
    ("deepseek-ai/deepseek-coder-6.7b-base", "llama"), ("bigcode/starcoder", "gpt_bigcode"), ("hfl/chinese-roberta-wwm-ext", "bert"),
    ("ai4bharat/indic-bert", "albert"),
])
def test_base_model_name_of_the_same_family(capsys, root: Path, llama: Built, lora_llama: Built, name: str, model_type: str) -> None:
    # Names and model types spelled differently within one family: no LI1003 (which --fail-on warning would turn into a failure).
    base = edit_json(llama.path, root / f"typed_{model_type}_{abs(hash(name))}", "config.json", model_type=model_type)
    adapter = edit_config(lora_llama.path, root / f"named_{abs(hash(name))}", base_model_name_or_path=name)
    assert [f.code.code for f in run_check(str(base), str(adapter)).findings if f.code.code == "LI1003"] == []


def test_dtype_difference_is_info(capsys, llama_bf16: Built, lora_llama: Built) -> None:
    rc, report = check_json(capsys, llama_bf16.path, lora_llama.path)
    assert rc == 0
    assert rows(report) == [("LI1101", "info", None, None, None, None)]
    assert report["findings"][0]["message"] == "the adapter stores F32 x8; the base stores BF16."


def test_bloat(capsys, root: Path, llama: Built, mts_norm: Built) -> None:
    def copies(tensors):
        plain = tensors[f"{P}model.norm.weight"]
        tensors[f"{P}model.norm.modules_to_save.weight"] = plain.clone()
        tensors[f"{P}model.norm.original_module.weight"] = plain.clone()
        return tensors

    adapter = edit_tensors(mts_norm.path, root / "bloat", copies)
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 0
    assert rows(report) == [("LI1201", "info", "model.norm.weight", f"{P}model.norm.weight", (16,), None)]
    assert report["findings"][0]["message"] == (
        "model.norm.weight is stored 3 times (modules_to_save, original_module, plain); "
        "128 B are copies PEFT does not use (it loads the plain one)."
    )
    # PEFT 0.21 itself writes these copies: info, so `--fail-on warning` passes every modules_to_save adapter.
    assert report["findings"][0]["hint"] == "Harmless: PEFT loads the plain copy; the others only take disk space."
    assert run(capsys, llama.path, adapter, "--fail-on", "warning")[0] == 0


def test_non_lora_peft_type(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    adapter = edit_config(lora_llama.path, root / "loha_type", peft_type="LOHA")
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert [(f["code"], f["severity"]) for f in report["findings"]] == [("LI1401", "error")]


def test_real_loha_adapter(capsys, root: Path, llama: Built) -> None:
    from peft import LoHaConfig, get_peft_model

    peft_model = get_peft_model(load_model(llama.path), LoHaConfig(r=2, alpha=4, target_modules=["q_proj"]))
    peft_model.save_pretrained(root / "loha")
    rc, report = check_json(capsys, llama.path, root / "loha")
    assert rc == 1
    assert [(f["code"], f["severity"], f["message"]) for f in report["findings"]] == [
        ("LI1401", "error", "peft_type is LOHA; lora-inspector checks and merges LoRA adapters only.")
    ]


# ---------------------------------------------------------------------------------------------
# Exit 2: invalid configs and usage errors
# ---------------------------------------------------------------------------------------------

BAD_CONFIGS = {
    "r_string": ({"r": "eight"}, "r is 'eight'; the LoRA rank must be a positive integer"),
    "r_zero": ({"r": 0}, "r is 0; the LoRA rank must be a positive integer"),
    "rslora_string": ({"use_rslora": "false"}, "use_rslora is 'false' (str); it must be true or false"),
    "bad_regex": ({"target_modules": "model\\.(q_proj"}, "target_modules 'model\\\\.(q_proj' is not a valid regular expression"),
    "no_peft_type": ({"peft_type": DROP}, "peft_type is None"),
    "init_number": ({"init_lora_weights": 3}, "init_lora_weights is 3; expected true, false or an init name"),
    "alora_tokens_string": ({"alora_invocation_tokens": "<tool>"}, "alora_invocation_tokens is '<tool>'; expected a list of integers"),
    "layer_replication_flat": ({"layer_replication": [0, 2]}, "layer_replication is [0, 2]; expected a list of [start, end] layer ranges"),
    "ensure_weight_tying_string": ({"ensure_weight_tying": "true"}, "ensure_weight_tying is 'true' (str); it must be true or false"),
    # Combinations PEFT's LoraConfig raises a ValueError for when it loads the file:
    "regex_with_layers": ({"target_modules": ".*q_proj", "layers_to_transform": [0]},
                          "layers_to_transform is set while target_modules is a regex string, which PEFT's LoraConfig rejects"),
    "regex_with_pattern": ({"target_modules": ".*q_proj", "layers_pattern": "layers"},
                           "layers_pattern is set while target_modules is a regex string, which PEFT's LoraConfig rejects"),
    "pattern_without_layers": ({"layers_pattern": "layers"}, "layers_pattern is set without layers_to_transform, which PEFT's LoraConfig rejects"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_invalid_config_exits_2(capsys, root: Path, llama: Built, lora_llama: Built, case: str) -> None:
    changes, why = BAD_CONFIGS[case]
    adapter = edit_config(lora_llama.path, root / f"bad_{case}", **changes)
    rc, out, err = run(capsys, llama.path, adapter, "--format", "json")
    assert rc == 2 and json.loads(out)["error"]["path"] == str(adapter / "adapter_config.json")  # stdout stays parseable
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"Error: Invalid adapter_config.json for '{adapter / 'adapter_config.json'}': {why}")
    assert lines[1] == "Hint: Fix the field in adapter_config.json (PEFT writes it with LoraConfig.save_pretrained)."
    assert "Traceback" not in err


def test_swapped_arguments_exit_2(capsys, llama: Built, lora_llama: Built) -> None:
    rc, out, err = run(capsys, lora_llama.path, llama.path)
    assert rc == 2 and out == ""
    assert err.splitlines() == [
        f"Error: Arguments swapped for '{lora_llama.path}': BASE is a PEFT adapter and ADAPTER is a model.",
        f"Hint: Run `lora-inspector check {llama.path} {lora_llama.path}`.",
    ]


def test_mistral_native_format_is_named(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    # consolidated.safetensors + params.json, no config.json: the adapter's names cannot match; say why.
    native = root / "mistral_native"
    native.mkdir()
    (native / "consolidated.safetensors").write_bytes((llama.path / "model.safetensors").read_bytes())
    (native / "params.json").write_text('{"dim": 16, "n_layers": 2, "vocab_size": 64}')
    rc, out, err = run(capsys, native, lora_llama.path)
    assert rc == 2 and out == ""
    assert err.startswith(f"Error: Not a Hugging Face model for '{native}': it is Mistral's native format (params.json, consolidated.safetensors)")
    assert "\nHint: Use the Hugging Face layout of the same model" in err
    # Meta's original release: consolidated.00.pth (a plain state dict) + params.json.
    meta = root / "meta_native"
    meta.mkdir()
    torch.save({"tok_embeddings.weight": torch.zeros(64, 16)}, meta / "consolidated.00.pth")
    (meta / "params.json").write_text('{"dim": 16}')
    rc, out, err = run(capsys, meta / "consolidated.00.pth", lora_llama.path)
    assert rc == 2 and err.startswith(f"Error: Not a Hugging Face model for '{meta / 'consolidated.00.pth'}': it is Meta's original Llama native format")
    rc, out, err = run(capsys, meta, lora_llama.path)  # the directory: nothing it reads by name, and why
    assert rc == 2 and "it is in a native format (params.json + consolidated.* weights)" in err and "convert_llama_weights_to_hf.py" in err


@pytest.mark.parametrize("tool", ["kohya", "diffusers", "mlx"])
def test_lora_files_of_other_tools_are_named(capsys, root: Path, llama: Built, tool: str) -> None:
    from safetensors.torch import save_file

    where = root / f"foreign_{tool}"
    where.mkdir(exist_ok=True)
    if tool == "kohya":
        save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8), "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.ones(())},
                  str(where / "lora.safetensors"))
        adapter, what = where / "lora.safetensors", "a kohya-ss / diffusers LoRA for a diffusion model"
    elif tool == "diffusers":
        save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 8)}, str(where / "pytorch_lora_weights.safetensors"))
        adapter, what = where, "a kohya-ss / diffusers LoRA for a diffusion model"
    else:
        save_file({"model.layers.0.self_attn.q_proj.lora_a": torch.zeros(16, 4), "model.layers.0.self_attn.q_proj.lora_b": torch.zeros(4, 16)},
                  str(where / "adapters.safetensors"))
        (where / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "lora_parameters": {"rank": 4, "scale": 20.0}}))
        shutil.copy(where / "adapters.safetensors", where / "0000100_adapters.safetensors")  # mlx-lm's periodic saves beside it
        adapter, what = where, "an mlx-lm adapter"
    rc, out, err = run(capsys, llama.path, adapter)
    assert rc == 2 and out == "" and err.startswith(f"Error: Not a PEFT checkpoint for '{adapter}': ADAPTER is {what}")


def test_base_without_tensors_exit_2(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    from safetensors.torch import save_file

    empty = root / "empty_base"
    empty.mkdir()
    shutil.copy(llama.path / "config.json", empty / "config.json")
    save_file({}, str(empty / "model.safetensors"))
    rc, out, err = run(capsys, empty, lora_llama.path)
    assert rc == 2 and err.startswith(f"Error: Not a base model for '{empty}': BASE holds no tensors (model.safetensors).")


def test_missing_tokenizer_dir_exit_2(capsys, root: Path, llama: Built, lora_llama: Built) -> None:
    rc, out, err = run(capsys, llama.path, lora_llama.path, "--tokenizer", root / "no-such-dir")
    assert rc == 2 and out == ""
    assert err.startswith(f"Error: Cannot read tokenizer for '{root / 'no-such-dir'}': not a directory.\nHint: ")


def test_fail_on_warning(capsys, llama: Built, root: Path, lora_llama: Built) -> None:
    adapter = edit_config(lora_llama.path, root / "warn_only", base_model_name_or_path="mistralai/Mistral-7B-v0.1")
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 0 and rows(report) == [("LI1003", "warning", None, None, None, None)]
    assert run(capsys, llama.path, adapter, "--fail-on", "warning")[0] == 1
    assert run(capsys, llama.path, adapter, "--fail-on", "error")[0] == 0
    rc, out, err = run(capsys, llama.path, adapter, "--fail-on", "info")
    assert rc == 2 and "Traceback" not in err and err.startswith("Error: ")


# ---------------------------------------------------------------------------------------------
# Found against PEFT 0.21.2's own merge on other architectures (tied weights, renamed modules,
# LoRA variants PEFT cannot merge, task heads)
# ---------------------------------------------------------------------------------------------

TIED_LORA_MESSAGE = "but PEFT's merge_and_unload would apply it to the shared weight, i.e. to both sides."


@pytest.mark.parametrize(("base", "targets", "key", "shape", "side"), [
    ("qwen2", ["q_proj", "lm_head"], "lm_head.lora_A.weight", (2, 16), "lm_head"),
    ("llama_tied", ["q_proj", "embed_tokens"], "model.embed_tokens.lora_embedding_A", (2, 64), "the embedding"),
], ids=["lora-on-tied-lm_head", "embedding-lora-on-tied-embedding"])
def test_lora_on_tied_weight(capsys, request, root: Path, base: str, targets: list[str], key: str, shape: tuple, side: str) -> None:
    # Training applied the delta on one side; PEFT merges it into the shared weight (both sides).
    built = request.getfixturevalue(base)
    adapter = make_lora_adapter(built.path, root / f"tied_lora_{base}", r=2, lora_alpha=4, target_modules=targets)
    rc, report = check_json(capsys, built.path, adapter.path)
    assert rc == 0
    assert rows(report) == [("LI701", "warning", EMBED, P + key, shape, (64, 16))]
    (li701,) = by_code(report, "LI701")
    assert f"training applied the delta to {side} only, {TIED_LORA_MESSAGE}" in li701["message"]
    assert li701["hint"].startswith(f"`lora-inspector merge {built.path} {adapter.path} --out merged` unties them: it writes the embedding and the head separately")
    assert "tie_word_embeddings: false" in li701["hint"]


def test_lora_on_tied_weight_with_ensure_weight_tying_is_clean(capsys, root: Path, llama_tied: Built) -> None:
    # PEFT adds the lm_head LoRA itself and trains one delta on both sides: a tied merge taking it
    # once is right (no LI701), and the lm_head tensors it saved are not "untargeted" (no LI403).
    adapter = make_lora_adapter(llama_tied.path, root / "tied_ewt", r=2, lora_alpha=4, target_modules=["q_proj", "embed_tokens"], ensure_weight_tying=True)
    assert {f"{P}lm_head.lora_A.weight", f"{P}model.embed_tokens.lora_embedding_A"} <= set(adapter.tensors)
    assert "lm_head" not in adapter.config["target_modules"]
    rc, report = check_json(capsys, llama_tied.path, adapter.path)
    assert (rc, rows(report)) == (0, [])


def test_lora_bias_on_layer_without_bias(capsys, root: Path, llama: Built) -> None:
    # PEFT: "Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias".
    adapter = make_lora_adapter(llama.path, root / "lora_bias_no_base_bias", r=2, lora_alpha=4, target_modules=["q_proj"], lora_bias=True)
    rc, report = check_json(capsys, llama.path, adapter.path)
    assert rc == 1
    assert rows(report) == expect(*[
        ("LI306", "error", f"{attn(layer, 'q_proj')}.weight", f"{P}{attn(layer, 'q_proj')}.lora_B.bias", (16,), None) for layer in (0, 1)
    ])
    assert "has no bias; PEFT refuses to merge it" in by_code(report, "LI306")[0]["message"]


@pytest.mark.parametrize(("option", "needle"), [
    ({"alora_invocation_tokens": [5, 6]}, "aLoRA"),
    ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication"),
], ids=["alora", "layer_replication"])
def test_lora_variants_peft_cannot_merge(capsys, root: Path, llama: Built, option: dict, needle: str) -> None:
    adapter = make_lora_adapter(llama.path, root / f"variant_{needle}", r=2, lora_alpha=4, target_modules=["q_proj"], **option)
    rc, report = check_json(capsys, llama.path, adapter.path)
    assert rc == 1
    # layer_replication's LoRA on layer 2 (a copy of layer 1): no LI1002 / LI401 about a 2-layer base.
    assert rows(report) == [("LI1402", "error", None, None, None, None)]
    assert needle in report["findings"][0]["message"]


def test_pissa_adapter_needs_conversion(capsys, root: Path, llama: Built) -> None:
    adapter = make_lora_adapter(llama.path, root / "pissa", r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa")
    rc, report = check_json(capsys, llama.path, adapter.path)
    assert rc == 1
    assert rows(report) == [("LI1404", "error", None, None, None, None)]
    (finding,) = by_code(report, "LI1404")
    assert finding["name"] == "base-mutating-init"
    assert finding["message"].startswith("init_lora_weights is 'pissa': PEFT changed the base weights when it created this adapter (PiSSA moved")
    assert "path_initial_model_for_weight_conversion" in finding["hint"]


@pytest.mark.parametrize(("init", "code"), [
    ("olora", "LI1404"), ("pissa_niter_4", "LI1404"), ("corda", "LI1404"), ("loftq", "LI1404"), ("lora_ga", "LI1404"),
    ("gaussian", None), ("eva", None), (False, None),
])
def test_base_mutating_inits(capsys, root: Path, llama: Built, lora_llama: Built, init, code: str | None) -> None:
    adapter = edit_config(lora_llama.path, root / f"init_{init}", init_lora_weights=init)
    rc, report = check_json(capsys, llama.path, adapter)
    assert [r[0] for r in rows(report)] == ([code] if code else [])


@pytest.fixture(scope="module")
def neox(root: Path) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return make_model(root / "neox", GPTNeoXForCausalLM, GPTNeoXConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                                       num_attention_heads=2, max_position_embeddings=64, tie_word_embeddings=False))


@pytest.fixture(scope="module")
def neox_head_lora(root: Path, neox: Path) -> Path:
    from transformers import GPTNeoXForCausalLM

    return make_adapter(neox, root / "neox_head_lora", GPTNeoXForCausalLM, r=2, lora_alpha=4, target_modules=["query_key_value", "lm_head"])


def test_renamed_module_gpt_neox_lm_head(capsys, neox: Path, neox_head_lora: Path) -> None:
    # transformers 5 loads GPT-NeoX's checkpoint tensor embed_out.weight as lm_head: PEFT's keys say lm_head.
    assert f"{P}lm_head.lora_A.weight" in adapter_keys(neox_head_lora)
    rc, report = check_json(capsys, neox, neox_head_lora)
    assert (rc, rows(report)) == (0, [])
    diagnosis = run_check(str(neox), str(neox_head_lora))
    assert diagnosis.binding.resolve("lm_head.weight") == "embed_out.weight"
    assert diagnosis.binding.lora_targets["lm_head"][1].name == "embed_out.weight"


def test_legacy_embed_out_keys_are_dropped_by_peft(capsys, root: Path, neox: Path, neox_head_lora: Path) -> None:
    # An adapter saved under transformers 4 says embed_out; PEFT 0.21 on transformers 5 finds no such module.
    renamed = edit_tensors(neox_head_lora, root / "neox_legacy_tensors", lambda t: {k.replace(".lm_head.", ".embed_out."): v for k, v in t.items()})
    adapter = edit_config(renamed, root / "neox_legacy", target_modules=["query_key_value", "embed_out"])
    rc, report = check_json(capsys, neox, adapter)
    assert rc == 1
    assert rows(report) == expect(
        *[("LI401", "error", "embed_out.weight", f"{P}embed_out.{key}", shape, None)
          for key, shape in (("lora_A.weight", (2, 16)), ("lora_B.weight", (64, 2)), ("base_layer.weight", (64, 16)))],
        ("LI402", "warning", None, None, None, None),
    )
    assert all("transformers 5 loads as lm_head" in f["message"] and "from embed_out to lm_head" in f["hint"] for f in by_code(report, "LI401"))
    assert "(transformers 5 calls that module lm_head)" in by_code(report, "LI402")[0]["message"]


def test_renamed_module_mixtral_router(capsys, root: Path) -> None:
    # Mixtral's checkpoint keeps block_sparse_moe.gate; transformers 5 (and PEFT's keys) say mlp.gate.
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           max_position_embeddings=64, num_local_experts=2, num_experts_per_tok=1)
    base = make_model(root / "mixtral", MixtralForCausalLM, config)
    adapter = make_adapter(base, root / "mixtral_gate", MixtralForCausalLM, r=2, lora_alpha=4, target_modules=["q_proj", "gate"])
    assert f"{P}model.layers.0.mlp.gate.lora_A.weight" in adapter_keys(adapter)
    rc, report = check_json(capsys, base, adapter)
    # PEFT turns the router into target_parameters: unsupported (LI1403), but nothing is an orphan.
    assert rows(report) == [("LI1403", "error", None, None, None, None)]
    ctx = run_check(str(base), str(adapter)).binding
    assert ctx.lora_targets["model.layers.1.mlp.gate"][1].name == "model.layers.1.block_sparse_moe.gate.weight"


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], r"model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)"], ids=["names", "in-memory-regex"])
def test_renamed_modules_llava(capsys, root: Path, targets) -> None:
    # LLaVA's checkpoint says language_model.model.* / language_model.lm_head / vision_tower; in memory
    # (and in PEFT's keys) they are model.language_model.* / lm_head / model.vision_tower.
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    base = root / "llava"
    if not base.exists():
        vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8, projection_dim=16)
        text = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
        make_model(base, LlavaForConditionalGeneration, LlavaConfig(vision_config=vision, text_config=text, image_token_index=63))
    adapter = make_adapter(base, root / f"llava_{len(targets)}", LlavaForConditionalGeneration, r=2, lora_alpha=4, target_modules=targets, modules_to_save=["lm_head"])
    keys = adapter_keys(adapter)
    assert f"{P}model.language_model.layers.0.self_attn.q_proj.lora_A.weight" in keys and f"{P}lm_head.weight" in keys
    rc, report = check_json(capsys, base, adapter)
    assert (rc, rows(report)) == (0, [])
    if isinstance(targets, list):  # q_proj / v_proj in the CLIP tower too: LoRA on model.vision_tower.encoder.*
        assert f"{P}model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight" in keys
        # Hub repos (saved before transformers 5) store the tower as vision_tower.vision_model.*; so do they resolve.
        hub = edit_tensors(base, root / "llava_hub_names", lambda t: {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in t.items()},
                           filename="model.safetensors")
        rc, report = check_json(capsys, hub, adapter)
        assert (rc, rows(report)) == (0, [])
        ctx = run_check(str(hub), str(adapter)).binding
        assert ctx.lora_targets["model.vision_tower.encoder.layers.0.self_attn.q_proj"][1].name == "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def llama_seq_cls(root: Path, llama: Built) -> Path:
    from transformers import LlamaForSequenceClassification

    return make_adapter(llama.path, root / "seq_cls", LlamaForSequenceClassification, task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])


def test_seq_cls_adapter_on_causal_base(capsys, llama: Built, llama_seq_cls: Path) -> None:
    rc, report = check_json(capsys, llama.path, llama_seq_cls)
    assert rc == 0
    assert rows(report) == [("LI405", "warning", "score.weight", f"{P}score.weight", (2, 16), None)]
    assert report["findings"][0]["name"] == "new-head"
    assert report["findings"][0]["message"] == (
        "score.weight is a new head (task_type SEQ_CLS) the base does not have: load the merged model with the matching AutoModelForSequenceClassification class."
    )


def test_seq_cls_adapter_with_grown_embedding(capsys, root: Path, llama: Built) -> None:
    # A classification model has no lm_head: no LI502 about growing it.
    from transformers import LlamaForSequenceClassification

    adapter = make_adapter(llama.path, root / "seq_cls_grown", LlamaForSequenceClassification, vocab=80, task_type="SEQ_CLS", r=2, lora_alpha=4,
                           target_modules=["q_proj"], modules_to_save=["embed_tokens"])
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 1
    assert rows(report) == expect(
        ("LI101", "error", EMBED, P + EMBED, (80, 16), (64, 16)),
        ("LI405", "warning", "score.weight", f"{P}score.weight", (2, 16), None),
        ("LI1201", "info", EMBED, P + EMBED, (80, 16), None),
    )


@pytest.fixture(scope="module")
def t5(root: Path) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    return make_model(root / "t5", T5ForConditionalGeneration, T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                                                                          num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def test_t5_embed_tokens_are_the_shared_embedding(capsys, root: Path, t5: Path) -> None:
    # modules_to_save=["embed_tokens"] wraps encoder.embed_tokens and decoder.embed_tokens, which the
    # checkpoint stores only as shared.weight: not orphans, but copies that untie from it.
    from transformers import T5ForConditionalGeneration

    adapter = make_adapter(t5, root / "t5_mts_embed", T5ForConditionalGeneration, r=2, lora_alpha=4, target_modules=["q", "v"], modules_to_save=["embed_tokens"])
    assert {f"{P}encoder.embed_tokens.weight", f"{P}decoder.embed_tokens.weight"} <= set(adapter_keys(adapter))
    rc, report = check_json(capsys, t5, adapter)
    assert rc == 0
    assert rows(report) == [("LI701", "warning", "shared.weight", f"{P}decoder.embed_tokens.weight", (64, 16), (64, 16))]
    assert report["findings"][0]["message"].startswith("the base ties decoder.embed_tokens.weight and encoder.embed_tokens.weight to shared.weight")
    assert run_check(str(t5), str(adapter)).binding.resolve("encoder.embed_tokens.weight") == "shared.weight"


@pytest.mark.parametrize(("arch", "head"), [("distilbert", "vocab_projector"), ("electra", "generator_lm_head")])
def test_tied_output_layer_under_another_name(capsys, root: Path, arch: str, head: str) -> None:
    # DistilBERT's vocab_projector (found by name) and ELECTRA's generator_lm_head (found by shape: not
    # stored, [vocab, hidden]) are the tied embedding, not orphans.
    from transformers import DistilBertConfig, DistilBertForMaskedLM, ElectraConfig, ElectraForMaskedLM

    if arch == "distilbert":
        cls, config = DistilBertForMaskedLM, DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=64)
        embed, query = "distilbert.embeddings.word_embeddings.weight", "q_lin"
    else:
        cls, config = ElectraForMaskedLM, ElectraConfig(vocab_size=64, embedding_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=32, max_position_embeddings=64)
        embed, query = "electra.embeddings.word_embeddings.weight", "query"
    base = make_model(root / arch, cls, config)
    adapter = make_adapter(base, root / f"{arch}_mts_head", cls, r=2, lora_alpha=4, target_modules=[query], modules_to_save=[head])
    rc, report = check_json(capsys, base, adapter)
    assert rc == 0
    assert rows(report) == [("LI701", "warning", embed, f"{P}{head}.weight", (64, 16), (64, 16))]
    assert report["findings"][0]["message"].startswith(f"the base ties {head} to {embed} and the adapter replaces only {head} ")


def test_trainable_tokens_on_grown_vocabulary(capsys, root: Path, llama: Built) -> None:
    # PEFT saves the grown embedding as <embed>.token_adapter.base_layer.weight: a base_layer copy.
    adapter = make_lora_adapter(llama.path, root / "tokens_grown", vocab=80, r=2, lora_alpha=4, target_modules=["q_proj"], trainable_token_indices=[3, 70])
    key = f"{P}model.embed_tokens.token_adapter.base_layer.weight"
    assert adapter.shapes()[key] == (80, 16)
    rc, report = check_json(capsys, llama.path, adapter.path)
    assert rc == 1
    assert rows(report) == expect(
        ("LI101", "error", EMBED, key, (80, 16), (64, 16)),
        ("LI101", "error", HEAD, P + HEAD, (80, 16), (64, 16)),
        ("LI601", "error", EMBED, None, None, (64, 16)),
    )
    assert report["vocab"]["merged_rows"] == 80
    assert "grows to 80 rows" in by_code(report, "LI601")[0]["hint"]


def test_bart_final_logits_bias_entries_get_zeros(capsys, root: Path) -> None:
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)
    base = make_model(root / "bart", BartForConditionalGeneration, config)
    adapter = make_adapter(base, root / "bart_grown", BartForConditionalGeneration, vocab=80, r=2, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["shared"])
    rc, report = check_json(capsys, base, adapter)
    assert rc == 1
    shared = "model.shared.weight"
    assert rows(report) == expect(
        ("LI101", "error", "lm_head.weight", P + HEAD, (80, 16), (64, 16)),
        ("LI101", "error", shared, P + shared, (80, 16), (64, 16)),
        ("LI502", "warning", "final_logits_bias", None, (1, 80), (1, 64)),
        ("LI701", "warning", shared, P + shared, (80, 16), (64, 16)),  # BART never calls `shared` itself
        ("LI1201", "info", shared, P + shared, (80, 16), None),
    )
    assert by_code(report, "LI502")[0]["message"].endswith(
        "the merge fills entries 64..79 with zeros, as transformers' resize_token_embeddings pads final_logits_bias.")


def test_lora_on_t5_shared_never_runs(capsys, root: Path, t5: Path) -> None:
    # T5 (and BART) look tokens up through encoder/decoder.embed_tokens, modules that only share
    # shared's weight: LoRA on `shared` changes nothing in training, but PEFT merges it into all of them.
    from peft import LoraConfig, get_peft_model
    from transformers import T5ForConditionalGeneration

    adapter = make_adapter(t5, root / "t5_shared_lora", T5ForConditionalGeneration, r=2, lora_alpha=4, target_modules=["shared"], init_lora_weights=False)
    ids = torch.tensor([[5, 9, 17, 33]])
    base_model = T5ForConditionalGeneration.from_pretrained(t5)
    with torch.no_grad():
        before = base_model(input_ids=ids, decoder_input_ids=ids).logits
        peft_model = get_peft_model(base_model, LoraConfig(r=2, lora_alpha=4, target_modules=["shared"], init_lora_weights=False))
        assert torch.equal(peft_model(input_ids=ids, decoder_input_ids=ids).logits, before)
    rc, report = check_json(capsys, t5, adapter)
    assert rc == 0
    assert rows(report) == [("LI701", "warning", "shared.weight", f"{P}shared.lora_embedding_A", (2, 64), (64, 16))]
    assert report["findings"][0]["message"] == (
        "LoRA on shared changes shared.weight, but the model never calls shared: it looks tokens up through encoder.embed_tokens and "
        "decoder.embed_tokens (and lm_head), which share that weight, so the delta had no effect in training; "
        "PEFT's merge_and_unload would apply it to all of them."
    )


def test_modules_to_save_on_t5_shared_never_runs(capsys, root: Path, t5: Path) -> None:
    # The same for a modules_to_save copy of `shared`: PEFT's merge keeps it aside, but a checkpoint
    # that stores it as shared.weight changes the encoder, decoder and lm_head, which never saw it.
    from transformers import T5ForConditionalGeneration

    adapter = make_adapter(t5, root / "t5_mts_shared", T5ForConditionalGeneration, r=2, lora_alpha=4, target_modules=["q"], modules_to_save=["shared"])
    rc, report = check_json(capsys, t5, adapter)
    assert rc == 0
    assert [r[:4] for r in rows(report)] == [("LI701", "warning", "shared.weight", f"{P}shared.weight")]
    assert report["findings"][0]["message"].startswith(
        "modules_to_save replaces shared (base_model.model.shared.weight), but the model never calls shared: "
        "it looks tokens up through encoder.embed_tokens and decoder.embed_tokens (and lm_head), which share its weight")


def test_findings_doc_lists_every_finding_code() -> None:
    # docs/findings.md is the user's reference: one "### LIxxx name" section per code, whose first
    # "**Severity:** ..." line is the code's default severity and which says what it means and the fix;
    # no section for a code that does not exist.
    import re

    from inspector.findings import Code

    heading = re.compile(r"^#+ +(LI\d+)\b *(.*)$")
    sections: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (REPO / "docs" / "findings.md").read_text().splitlines():
        if line.startswith("#"):
            current = None
            if m := heading.match(line):
                assert line.startswith("### "), f"a finding's section is a ### heading: {line!r}"
                assert m.group(1) not in sections, f"two sections for {m.group(1)}"
                current = m.group(1)
                sections[current] = (m.group(2).strip(), [])
        elif current is not None:
            sections[current][1].append(line)
    found = {}
    for code, (name, body) in sections.items():
        severity = next((ln.removeprefix("**Severity:**").split()[0].rstrip(".,") for ln in body if ln.startswith("**Severity:**")), None)
        found[code] = (name, severity)
        text = "\n".join(body)
        assert "**What it means.**" in text and "**Fix.**" in text, f"{code}: the section says what it means and the fix"
    assert found == {c.code: (c.slug, c.severity) for c in Code}
    # No page names a code that does not exist (a renamed or removed one); a family (a code without
    # its last two digits, as --select LI1 takes it) names codes that do.
    codes = {c.code for c in Code}
    families = {c[:-2] for c in codes}
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        unknown = set(re.findall(r"\bLI\d+\b", page.read_text())) - codes - families
        assert not unknown, f"{page.name} names codes that do not exist: {sorted(unknown)}"


def test_named_adapters_in_subdirectories_are_mentioned(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    # PEFT saves every adapter but "default" in a subdirectory of its name; check reads the top one
    # and says where the others are, instead of passing over them in silence.
    adapter = copy_checkpoint(lora_llama.path, tmp_path / "adapters")
    copy_checkpoint(lora_llama.path, adapter / "second")
    rc, report = check_json(capsys, llama.path, adapter)
    assert rc == 0
    assert report["adapter"]["warnings"] == [
        f"{adapter} also holds 1 named adapter(s) in subdirectories (second/); this reads the one at the top. "
        f"Pass a subdirectory to read another, e.g. '{adapter / 'second'}'."
    ]


def test_named_adapters_warning_shows_in_every_report(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    adapter = copy_checkpoint(lora_llama.path, tmp_path / "adapters")
    copy_checkpoint(lora_llama.path, adapter / "second")
    for fmt in ("rich", "markdown"):
        rc, out, err = run(capsys, llama.path, adapter, "--format", fmt, "--no-color")
        assert rc == 0 and "also holds 1 named adapter(s) in subdirectories (second/)" in " ".join(out.split()), out
        assert str(adapter / "second") in out  # the path to pass, whole
