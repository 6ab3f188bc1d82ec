"""``lora-inspector check BASE ADAPTER ADAPTER ...``: several adapters against one base.

Three adapters of the session's ``llama``: one clean (``lora_llama``), one with errors
(``lora_llama_grown``: LI101 on the 80-row embedding and head) and one with a warning only (LI402: a
target_modules entry that matches nothing). Serving rules are stand-ins put into the target tables
for the test, so the matrix's cells do not depend on the tables being filled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import inspector.check
from inspector.cli import main
from inspector.findings import Code
from inspector.targets import TARGETS, Rule, Target
from tests.check_cases import edit_config, make_tokenizer
from tests.models import Built, copy_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def warned(tmp_path_factory: pytest.TempPathFactory, lora_llama: Built) -> Path:
    """``lora_llama`` whose target_modules name a module the base lacks: LI402, a warning, only."""
    root = tmp_path_factory.mktemp("fleet")
    return edit_config(lora_llama.path, root / "target_nonexistent", target_modules=["q_proj", "v_proj", "nonexistent_proj"])


@pytest.fixture
def three(llama: Built, lora_llama: Built, lora_llama_grown: Built, warned: Path) -> tuple[str, list[str]]:
    return str(llama.path), [str(lora_llama.path), str(lora_llama_grown.path), str(warned)]


def run(capsys, *argv: object) -> tuple[int, str, str]:
    rc = main(["check", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def codes(report: dict, severity: str) -> list[str]:
    return [f["code"] for f in report["findings"] if f["severity"] == severity]


def test_json_results_are_each_adapters_own_report(capsys, three) -> None:
    base, adapters = three
    rc, out, err = run(capsys, base, *adapters, "--format", "json")
    assert rc == 1 and err == ""
    report = json.loads(out)
    assert list(report) == ["schema", "command", "results"]
    assert (report["schema"], report["command"], len(report["results"])) == (1, "check", 3)
    for adapter, result in zip(adapters, report["results"]):
        alone_rc, alone, _ = run(capsys, base, adapter, "--format", "json")
        assert result == json.loads(alone)  # exactly the one-adapter shape, findings and all
        assert result["adapter"]["path"] == adapter
    clean, grown, warning = report["results"]
    assert (codes(clean, "error"), codes(clean, "warning")) == ([], [])
    assert codes(grown, "error") == ["LI101", "LI101"]
    assert (codes(warning, "error"), codes(warning, "warning")) == ([], ["LI402"])


def test_exit_code_is_the_worst_over_adapters(capsys, three) -> None:
    base, (clean, grown, warning) = three
    assert run(capsys, base, clean, warning, "--format", "json")[0] == 0
    assert run(capsys, base, clean, warning, "--format", "json", "--fail-on", "warning")[0] == 1
    assert run(capsys, base, warning, clean, grown, "--format", "json")[0] == 1
    assert run(capsys, base, clean, clean, "--format", "json")[0] == 0


def test_select_and_ignore_apply_to_each_adapter(capsys, three) -> None:
    base, adapters = three
    rc, out, _ = run(capsys, base, *adapters, "--format", "json", "--ignore", "LI101")
    results = json.loads(out)["results"]
    assert rc == 0  # the grown adapter's two LI101 were its only errors
    assert [r["rules"]["dropped"] for r in results] == [0, 2, 0]
    assert [r["summary"]["error"] for r in results] == [0, 0, 0]
    rc, out, _ = run(capsys, base, *adapters, "--format", "json", "--select", "LI4", "--fail-on", "warning")
    results = json.loads(out)["results"]
    assert rc == 1  # the LI402 warning, with --fail-on warning
    assert [[f["code"] for f in r["findings"]] for r in results] == [[], [], ["LI402"]]
    rc, out, _ = run(capsys, base, *adapters, "--no-color", "--ignore", "LI101")
    assert "result    0 errors, 1 warning" in out
    assert "2 findings left out by --select / --ignore" in out  # summed over the adapters


def test_base_is_read_once(capsys, monkeypatch, three) -> None:
    base, adapters = three
    seen: list[str] = []
    real = inspector.check.read_checkpoint

    def counted(path, *args, **kwargs):
        seen.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(inspector.check, "read_checkpoint", counted)
    assert run(capsys, base, *adapters, "--format", "json")[0] == 1
    assert seen == [base, *adapters]


# ---- the table at the end ---------------------------------------------------------------------


def _flag_rank(f):
    return {"rank": f.max_rank} if f.max_rank >= 4 else None


def _full_weights(f):
    return {"modules": ", ".join(f.full_weights)} if f.full_weights else None


def _rule(code: Code, when, outcome: str) -> Rule:
    return Rule(code, when, outcome, "stand-in rule ({code})".replace("{code}", code.code), "stand-in fix", "tests/test_fleet.py")


@pytest.fixture
def stand_in_targets(monkeypatch) -> None:
    """vLLM: rank 4 needs a flag, full weights are refused; TGI: full weights diverge."""
    vllm = [_rule(Code.SERVE_RANK, _flag_rank, "flag"), _rule(Code.SERVE_MODULES_TO_SAVE, _full_weights, "refused")]
    monkeypatch.setitem(TARGETS, "vllm", Target("vllm", "vLLM", "test", tuple(vllm)))
    monkeypatch.setitem(TARGETS, "tgi", Target("tgi", "TGI", "test", (_rule(Code.SERVE_MODULES_TO_SAVE, _full_weights, "diverges"),)))


def _table_rows(out: str) -> list[list[str]]:
    """The body rows of the report's last table, as stripped cells."""
    body = out.split("┡")[-1].split("└")[0]
    return [[c.strip() for c in line.split("│")[1:-1]] for line in body.splitlines() if line.startswith("│")]


