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
