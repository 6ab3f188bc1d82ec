"""The merge's overlapped GPU pipeline (``merge._overlapped``), run on the CPU through simulated CUDA
streams (tests.fakelanes): the same bytes as the serial merge however late or out of turn the
queued copies and kernels run, and each of its waits shown to be needed. The same pipeline on a
real GPU: the gpu tests at the end and in tests/test_merge.py (run by bench/gpu_check.sh)."""

from __future__ import annotations

import re
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
        assert lanes.runs["compute"] > 1 and "start" in lanes.log  # really through the lanes, in several blocks
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
    # fp16: every tensor through the lanes, lm_head in 16 blocks: the writer has written the first ones
    # before the end of the tensor's blocks drains the lanes (at most AHEAD + 2 blocks later)
    merge_json(capsys, base, adapter, tmp_path / "serial", "--dtype", "fp16")
    serial = _files(tmp_path / "serial")
    made = _with_lanes(monkeypatch, mode="lazy", dropped=(why,))
    rc, _, err = run(capsys, "merge", base, adapter, "--out", tmp_path / "broken", "--device", "cpu", "--dtype", "fp16")
    assert made[0].waits[why] > 0  # the pipeline does ask for this wait
    refused_garbage = rc == 2 and ("non-finite" in err or "overflowed" in err)
    assert refused_garbage or rc == 0 and _files(tmp_path / "broken") != serial


def test_lanes_start_after_each_jobs_setup(small_blocks: None, request: pytest.FixtureRequest, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``lanes.start()`` (the lanes wait for the current stream) comes after every job's setup and
    before its first block: on CUDA the adapter's matrices, DoRA's magnitudes and column norms and the
    token rows are copied and converted on the current stream, which the lanes do not otherwise wait
    for. The simulation runs that setup at once, so only the order of the calls can show it."""
    case = BY_ID["gpt2-dora-conv1d"]  # DoRA by columns: a first pass over all rows in the setup
    base, adapter = build(case, request, tmp_path)
    made = _with_lanes(monkeypatch, mode="lazy")
    setup = merge_mod._Rows.__init__

    def logged(self, *args) -> None:
        setup(self, *args)
        made[0].log.append("setup")

    monkeypatch.setattr(merge_mod._Rows, "__init__", logged)
    merge_json(capsys, base, adapter, tmp_path / "merged", "--dtype", "fp32")
    calls = " ".join(made[0].log).replace("run copy_in run compute run copy_out", "block")
    assert re.fullmatch(r"(setup start( block)+ ?)+", calls), calls[:300]


@pytest.mark.parametrize("mode", ["lazy", "eager", "random"])
@pytest.mark.parametrize("row", ["first", "middle", "last"])
@pytest.mark.parametrize(("value", "message"), [(1e6, "overflowed result for 'lm_head.weight': merged values up to 1e+06 do not fit F16"),
                                              (float("nan"), "non-finite result for 'lm_head.weight'")])
def test_refusals_found_in_a_block_are_those_of_the_serial_check(value: float, message: str, row: str, mode: str, small_blocks: None,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """The host checks each block by four numbers copied back with it (min/max of the result and of
    its fp32 values): the same Error as the serial check wherever the bad row is (the last blocks'
    numbers are checked too, each block's own), the lanes drained, nothing written."""

    def poison(tensors):
        head = tensors["lm_head.weight"] = tensors["lm_head.weight"].clone()
        head[{"first": 0, "middle": head.shape[0] // 2, "last": -1}[row], 0] = value
        return tensors

    base = edit_tensors(request.getfixturevalue("llama").path, tmp_path / "base", poison, filename="model.safetensors")
    argv = ("merge", base, request.getfixturevalue("lora_llama").path, "--device", "cpu", "--dtype", "fp16")
    serial = run(capsys, *argv, "--out", tmp_path / "serial")
    made = _with_lanes(monkeypatch, mode=mode, seed=3)
    overlapped = run(capsys, *argv, "--out", tmp_path / "overlapped")
    assert overlapped == serial and serial[0] == 2 and message in serial[2]
    assert made[0].runs["compute"] > 1 and all(not lane.queue for lane in made[0].lanes)  # drained when the merge stopped early
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_a_failing_drain_does_not_hide_the_error_that_stopped_the_merge(small_blocks: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """After a device error every CUDA call fails: the merge reports what stopped it, not the drain."""

    class DeadDevice(FakeLanes):
        def drain(self) -> None:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def nan(tensors):
        tensors["lm_head.weight"] = tensors["lm_head.weight"].clone()
        tensors["lm_head.weight"][3, 0] = float("nan")
        return tensors

    base = edit_tensors(request.getfixturevalue("llama").path, tmp_path / "base", nan, filename="model.safetensors")
    monkeypatch.setattr(merge_mod, "_lanes", lambda dev: DeadDevice())
    rc, _, err = run(capsys, "merge", base, request.getfixturevalue("lora_llama").path, "--device", "cpu", "--dtype", "fp16", "--out", tmp_path / "o")
    assert rc == 2 and err.startswith("Error: Refusing to write a non-finite result for 'lm_head.weight'")


def test_merge_thread_works_on_the_merge_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda:N becomes the merge thread's current device (entering a stream's context sets it, and
    cuda:0 would otherwise get a context); plain "cuda" is left as it is (set_device refuses it)."""
    import torch

    import inspector.streams

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(inspector.streams, "CudaLanes", lambda dev: ("lanes", dev))
    assert merge_mod._lanes("cpu") is None and calls == []
    assert merge_mod._lanes("cuda") == ("lanes", "cuda") and calls == []
    assert merge_mod._lanes("cuda:1") == ("lanes", "cuda:1") and calls == ["cuda:1"]


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
