"""``check --target``: the six servers' rule tables (inspector/targets/) on real PEFT adapters.

Every adapter is written by PEFT's own get_peft_model / save_pretrained (tests/models.py), once for
the module. For each, the test asserts the exact LI15xx findings over all six servers, as
(code, target, outcome): what docs/targets.md's table promises. Without --target, none appears.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from inspector.cli import main
from inspector.targets import TARGETS
from tests.models import Built, make_gpt2, make_lora_adapter

ALL = ("vllm", "sglang", "llamacpp", "lorax", "tgi", "ollama")
QV = ["q_proj", "v_proj"]

# name -> (base fixture, PEFT LoraConfig arguments, make_lora_adapter's vocab)
ADAPTERS: dict[str, tuple[str, dict, int | None]] = {
    "plain": ("llama", dict(r=4, lora_alpha=8, target_modules=QV), None),
    "dora": ("llama", dict(r=2, lora_alpha=4, target_modules=QV, use_dora=True), None),
    "modules_to_save": ("llama", dict(r=4, lora_alpha=8, target_modules=QV, modules_to_save=["embed_tokens", "lm_head"]), 80),
    "embedding_grown": ("llama", dict(r=2, lora_alpha=4, target_modules=["embed_tokens", *QV]), 80),
    "rslora": ("llama", dict(r=4, lora_alpha=8, target_modules=QV, use_rslora=True), None),
    "lora_bias": ("llama", dict(r=2, lora_alpha=4, target_modules=QV, lora_bias=True), None),
    "trainable_tokens": ("llama", dict(r=2, lora_alpha=4, target_modules=QV, trainable_token_indices=[3, 5, 60]), None),
    "rank64": ("llama", dict(r=64, lora_alpha=16, target_modules=QV), None),
    "rank1024": ("llama", dict(r=1024, lora_alpha=16, target_modules=QV), None),
    "patterns": ("llama", dict(r=4, lora_alpha=8, target_modules=[*QV, "down_proj"], rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 16}), None),
    "some_layers": ("llama", dict(r=2, lora_alpha=4, target_modules=QV, layers_to_transform=[0]), None),
    # Patterns and rsLoRA that change no module's scale: nothing for a server to get wrong.
    "idle_patterns": ("llama", dict(r=4, lora_alpha=8, target_modules=QV, rank_pattern={"q_proj": 4}, alpha_pattern={"o_proj": 3}), None),
    "rslora_r1": ("llama", dict(r=1, lora_alpha=8, target_modules=QV, use_rslora=True), None),
    "k_only": ("llama", dict(r=2, lora_alpha=4, target_modules=["k_proj"]), None),
    "lm_head": ("llama", dict(r=2, lora_alpha=4, target_modules=[*QV, "lm_head"]), None),
    "norm_saved": ("llama", dict(r=2, lora_alpha=4, target_modules=QV, modules_to_save=["model.norm"]), None),
    "tied_head": ("qwen2", dict(r=2, lora_alpha=4, target_modules=[*QV, "lm_head"]), None),
    "gpt2": ("gpt2", dict(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True), None),
}

VOCAB_REFUSED = {("LI1506", "vllm", "refused"), ("LI1506", "sglang", "refused"), ("LI1506", "llamacpp", "refused"),
                 ("LI1506", "lorax", "diverges"), ("LI1506", "tgi", "diverges"), ("LI1506", "ollama", "refused")}


def per_server(code: str, vllm: str | None, sglang: str | None, llamacpp: str | None, lorax: str | None, tgi: str | None, ollama: str | None) -> set[tuple]:
    """(code, target, outcome) for every server that has a finding (None: that server serves it as PEFT does)."""
    outcomes = dict(vllm=vllm, sglang=sglang, llamacpp=llamacpp, lorax=lorax, tgi=tgi, ollama=ollama)
    return {(code, t, o) for t, o in outcomes.items() if o is not None}


# What docs/targets.md's table says, per adapter: every LI15xx finding of --target all.
EXPECTED: dict[str, set[tuple]] = {
    "plain": set(),
    "dora": per_server("LI1507", "refused", "refused", "refused", "diverges", "diverges", "refused"),
    "modules_to_save": per_server("LI1505", "refused", "diverges", "refused", "diverges", "diverges", "refused") | VOCAB_REFUSED,
    "embedding_grown": VOCAB_REFUSED
    | per_server("LI1511", None, None, None, "diverges", "diverges", "refused")
    | {("LI1505", "ollama", "refused")},  # PEFT saves embed_tokens.base_layer (the resized base row count) with it
    "rslora": per_server("LI1510", None, "diverges", "diverges", None, None, "diverges"),
    "lora_bias": per_server("LI1508", "refused", "diverges", "refused", "diverges", "diverges", "refused"),
    "trainable_tokens": per_server("LI1509", "refused", "diverges", "refused", "diverges", "diverges", "refused"),
    "rank64": {("LI1503", "vllm", "flag")},
    "rank1024": {("LI1503", "vllm", "refused")},
    "patterns": per_server("LI1510", None, "diverges", "diverges", "diverges", "diverges", "diverges") | {("LI1510", "sglang", "refused")},
    "some_layers": per_server("LI1512", None, None, None, "diverges", "diverges", None),
    "idle_patterns": set(),
    "rslora_r1": set(),
    "k_only": {("LI1504", "sglang", "refused")},
    "lm_head": per_server("LI1511", None, None, None, None, "diverges", "refused") | {("LI1505", "ollama", "refused")},
    "norm_saved": per_server("LI1505", "refused", "diverges", "diverges", "diverges", "diverges", "refused"),
    "tied_head": per_server("LI1511", None, None, "refused", None, "diverges", "refused")
    | {("LI1502", "ollama", "refused"), ("LI1505", "ollama", "refused")},
    "gpt2": {("LI1502", "vllm", "refused"), ("LI1502", "ollama", "refused"), ("LI1504", "ollama", "refused"), ("LI1504", "tgi", "diverges")},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, llama: Built, qwen2: Built) -> dict[str, tuple[Path, Path]]:
    """name -> (base, adapter), each adapter saved by PEFT once for the module."""
    root = tmp_path_factory.mktemp("targets")
    bases = {"llama": llama.path, "qwen2": qwen2.path, "gpt2": make_gpt2(root / "base_gpt2").path}
    out = {}
    for i, (name, (base, kwargs, vocab)) in enumerate(ADAPTERS.items()):
        out[name] = (bases[base], make_lora_adapter(bases[base], root / name, vocab=vocab, seed=i, **kwargs).path)
    return out


def check(capsys: pytest.CaptureFixture[str], base: Path, adapter: Path, *argv: str) -> list[dict]:
    main(["check", str(base), str(adapter), "--format", "json", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    report = json.loads(out)
    return (report["results"][0] if "results" in report else report)["findings"]


def serving(findings: list[dict]) -> list[dict]:
    return [f for f in findings if f["code"].startswith("LI15")]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_target_says_what_the_table_promises(capsys, built, name: str) -> None:
    base, adapter = built[name]
    found = serving(check(capsys, base, adapter, "--target", "all"))
    assert {(f["code"], f["target"], f["outcome"]) for f in found} == EXPECTED[name]
    for f in found:
        # A flag is a warning; a refusal and a silent divergence are errors. The message names the
        # server; the hint is a fix: the flag, a lossless convert, or the merge.
        assert f["severity"] == ("warning" if f["outcome"] == "flag" else "error")
        assert f["message"].startswith(TARGETS[f["target"]].title + ": ")
        assert not re.search(r"\{[a-z_]+\}", f["message"] + f["hint"]), "a placeholder left unformatted"
        assert "--max-lora-rank" in f["hint"] or "lora-inspector convert" in f["hint"] or "lora-inspector merge" in f["hint"] or "--model-impl" in f["hint"]


def test_no_serving_finding_without_target(capsys, built) -> None:
    for name, (base, adapter) in built.items():
        assert serving(check(capsys, base, adapter)) == [], name


def test_one_target_reports_only_its_own_rules(capsys, built) -> None:
    base, adapter = built["dora"]
    assert [(f["code"], f["target"], f["outcome"]) for f in serving(check(capsys, base, adapter, "--target", "lorax"))] == [("LI1507", "lorax", "diverges")]


def test_hints_name_the_fix(capsys, built) -> None:
    # vLLM's --max-lora-rank takes 1, 8, 16, 32, 64, 128, 256, 320 or 512: the smallest that fits.
    base, adapter = built["rank64"]
    (rank,) = serving(check(capsys, base, adapter, "--target", "vllm"))
    assert rank["message"] == 'vLLM: "LoRA rank 64 is greater than max_lora_rank 16." (16 is the default --max-lora-rank).'
    assert "`--max-lora-rank 64`" in rank["hint"]
    # A scaling the server computes otherwise is folded into lora_B by convert, for that server.
    base, adapter = built["rslora"]
    hints = {f["target"]: f["hint"] for f in serving(check(capsys, base, adapter, "--target", "all"))}
    assert set(hints) == {"sglang", "llamacpp", "ollama"}
    assert all(f"`lora-inspector convert {adapter} --for {t} --out converted`" in h for t, h in hints.items())
    # What no lossless repair fixes is merged.
    base, adapter = built["dora"]
    assert all(f"`lora-inspector merge {base} {adapter} --out merged`" in f["hint"] for f in serving(check(capsys, base, adapter, "--target", "all")))


def test_every_rule_cites_its_source() -> None:
    for target in TARGETS.values():
        assert target.checked and target.rules
        for rule in target.rules:
            assert rule.code.code.startswith("LI15") and rule.outcome in ("refused", "diverges", "flag")
            assert rule.source.endswith(")") and "(" in rule.source, rule.source  # "path/in/repo.py ... (version)"
