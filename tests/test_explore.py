"""explore: the model built from headers (tree, groups, search, what the adapter does), statistics read
on demand, and the Textual app driven headless by Pilot (keys, screen contents, snapshots).

Timing is measured by bench/explore_70b.py; here: nothing is read before a tensor is opened.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from inspector.cli import main
from inspector.explore.model import (
    ADAPTER_ONLY,
    Exploration,
    natural_key,
    open_exploration,
    side_by_side,
)
from inspector.explore.stats import BINS, Cancelled, sparkline, tensor_stats
from inspector.io.checkpoint import read_checkpoint
from inspector.io.loader import TensorReader
from inspector.scan import compile_match
from tests.test_scale import sparse  # bench/sparse_checkpoint.py, loaded once (as test_hub does)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def in_repo(monkeypatch):
    """Relative paths, as a user types them: the app's title shows them, and snapshots must not hold tmp paths."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def seed() -> Exploration:
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return open_exploration("fixtures/seed/base", "fixtures/seed/adapter")
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """The Llama-2-70B-shaped base (29 bf16 shards, 723 tensors) and its 70,840-row adapter: sparse holes."""
    root = tmp_path_factory.mktemp("explore70b")
    sparse.make_llama70b(root / "base")
    sparse.make_adapter70840(root / "adapter")
    return root


def labels(node) -> list[str]:
    return [c.label for c in node.children]


def child(node, label):
    return next(c for c in node.children if c.label == label)


# ---- the model: tree, groups, sort, search ---------------------------------------------------------


def test_seed_tree_groups_layers_and_totals(seed):
    root = seed.tree()
    assert labels(root) == ["lm_head.weight", "model"]
    model = child(root, "model")
    assert labels(model) == ["embed_tokens.weight", "layers.{0..1}", "norm.weight"]
    layers = child(model, "layers.{0..1}")
    assert layers.group == "2 layers" and labels(layers) == ["0", "1"] and layers.name == "model.layers.{0..1}"
    assert layers.children[1].name == "model.layers.1"
    assert labels(child(child(layers, "0"), "self_attn")) == ["k_proj.weight", "o_proj.weight", "q_proj.weight", "v_proj.weight"]
    assert (root.tensors, root.params, root.nbytes) == (seed.base.tensor_count, seed.base.parameter_count, seed.base.total_bytes)
    assert root.dtypes == {"BF16": 21}
    assert (root.adapted, root.mismatches) == (6, 2)  # 4 LoRA targets + 2 grown copies; the 2 grown ones mismatch


def test_seed_what_the_adapter_does(seed):
    by = {e.name: e for e in seed.entries}
    embed = by["model.embed_tokens.weight"]
    [grown] = embed.effects
    assert (grown.kind, grown.shape, embed.info.shape) == ("grown", (70840, 8), (32000, 8))
    assert embed.mismatch and [f.code.code for f in embed.findings] == ["LI101"]
    [lora] = by["model.layers.0.self_attn.q_proj.weight"].effects
    assert (lora.kind, lora.rank, lora.tag) == ("LoRA delta", 4, "LoRA r=4")
    assert lora.summary.startswith("r=4, alpha=8, scale 2")
    assert [t.name.rsplit(".", 2)[-2] for t in lora.tensors] == ["lora_A", "lora_B"]
    assert not by["model.layers.0.self_attn.k_proj.weight"].effects
    assert not by["model.layers.0.self_attn.q_proj.weight"].mismatch
    rows = {r.label: r for r in side_by_side(embed)}
    assert (rows["shape"].base, rows["shape"].adapter, rows["shape"].mismatch) == ("[32000, 8]", "[70840, 8]", True)
    rows = side_by_side(by["model.layers.0.self_attn.q_proj.weight"])
    assert [(r.label, r.base, r.adapter) for r in rows] == [
        ("shape", "[8, 8]", ""), ("dtype", "BF16", ""), ("lora_A", "", "[4, 8] F32"), ("lora_B", "", "[8, 4] F32"), ("bytes", "128 B", "256 B")]
    assert [(r.label, r.base, r.adapter) for r in side_by_side(by["model.norm.weight"])] == [("shape", "[8]", ""), ("dtype", "BF16", ""), ("bytes", "16 B", "")]


