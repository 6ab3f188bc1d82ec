"""The merge's overlapped GPU pipeline (``merge._overlapped``), run on the CPU through simulated CUDA
streams (tests.fakelanes): the same bytes as the serial merge however late or out of turn the
queued copies and kernels run, and each of its waits shown to be needed. The same pipeline on a
real GPU: the gpu tests at the end and in tests/test_merge.py (run by bench/gpu_check.sh)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import inspector.merge as merge_mod
from tests.check_cases import edit_tensors
from tests.fakelanes import FakeLanes
from tests.merge_cases import DEVICE_TENSOR_TOL
from tests.test_merge import BY_ID, build, check_against_peft, extra_root, llama_fp16, merge_json, run  # noqa: F401 (fixtures)

# Every kind of row block: LoRA in fp32/bf16/fp16, DoRA by rows and by columns (Conv1D), an embedding
# LoRA, rows grown from the whole matrix, a strided legacy .bin view, trainable tokens (grown too).
CASES = ["llama-qv", "llama-qv-bf16", "llama-qv-fp16", "llama-dora", "gpt2-dora-conv1d", "llama-embedding-lora",
         "qwen2-tied-mts-embed-resized", "llama-embedding-lora-grown-uncarried-init-mean", "llama-legacy-bin-base",
         "llama-trainable-tokens", "llama-trainable-tokens-grown"]
WAITS = ("copied-in", "computed", "copied-out")


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _with_lanes(monkeypatch: pytest.MonkeyPatch, **kwargs) -> list[FakeLanes]:
    made: list[FakeLanes] = []

    def lanes(dev: str) -> FakeLanes:
        made.append(FakeLanes(**kwargs))
        return made[-1]

    monkeypatch.setattr(merge_mod, "_lanes", lanes)
    return made


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merge_mod, "CHUNK_BYTES", 256)  # 1-4 rows a block: every tensor in many blocks


@pytest.mark.parametrize("case_id", CASES)
def test_overlapped_blocks_give_the_serial_bytes(case_id: str, small_blocks: None, request: pytest.FixtureRequest, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    case = BY_ID[case_id]
    base, adapter = build(case, request, tmp_path)
    merge_json(capsys, base, adapter, tmp_path / "serial", *case.args)
    serial = _files(tmp_path / "serial")
    for i, (mode, seed) in enumerate([("lazy", 0), ("eager", 0), ("random", 1), ("random", 2)]):
        with monkeypatch.context() as m:
            made = _with_lanes(m, seed=seed, mode=mode)
            merge_json(capsys, base, adapter, tmp_path / f"overlapped{i}", *case.args)
        (lanes,) = made
        assert lanes.runs["compute"] > 1 and lanes.starts > 0  # really through the lanes, in several blocks
        assert all(not lane.queue for lane in lanes.lanes)
        overlapped = _files(tmp_path / f"overlapped{i}")
        assert [n for n in serial if serial[n] != overlapped.get(n)] == [], (mode, seed)


def test_blocks_waiting_for_a_slow_writer_are_not_overwritten(small_blocks: None, request: pytest.FixtureRequest, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that copies each block back the moment it is queued, and a writer that holds each
    block a while before writing it: the pinned host slots come round only once the writer is done
    with them (``HOST_SLOTS`` in turn; one fewer fails here)."""
    case = BY_ID["llama-qv-bf16"]
    base, adapter = build(case, request, tmp_path)
    merge_json(capsys, base, adapter, tmp_path / "serial", "--dtype", "fp32")  # every tensor through the lanes

    def slow_rows(self):
        while (block := self.next()) is not merge_mod._END:
            time.sleep(0.002)  # the compute thread runs ahead meanwhile, as far as the queue lets it
            yield block

    made = _with_lanes(monkeypatch, mode="eager")
    monkeypatch.setattr(merge_mod._Ahead, "rows", slow_rows)
    merge_json(capsys, base, adapter, tmp_path / "overlapped", "--dtype", "fp32")
    assert made[0].runs["copy_out"] > 100
    serial, overlapped = _files(tmp_path / "serial"), _files(tmp_path / "overlapped")
    assert [n for n in serial if serial[n] != overlapped[n]] == []