def test_rich_matrix_of_adapters_and_targets(capsys, monkeypatch, stand_in_targets, three) -> None:
    base, adapters = three
    monkeypatch.setenv("COLUMNS", "100")
    rc, out, err = run(capsys, base, *adapters, "--target", "vllm", "--target", "tgi", "--no-color")
    assert rc == 1 and err == ""
    assert max(len(line) for line in out.splitlines() if line[:1] in "┏┃┡│├└") <= 100  # tables fit; paths and commands print whole
    header = next(line for line in out.splitlines() if line.startswith("┃ #"))
    assert [c.strip() for c in header.split("┃")[1:-1]] == ["#", "adapter", "vLLM", "TGI", "verdict"]
    assert _table_rows(out) == [
        ["1", "lora_llama", "flag needed", "ok", "passes"],
        ["2", "lora_llama_grown", "refused", "diverges", "fails"],
        ["3", "target_nonexistent", "flag needed", "ok", "passes"],
    ]
    for number, adapter in enumerate(adapters, 1):  # each adapter's line holds its path whole
        assert any(line.startswith(f"#{number} {adapter}  ") for line in out.splitlines())
    assert "targets   vLLM, TGI" in out and "adapters  3: 1 fail, 2 pass (--fail-on error)" in out


def test_rich_matrix_without_targets_counts(capsys, monkeypatch, three) -> None:
    base, adapters = three
    monkeypatch.setenv("COLUMNS", "100")
    rc, out, _ = run(capsys, base, *adapters, "--no-color")
    assert rc == 1
    rows = _table_rows(out)
    assert [r[:2] + r[2:4] + r[5:] for r in rows] == [
        ["1", "lora_llama", "0", "0", "passes"],
        ["2", "lora_llama_grown", "2", "0", "fails"],
        ["3", "target_nonexistent", "0", "1", "passes"],
    ]
    assert all(int(r[4]) >= 1 for r in rows)  # info: LI1301 at least, counted not listed
    assert out.count("LI101") == 2 and out.count("LI402") == 1 and "LI1301" not in out