def test_findings_name_their_tensors(seed):
    named = {f.code.code + " " + (f.tensor or "-"): seed.entry_for(f) for f in seed.findings}
    assert named["LI101 lm_head.weight"].name == "lm_head.weight"
    assert named["LI101 model.embed_tokens.weight"].name == "model.embed_tokens.weight"
    assert named["LI1101 -"] is None  # about the pair as a whole: nothing to jump to


def test_search_filters_and_compresses(seed):
    root = seed.tree(match=compile_match("embed"))
    assert labels(root) == ["model.embed_tokens.weight"] and root.tensors == 1
    # adapter keys are searched too: lora_A names no base tensor, but its module's weight has it
    root = seed.tree(match=compile_match(r"layers\.1\..*lora_A"))
    assert [n.entry.name for n in root.walk() if n.entry] == ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"]
    assert seed.tree(match=compile_match("nothing-like-this")).children == []


def test_70b_tree_numeric_order_and_size_sort(big):
    x = open_exploration(str(big / "base"), str(big / "adapter"))
    root = x.tree()
    assert root.tensors == 723 and root.params == 68_976_648_192
    layers = child(child(root, "model"), "layers.{0..79}")
    assert layers.group == "80 layers" and labels(layers)[:3] == ["0", "1", "2"] and labels(layers)[10] == "10"
    assert root.adapted == 2 + 80 * 7  # grown embed + head, LoRA on every linear layer
    by_size = x.tree("size")
    assert labels(by_size) == ["model", "lm_head.weight"]
    assert labels(child(by_size, "model"))[0] == "layers.{0..79}"
    assert natural_key("layers.2") < natural_key("layers.10")


def test_adapter_alone_and_orphans(tmp_path, seed):
    x = open_exploration(str(REPO / "fixtures/seed/adapter"))
    assert x.diagnosis is None and {e.side for e in x.entries} == {"adapter"}
    assert labels(x.tree()) == ["base_model.model"]
    layers = child(child(child(x.tree(), "base_model.model"), "model"), "layers.{0..1}")  # a layer index is never joined to its child
    assert layers.group == "2 layers" and labels(layers) == ["0", "1"] and labels(layers.children[1]) == ["self_attn"]
    assert layers.children[1].name == "base_model.model.model.layers.1"
    # an adapter tensor that matches no base tensor stands alone, under its own group
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "zz_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.zz_proj.lora_A.weight": torch.zeros(4, 8),
               "base_model.model.model.layers.0.self_attn.zz_proj.lora_B.weight": torch.zeros(8, 4)}, adapter / "adapter_model.safetensors")
    x = open_exploration(str(REPO / "fixtures/seed/base"), str(adapter))
    alone = [e for e in x.entries if e.side == "adapter"]
    assert len(alone) == 2 and all(e.path[0] == ADAPTER_ONLY and "LI401" in e.note for e in alone)
    assert labels(x.tree())[0] == ADAPTER_ONLY


def test_replaced_and_trainable_tokens(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"],
              "trainable_token_indices": {"embed_tokens": [5, 7]}}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    save_file({"base_model.model.lm_head.weight": torch.zeros(32000, 8, dtype=torch.bfloat16),
               "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta": torch.zeros(2, 8)}, adapter / "adapter_model.safetensors")
    x = open_exploration(str(REPO / "fixtures/seed/base"), str(adapter))
    by = {e.name: e for e in x.entries}
    [head] = by["lm_head.weight"].effects
    assert (head.kind, head.shape, head.tag, by["lm_head.weight"].mismatch) == ("replaced", (32000, 8), "replaced", False)
    [tokens] = by["model.embed_tokens.weight"].effects
    assert (tokens.kind, tokens.summary, [t.shape for t in tokens.tensors]) == ("trainable tokens", "2 rows replaced by trained ones", [(2, 8)])
    rows = {r.label: r for r in side_by_side(by["model.embed_tokens.weight"])}
    assert rows["delta"].adapter == "[2, 8] F32" and not rows["shape"].mismatch


# ---- statistics ------------------------------------------------------------------------------------


