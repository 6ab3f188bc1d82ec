"""The checks package: every finding code has exactly one registered check, and --select's
machinery (diagnose's ``codes``) runs only the checks asked for."""

from __future__ import annotations

import ast
from pathlib import Path

from inspector.checks import REGISTRY
from inspector.diagnose import diagnose
from inspector.findings import Code
from tests.models import Built

CHECKS_DIR = Path(__file__).resolve().parent.parent / "inspector" / "checks"


def test_every_code_has_exactly_one_check() -> None:
    assert set(REGISTRY) == set(Code)
    assert all(check.code is code for code, check in REGISTRY.items())


def test_codes_are_named_only_by_their_check() -> None:
    # "Raised from one place": outside its @check decorator a code appears only in PACKED_NOISE (the
    # codes LI901 makes meaningless), never in a Finding built by hand.
    for path in sorted(CHECKS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        decorated = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for d in f.decorator_list for n in ast.walk(d)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Finding":
                raise AssertionError(f"{path.name}:{node.lineno} builds a Finding; checks yield Hit and the registry names the code")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Code" and id(node) not in decorated:
                assert path.name == "quantized.py", f"{path.name}:{node.lineno} names Code.{node.attr} outside a @check"


def test_diagnose_runs_only_the_codes_asked_for(llama: Built, lora_llama_grown: Built) -> None:
    from inspector.adapter import read_adapter
    from inspector.io.checkpoint import read_checkpoint

    base, adapter = read_checkpoint(llama.path), read_adapter(read_checkpoint(lora_llama_grown.path))
    every = {f.code for f in diagnose(base, adapter).findings}
    assert Code.VOCAB_ROWS in every and len(every) > 1
    assert {f.code for f in diagnose(base, adapter, codes=[Code.VOCAB_ROWS]).findings} == {Code.VOCAB_ROWS}


def test_serving_rules_run_only_for_the_targets_asked_for(capsys, monkeypatch, llama: Built, lora_llama: Built) -> None:
    # The frame of check --target: a rule in a server's table becomes a finding that names the
    # server and what it does; other servers' tables and runs without --target stay silent.
    import dataclasses
    import json

    import inspector.targets as targets
    from inspector.cli import main
    from inspector.targets import facts
    from inspector.targets.rule import Rule

    rule = Rule(Code.SERVE_RANK, facts.rank_above(0), "flag", "rank {rank} is above {limit}.", "Start it with --max-lora-rank {rank}.", "x.py (v0)")
    monkeypatch.setitem(targets.TARGETS, "vllm", dataclasses.replace(targets.TARGETS["vllm"], rules=(rule,)))
    for argv, expected in (([], []), (["--target", "sglang"], []), (["--target", "vllm"], [("LI1503", "warning", "vllm", "flag")])):
        assert main(["check", str(llama.path), str(lora_llama.path), "--format", "json", *argv]) == 0
        found = json.loads(capsys.readouterr().out)["findings"]
        assert [(f["code"], f["severity"], f["target"], f["outcome"]) for f in found if f["code"].startswith("LI15")] == expected
        if expected:
            rank = next(f for f in found if f["code"] == "LI1503")
            assert rank["message"].startswith("vLLM: rank ") and rank["hint"].startswith("Start it with --max-lora-rank ")


def test_an_empty_select_is_a_usage_error(capsys, llama: Built, lora_llama: Built) -> None:
    # `--select "$CODES"` with an empty variable in CI must not turn every check into a pass.
    from inspector.cli import main

    assert main(["check", str(llama.path), str(lora_llama.path), "--select", ""]) == 2
    err = capsys.readouterr().err
    assert "Error: Invalid --select: it names no finding code" in err and "Hint: " in err