def test_markdown_and_github_name_each_adapter(capsys, monkeypatch, stand_in_targets, three) -> None:
    base, adapters = three
    rc, out, err = run(capsys, base, *adapters, "--format", "markdown", "--target", "vllm", "--target", "tgi")
    assert rc == 1 and err == ""
    lines = out.splitlines()
    # 4 errors: the grown adapter's two LI101, vLLM's refusal, TGI's divergence; 4 warnings: three flags, LI402
    assert lines[0] == "### lora-inspector check fails: 1 of 3 adapters fail; 4 errors, 4 warnings, 5 info"
    assert "| # | adapter | vLLM | TGI | verdict |" in lines
    assert f"| 2 | `{adapters[1]}` | ❌ refused | ❌ diverges | fails |" in lines
    assert f"| 1 | `{adapters[0]}` | ⚠️ flag needed | ✅ ok | passes |" in lines
    assert sum(line.startswith("#### #") for line in lines) == 3  # each has a warning or an error
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    rc, out, err = run(capsys, base, *adapters, "--format", "github", "--target", "vllm", "--target", "tgi")
    assert rc == 1 and err == ""
    lines = out.splitlines()
    for adapter in adapters:
        assert any(line.split("::")[1].startswith(f"warning title={adapter}%3A ") or f"title={adapter}%3A " in line for line in lines)
    levels = [line.split()[0] for line in lines[:-1]]
    assert levels == sorted(levels, key=["::error", "::warning", "::notice"].index)  # errors first, across adapters
    assert lines[-1].startswith("::notice title=lora-inspector check::3 adapters, 1 fail: 4 errors, 4 warnings, 5 info")


def test_github_keeps_its_cap(capsys, monkeypatch, three) -> None:
    base, adapters = three
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    rc, out, _ = run(capsys, base, *adapters, *adapters, "--format", "github")
    lines = out.splitlines()
    assert rc == 1 and len(lines) == 10
    assert lines[-1].startswith("::notice title=lora-inspector check::6 adapters, 2 fail: ") and "more annotations not shown" in lines[-1]


def test_adapters_with_the_same_tokenizer_file(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    # Copies of one tokenizer.json beside many adapters are parsed once (a content memo): each adapter
    # still reports its own directory, and a different file its own counts.
    dirs = [copy_checkpoint(lora_llama.path, tmp_path / name) for name in ("a", "b", "c")]
    for folder, size in zip(dirs, (60, 60, 50)):
        make_tokenizer(folder, size)
    rc, out, _ = run(capsys, llama.path, *dirs, "--format", "json")
    seen = [(r["tokenizer"]["directory"], r["tokenizer"]["length"]) for r in json.loads(out)["results"]]
    assert (rc, seen) == (0, [(str(dirs[0]), 60), (str(dirs[1]), 60), (str(dirs[2]), 50)])


# ---- inputs that cannot be read ----------------------------------------------------------------


def test_unreadable_adapter_fails_the_run(capsys, tmp_path: Path, three) -> None:
    base, (clean, grown, _) = three
    missing = tmp_path / "missing"
    rc, out, err = run(capsys, base, clean, missing, grown)
    assert (rc, out) == (2, "")
    assert err.splitlines() == [
        f"Error: Cannot read checkpoint for '{missing}': no such file or directory.",
        "Hint: Check the path; a checkpoint is a directory with config.json or adapter_config.json, or a .safetensors file. "
        "It is ADAPTER 2 of 3: fix it or leave it out (no adapter was checked).",
    ]
    rc, out, err = run(capsys, base, clean, base, "--format", "json")  # a model where an adapter belongs
    assert rc == 2
    error = json.loads(out)["error"]
    assert error["message"] == f"Not an adapter for '{base}': ADAPTER has no adapter_config.json and no LoRA keys."
    assert error["hint"].endswith("It is ADAPTER 2 of 2: fix it or leave it out (no adapter was checked).")


def test_base_errors_name_no_adapter(capsys, three) -> None:
    _, (clean, grown, _) = three
    rc, out, err = run(capsys, grown, clean, grown)
    assert rc == 2
    assert err.startswith(f"Error: Not a base model for '{grown}'") and "ADAPTER 1 of" not in err


def test_several_adapters_import_neither_torch_nor_transformers(three) -> None:
    # SPEC: scan/check read headers and small JSON only; checked in a fresh interpreter.
    base, adapters = three
    code = (
        "import sys\n"
        "from inspector.cli import main\n"
        f"argv = ['check', {base!r}, *{adapters!r}, '--target', 'all']\n"
        "codes = [main([*argv, '--format', f]) for f in ('json', 'rich', 'markdown', 'github')]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'))\n"
        "sys.stderr.write(repr((codes, heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == repr(([1, 1, 1, 1], []))