def _write(path: Path, tensors: dict) -> tuple:
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path / "model.safetensors")
    ckpt = read_checkpoint(str(path))
    return ckpt, {t.name: t for t in ckpt.tensors}


def test_stats_match_torch_in_small_blocks(seed):
    info = seed.base.by_name["model.embed_tokens.weight"]
    whole = TensorReader(seed.base.root).read(info).double()
    s = tensor_stats(seed.base.root, seed.base.stamps, info, block_bytes=4096)  # 250 blocks
    assert (s.min, s.max) == (float(whole.min()), float(whole.max()))
    assert s.mean == pytest.approx(float(whole.mean()), rel=1e-6, abs=1e-9)
    assert s.std == pytest.approx(float(whole.std(unbiased=False)), rel=1e-5)
    assert (s.nan, s.inf, s.zeros, s.numel) == (0, 0, int((whole == 0).sum()), 256_000)
    assert sum(s.counts) == 256_000 and len(s.counts) == BINS and len(s.edges) == BINS + 1
    assert s.bytes_read == 2 * info.nbytes  # two passes, nothing else
    one = tensor_stats(seed.base.root, seed.base.stamps, info)  # one block: the same up to float32 sums' rounding
    assert (one.min, one.max, one.zeros, one.counts) == (s.min, s.max, s.zeros, s.counts)
    assert one.mean == pytest.approx(s.mean, abs=1e-5 * s.std) and one.std == pytest.approx(s.std, rel=1e-5)


def test_stats_count_nan_inf_zeros_in_fp16_and_fp8(tmp_path):
    x = torch.tensor([[1.0, float("nan"), 0.0], [float("inf"), -2.0, float("-inf")], [0.0, 0.0, 3.0]])
    ckpt, infos = _write(tmp_path / "m", {"h": x.half(), "b": x.bfloat16(), "f8": x.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).to(torch.float8_e4m3fn)})
    for name in ("h", "b"):
        s = tensor_stats(ckpt.root, ckpt.stamps, infos[name], block_bytes=8)  # a row per block
        assert (s.nan, s.inf, s.zeros, s.min, s.max) == (1, 2, 3, -2.0, 3.0), name
        assert s.mean == pytest.approx(2 / 6) and sum(s.counts) == 6  # the six finite values only
    s = tensor_stats(ckpt.root, ckpt.stamps, infos["f8"])
    assert (s.dtype, s.nan, s.inf, s.zeros, s.min, s.max) == ("F8_E4M3", 0, 0, 6, -2.0, 3.0)