@pytest.mark.parametrize("why", WAITS)
def test_each_wait_is_needed(why: str, small_blocks: None, request: pytest.FixtureRequest, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without any one of the three waits the simulated streams give other bytes (or a refusal of
    garbage): the equality above is evidence, not luck of the schedule."""
    case = BY_ID["llama-qv"]
    base, adapter = build(case, request, tmp_path)
    merge_json(capsys, base, adapter, tmp_path / "serial")
    serial = _files(tmp_path / "serial")
    made = _with_lanes(monkeypatch, mode="lazy", dropped=(why,))
    rc, _, err = run(capsys, "merge", base, adapter, "--out", tmp_path / "broken", "--device", "cpu")
    assert made[0].waits[why] > 0  # the pipeline does ask for this wait
    assert rc == 2 and "non-finite" in err or rc == 0 and _files(tmp_path / "broken") != serial


@pytest.mark.parametrize(("value", "message"), [(1e6, "overflowed result for 'lm_head.weight': merged values up to 1e+06 do not fit F16"),
                                              (float("nan"), "non-finite result for 'lm_head.weight'")])
def test_refusals_found_in_a_block_are_those_of_the_serial_check(value: float, message: str, small_blocks: None, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                                request: pytest.FixtureRequest) -> None:
    """The host checks each block by four numbers copied back with it (min/max of the result and of
    its fp32 values): the same Error as the serial check, the lanes drained, nothing written."""

    def poison(tensors):
        tensors["lm_head.weight"] = tensors["lm_head.weight"].clone()
        tensors["lm_head.weight"][5, 0] = value  # in the second row block
        return tensors

    base = edit_tensors(request.getfixturevalue("llama").path, tmp_path / "base", poison, filename="model.safetensors")
    argv = ("merge", base, request.getfixturevalue("lora_llama").path, "--device", "cpu", "--dtype", "fp16")
    serial = run(capsys, *argv, "--out", tmp_path / "serial")
    made = _with_lanes(monkeypatch, mode="random", seed=3)
    overlapped = run(capsys, *argv, "--out", tmp_path / "overlapped")
    assert overlapped == serial and serial[0] == 2 and message in serial[2]
    assert made[0].runs["compute"] > 1 and all(not lane.queue for lane in made[0].lanes)  # drained when the merge stopped early
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


# ---- on a real GPU (bench/gpu_check.sh) ------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case_id", CASES)
def test_on_cuda_in_many_blocks_matches_peft(case_id: str, small_blocks: None, request: pytest.FixtureRequest, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tensor in many blocks through the real streams, each buffer set reused many times."""
    from inspector.streams import CudaLanes

    made = []
    monkeypatch.setattr(merge_mod, "_lanes", lambda dev, real=merge_mod._lanes: made.append(real(dev)) or made[-1])
    case = BY_ID[case_id]
    base, adapter = build(case, request, tmp_path)
    report = merge_json(capsys, base, adapter, tmp_path / "merged", *case.args, device="cuda")
    assert isinstance(made[0], CudaLanes)
    check_against_peft(case, base, adapter, tmp_path / "merged", report, tol=DEVICE_TENSOR_TOL)


@pytest.mark.gpu
def test_on_cuda_an_overflow_is_refused_as_on_the_cpu(small_blocks: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      request: pytest.FixtureRequest) -> None:
    def big(tensors):
        tensors["lm_head.weight"] = tensors["lm_head.weight"].clone()
        tensors["lm_head.weight"][5, 0] = 1e6
        return tensors

    base = edit_tensors(request.getfixturevalue("llama").path, tmp_path / "base", big, filename="model.safetensors")
    argv = ("merge", base, request.getfixturevalue("lora_llama").path, "--dtype", "fp16")
    on_cpu = run(capsys, *argv, "--device", "cpu", "--out", tmp_path / "cpu")
    assert run(capsys, *argv, "--device", "cuda", "--out", tmp_path / "cuda") == on_cpu and on_cpu[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
