"""Faults that lost data or lied (a fault campaign on the output side, inputs that change, signals,
names the OS refuses). Each test reproduces one defect as the campaign found it.

What needs root (bind mounts, dropping privileges) skips with the reason where it is unavailable.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import inspector.io.publish as publish_mod
import inspector.io.writer as writer_mod
import inspector.merge as merge_mod
from inspector.cli import main
from inspector.errors import InspectorError
from inspector.io.loader import TensorReader
from tests.hostile_corpus import copy_dir, snapshot
from tests.models import Built

REPO = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def merge(capsys, work: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    return cli(capsys, "merge", work / "base", work / "adapter", "--out", out, "--device", "cpu", *extra)


def assert_clean_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and "Internal error" not in err, err
    lines = err.strip().splitlines()
    assert lines[-2].startswith("Error: ") and lines[-1].startswith("Hint: "), err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def old_out(work: Path) -> Path:
    out = work / "merged"
    out.mkdir()
    (out / "old.txt").write_text("the previous output")
    return out


def _mount_bind(src: Path, dst: Path) -> None:
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("bind mounts need root and mount(8)")
    dst.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount --bind is not permitted here: {proc.stderr.strip()}")


def _umount(path: Path, root: Path) -> None:
    """Unmount ``path``, and anything else mounted below ``root`` (a run that moved the mount aside)."""
    subprocess.run(["umount", str(path)], capture_output=True)
    for mounted in sorted(publish_mod.mount_points(), reverse=True):
        if mounted.startswith(str(root) + os.sep):
            subprocess.run(["umount", mounted], capture_output=True)


# ---- 1: --force never removes an input reached through the old output ---------------------------------------


def test_force_refuses_an_old_output_holding_a_bind_mount_of_the_base(capsys, work: Path, old_out: Path) -> None:
    mounted = old_out / "models" / "base"
    _mount_bind(work / "base", mounted)
    try:
        before = snapshot(work / "base", work / "adapter")
        rc, out, err = merge(capsys, work, old_out, "--force")
        assert_clean_error(rc, err, "--force would remove the old output", "'models/base' in it is")
        assert snapshot(work / "base", work / "adapter") == before
        assert (old_out / "old.txt").exists() and (mounted / "model.safetensors").exists()
        assert not [p for p in work.iterdir() if p.name.startswith(".")]  # nothing staged
    finally:
        _umount(mounted, work)
    assert (work / "base" / "model.safetensors").exists()


def test_force_refuses_an_old_output_holding_a_hard_link_to_an_input(capsys, work: Path, old_out: Path) -> None:
    os.link(work / "base" / "config.json", old_out / "config.json")
    rc, out, err = merge(capsys, work, old_out, "--force")
    assert_clean_error(rc, err, "'config.json' in it is an input under another name")
    assert (old_out / "old.txt").exists()


def test_removal_never_crosses_a_mount_made_after_the_check(work: Path, old_out: Path) -> None:
    # Something mounted into the old output between the check and the removal: left in place, named.
    mounted = old_out / "late"
    _mount_bind(work / "base", mounted)
    try:
        assert publish_mod.remove_tree(old_out, set()) is False
        assert (mounted / "model.safetensors").exists() and not (old_out / "old.txt").exists()
    finally:
        _umount(mounted, work)
    assert (work / "base" / "model.safetensors").exists()


def test_force_with_a_symlink_to_the_base_in_the_old_output_removes_only_the_link(capsys, work: Path, old_out: Path) -> None:
    (old_out / "base-link").symlink_to(work / "base", target_is_directory=True)
    before = snapshot(work / "base")
    rc, out, err = merge(capsys, work, old_out, "--force")
    assert rc == 0, err
    assert snapshot(work / "base") == before and not (old_out / "base-link").exists()


# ---- 2: an input changed between its header read and its data read -------------------------------------------


def _resave_with_longer_metadata(path: Path) -> None:
    # The same tensors, re-saved: a longer __metadata__ moves every data offset.
    save_file(load_file(path), path, metadata={"format": "pt", "note": "x" * 999})


def test_base_resaved_after_check_is_refused(capsys, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_plan = merge_mod.plan_merge

    def plan_then_resave(*args, **kwargs):
        plan = real_plan(*args, **kwargs)  # headers read; the data is read after this
        _resave_with_longer_metadata(work / "base" / "model.safetensors")
        return plan

    monkeypatch.setattr(merge_mod, "plan_merge", plan_then_resave)
    rc, out, err = merge(capsys, work, work / "merged")
    assert_clean_error(rc, err, "Input changed during the run", "model.safetensors", "after its header was read")
    assert not (work / "merged").exists() and not [p for p in work.iterdir() if p.name.startswith(".")]


def test_replaced_shard_is_refused(capsys, tmp_path: Path, llama_sharded: Built, lora_llama: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    base = copy_dir(llama_sharded.path, tmp_path / "base")
    copy_dir(lora_llama.path, tmp_path / "adapter")
    shard = sorted(base.glob("model-*.safetensors"))[1]
    real_plan = merge_mod.plan_merge

    def plan_then_replace(*args, **kwargs):
        plan = real_plan(*args, **kwargs)
        tensors = {k: v * 3 for k, v in load_file(shard).items()}
        save_file(tensors, tmp_path / "new.safetensors", metadata={"format": "pt"})
        os.replace(tmp_path / "new.safetensors", shard)  # same names and shapes, another file
        return plan

    monkeypatch.setattr(merge_mod, "plan_merge", plan_then_replace)
    rc, out, err = merge(capsys, tmp_path, tmp_path / "merged")
    assert_clean_error(rc, err, "Input changed during the run", shard.name, "replaced by another file")
    assert not (tmp_path / "merged").exists()


def test_config_changed_during_the_merge_is_refused_before_publishing(capsys, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # config.json is read with the headers and written into the output: a change during the merge
    # is caught by the writer's last check, before the output is published.
    real_read, done = TensorReader.read, []

    def read_then_edit(self, info):
        if not done:
            config = json.loads((work / "base" / "config.json").read_text())
            (work / "base" / "config.json").write_text(json.dumps({**config, "vocab_size": 7}, indent=2))
            done.append(True)
        return real_read(self, info)

    monkeypatch.setattr(TensorReader, "read", read_then_edit)
    rc, out, err = merge(capsys, work, work / "merged")
    assert_clean_error(rc, err, "Input changed during the run", "config.json")
    assert not (work / "merged").exists() and not [p for p in work.iterdir() if p.name.startswith(".")]


# ---- 5: signals before the usual handlers, and during heavy imports ----------------------------------------------

# Runs the real console-script entry point; a meta-path finder sends the signal to this process at
# the moment MODULE starts importing (the product has no test hooks).
SIGNAL_AT_IMPORT = textwrap.dedent(
    """
    import os, signal, sys, time
    module, signum = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if the parent ignores it

    class SignalOnImport:
        fired = False
        def find_spec(self, name, path=None, target=None):
            if name == module and not self.fired:
                self.fired = True
                os.kill(os.getpid(), signum)
                time.sleep(0.1)  # the handler runs here, inside the import, not at some later bytecode
            return None

    sys.meta_path.insert(0, SignalOnImport())
    sys.argv = ["lora-inspector", *sys.argv[3:]]
    from inspector.entry import main_exit
    main_exit()
    """
)


@pytest.mark.parametrize(
    ("module", "sig", "code"),
    [
        ("click", signal.SIGINT, 130),  # Ctrl-C while the CLI itself loads
        ("inspector.io.writer", signal.SIGTERM, 143),  # was outside the CLI's try: a traceback, exit 1
        ("numpy", signal.SIGTERM, 143),  # inside `import torch`: swallowed, the merge went on to exit 0
        ("numpy", signal.SIGINT, 130),
    ],
    ids=["sigint-importing-click", "sigterm-importing-writer", "sigterm-inside-import-torch", "sigint-inside-import-torch"],
)
def test_signal_during_startup_imports(work: Path, module: str, sig: int, code: int) -> None:
    out = work / "merged"
    before = snapshot(work)
    argv = ["merge", str(work / "base"), str(work / "adapter"), "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AT_IMPORT, module, str(int(sig)), *argv], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-2:] == ["Error: interrupted.", "Hint: nothing was written; run the command again."]
    assert snapshot(work) == before


# ---- 6: the --force swap ---------------------------------------------------------------------------------------

# A writer run in its own process, killed (SIGKILL: no cleanup at all) at one point of the swap.
KILLED_SWAP = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import inspector.io.publish as P
    from inspector.io.writer import CheckpointWriter, OutputTensor

    out, where = sys.argv[1], sys.argv[2]
    real_exchange, real_rename = P.exchange, os.rename

    def exchange_then_die(a, b):
        done = real_exchange(a, b)
        os.kill(os.getpid(), signal.SIGKILL)

    def first_rename_then_die(src, dst):
        real_rename(src, dst)
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "after-exchange":
        P.exchange = exchange_then_die
    else:  # a filesystem without RENAME_EXCHANGE, killed between its two renames
        P.exchange = lambda a, b: False
        P.os.rename = first_rename_then_die
    with CheckpointWriter(out, inputs=[], tensors=[OutputTensor("x", "F32", (2,))], force=True) as w:
        w.write("x", torch.ones(2))
        w.commit()
    """
)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_killed_right_after_the_exchange_leaves_a_complete_out(tmp_path: Path, old_out: Path, capsys) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(old_out), "after-exchange"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(os.listdir(old_out)) == ["model.safetensors"]  # the new output, complete: one step swapped them
    assert torch.equal(load_file(old_out / "model.safetensors")["x"], torch.ones(2))
    # The old output, at the staging name the exchange gave it, and the empty .old- directory made
    # ready before the exchange (so that nothing can fail after it).
    left = _hidden(old_out.parent)
    assert [n.split("-")[0] for n in left] == [".merged.old", ".merged.staging"], left
    assert (old_out.parent / left[1] / "old.txt").exists() and not os.listdir(old_out.parent / left[0])
    # The next run names what the killed one left, and does not delete it.
    rc, out, err = cli(capsys, "resize", tmp_path / "base", "--out", tmp_path / "resized", "--vocab", "80")
    assert rc == 0 and "left" not in err  # another --out: nothing to say
    rc, out, err = merge(capsys, tmp_path, old_out, "--force")
    assert rc == 0, err
    named = ", ".join(f"'{old_out.parent / n}'" for n in left)
    assert f"Warning: an earlier run writing here was stopped and left {named}." in err
    assert (old_out.parent / left[1] / "old.txt").exists()


