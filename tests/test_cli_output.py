"""Output for people and for CI: commands and paths printed whole at any width, progress
lines in logs, JSON on stdout for failed runs, capped GitHub annotations with the step summary,
scan's verdict on an adapter's config, --select / --ignore (and [tool.lora-inspector]), and one
renderer per format for every command."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from inspector import cli
from inspector.check import run_check
from inspector.cli import main
from inspector.findings import Code, Finding
from inspector.report import progress as progress_mod
from tests.check_cases import edit_config
from tests.models import Built, make_llama, make_lora_adapter

HEX = "0123456789abcdef0123456789abcdef01234567"
COMMAND = re.compile(r"`([^`]* [^`]*)`")


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory, seed_dir: Path) -> tuple[Path, Path]:
    """The seed case where the Hugging Face cache keeps it: long snapshot paths (base, adapter)."""
    hub = tmp_path_factory.mktemp("home") / "root" / ".cache" / "huggingface" / "hub"
    out = []
    for name in ("base", "adapter"):
        snapshot = hub / f"models--acme-research--tiny-llama-{name}" / "snapshots" / HEX
        shutil.copytree(seed_dir / name, snapshot)
        out.append(snapshot)
    return out[0], out[1]


# ---- defect 4: commands and paths are never broken or elided --------------------------------------


@pytest.mark.parametrize("width", [80, 120])
def test_fix_commands_and_cache_paths_print_whole(capsys, monkeypatch, cached: tuple[Path, Path], width: int) -> None:
    base, adapter = (f"{p}/" for p in cached)  # as a user pastes a snapshot path, with its slash
    _, out, _ = run(capsys, "check", base, adapter, "--format", "json")
    commands = {c for f in json.loads(out)["findings"] for c in COMMAND.findall(f["hint"])}
    assert len(commands) == 2 and all(len(c) > width for c in commands)  # merge and resize, longer than a line
    monkeypatch.setenv("COLUMNS", str(width))
    rc, out, err = run(capsys, "check", base, adapter, "--no-color")
    assert rc == 1 and err == ""
    lines = out.splitlines()
    for command in commands:
        assert any(line.endswith(command) for line in lines), command
    for path in (base, adapter):
        assert any(path in line for line in lines), path
        assert "…" not in out
    # scan's heading and diff's A/B lines
    rc, out, _ = run(capsys, "scan", adapter, "--no-color")
    assert rc == 0 and adapter in out.splitlines()
    rc, out, _ = run(capsys, "diff", base, adapter, "--no-color")
    assert f"A {base}" in out.splitlines() and f"B {adapter}" in out.splitlines()


def test_merge_output_path_prints_whole(capsys, monkeypatch, cached: tuple[Path, Path], tmp_path: Path) -> None:
    out_dir = tmp_path / ("merged-into-a-directory-with-a-long-name-" + HEX)
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, err = run(capsys, "merge", *cached, "--out", out_dir, "--device", "cpu", "--no-color", "--quiet")
    assert rc == 0, err
    lines = out.splitlines()
    assert any(str(out_dir) in line for line in lines) and any(str(cached[0]) in line for line in lines)


def test_terminal_write_keeps_whole_lines_in_a_narrow_console(cached: tuple[Path, Path]) -> None:
    from inspector.report import terminal

    console = Console(file=io.StringIO(), width=80, no_color=True)
    diagnosis = run_check(str(cached[0]), str(cached[1]))
    terminal.write(console, terminal.check(diagnosis))
    text = console.file.getvalue()
    hint_commands = {c for f in diagnosis.findings for c in COMMAND.findall(f.hint)}
    assert all(any(line.endswith(c) for line in text.splitlines()) for c in hint_commands)
    assert "Run [1] (grows the" in text  # the table cites the command instead of folding it


# ---- defect 5: progress lines where stderr is not a terminal --------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_a_few_lines_a_minute() -> None:
    clock, lines = FakeClock(), []
    progress = progress_mod.PlainProgress("merge", lines.append, clock, every=15)
    total = 600 * 2**20
    for _ in range(600):  # 600 MiB at 1 MiB every 0.5 s: five minutes
        clock.now += 0.5
        progress.advance(2**20, total)
    progress.finish()
    assert 18 <= len(lines) <= 21  # one per 15 s, plus the last
    assert lines[0] == "merge: 30.0 MiB of 600.0 MiB (5%) in 15 s, 2.0 MiB/s\n"
    assert lines[-1] == "merge: done, 600.0 MiB of 600.0 MiB (100%) in 5 min 0 s, 2.0 MiB/s\n"


def test_plain_progress_quiet_for_a_short_run() -> None:
    clock, lines = FakeClock(), []
    progress = progress_mod.PlainProgress("resize", lines.append, clock, every=15)
    clock.now += 3
    progress.advance(100, 100)
    progress.finish()
    assert lines == []


def test_progress_bar_writes_plain_lines_to_stderr_unless_quiet(capsys) -> None:
    clock = FakeClock()
    with cli.progress_bar(cli.Settings(), "diff --values", clock=clock) as advance:
        assert advance is not None  # stderr is captured: not a terminal
        for _ in range(4):
            clock.now += 10
            advance(5, 20)
    assert capsys.readouterr().err.splitlines() == [
        "diff --values: 10 B of 20 B (50%) in 20 s, 0 B/s",
        "diff --values: 20 B of 20 B (100%) in 40 s, 0 B/s",
        "diff --values: done, 20 B of 20 B (100%) in 40 s, 0 B/s",
    ]
    with cli.progress_bar(cli.Settings(quiet=True), "merge", clock=clock) as advance:
        assert advance is None
    assert capsys.readouterr().err == ""


def test_merge_progress_in_a_log(capsys, monkeypatch, seed_dir: Path, tmp_path: Path) -> None:
    monkeypatch.setattr(progress_mod, "PROGRESS_EVERY", 0.0)  # a line per tensor: what a long merge prints every 15 s
    rc, out, err = run(capsys, "merge", seed_dir / "base", seed_dir / "adapter", "--out", tmp_path / "m", "--device", "cpu", "--format", "json")
    assert rc == 0 and json.loads(out)["command"] == "merge"
    lines = err.splitlines()
    assert lines and all(re.fullmatch(r"merge: (done, )?[\d.]+ (B|KiB|MiB) of 1002\.3 KiB \(\d+%\) in \d+ s, ([\d.]+ (B|KiB|MiB)|-)/s", line) for line in lines), err
    assert lines[-1].startswith("merge: done, ")
    rc, _, err = run(capsys, "merge", seed_dir / "base", seed_dir / "adapter", "--out", tmp_path / "q", "--device", "cpu", "--quiet")
    assert (rc, err) == (0, "")


# ---- defect 6: --format json stays parseable when the run fails ------------------------------------


def error_json(out: str, command: str | None) -> dict:
    doc = json.loads(out)
    assert doc["schema"] == 1 and doc["command"] == command and set(doc["error"]) == {"message", "path", "hint"}
    return doc["error"]


@pytest.mark.parametrize("command", ["scan", "diff", "check", "resize", "merge"])
def test_json_error_for_every_command(capsys, tmp_path: Path, seed_dir: Path, command: str) -> None:
    missing = tmp_path / "missing"
    argv = {
        "scan": ["scan", missing],
        "diff": ["diff", missing, seed_dir / "base"],
        "check": ["check", missing, seed_dir / "adapter"],
        "resize": ["resize", missing, "--vocab", "40000", "--out", tmp_path / "r"],
        "merge": ["merge", missing, seed_dir / "adapter", "--out", tmp_path / "m"],
    }[command]
    rc, out, err = run(capsys, *argv, "--format", "json")
    assert rc == 2
    message, hint = err.splitlines()
    error = error_json(out, command)
    assert f"Error: {error['message']}" == message and f"Hint: {error['hint']}" == hint
    assert error["path"] == str(missing)


@pytest.mark.parametrize(("argv", "command"), [
    (["check", "{base}", "--format", "json"], "check"),
    (["--format", "json", "diff", "{base}"], "diff"),
    (["--format=json", "scan", "{base}", "--bogus"], "scan"),
    (["resize", "{base}", "--out", "x", "--vocab", "0", "--format", "json"], "resize"),
    (["merge", "{base}", "{base}", "--out", "x", "--dtype", "int4", "--format", "json"], "merge"),
    (["--format", "json", "frobnicate"], None),
    (["--output", "scan", "--format", "json", "check", "{base}"], "check"),
])
def test_json_error_for_usage_errors(capsys, seed_dir: Path, argv: list[str], command: str | None) -> None:
    rc, out, err = run(capsys, *[a.format(base=seed_dir / "base") for a in argv])
    assert rc == 2
    message, hint = err.splitlines()
    error = error_json(out, command)
    assert (f"Error: {error['message']}", f"Hint: {error['hint']}") == (message, hint)
    assert error["hint"] == (f"see 'lora-inspector {command} --help'." if command else "see 'lora-inspector --help'.")
    assert error["path"] is None


def test_json_error_when_interrupted(capsys, monkeypatch, seed_dir: Path) -> None:
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("inspector.scan.scan", stopped)
    rc, out, err = run(capsys, "scan", seed_dir / "base", "--format", "json")
    assert rc == 130 and err.lstrip("\n") == "Error: interrupted.\nHint: nothing was written; run the command again.\n"
    assert error_json(out, "scan") == {"message": "interrupted.", "path": None, "hint": "nothing was written; run the command again."}


def test_other_formats_keep_stdout_empty_on_errors(capsys, tmp_path: Path) -> None:
    for fmt in ("rich", "markdown", "github"):
        rc, out, err = run(capsys, "scan", tmp_path / "missing", "--format", fmt)
        assert (rc, out) == (2, "") and err.startswith("Error: ")


# ---- defect 7: GitHub annotations grouped and capped, the full list in the step summary -----------

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def many_findings(seed_dir: Path):
    """The seed diagnosis with 672 LoRA shape errors: 48 layers x 7 modules x lora_A / lora_B."""
    diagnosis = run_check(str(seed_dir / "base"), str(seed_dir / "adapter"))
    findings = []
    for code, part in ((Code.LORA_A_SHAPE, "lora_A"), (Code.LORA_B_SHAPE, "lora_B")):
        for module in MODULES:
            for layer in range(48):
                name = f"model.layers.{layer}.self_attn.{module}"
                findings.append(Finding(code, f"{name}.{part}.weight is [8, 4096] but {name}.weight is [2048, 2048].",
                                        "Use the base model the adapter was trained on.", tensor=f"{name}.weight",
                                        adapter_key=f"base_model.model.{name}.{part}.weight"))
    return dataclasses.replace(diagnosis, findings=tuple(findings))


def test_github_groups_and_caps_annotations(seed_dir: Path) -> None:
    from inspector.report.github import MAX_ANNOTATIONS, GitHub

    lines = GitHub().check(many_findings(seed_dir)).splitlines()
    assert len(lines) == MAX_ANNOTATIONS == 10
    assert lines[0] == ("::error title=LI301 lora-a-shape x48::48 findings on model.layers.*.self_attn.q_proj.weight; the first: "
                        "model.layers.0.self_attn.q_proj.lora_A.weight is [8, 4096] but model.layers.0.self_attn.q_proj.weight is [2048, 2048]. "
                        "Hint: Use the base model the adapter was trained on.")
    assert all(line.startswith("::error title=LI30") for line in lines[:9])
    assert lines[-1] == ("::notice title=lora-inspector check::672 errors, 0 warnings, 0 info; 5 more annotations not shown "
                         "(LI302 x240); all of them: --format json or --format markdown")
    assert GitHub(step_summary=True).check(many_findings(seed_dir)).rstrip().endswith("; the full list is in the step summary")


def test_github_step_summary_gets_the_full_list(capsys, monkeypatch, tmp_path: Path, llama: Built) -> None:
    wide = make_llama(tmp_path / "wide", hidden=32)
    adapter = make_lora_adapter(wide.path, tmp_path / "lora", r=2, lora_alpha=4, target_modules=list(MODULES))
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    rc, out, err = run(capsys, "check", llama.path, adapter.path, "--format", "github")
    assert rc == 1 and err == ""
    lines = out.splitlines()
    assert len(lines) <= 10 and lines[-1].startswith("::notice title=lora-inspector check::")
    assert "the full list is in the step summary" in lines[-1]
    text = summary.read_text()
    findings = json.loads(run(capsys, "check", llama.path, adapter.path, "--format", "json")[1])["findings"]
    assert len(findings) > 20
    assert text.startswith("earlier step\n### lora-inspector check fails")
    assert sum(line.startswith("| ❌ error |") for line in text.splitlines()) == sum(f["severity"] == "error" for f in findings)


def test_github_keeps_single_findings_as_they_were(capsys, seed_dir: Path) -> None:
    rc, out, _ = run(capsys, "check", seed_dir / "base", seed_dir / "adapter", "--format", "github")
    assert rc == 1
    titles = [line.split("::")[1] for line in out.splitlines()]
    assert titles == ["error title=LI101 vocab-size-mismatch"] * 2 + ["notice title=LI1101 dtype-difference", "notice title=LI1301 memory-plan",
                                                                     "notice title=lora-inspector check"]


# ---- defect 8: scan says when an adapter_config.json is invalid -----------------------------------


def test_scan_marks_an_invalid_adapter_config(capsys, monkeypatch, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    bad = edit_config(lora_llama.path, tmp_path / "bad", r="eight")
    rc, out, err = run(capsys, "scan", bad, lora_llama.path, llama.path, "--format", "json")
    assert (rc, err) == (0, "")
    bad_item, good_item, model_item = json.loads(out)["checkpoints"]
    assert bad_item["valid"] is False
    assert bad_item["invalid_reason"] == "Invalid adapter_config.json: r is 'eight'; the LoRA rank must be a positive integer"
    assert (good_item["valid"], good_item["invalid_reason"]) == (True, None)
    assert "valid" not in model_item
    monkeypatch.setenv("COLUMNS", "200")
    rc, out, _ = run(capsys, "scan", bad, "--no-color")
    assert rc == 0 and re.search(r"warning\s+Invalid adapter_config\.json: r is 'eight'; the LoRA rank must be a positive integer \(check and merge refuse this adapter\)", out)
    rc, out, _ = run(capsys, "scan", bad, "--format", "markdown")
    assert rc == 0 and "| warning | Invalid adapter_config.json: r is 'eight'; the LoRA rank must be a positive integer (check and merge refuse this adapter) |" in out
    rc, out, _ = run(capsys, "scan", bad, "--format", "github")
    assert rc == 0 and f"::warning title=scan::{bad}: Invalid adapter_config.json" in out
    rc, out, _ = run(capsys, "scan", lora_llama.path, "--no-color")
    assert "warning" not in out


# ---- CI users: --select / --ignore / [tool.lora-inspector] ----------------------------------------


def check_codes(capsys, seed_dir: Path, *extra: object) -> tuple[int, list[str]]:
    rc, out, err = run(capsys, "check", seed_dir / "base", seed_dir / "adapter", "--format", "json", *extra)
    assert err == "", err
    report = json.loads(out)
    assert report["summary"] == {s: sum(f["severity"] == s for f in report["findings"]) for s in ("error", "warning", "info")}
    return rc, [f["code"] for f in report["findings"]]


@pytest.mark.parametrize(("flags", "rc", "codes"), [
    ([], 1, ["LI101", "LI101", "LI1101", "LI1301"]),
    (["--ignore", "LI101"], 0, ["LI1101", "LI1301"]),
    (["--select", "LI1301"], 0, ["LI1301"]),
    (["--select", "li101,LI1101"], 1, ["LI101", "LI101", "LI1101"]),
    (["--select", "LI1"], 1, ["LI101", "LI101"]),  # the LI1xx family, not LI1101 or LI1301
    (["--select", "LI11", "--select", "LI13"], 0, ["LI1101", "LI1301"]),
    (["--select", "LI1,LI13", "--ignore", "LI101"], 0, ["LI1301"]),
])
def test_select_and_ignore_flags(capsys, monkeypatch, tmp_path: Path, seed_dir: Path, flags: list[str], rc: int, codes: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_codes(capsys, seed_dir, *flags) == (rc, codes)


def test_ignored_codes_leave_every_format(capsys, monkeypatch, tmp_path: Path, seed_dir: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for fmt in ("rich", "markdown", "github"):
        rc, out, _ = run(capsys, "check", seed_dir / "base", seed_dir / "adapter", "--ignore", "LI101", "--format", fmt)
        assert rc == 0 and "LI1301" in out and "LI101" not in out and "0 errors, 0 warnings, 2 info" in out


@pytest.mark.parametrize("value", ["LI999", "LI", "vocab-size-mismatch", "LI1O1"])
def test_unknown_codes_are_usage_errors(capsys, monkeypatch, tmp_path: Path, seed_dir: Path, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "check", seed_dir / "base", seed_dir / "adapter", "--select", f"LI101,{value}")
    assert (rc, out) == (2, "")
    assert err.splitlines()[0] == f"Error: Invalid --select: '{value.upper()}' is no finding code or family."
    assert err.splitlines()[1].startswith("Hint: Give codes such as LI101, or a family")


def test_reports_say_what_the_rules_left_out(capsys, monkeypatch, tmp_path: Path, seed_dir: Path) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["check", seed_dir / "base", seed_dir / "adapter", "--ignore", "LI101"]
    rc, out, _ = run(capsys, *argv, "--format", "json")
    assert json.loads(out)["rules"] == {"select": None, "ignore": ["LI101"], "fail_on": "error", "config": None, "dropped": 2}
    rc, out, _ = run(capsys, *argv, "--no-color")
    assert re.search(r"filtered\s+2 findings left out by --select / --ignore\n", out)
    rc, out, _ = run(capsys, *argv, "--format", "github")
    assert out.splitlines()[-1] == "::notice title=lora-inspector check::0 errors, 0 warnings, 2 info (2 findings left out by --select / --ignore)"
    path = write_pyproject(tmp_path, '[tool.lora-inspector]\nselect = ["LI1"]\n')
    rc, out, _ = run(capsys, "check", seed_dir / "base", seed_dir / "adapter", "--format", "markdown")
    assert rc == 1 and f"_2 findings left out by --select / --ignore; settings from {path}_" in out.splitlines()
    rc, out, _ = run(capsys, "check", seed_dir / "base", seed_dir / "adapter", "--format", "json")
    assert json.loads(out)["rules"] == {"select": ["LI101", "LI102", "LI103"], "ignore": [], "fail_on": "error", "config": str(path), "dropped": 2}


def write_pyproject(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(body)
    return folder / "pyproject.toml"


def test_settings_from_the_nearest_pyproject(capsys, monkeypatch, tmp_path: Path, seed_dir: Path) -> None:
    write_pyproject(tmp_path, '[project]\nname = "x"\n\n[tool.lora-inspector]\nignore = ["LI101"]\n')
    write_pyproject(tmp_path / "pkg", '[project]\nname = "pkg"\n')  # no table: looked past
    monkeypatch.chdir(tmp_path / "pkg")
    (tmp_path / "pkg" / "deep").mkdir()
    monkeypatch.chdir(tmp_path / "pkg" / "deep")
    assert check_codes(capsys, seed_dir) == (0, ["LI1101", "LI1301"])
    # a nearer table wins over the parent's, whole
    write_pyproject(tmp_path / "pkg" / "deep", '[tool.lora-inspector]\nselect = ["LI13"]\n')
    assert check_codes(capsys, seed_dir) == (0, ["LI1301"])


def test_flags_win_over_the_file(capsys, monkeypatch, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    # LI402 (a warning): target_modules names a module the base does not have.
    adapter = edit_config(lora_llama.path, tmp_path / "adapter", target_modules=["q_proj", "v_proj", "nonexistent_proj"])
    write_pyproject(tmp_path / "repo", '[tool.lora-inspector]\nfail-on = "warning"\nignore = ["LI11", "LI13"]\n')
    monkeypatch.chdir(tmp_path / "repo")
    rc, out, _ = run(capsys, "check", llama.path, adapter, "--format", "json")
    assert rc == 1 and [f["code"] for f in json.loads(out)["findings"]] == ["LI402"]  # fail-on and ignore from the file
    assert run(capsys, "check", llama.path, adapter, "--fail-on", "error")[0] == 0
    rc, out, _ = run(capsys, "check", llama.path, adapter, "--ignore", "LI4", "--format", "json")  # replaces the file's list
    assert rc == 0 and [f["code"] for f in json.loads(out)["findings"]] == ["LI1301"]
    rc, out, _ = run(capsys, "check", llama.path, adapter, "--select", "LI1301", "--format", "json")  # the file's ignore still applies
    assert rc == 0 and json.loads(out)["findings"] == []


@pytest.mark.parametrize(("body", "why"), [
    ('[tool.lora-inspector]\nselect = ["LI999"]\n', "'LI999' is no finding code or family"),
    ('[tool.lora-inspector]\nfail_on = "warning"\n', "unknown key 'fail_on'"),
    ('[tool.lora-inspector]\nfail-on = "info"\n', "fail-on is 'info'; expected \"error\" or \"warning\""),
    ('[tool.lora-inspector]\nignore = [101]\n', "ignore is [101]; expected a list of codes"),
    ('[tool.lora-inspector\nselect = 1\n', "it is not valid TOML"),
])
def test_bad_settings_in_the_file_are_usage_errors(capsys, monkeypatch, tmp_path: Path, seed_dir: Path, body: str, why: str) -> None:
    path = write_pyproject(tmp_path, body)
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "check", seed_dir / "base", seed_dir / "adapter", "--format", "json")
    assert rc == 2 and f"for '{path}': {why}" in err.splitlines()[0] and err.splitlines()[1].startswith("Hint: ")
    assert error_json(out, "check")["path"] == str(path)


def test_a_broken_pyproject_of_another_tool_is_ignored(capsys, monkeypatch, tmp_path: Path, seed_dir: Path) -> None:
    write_pyproject(tmp_path, "[tool.black\nline-length = 1\n")
    monkeypatch.chdir(tmp_path)
    assert check_codes(capsys, seed_dir)[0] == 1


# ---- redesign: one renderer table ----------------------------------------------------------------


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, seed_dir: Path, llama: Built) -> dict:
    from inspector.convert import convert_adapter
    from inspector.diff import diff_checkpoints
    from inspector.io.checkpoint import read_checkpoint
    from inspector.merge import merge_adapter
    from inspector.resize import resize_checkpoint
    from inspector.scan import scan
    from inspector.verify import PromptResult, VerifyResult

    tmp = tmp_path_factory.mktemp("rendered")
    base, adapter = seed_dir / "base", seed_dir / "adapter"
    return {
        "scan": scan([base, adapter], tensors=True),
        "diff": diff_checkpoints(read_checkpoint(base), read_checkpoint(adapter)),
        "check": run_check(str(base), str(adapter)),
        "resize": resize_checkpoint(str(base), str(tmp / "resized"), vocab=32008),
        "merge": merge_adapter(str(base), str(adapter), str(tmp / "merged"), device="cpu"),
        # the seed adapter grows the vocabulary, which convert refuses: a tiny rsLoRA adapter, cast
        "convert": convert_adapter(str(make_lora_adapter(llama.path, tmp / "rslora", r=8, target_modules=["q_proj"], use_rslora=True).path),
                                   str(tmp / "converted"), target="vllm", base=str(llama.path), dtype="bf16"),
        # verify runs two models (tests/test_verify.py): here its result as the renderers get it
        "verify": VerifyResult(str(base), str(adapter), str(tmp / "merged"), "causal-lm", "cpu", "fp32", 1e-4,
                               (PromptResult("Hello", 3, 0.5, 0.01, 2 / 3, False), PromptResult("ids 0..63", 16, 0.0, 0.0, 1.0, True)), "layer 1"),
    }


def test_every_format_renders_every_command(results: dict) -> None:
    from inspector.report import COMMANDS, FORMATS, Failure, Renderer, renderer
    from inspector.report.terminal import Report, write

    assert set(FORMATS) == {"rich", "json", "markdown", "github", "html"} and set(COMMANDS) == set(results)
    for fmt in FORMATS:
        r = renderer(fmt)
        assert isinstance(r, Renderer)
        for command in COMMANDS:
            out = getattr(r, command)(results[command])
            if fmt == "json":
                assert json.loads(out)["command"] == command
            elif fmt == "rich":
                console = Console(file=io.StringIO(), width=100)
                write(console, out)
                assert isinstance(out, Report) and console.file.getvalue().strip()
            elif fmt == "html":  # one page each (tests/test_html.py opens them in a browser)
                assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>") and f"lora-inspector {command}" in out
            else:
                assert out.strip(), (fmt, command)
        failure = r.error(Failure("scan", "Cannot read x.", "x", "Check it."))
        assert (failure is not None) == (fmt in ("json", "html"))  # the formats whose stdout a script or a CI artifact keeps


def test_a_format_without_a_command_cannot_be_made() -> None:
    from inspector.report import Renderer

    class NoMerge(Renderer[str]):  # a format that forgot a command
        def scan(self, result): return ""
        def diff(self, result): return ""
        def check(self, result): return ""
        def resize(self, result): return ""
        def error(self, failure): return None

    with pytest.raises(TypeError, match="abstract method.*merge"):
        NoMerge()


def test_format_choices_come_from_the_renderer_table() -> None:
    from inspector.report import RENDERERS

    option = next(p for p in cli.cli.params if p.name == "format_")
    assert tuple(option.type.choices) == tuple(RENDERERS)


# ---- --output to something that is not a regular file ----------------------------------------------


def test_output_to_a_pipe_or_device_writes_into_it(capsys, tmp_path: Path, seed_dir: Path) -> None:
    # --output /dev/null used to rename a temporary file over it: as root, /dev/null became a
    # regular file for every process on the machine. A FIFO and a character device (a private
    # copy of /dev/null's numbers, where root may make one) must be written to, never replaced.
    import os
    import stat
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)  # never holds up the run
    reader.start()
    rc, out, err = run(capsys, "scan", seed_dir / "base", "--format", "json", "--output", fifo)
    reader.join(timeout=30)
    assert rc == 0, err
    assert json.loads(got[0])["command"] == "scan" and stat.S_ISFIFO(fifo.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["fifo"]  # no temporary file left beside it

    null = tmp_path / "null"
    try:
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a character device needs root")
    rc, out, err = run(capsys, "scan", seed_dir / "base", "--format", "json", "--output", null)
    assert rc == 0, err
    assert stat.S_ISCHR(null.stat().st_mode) and out == ""


def test_output_to_stdout_paths_writes_into_the_redirected_file(tmp_path: Path, seed_dir: Path) -> None:
    # `--output /dev/stdout > r.json` (a CI habit): /dev/stdout leads through /proc/self/fd/1 to
    # the redirected regular file, so it did not look special and the report was renamed over the
    # path itself. Here through /proc/self/fd/1 and a link to it (renaming over those cannot harm
    # the machine should this regress, unlike /dev/stdout as root).
    import os
    import subprocess
    import sys

    link = tmp_path / "link"
    link.symlink_to("/proc/self/fd/1")
    for target in ("/proc/self/fd/1", str(link)):
        out = tmp_path / "out.json"
        with open(out, "w") as fh:
            proc = subprocess.run([sys.executable, "-m", "inspector", "scan", str(seed_dir / "base"), "--format", "json", "--output", target],
                                  stdout=fh, stderr=subprocess.PIPE, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(out.read_text())["command"] == "scan"
        assert os.readlink(link) == "/proc/self/fd/1"  # still the link, not a report


def test_output_to_a_block_device_is_refused(capsys, tmp_path: Path, seed_dir: Path) -> None:
    import os
    import stat

    disk = tmp_path / "disk"
    try:
        os.mknod(disk, 0o600 | stat.S_IFBLK, os.makedev(7, 255))  # a loop device's numbers
    except PermissionError:
        pytest.skip("making a block device needs root")
    rc, out, err = run(capsys, "scan", seed_dir / "base", "--output", disk)
    assert rc == 2 and "it is a block device" in err and "Hint:" in err
    assert stat.S_ISBLK(disk.stat().st_mode)
