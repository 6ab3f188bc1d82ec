"""explore with Hub ids that are not cached: read remotely, headers only, as scan and check read them
(inspector/io/hub.py), against the local stand-in Hub (tests/hubserver.py).

The tree, the side-by-side facts and the findings are the local explore's of the same files; statistics
refuse (the stub's data region is a hole, which would read as zeros) with the `hf download` command;
--offline opens no connection; the stubs live as long as the app and are removed when it exits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from inspector.cli import main
from tests.hubserver import HubServer, Repo
from tests.test_explore import app_for, panel, settle, tree_text
from tests.test_hub import assert_error, header_bytes, point_at, repo_files, socket_connects


@pytest.fixture
def hub(seed_dir: Path, monkeypatch, tmp_path):
    """acme/base and acme/adapter (the seed case) on the stand-in Hub, huggingface_hub pointed at it, an empty cache."""
    repos = {"acme/base": Repo({"main": repo_files(seed_dir / "base")}), "acme/adapter": Repo({"main": repo_files(seed_dir / "adapter")})}
    with HubServer(repos) as server:
        point_at(monkeypatch, tmp_path, server.url)
        yield server


@pytest.fixture
def no_data_read(monkeypatch):
    """Fail the test if anything streams a tensor (the stub's hole would read as zeros)."""
    from inspector.explore import stats

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("tensor data read from a remote stub")

    monkeypatch.setattr(stats, "tensor_stats", refuse)
    monkeypatch.setattr(stats, "TensorReader", refuse)
    return calls


def findings_of(x, names: dict[str, str]) -> list[tuple]:
    def same(text: str | None) -> str | None:
        for name, placeholder in sorted(names.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(name, placeholder) if text else text
        return text

    return [(f.code.code, f.severity, f.tensor, f.adapter_key, same(f.message)) for f in x.findings]


def facts_of(app) -> str:
    return panel(app, "facts")


@pytest.mark.asyncio
async def test_uncached_hub_ids_explore_as_the_local_files(hub, seed_dir, no_data_read):
    from inspector.explore.model import open_exploration
    from inspector.io.paths import remote_reads

    local = open_exploration(str(seed_dir / "base"), str(seed_dir / "adapter"))
    with remote_reads():
        x = open_exploration("acme/base", "acme/adapter")
        assert x.base.remote.repo_id == "acme/base" and x.adapter.remote.repo_id == "acme/adapter"
        # headers only: each safetensors file's 8 + N bytes, no tensor data
        for repo, name in (("acme/base", "model.safetensors"), ("acme/adapter", "adapter_model.safetensors")):
            which = seed_dir / ("base" if repo == "acme/base" else "adapter") / name
            assert hub.served.bytes[(repo, name)] == header_bytes(which)
        assert findings_of(x, {"acme/base": "<b>", "acme/adapter": "<a>"}) == \
            findings_of(local, {str(seed_dir / "base"): "<b>", str(seed_dir / "adapter"): "<a>"})
        assert [f.code.code for f in x.findings].count("LI101") == 2
        screens = []
        for exploration in (local, x):
            app = app_for(exploration)
            async with app.run_test(size=(100, 30)) as pilot:
                await settle(pilot)
                seen = [tree_text(app), facts_of(app), [str(o.prompt) for o in app.query_one("#findings").options]]
                await pilot.press("slash", *"embed", "enter")
                await settle(pilot)
                seen += [tree_text(app), facts_of(app)]
                if exploration is x:
                    await pilot.press("enter")  # statistics: refused, nothing read
                    await settle(pilot)
                    values = panel(app, "values")
                await pilot.press("q")
            assert app.return_code == 0
            screens.append(seen)
        assert screens[0] == screens[1]
        assert "[32000, 8]→[70840, 8]" in screens[1][0][0]
    assert "values: base" in values and "values: adapter copy" in values
    assert "not downloaded: acme/base was read from the Hub, headers only (no tensor data)" in values
    assert "not downloaded: acme/adapter was read from the Hub" in values
    assert "Download it first (`hf download acme/base`), then run again: the cached copy is used." in values
    assert "`hf download acme/adapter`" in values
    assert "min" not in values and "zeros" not in values and "row norms" not in values
    assert no_data_read == []
    files = sum(v for (repo, name), v in hub.served.bytes.items() if name.endswith(".safetensors"))
    assert files == header_bytes(seed_dir / "base" / "model.safetensors") + header_bytes(seed_dir / "adapter" / "adapter_model.safetensors")


@pytest.mark.asyncio
async def test_remote_adapter_over_local_base_reads_the_base_only(hub, seed_dir):
    """A local base's values are read; the remote adapter's copy on the same tensor says it is not downloaded."""
    from inspector.explore.model import open_exploration
    from inspector.io.paths import remote_reads

    with remote_reads():
        x = open_exploration(str(seed_dir / "base"), "acme/adapter")
        app = app_for(x)
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(pilot)
            await pilot.press("slash", *"embed", "enter", "enter")
            await settle(pilot)
            values = panel(app, "values")
            await pilot.press("q")
    base, _, copy = values.partition("values: adapter copy")
    assert "values: base" in base and "min" in base and "zeros" in base
    assert "not downloaded: acme/adapter" in copy and "`hf download acme/adapter`" in copy and "min" not in copy
    assert hub.served.bytes[("acme/adapter", "adapter_model.safetensors")] == header_bytes(seed_dir / "adapter" / "adapter_model.safetensors")


def test_tensor_stats_refuses_a_stub(hub):
    """The last guard: whatever calls tensor_stats on a remote read's stub gets refuse_data's Error/Hint, not zeros."""
    from inspector.errors import InvalidInputError
    from inspector.explore.stats import tensor_stats
    from inspector.io.checkpoint import read_checkpoint
    from inspector.io.paths import remote_reads

    with remote_reads():
        ckpt = read_checkpoint("acme/base")
        info = ckpt.by_name["lm_head.weight"]
        with pytest.raises(InvalidInputError) as caught:
            tensor_stats(ckpt.root, ckpt.stamps, info)
    assert caught.value.message.startswith("Cannot run statistics for 'acme/base': it reads tensor data")
    assert "`hf download acme/base`" in caught.value.hint


# ---- the command: --offline, and the stubs' lifetime --------------------------------------------------


def test_offline_is_error_hint_without_a_connection(hub, capsys, monkeypatch):
    opened = socket_connects(monkeypatch)
    assert main(["explore", "acme/base", "acme/adapter", "--offline"]) == 2
    assert_error(2, capsys.readouterr().err, "Cannot read checkpoint for 'acme/base': it is not in the local Hugging Face cache",
                 "Run without --offline to read its headers from the Hub, or download it first: `hf download acme/base`.")
    assert opened == [] and hub.served.requests == []


def as_terminal(monkeypatch) -> None:
    """stdin and stdout say they are a terminal (patched in the test body: capsys swaps sys.stdout at setup)."""
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)


def stubs() -> set[Path]:
    hub = sys.modules.get("inspector.io.hub")
    return set(hub._STUBS) if hub is not None else set()


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
def test_stubs_live_with_the_app_and_go_when_it_exits(hub, monkeypatch, capsys, key, no_data_read):
    """The CLI itself, headless: the stubs exist while the screen is up (statistics asked there refuse),
    and are removed once the user quits."""
    from textual.app import App

    from inspector.explore.app import ExploreApp

    seen: dict = {}

    async def user(pilot):
        await settle(pilot)
        seen["stubs"] = stubs()
        seen["there"] = all(p.is_dir() for p in seen["stubs"])
        await pilot.press("enter")  # lm_head.weight, the first row
        await settle(pilot)
        seen["values"] = panel(pilot.app, "values")
        await pilot.press(key)

    as_terminal(monkeypatch)
    monkeypatch.setattr(ExploreApp, "run", lambda self: App.run(self, headless=True, size=(100, 30), auto_pilot=user))
    assert main(["explore", "acme/base", "acme/adapter"]) == 0
    assert len(seen["stubs"]) == 2 and seen["there"]
    assert "not downloaded: acme/base" in seen["values"] and "`hf download acme/base`" in seen["values"]
    assert not any(p.exists() for p in seen["stubs"]) and stubs() == set()
    assert capsys.readouterr().err == "" and no_data_read == []


def test_stubs_go_on_an_interrupt(hub, monkeypatch, capsys):
    from inspector.explore.app import ExploreApp

    seen: dict = {}

    def interrupted(self):
        seen["stubs"] = stubs()
        raise KeyboardInterrupt

    as_terminal(monkeypatch)
    monkeypatch.setattr(ExploreApp, "run", interrupted)
    assert main(["explore", "acme/base"]) == 130
    assert len(seen["stubs"]) == 1 and not any(p.exists() for p in seen["stubs"]) and stubs() == set()
    assert "Traceback" not in capsys.readouterr().err


def test_stubs_go_when_the_terminal_closes(hub, tmp_path):
    """explore of Hub ids in a real terminal that goes away (a dropped SSH session): SIGHUP, then
    every write to the terminal fails. It ends (129) and its stub directories go with it."""
    import os

    from tests.terminal import Terminal

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), TMPDIR=str(tmp), TERM="xterm-256color", COLUMNS="100", LINES="30")
    with Terminal([sys.executable, "-m", "inspector", "explore", "acme/base", "acme/adapter"], env=env) as terminal:
        terminal.wait_for(b"lm_head")  # the first screen drew the tree
        assert len(list(tmp.glob("lora-inspector-hub-*"))) == 2
        assert terminal.hang_up() == 129
    assert list(tmp.glob("lora-inspector-hub-*")) == []
