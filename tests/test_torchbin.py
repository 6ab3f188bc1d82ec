"""The restricted torch.save reader: exact facts for real files, and no code run for any gadget."""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.errors import InvalidInputError
from inspector.io.torchbin import read_torch_bin, walk_pickle
from tests.hostile import ExecGadget, SystemGadget
from tests.models import TORCH_TO_ST

# pickletools decodes mutated UNICODE opcodes with codecs.escape_decode, which warns on bad escapes.
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


STATE = {
    "f32": torch.linspace(-1, 1, 12).reshape(3, 4),
    "f16": torch.ones(2, 5, dtype=torch.float16),
    "bf16": torch.full((3,), 0.25, dtype=torch.bfloat16),
    "f64": torch.arange(4, dtype=torch.float64),
    "i64": torch.tensor([1, -2, 3]),
    "i32": torch.tensor([5], dtype=torch.int32),
    "i16": torch.tensor([5, 6], dtype=torch.int16),
    "i8": torch.tensor([-1], dtype=torch.int8),
    "u8": torch.tensor([1, 2, 3], dtype=torch.uint8),
    "bool": torch.tensor([True, False]),
    "scalar": torch.tensor(2.0),
    "empty": torch.zeros(0, 3),
}


def test_state_dict_facts_and_byte_spans(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save(STATE, path)
    tensors = read_torch_bin(path)
    oracle = torch.load(path, weights_only=True)  # torch's own safe loader as the reference
    assert [t.name for t in tensors] == list(oracle)  # insertion order, as torch.save wrote it
    raw = path.read_bytes()
    for t in tensors:
        assert t.shape == tuple(oracle[t.name].shape)
        assert t.dtype == TORCH_TO_ST[oracle[t.name].dtype]
        assert t.file == "pytorch_model.bin"
        assert t.nbytes == oracle[t.name].numel() * oracle[t.name].element_size()
        # The span points at the storage inside the zip, so a merge can stream it without unpickling.
        assert raw[t.start : t.end] == tensor_bytes(STATE[t.name])


def test_module_state_dict_with_metadata_and_parameters(tmp_path: Path) -> None:
    # state_dict() carries a ``_metadata`` attribute (a BUILD opcode); nn.Parameter uses _rebuild_parameter.
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    path = tmp_path / "m.bin"
    torch.save(module.state_dict(), path)
    facts = {t.name: (t.shape, t.dtype) for t in read_torch_bin(path)}
    assert facts == {"0.weight": ((3, 4), "F32"), "0.bias": ((3,), "F32"), "1.weight": ((3,), "F32"), "1.bias": ((3,), "F32")}
    params = {"p": torch.nn.Parameter(torch.ones(2, 2))}
    torch.save(params, path)
    assert [(t.name, t.shape, t.dtype) for t in read_torch_bin(path)] == [("p", (2, 2), "F32")]


def test_shared_storage_and_storage_offsets(tmp_path: Path) -> None:
    # Tied weights share one storage; a view into a larger storage starts at its offset.
    tied = torch.randn(4, 3)
    base = torch.arange(10, dtype=torch.float32)
    state = {"embed": tied, "lm_head": tied, "tail": base[6:], "middle": base[2:4]}
    path = tmp_path / "shared.bin"
    torch.save(state, path)
    by_name = {t.name: t for t in read_torch_bin(path)}
    assert by_name["embed"].start == by_name["lm_head"].start
    assert by_name["embed"].shape == by_name["lm_head"].shape == (4, 3)
    assert by_name["tail"].shape == (4,) and by_name["middle"].shape == (2,)
    assert by_name["tail"].start - by_name["middle"].start == 4 * 4  # offsets 6 and 2, 4 bytes each
    raw = path.read_bytes()
    for name, tensor in state.items():
        assert raw[by_name[name].start : by_name[name].end] == tensor_bytes(tensor)


@pytest.mark.parametrize("gadget_type", [SystemGadget, ExecGadget], ids=["os.system", "builtins.exec"])
@pytest.mark.parametrize("layout", ["inside-state-dict", "top-level"])
def test_gadget_in_torch_save_zip_never_runs(tmp_path: Path, gadget_type: type, layout: str) -> None:
    sentinel = tmp_path / "pwned"
    gadget = gadget_type(sentinel)
    obj = {"w": torch.ones(2), "x": gadget} if layout == "inside-state-dict" else gadget
    path = tmp_path / "pytorch_model.bin"
    torch.save(obj, path)
    # Control: the gadget is live, an unrestricted load runs it.
    torch.load(path, weights_only=False)
    assert sentinel.exists()
    sentinel.unlink()

    with pytest.raises(InvalidInputError) as info:
        read_torch_bin(path)
    assert not sentinel.exists()
    # Protocol 2 spells builtins as Python 2's __builtin__ (pickle's fix_imports).
    target = r"posix\.system" if gadget_type is SystemGadget else r"(builtins|__builtin__)\.exec"
    assert re.fullmatch(f"it references the global {target}", info.value.why)
    assert info.value.message.startswith(f"Refusing to read pickle for '{path}'")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_raw_pickle_is_refused_unread(tmp_path: Path, protocol: int) -> None:
    sentinel = tmp_path / "pwned"
    blob = pickle.dumps(ExecGadget(sentinel), protocol=protocol)
    pickle.loads(blob)  # control: the gadget works
    assert sentinel.exists()
    sentinel.unlink()
    path = tmp_path / "adapter_model.bin"
    path.write_bytes(blob)
    with pytest.raises(InvalidInputError, match="not a zip-format torch.save file"):
        read_torch_bin(path)
    assert not sentinel.exists()
    # The opcode walker alone refuses it too (GLOBAL for protocols 0-2, STACK_GLOBAL for 4-5).
    with pytest.raises(InvalidInputError, match=r"global (builtins|__builtin__)\.exec"):
        walk_pickle(path, blob)
    assert not sentinel.exists()


def test_legacy_non_zip_torch_save_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.bin"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(InvalidInputError, match="not a zip-format"):
        read_torch_bin(path)


def test_nested_pickle_is_data_not_code(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    path = tmp_path / "nested.bin"
    torch.save({"w": torch.ones(2), "blob": pickle.dumps(ExecGadget(sentinel))}, path)
    # torch.save pickles with protocol 2, which writes bytes as a call to _codecs.encode: refused as a global.
    with pytest.raises(InvalidInputError, match="it references the global _codecs.encode"):
        read_torch_bin(path)
    with pytest.raises(InvalidInputError, match="entry 'blob' is a bytes, not a tensor"):
        walk_pickle(path, pickle.dumps({"blob": pickle.dumps(ExecGadget(sentinel))}, protocol=4))
    assert not sentinel.exists()


def test_checkpoint_dict_that_is_not_a_flat_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.bin"
    torch.save({"w": torch.ones(2), "step": 3}, path)
    with pytest.raises(InvalidInputError, match="entry 'step' is a int, not a tensor"):
        read_torch_bin(path)


# Hand-written pickles that abuse the allowed globals or the stack machine (protocol 2 opcodes).
BAD_PICKLES = [
    ("ordered-dict-with-args", b"\x80\x02ccollections\nOrderedDict\n]\x85R.", "OrderedDict called with arguments"),
    ("rebuild-without-args", b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.", "_rebuild_tensor_v2 called with unexpected arguments"),
    ("storage-called", b"\x80\x02ctorch\nFloatStorage\n)R.", "REDUCE of torch.FloatStorage"),
    ("reduce-of-non-global", b"\x80\x02K\x01)R.", "not an allowed global"),
    ("inst-opcode", b"(iposix\nsystem\nS'true'\n.", "pickle opcode INST is not allowed"),
    ("setitem-underflow", b"\x80\x02s.", "stack underflow"),
    ("setitem-one-item", b"\x80\x02}s.", "stack underflow"),
    ("append-underflow", b"\x80\x02a.", "stack underflow"),
    ("reduce-underflow", b"\x80\x02R.", "stack underflow"),
    ("tuple2-underflow", b"\x80\x02\x86.", "stack underflow"),
    ("build-on-list", b"\x80\x02]}b.", "BUILD on something that is not a state dict"),
    ("non-string-key", b"\x80\x02}K\x01K\x02s.", "dict key 1 is not a string"),
    ("non-tensor-entry", b"\x80\x02}X\x01\x00\x00\x00aK\x01s.", "entry 'a' is a int, not a tensor"),
    ("not-a-dict", b"\x80\x02K\x01.", "does not hold a state dict"),
    ("two-objects", b"\x80\x02}}.", "does not hold a state dict"),
    ("bad-persistent-id", b"\x80\x02X\x03\x00\x00\x00abcQ.", "unexpected persistent id"),
    ("missing-memo", b"\x80\x02h\x05.", "memo key 5 missing"),
    ("missing-mark", b"\x80\x02t.", "MARK missing"),
    ("truncated", b"\x80\x02(", "malformed pickle"),
    ("unknown-opcode", b"\x80\x02\xff.", "malformed pickle"),
]


@pytest.mark.parametrize(("blob", "reason"), [c[1:] for c in BAD_PICKLES], ids=[c[0] for c in BAD_PICKLES])
def test_bad_pickles_are_refused(tmp_path: Path, blob: bytes, reason: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        walk_pickle(tmp_path / "x.bin", blob)
    assert reason in info.value.why


def _rewrite(src: Path, dst: Path, *, drop: str | None = None, deflate: str | None = None, replace: tuple[str, bytes] | None = None) -> Path:
    """Copy a torch.save zip member by member, dropping, compressing or replacing one member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if drop and info.filename.endswith(drop):
                continue
            if replace and info.filename.endswith(replace[0]):
                data = replace[1]
            method = zipfile.ZIP_DEFLATED if deflate and info.filename.endswith(deflate) else zipfile.ZIP_STORED
            zout.writestr(info.filename, data, compress_type=method)
    return dst


@pytest.fixture
def small_bin(tmp_path: Path) -> Path:
    path = tmp_path / "small.bin"
    torch.save({"w": torch.arange(8, dtype=torch.float32)}, path)
    return path


def test_rewritten_zip_still_reads(small_bin: Path, tmp_path: Path) -> None:
    # zipfile's own layout (no 64-byte alignment) must read the same: offsets come from local headers.
    path = _rewrite(small_bin, tmp_path / "copy.bin")
    (t,) = read_torch_bin(path)
    assert (t.name, t.shape, t.dtype) == ("w", (8,), "F32")
    assert path.read_bytes()[t.start : t.end] == tensor_bytes(torch.arange(8, dtype=torch.float32))


def test_compressed_storage_is_refused(small_bin: Path, tmp_path: Path) -> None:
    path = _rewrite(small_bin, tmp_path / "deflated.bin", deflate="data/0")
    with pytest.raises(InvalidInputError, match="storage '0' of 'w' is missing or compressed"):
        read_torch_bin(path)


def test_missing_storage_is_refused(small_bin: Path, tmp_path: Path) -> None:
    path = _rewrite(small_bin, tmp_path / "nostorage.bin", drop="data/0")
    with pytest.raises(InvalidInputError, match="storage '0' of 'w' is missing or compressed"):
        read_torch_bin(path)


def test_short_storage_is_refused(small_bin: Path, tmp_path: Path) -> None:
    path = _rewrite(small_bin, tmp_path / "short.bin", replace=("data/0", b"\0" * 12))
    with pytest.raises(InvalidInputError, match="tensor 'w' reaches past the end of its storage"):
        read_torch_bin(path)


def test_zip_without_data_pkl_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.bin"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/readme.txt", "hi")
    with pytest.raises(InvalidInputError, match="no single <archive>/data.pkl"):
        read_torch_bin(path)


def test_truncated_zip_is_refused(small_bin: Path) -> None:
    blob = small_bin.read_bytes()
    small_bin.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InvalidInputError):
        read_torch_bin(small_bin)


def _data_pkl(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))


REAL_PKL = _data_pkl({"a.weight": torch.ones(2, 3), "a.bias": torch.zeros(3, dtype=torch.bfloat16)})


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4), cut=st.integers(0, 10_000))
def test_fuzz_mutated_data_pkl(tmp_path: Path, flips: list[tuple[int, int]], cut: int) -> None:
    blob = bytearray(REAL_PKL)
    for pos, value in flips:
        blob[pos % len(blob)] = value
    try:
        result = walk_pickle(tmp_path / "x.bin", bytes(blob[: max(cut, 1)]))
    except InvalidInputError as exc:
        assert exc.why
        return
    assert all(isinstance(name, str) for name in result)


@FUZZ
@given(blob=st.binary(max_size=200))
def test_fuzz_arbitrary_pickle_bytes(tmp_path: Path, blob: bytes) -> None:
    try:
        result = walk_pickle(tmp_path / "x.bin", blob)
    except InvalidInputError as exc:  # the only acceptable failure, and it names a reason
        assert exc.why
        return
    assert isinstance(result, dict)


def _u(text: str) -> bytes:
    return b"X" + len(text).to_bytes(4, "little") + text.encode()


def _one_tensor_pickle(offset: int) -> bytes:
    """{'a': _rebuild_tensor_v2(<FloatStorage '0', 4 elements>, offset, (4,), (1,), False, OrderedDict())}."""
    storage = b"(" + _u("storage") + b"ctorch\nFloatStorage\n" + _u("0") + _u("cpu") + b"K\x04tQ"
    args = b"(" + storage + b"J" + offset.to_bytes(4, "little", signed=True) + b"K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rt"
    return b"\x80\x02}" + _u("a") + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"Rs."


def test_hand_built_tensor_pickle_and_negative_offset(tmp_path: Path) -> None:
    tensors = walk_pickle(tmp_path / "x.bin", _one_tensor_pickle(0))
    assert list(tensors) == ["a"]
    assert (tensors["a"].shape, tensors["a"].offset, tensors["a"].storage.dtype) == ((4,), 0, "F32")
    # A negative storage offset would point the byte span before the storage, into the zip headers.
    with pytest.raises(InvalidInputError, match="_rebuild_tensor_v2 called with unexpected arguments"):
        walk_pickle(tmp_path / "x.bin", _one_tensor_pickle(-1))


def test_strided_views_are_read_through_their_strides(tmp_path: Path) -> None:
    """torch.save keeps a view's storage and strides (w.T, w[:, 1], an expand): the reader gives the
    view's values, whole and by rows, from the bytes the view spans."""
    import torch

    from inspector.io.loader import TensorReader

    t = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    views = {"w": t.T, "v": t[:, 1], "s": t[1:, ::2], "t": t}
    torch.save(views, tmp_path / "views.bin")
    infos = {i.name: i for i in read_torch_bin(tmp_path / "views.bin")}
    assert {n: i.shape for n, i in infos.items()} == {n: tuple(v.shape) for n, v in views.items()}
    assert {n: i.contiguous for n, i in infos.items()} == {"w": False, "v": False, "s": False, "t": True}
    with TensorReader(tmp_path) as reader:
        for name, view in views.items():
            assert torch.equal(reader.read(infos[name]), view), name
            for r0 in range(view.shape[0]):
                assert torch.equal(reader.read_rows(infos[name], r0, r0 + 2), view[r0:r0 + 2]), (name, r0)


@pytest.mark.parametrize("view", ["expand", "overlap"])
def test_views_that_repeat_their_storage_are_refused(tmp_path: Path, view: str) -> None:
    """1.6 KB on disk must not stand for 400 M values (zeros(1).expand(20000, 20000)), nor overlap."""
    import torch

    from inspector.errors import InvalidInputError

    t = torch.zeros(1).expand(20000, 20000) if view == "expand" else torch.arange(10.0).as_strided((4, 4), (1, 1))
    torch.save({"x": t}, tmp_path / "bomb.bin")
    with pytest.raises(InvalidInputError, match="is a view that repeats its storage elements"):
        read_torch_bin(tmp_path / "bomb.bin")


def test_training_checkpoint_names_the_nested_state_dict(tmp_path: Path) -> None:
    import torch

    from inspector.errors import InvalidInputError

    torch.save({"epoch": 3, "global_step": 500, "model": {"w": torch.zeros(2), "b": torch.zeros(1)}}, tmp_path / "checkpoint.pt")  # Lightning puts it last
    with pytest.raises(InvalidInputError, match=r"its tensors are nested under 'model' \(2 of them\), not at the top level") as exc:
        read_torch_bin(tmp_path / "checkpoint.pt")
    assert exc.value.hint.startswith("Save the 'model' entry by itself")