def test_killed_between_two_renames_names_the_old_output(tmp_path: Path, old_out: Path, capsys) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(old_out), "two-renames"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not old_out.exists()  # the window two renames leave (documented); RENAME_EXCHANGE closes it
    aside = [n for n in _hidden(tmp_path) if n.startswith(".merged.old-")]
    assert len(aside) == 1 and (tmp_path / aside[0] / "old.txt").exists()
    rc, out, err = merge(capsys, tmp_path, old_out)
    assert rc == 0, err
    assert f"left '{tmp_path / aside[0]}'" in err and "itself is missing: the '.old-' one holds the previous output" in err


# Two --force runs into one --out at once: the first holds the swap (a slow exchange), the second
# reaches its own swap meanwhile. Both must succeed, the second's output must win, nothing stranded.
SLOW_SWAP = textwrap.dedent(
    """
    import os, sys, time
    import torch
    import inspector.io.publish as P
    from inspector.io.writer import CheckpointWriter, OutputTensor

    out, value, delay, ready = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    real_exchange = P.exchange

    def slow_exchange(a, b):
        open(ready, "w").close()
        time.sleep(delay)
        return real_exchange(a, b)

    P.exchange = slow_exchange
    with CheckpointWriter(out, inputs=[], tensors=[OutputTensor("x", "F32", (2,))], force=True) as w:
        w.write("x", torch.full((2,), value))
        w.commit()
    """
)


