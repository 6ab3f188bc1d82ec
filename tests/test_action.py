"""action.yml, the composite GitHub Action: its structure, and its check step's script run here as
the runner runs it (bash, inputs as environment variables), against Hub ids on the local Hub server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hubserver import HubServer, Repo
from tests.test_hub import header_bytes, repo_files

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def action() -> dict:
    return yaml.safe_load((ROOT / "action.yml").read_text())


def test_action_is_composite_setup_install_check(action: dict) -> None:
    assert action["runs"]["using"] == "composite"
    assert {"base", "adapter", "args", "hf-token", "python-version", "package"} <= set(action["inputs"])
    assert action["inputs"]["base"]["required"] and action["inputs"]["adapter"]["required"]
    setup, install, check = action["runs"]["steps"]
    assert setup["uses"].startswith("actions/setup-python@")
    assert "pip install" in install["run"] and install["shell"] == "bash"
    assert "lora-inspector check " in check["run"] and "--format github" in check["run"] and check["shell"] == "bash"
    # Inputs go through env, never into the script text (a crafted input must not run as shell).
    for step in (install, check):
        assert "${{" not in step["run"]


def test_check_step_runs_a_remote_check_with_annotations_and_summary(action: dict, tmp_path: Path, seed_dir: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    step = action["runs"]["steps"][2]
    repos = {"acme/base": Repo({"main": repo_files(seed_dir / "base")}), "acme/adapter": Repo({"main": repo_files(seed_dir / "adapter")})}
    summary = tmp_path / "summary.md"
    with HubServer(repos) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_"))}
        env.update(BASE="acme/base", ADAPTERS="acme/adapter", ARGS="--fail-on error --select LI1", HF_TOKEN="",
                   HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), GITHUB_STEP_SUMMARY=str(summary),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        proc = subprocess.run(["bash", "-e", "-c", step["run"]], check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        served = dict(hub.served.bytes)
    # The small files whole (the seed's tokenizer.json files: 2.3 MB), of the weights their headers only.
    assert served[("acme/base", "model.safetensors")] == header_bytes(seed_dir / "base" / "model.safetensors")
    assert served[("acme/adapter", "adapter_model.safetensors")] == header_bytes(seed_dir / "adapter" / "adapter_model.safetensors")
    assert proc.returncode == 1, proc.stderr  # the seed adapter's 70,840 rows: LI101 errors
    assert proc.stdout.count("::error title=LI101 vocab-size-mismatch::") == 2
    text = summary.read_text()
    assert text.startswith("### lora-inspector check fails: 2 errors") and "read remotely from" in text


def test_check_step_passes_inputs_as_arguments_never_as_shell(action: dict, tmp_path: Path) -> None:
    # A stand-in lora-inspector that prints its arguments: spaces split ADAPTERS and ARGS, nothing else
    # happens to an input (no command substitution, no globbing against the workspace's files).
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "lora-inspector"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n")
    fake.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "model.safetensors").write_bytes(b"")  # what a `*` would expand to
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "BASE": "acme/base $(touch pwned)",
           "ADAPTERS": "a/one `touch pwned` *", "ARGS": "--select LI1* ; touch pwned", "HF_TOKEN": ""}
    proc = subprocess.run(["bash", "-e", "-c", action["runs"]["steps"][2]["run"]], check=False, capture_output=True, text=True, env=env, cwd=work, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["check", "acme/base $(touch pwned)", "a/one", "`touch", "pwned`", "*", "--format", "github",
                                        "--select", "LI1*", ";", "touch", "pwned"]
    assert not (work / "pwned").exists()