def test_stats_stream_row_blocks(seed, monkeypatch):
    """A large matrix is never read whole: every read is one block (of its values, flat)."""
    info = seed.base.by_name["lm_head.weight"]  # 32000 x 8 bf16, 16 bytes a row
    reads = []
    original = TensorReader.read_rows

    def spy(self, info, start, stop, into=None):
        reads.append((min(stop, info.shape[0]) - start) * info.nbytes // info.shape[0])
        return original(self, info, start, stop, into)

    monkeypatch.setattr(TensorReader, "read_rows", spy)
    tensor_stats(seed.base.root, seed.base.stamps, info, block_bytes=16 * 1000)
    assert max(reads) == 16 * 1000 and sum(reads) == 2 * info.nbytes


def test_stats_grown_copy_old_vs_new_rows(tmp_path):
    old = torch.randn(20, 4)
    new = torch.zeros(5, 4)  # untrained new rows
    ckpt, infos = _write(tmp_path / "m", {"w": torch.cat([old, new])})
    s = tensor_stats(ckpt.root, ckpt.stamps, infos["w"], old_rows=20, block_bytes=64)
    assert (s.rows.old_rows, s.rows.new_rows, s.rows.zero, s.rows.untrained) == (20, 5, 5, 5)
    assert sum(s.rows.histogram["old"]) == 20 and sum(s.rows.histogram["new"]) == 5
    assert tensor_stats(ckpt.root, ckpt.stamps, infos["w"]).rows is None  # not grown: no row comparison


def test_stats_cancel_and_refusals(seed, tmp_path):
    info = seed.base.by_name["lm_head.weight"]
    with pytest.raises(Cancelled):
        tensor_stats(seed.base.root, seed.base.stamps, info, cancelled=lambda: True)
    ckpt, infos = _write(tmp_path / "m", {"e": torch.zeros(0, 4), "i": torch.tensor([3, -1, 0], dtype=torch.int64)})
    empty = tensor_stats(ckpt.root, ckpt.stamps, infos["e"])
    assert (empty.numel, empty.min, empty.counts, empty.bytes_read) == (0, None, (), 0)
    ints = tensor_stats(ckpt.root, ckpt.stamps, infos["i"])
    assert (ints.min, ints.max, ints.zeros) == (-1.0, 3.0, 1)


def test_sparkline():
    assert sparkline([0, 1, 2, 4]) == " ▂▄█"
    assert sparkline([0, 0]) == "  "
    assert sparkline([1, 100], top=100)[0] == "▁"  # a non-empty bin never vanishes


# ---- the app, headless -----------------------------------------------------------------------------


def app_for(x: Exploration):
    from inspector.explore.app import ExploreApp

    return ExploreApp(x)


def tree_text(app) -> list[str]:
    """Every line the tree shows now (expanded nodes' children included)."""
    from textual.widgets import Tree

    tree = app.query_one("#tree", Tree)
    out = []

    def walk(node, depth):
        for c in node.children:
            out.append("  " * depth + str(c.label))
            if c.is_expanded:
                walk(c, depth + 1)

    walk(tree.root, 0)
    return out


def panel(app, name: str) -> str:
    """The text a Static shows, as plain text."""
    from rich.console import Console

    console = Console(width=100, record=True, file=io.StringIO())  # not os.devnull: open(..., "w") creates it if missing
    console.print(app.query_one(f"#{name}").content)
    return console.export_text()


async def settle(pilot):
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.mark.asyncio
async def test_seed_screen_search_stats_quit(seed):
    """The done-when walk: lm_head and embed_tokens with their 32000 vs 70840 rows; /embed + enter; q exits 0."""
    app = app_for(seed)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        lines = tree_text(app)
        assert lines[0].startswith("lm_head.weight [32000, 8]→[70840, 8] grown BF16")
        assert any(line.strip().startswith("embed_tokens.weight [32000, 8]→[70840, 8]") for line in lines)
        assert "layers.{0..1}  18 tensors" in "\n".join(lines)
        facts = panel(app, "facts")
        assert "lm_head.weight" in facts and "[32000, 8]" in facts and "[70840, 8]" in facts
        await pilot.press("slash", *"embed", "enter")
        await settle(pilot)
        assert tree_text(app) == [line for line in tree_text(app) if "embed_tokens" in line] and len(tree_text(app)) == 1
        assert "model.embed_tokens.weight" in panel(app, "facts")
        assert str(app.query_one("#left").border_title).startswith("1 of 21 tensors")
        await pilot.press("enter")  # statistics of the tensor under the cursor, in a worker
        await settle(pilot)
        values = panel(app, "values")
        assert "values: base" in values and "values: adapter copy" in values and "row norms" in values
        assert "min" in values and "NaN" in values
        await pilot.press("escape")  # the search is cleared, the cursor stays on the tensor
        await settle(pilot)
        assert len(tree_text(app)) > 1 and "model.embed_tokens.weight" in panel(app, "facts")
        await pilot.press("q")
    assert app.return_code == 0


@pytest.mark.asyncio
async def test_findings_jump_sort_help_and_bad_regex(seed):
    from textual.widgets import Tree

    app = app_for(seed)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f", "down", "enter")  # the second finding: LI101 on the embedding
        await settle(pilot)
        tree = app.query_one("#tree", Tree)
        assert tree.has_focus and tree.cursor_node.data.entry.name == "model.embed_tokens.weight"
        assert "LI101" in panel(app, "notes")
        await pilot.press("s")
        await settle(pilot)
        assert tree_text(app)[0].startswith("model") and "sort: size" in str(app.query_one("#left").border_subtitle)
        assert tree.cursor_node.data.entry.name == "model.embed_tokens.weight"  # the cursor stays on the tensor
        await pilot.press("question_mark")
        await settle(pilot)
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        await settle(pilot)
        await pilot.press("slash", "(", "enter")  # not a regex: said, and the tree kept
        await settle(pilot)
        assert "not a regular expression" in str(app.query_one("#left").border_subtitle)
        assert len(tree_text(app)) > 3
        await pilot.press("escape", "slash", *"q_proj.[w]", "enter")  # brackets shown as typed, not read as markup
        await settle(pilot)
        assert "q_proj.[w]" in app.export_screenshot() and len(tree_text(app)) == 5  # group > 0, 1 > q_proj.weight
        await pilot.press("escape", "ctrl+c")  # quits too (Textual's own ctrl+c only says "press ctrl+q")
    assert app.return_code == 0


@pytest.mark.asyncio
async def test_a_model_alone_has_no_adapter_column_nor_findings(in_repo):
    app = app_for(open_exploration("fixtures/seed/base"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("down", "down")
        await settle(pilot)
        assert not app.query("#findings") and "adapter" not in panel(app, "facts")
        assert panel(app, "facts").split() == ["model.embed_tokens.weight", "shape", "[32000,", "8]", "dtype", "BF16", "bytes", "500.0", "KiB"]
        await pilot.press("enter")
        await settle(pilot)
        assert "values: base" in panel(app, "values") and "adapter" not in panel(app, "values")


@pytest.mark.asyncio
async def test_mouse_click_opens_a_tensor(seed):
    from textual.widgets import Tree

    app = app_for(seed)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        tree = app.query_one("#tree", Tree)
        await pilot.click(Tree, offset=(5, 2))  # the third line: model > embed_tokens.weight
        await settle(pilot)
        assert tree.cursor_node.data.entry.name == "model.embed_tokens.weight"
        assert "values: base" in panel(app, "values")


@pytest.mark.asyncio
async def test_70b_opens_without_reading_data(big, monkeypatch):
    """Headers only until a tensor is opened: every data read goes through TensorReader._read."""
    reads = []
    original = TensorReader._read
    monkeypatch.setattr(TensorReader, "_read", lambda self, info, into: reads.append(info.name) or original(self, info, into))
    monkeypatch.chdir(big)
    t0 = time.perf_counter()
    app = app_for(open_exploration("base", "adapter"))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        opened = time.perf_counter() - t0
        await pilot.press("down", "down", "down", "right", "down", "right", "down", "down", "s", "slash", *"norm", "enter")
        await settle(pilot)
        assert reads == []
        assert str(app.query_one("#left").border_title) == "161 of 723 tensors"  # 80 x 2 layer norms + model.norm
        assert str(app.query_one("#left").border_subtitle) == "/norm  sort: size"
        await pilot.press("escape", "slash", *"^model.norm", "enter", "enter")  # 8192 values
        await settle(pilot)
        assert set(reads) == {"model.norm.weight"}
        assert "zeros 8,192 of 8,192" in panel(app, "values")  # the sparse hole reads as zeros
    # The 1 s target is the bench's (bench/explore_70b.py); this bound only catches a data read or a quadratic build.
    assert opened < 5.0


@pytest.mark.asyncio
async def test_screen_answers_while_a_large_tensor_streams(big, monkeypatch):
    """The 70B embedding (500 MiB bf16, two passes) streams in a worker: the cursor moves and the
    detail follows meanwhile; q cancels the worker between two blocks and exits at once."""
    import asyncio

    from textual import events
    from textual.worker import WorkerState

    def key(name: str) -> None:
        # Posted, not pilot.press: Pilot waits after each key until the process is idle, which a
        # streaming worker never is (up to a second per key).
        app.post_message(events.Key(name, name if len(name) == 1 else None))

    monkeypatch.chdir(big)
    app = app_for(open_exploration("base", "adapter"))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("down", "down")  # model > embed_tokens.weight
        key("enter")
        await asyncio.sleep(0.3)
        [worker] = app.workers
        assert worker.state is WorkerState.RUNNING
        key("down")
        await asyncio.sleep(0.3)
        assert "layers.{0..79}" in panel(app, "facts") and worker.state is WorkerState.RUNNING
        t0 = time.perf_counter()
        key("q")
        await asyncio.sleep(0.1)
    assert app.return_code == 0 and time.perf_counter() - t0 < 3.0
    assert worker.state is WorkerState.CANCELLED


def test_only_explore_imports_textual_and_torch_waits_for_a_tensor():
    """scan and check never import textual; explore's screen, searched and sorted, has not imported torch
    (the statistics import it when a tensor is opened: the tests above)."""
    code = (
        "import sys, asyncio\n"
        "from inspector.cli import main\n"
        "assert main(['scan', 'fixtures/seed/base']) == 0\n"
        "assert main(['check', 'fixtures/seed/base', 'fixtures/seed/adapter']) == 1\n"
        "assert 'textual' not in sys.modules, 'scan/check imported textual'\n"
        "from inspector.explore.model import open_exploration\n"
        "from inspector.explore.app import ExploreApp\n"
        "app = ExploreApp(open_exploration('fixtures/seed/base', 'fixtures/seed/adapter'))\n"
        "async def walk():\n"
        "    async with app.run_test(size=(100, 30)) as pilot:\n"
        "        await pilot.press('down', 'down', 'slash', 'e', 'm', 'enter', 's')\n"
        "        await pilot.pause()\n"
        "        assert 'torch' not in sys.modules, 'torch before a tensor was opened'\n"
        "asyncio.run(walk())\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


# ---- the command -----------------------------------------------------------------------------------


def test_explore_needs_a_terminal(in_repo, capsys):
    assert main(["explore", "fixtures/seed/base", "fixtures/seed/adapter"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: Not a terminal: explore draws an interactive screen") and "Hint: Run it in a terminal" in err
    assert "Traceback" not in err


def test_explore_bad_input_is_error_hint(in_repo, capsys):
    assert main(["explore", "no/such/dir"]) == 2
    assert capsys.readouterr().err.startswith("Error: ")
    assert main(["explore", "fixtures/seed/adapter", "fixtures/seed/base"]) == 2  # swapped: check's own usage error
    assert "Hint: Run `lora-inspector explore fixtures/seed/base fixtures/seed/adapter`" in capsys.readouterr().err


def test_explore_without_textual_says_so(in_repo, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    for name in [m for m in sys.modules if m == "textual" or m.startswith(("textual.", "inspector.explore.app"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "textual", None)  # import textual -> ImportError
    assert main(["explore", "fixtures/seed/base"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: Missing dependency: explore needs the textual package") and "Hint: Reinstall lora-inspector" in err


# ---- snapshots (tests/__snapshots__/test_explore/*.svg; update with --snapshot-update) ----------------


def test_snapshot_seed_opening(in_repo, snap_compare):
    x = open_exploration("fixtures/seed/base", "fixtures/seed/adapter")
    assert snap_compare(app_for(x), terminal_size=(100, 30), run_before=settle)


def test_snapshot_seed_embedding_statistics_80x24(in_repo, snap_compare):
    async def open_embedding(pilot):
        await pilot.press("slash", *"embed", "enter", "enter")
        await settle(pilot)

    x = open_exploration("fixtures/seed/base", "fixtures/seed/adapter")
    assert snap_compare(app_for(x), terminal_size=(80, 24), run_before=open_embedding)


def test_snapshot_help(in_repo, snap_compare):
    x = open_exploration("fixtures/seed/base", "fixtures/seed/adapter")
    assert snap_compare(app_for(x), terminal_size=(80, 24), press=["question_mark"])


def test_snapshot_70b_layer_expanded(big, monkeypatch, snap_compare):
    monkeypatch.chdir(big)  # "base + adapter" in the title, not a tmp path
    x = open_exploration("base", "adapter")
    # from lm_head: layers.{0..79} opened, 0 opened, self_attn opened, the cursor on q_proj.weight (LoRA r=16)
    keys = ["down"] * 3 + ["right", "down", "right"] + ["down"] * 4 + ["right"] + ["down"] * 3
    assert snap_compare(app_for(x), terminal_size=(100, 30), press=keys)



@pytest.mark.asyncio
async def test_a_superseded_run_neither_drops_nor_overwrites_the_newer_one(seed, monkeypatch):
    """enter twice on a tensor: the first run is cancelled but ends only after the second has shown its
    statistics (it was inside a block). Its late "cancelled" must not wipe the second run's result."""
    import threading

    from inspector.explore import stats

    release, calls = threading.Event(), []

    def fake(root, stamps, info, *, old_rows=None, progress=None, cancelled=lambda: False):
        calls.append(info.name)
        if len(calls) == 1:  # the first run: stuck in a block until released, then sees its cancellation
            release.wait(10)
            if cancelled():
                raise stats.Cancelled
        return stats.Stats(info.name, info.dtype, info.shape, info.numel, -1.0, 1.0, 0.0, 0.5, 0, 0, 0, (-1.0, 1.0), (7,))

    monkeypatch.setattr(stats, "tensor_stats", fake)
    app = app_for(seed)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("enter")  # lm_head.weight: run 1, stuck
        await pilot.pause()
        await pilot.press("enter")  # again: run 2 cancels run 1 and finishes at once
        for _ in range(100):
            await pilot.pause(0.02)
            if "mean" in panel(app, "values"):
                break
        assert "mean" in panel(app, "values")
        release.set()  # run 1 now ends, cancelled, after run 2
        await settle(pilot)
        assert "mean" in panel(app, "values") and "enter: statistics" not in panel(app, "values")
        await pilot.press("q")


def test_stats_of_a_tensor_with_huge_rows_stream_bounded_blocks(tmp_path, monkeypatch):
    """An expert stack's row (dim 0) can be 117 MB: blocks of whole rows would not bound memory."""
    x = torch.randn(2, 64, 64)  # 16 KiB a row
    ckpt, infos = _write(tmp_path / "m", {"experts": x})
    sizes = []
    original = TensorReader.read_rows

    def spy(self, info, start, stop, into=None):
        block = original(self, info, start, stop, into)
        sizes.append(block.numel() * block.element_size())
        return block

    monkeypatch.setattr(TensorReader, "read_rows", spy)
    s = tensor_stats(ckpt.root, ckpt.stamps, infos["experts"], block_bytes=4096)
    assert max(sizes) <= 4096 and sum(sizes) == 2 * x.numel() * 4
    assert (s.min, s.max, s.numel, s.shape) == (float(x.min()), float(x.max()), x.numel(), (2, 64, 64))
    assert s.mean == pytest.approx(float(x.double().mean()), abs=1e-6) and sum(s.counts) == x.numel()


@pytest.mark.asyncio
async def test_markup_names_a_truncated_file_and_a_costly_search(tmp_path):
    """Names from the file are text ("[bold]" shown, not applied); a file cut short after its header
    was read says so in the panel (the app keeps running); a backtracking pattern is bounded."""
    ckpt, _ = _write(tmp_path / "m", {"[bold]x[/bold].weight": torch.randn(64, 64), "a" * 40 + "b": torch.zeros(0, 3)})
    app = app_for(open_exploration(str(ckpt.root)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert tree_text(app)[0].startswith("[bold]x[/bold].weight [64, 64]")
        assert panel(app, "facts").startswith("[bold]x[/bold].weight")
        t0 = time.perf_counter()
        await pilot.press("slash", *"^(a+)+$", "enter")
        await settle(pilot)
        assert time.perf_counter() - t0 < 5.0 and tree_text(app) == [] and panel(app, "facts").startswith("no tensor matches")
        await pilot.press("escape")
        os.truncate(ckpt.root / "model.safetensors", 300)
        await pilot.press("enter")
        await settle(pilot)
        assert "cannot read it: Input changed during the run" in panel(app, "values")
        await pilot.press("q")
    assert app.return_code == 0


def test_statistics_blocks_name_each_adapter_tensor():
    """One role list for the detail's rows and the statistics' titles: lora_B's weight and its bias
    (lora_bias) were both titled "adapter lora_B"."""
    from inspector.explore.app import _what

    names = [f"base_model.model.q_proj.{r}" for r in ("lora_A.weight", "lora_B.weight", "lora_B.bias", "lora_magnitude_vector")]
    assert [_what("adapter", n) for n in names] == ["adapter lora_A", "adapter lora_B", "adapter lora_B.bias", "adapter lora_magnitude"]
    assert _what("adapter", "base_model.model.lm_head.modules_to_save.default.weight") == "adapter copy" and _what("base", "x") == "base"