def test_two_force_runs_at_once_both_publish_and_strand_nothing(tmp_path: Path, old_out: Path) -> None:
    ready = tmp_path / "first-is-swapping"
    first = subprocess.Popen([sys.executable, "-c", SLOW_SWAP, str(old_out), "1", "3", str(ready)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if ready.exists() or first.poll() is not None:
                break
            import time

            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-c", SLOW_SWAP, str(old_out), "2", "0", str(tmp_path / "unused")], cwd=REPO,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        first_err = first.communicate(timeout=120)[1]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0 and second.returncode == 0, (first_err, second.stderr)
    assert "Nothing was written" not in first_err + second.stderr
    assert torch.equal(load_file(old_out / "model.safetensors")["x"], torch.full((2,), 2.0))
    assert [n for n in _hidden(tmp_path) if n.startswith(".merged")] == []


# ---- 7: an error after the output was published says so ----------------------------------------------------------


@pytest.mark.parametrize("force", [False, True], ids=["new", "force"])
def test_fsync_error_after_publishing_says_the_output_is_in_place(capsys, work: Path, monkeypatch: pytest.MonkeyPatch, force: bool) -> None:
    out = work / "merged"
    if force:
        out.mkdir()
        (out / "old.txt").write_text("the previous output")
    real_fsync_dir = writer_mod._fsync_dir

    def eio_on_the_parent(path: Path) -> None:
        if Path(path) == work:  # the directory fsync after the final rename
            raise OSError(errno.EIO, "Input/output error")
        real_fsync_dir(path)

    monkeypatch.setattr(writer_mod, "_fsync_dir", eio_on_the_parent)
    rc, stdout, err = merge(capsys, work, out, *(["--force"] if force else []))
    assert_clean_error(rc, err, "the new output is in place", "Input/output error")
    assert "Nothing was written" not in err and "nothing was written" not in err
    assert (out / "model.safetensors").is_file() and not (out / "old.txt").exists()
    if force:  # the old output is not removed after a failed sync; the hint says where it is
        [aside] = [p for p in work.iterdir() if p.name.startswith(".merged.old-")]
        assert (aside / "old.txt").exists() and str(aside) in err


# ---- 8: names and permissions the OS refuses ------------------------------------------------------------------------


def _sharded_with_shard_name(tmp_path: Path, llama_sharded: Built, name: str) -> Path:
    base = copy_dir(llama_sharded.path, tmp_path / "base")
    index_path = base / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"] = {k: (name if v == first else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    return base


@pytest.mark.parametrize(("name", "why"), [("m" * 300 + ".safetensors", "longer than 255 bytes"), ("model\u0000.safetensors", "contains a NUL byte")],
                         ids=["over-255-bytes", "nul-byte"])  # fmt: skip
def test_shard_names_the_os_refuses(capsys, tmp_path: Path, llama_sharded: Built, name: str, why: str) -> None:
    base = _sharded_with_shard_name(tmp_path, llama_sharded, name)
    rc, out, err = cli(capsys, "scan", base)
    assert_clean_error(rc, err, "Cannot read sharded index", why)


# Root reads anything, so the run drops to nobody, but only after importing what it needs: the
# checkout and its virtualenv may sit where nobody cannot read (a 0700 temporary directory).
AS_NOBODY = textwrap.dedent(
    """
    import os, sys
    import inspector.report.terminal, inspector.scan
    from inspector.cli import main
    if os.geteuid() == 0:
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
    sys.exit(main(sys.argv[1:]))
    """
)


def test_input_directory_without_permission(tmp_path: Path, llama: Built) -> None:
    base = copy_dir(llama.path, tmp_path / "base")
    os.chmod(base, 0o000)
    try:
        proc = subprocess.run([sys.executable, "-c", AS_NOBODY, "scan", str(base)], cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(base, 0o755)
    assert_clean_error(proc.returncode, proc.stderr, "Permission denied", str(base))


# ---- found in review: the publish itself, interrupted or failing --------------------------------------------------


def test_ctrl_c_during_a_force_publish_still_removes_the_old_output(tmp_path: Path, old_out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C while the swap runs is delivered once the whole publish is done, the old output's removal
    # included (it was delivered between the two, leaving the previous output in .merged.old-*).
    from inspector import interrupts
    from inspector.io.shards import OutputTensor
    from inspector.io.writer import CheckpointWriter

    real = writer_mod.ensure_unchanged

    def interrupted(stamps):
        os.kill(os.getpid(), signal.SIGINT)
        return real(stamps)

    monkeypatch.setattr(writer_mod, "ensure_unchanged", interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with CheckpointWriter(old_out, inputs=[], tensors=[OutputTensor("x", "F32", (2,))], force=True) as w:
                w.write("x", torch.ones(2))
                w.commit()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert interrupts.PUBLISHED[-1] == old_out
    assert sorted(os.listdir(old_out)) == ["model.safetensors"] and _hidden(tmp_path) == []


def test_a_failure_right_after_the_exchange_cannot_happen(tmp_path: Path, old_out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The aside directory is made before the exchange: a full disk refuses that mkdir while nothing has
    # moved, so the old output stays and "nothing was written" is true (it was deleted as "staging").
    from inspector.io.shards import OutputTensor
    from inspector.io.writer import CheckpointWriter

    real = publish_mod.make_dir_beside

    def full_disk(target, tag):
        if tag == "old":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(target, tag)

    monkeypatch.setattr(publish_mod, "make_dir_beside", full_disk)
    with pytest.raises(InspectorError, match="No space left on device") as info:
        with CheckpointWriter(old_out, inputs=[], tensors=[OutputTensor("x", "F32", (2,))], force=True) as w:
            w.write("x", torch.ones(2))
            w.commit()
    assert "Nothing was written" in info.value.hint
    assert sorted(os.listdir(old_out)) == ["old.txt"] and _hidden(tmp_path) == []


def test_an_os_error_no_reader_words_is_still_error_and_hint(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI's last net for the environment: an OSError from anywhere is Error/Hint exit 2, naming the file.
    import inspector.scan as scan_mod

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/models/base/config.json")

    monkeypatch.setattr(scan_mod, "scan", refused)
    rc, out, err = cli(capsys, "scan", "/models/base")
    assert rc == 2 and out == ""
    assert err.splitlines() == ["Error: Cannot access for '/models/base/config.json': Permission denied.",
                                "Hint: Check the path, its permissions and the disk, then run again."]
