"""Restricted reader for legacy ``torch.save`` files (``pytorch_model.bin``, ``adapter_model.bin``).

Nothing here unpickles. ``data.pkl`` is walked opcode by opcode (``pickletools.genops`` only
decodes) by a tiny stack machine that knows the handful of globals torch.save emits for a state
dict; any other global, opcode or shape of data is rejected before anything could run. The result
is the same header-level facts the safetensors reader gives: names, dtypes, shapes, byte spans.
"""

from __future__ import annotations

import math
import os
import pickletools
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from inspector.errors import InvalidInputError
from inspector.tensor import DTYPE_BITS, TensorInfo

MAX_PICKLE_BYTES = 64_000_000

# torch storage class names -> safetensors dtype strings.
STORAGE_DTYPES = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
}
_REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor_v2")
_REBUILD_PARAMETER = ("torch._utils", "_rebuild_parameter")
_ORDERED_DICT = ("collections", "OrderedDict")
_ALLOWED = {_REBUILD_TENSOR, _REBUILD_PARAMETER, _ORDERED_DICT} | {("torch", s) for s in STORAGE_DTYPES}

_HINT = "Only plain state dicts written by torch.save are read; convert the file to safetensors in a trusted environment."


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Storage:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Mark:
    pass


def _fail(path: Path, why: str, hint: str = _HINT) -> InvalidInputError:
    return InvalidInputError("Refusing to read pickle", path, why, hint)


def _ints(path: Path, value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise _fail(path, f"{what} is {value!r}, not a tuple of non-negative integers")
    return value


def _call(path: Path, func: object, args: object) -> object:
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise _fail(path, f"REDUCE of {func!r}, which is not an allowed global")
    key = (func.module, func.name)
    if key == _ORDERED_DICT:
        if args:
            raise _fail(path, "OrderedDict called with arguments")
        return {}
    if key == _REBUILD_PARAMETER:
        if len(args) != 3 or not isinstance(args[0], _Tensor):
            raise _fail(path, "_rebuild_parameter called with unexpected arguments")
        return args[0]
    if key == _REBUILD_TENSOR:
        if len(args) not in (6, 7) or not isinstance(args[0], _Storage) or type(args[1]) is not int or args[1] < 0:
            raise _fail(path, "_rebuild_tensor_v2 called with unexpected arguments")
        return _Tensor(args[0], args[1], _ints(path, args[2], "a tensor size"), _ints(path, args[3], "a tensor stride"))
    raise _fail(path, f"REDUCE of {func.module}.{func.name}")


def _persistent(path: Path, pid: object) -> _Storage:
    ok = (
        isinstance(pid, tuple)
        and len(pid) == 5
        and pid[0] == "storage"
        and isinstance(pid[1], _Global)
        and pid[1].module == "torch"
        and pid[1].name in STORAGE_DTYPES
        and isinstance(pid[2], str)
        and type(pid[4]) is int
    )
    if not ok:
        raise _fail(path, f"unexpected persistent id {pid!r}")
    return _Storage(STORAGE_DTYPES[pid[1].name], pid[2], pid[4])


def _pop_mark(path: Path, stack: list) -> list:
    for i in range(len(stack) - 1, -1, -1):
        if isinstance(stack[i], _Mark):
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise _fail(path, "MARK missing")


def walk_pickle(path: Path, data: bytes) -> dict[str, _Tensor]:
    """Evaluate ``data`` as a restricted pickle and return its name -> tensor map."""
    stack: list = []
    memo: dict = {}
    try:
        ops = list(pickletools.genops(data))
    except Exception as exc:  # genops raises ValueError and friends on malformed input
        raise _fail(path, f"malformed pickle ({exc})") from exc
    for op, arg, _pos in ops:
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            break
        if name == "MARK":
            stack.append(_Mark())
        elif name in ("BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES"):
            stack.append(arg)
        elif name in ("NEWTRUE", "NEWFALSE", "NONE"):
            stack.append({"NEWTRUE": True, "NEWFALSE": False, "NONE": None}[name])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "TUPLE":
            stack.append(tuple(_pop_mark(path, stack)))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise _fail(path, "stack underflow")
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            if not stack:
                raise _fail(path, "stack underflow")
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            if not stack:
                raise _fail(path, "stack underflow")
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            if arg not in memo:
                raise _fail(path, f"memo key {arg!r} missing")
            stack.append(memo[arg])
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            if (module, attr) not in _ALLOWED:
                raise _fail(path, f"it references the global {module}.{attr}")
            stack.append(_Global(module, attr))
        elif name == "STACK_GLOBAL":
            if len(stack) < 2 or not all(isinstance(s, str) for s in stack[-2:]):
                raise _fail(path, "STACK_GLOBAL without two names")
            module, attr = stack.pop(-2), stack.pop()
            if (module, attr) not in _ALLOWED:
                raise _fail(path, f"it references the global {module}.{attr}")
            stack.append(_Global(module, attr))
        elif name == "BINPERSID":
            if not stack:
                raise _fail(path, "stack underflow")
            stack.append(_persistent(path, stack.pop()))
        elif name == "REDUCE":
            if len(stack) < 2:
                raise _fail(path, "stack underflow")
            args = stack.pop()
            stack.append(_call(path, stack.pop(), args))
        elif name in ("SETITEM", "SETITEMS"):
            if name == "SETITEM" and len(stack) < 3:  # the dict, a key and a value
                raise _fail(path, "stack underflow")
            items = [stack.pop(), stack.pop()][::-1] if name == "SETITEM" else _pop_mark(path, stack)
            if len(items) % 2 or not stack or not isinstance(stack[-1], dict):
                raise _fail(path, f"{name} on something that is not a dict")
            for k, v in zip(items[::2], items[1::2]):
                if not isinstance(k, str):
                    raise _fail(path, f"dict key {k!r} is not a string")
                stack[-1][k] = v
        elif name in ("APPEND", "APPENDS"):
            if name == "APPEND" and len(stack) < 2:  # the list and an item
                raise _fail(path, "stack underflow")
            items = [stack.pop()] if name == "APPEND" else _pop_mark(path, stack)
            if not stack or not isinstance(stack[-1], list):
                raise _fail(path, f"{name} on something that is not a list")
            stack[-1].extend(items)
        elif name == "BUILD":
            # state_dict()'s ``_metadata`` attribute arrives as BUILD on the OrderedDict: drop it.
            state = stack.pop() if stack else None
            if not isinstance(state, dict) or not stack or not isinstance(stack[-1], dict):
                raise _fail(path, "BUILD on something that is not a state dict")
        else:
            raise _fail(path, f"pickle opcode {name} is not allowed")
    if len(stack) != 1 or not isinstance(stack[0], dict):
        raise _fail(path, "the pickle does not hold a state dict")
    result = {}
    nested = next(((k, v) for k, v in stack[0].items() if isinstance(v, dict) and v and all(isinstance(t, _Tensor) for t in v.values())), None)
    for key, value in ([nested] if nested else []) + list(stack[0].items()):  # a nested state dict is named first
        if isinstance(value, dict) and value and all(isinstance(v, _Tensor) for v in value.values()):
            # A training checkpoint ({"model": state_dict, "optimizer": ...}): readable, but not a model.
            raise InvalidInputError("Cannot read a training checkpoint as a model", path,
                                    f"its tensors are nested under {key!r} ({len(value)} of them), not at the top level",
                                    f"Save the {key!r} entry by itself (torch.load in a trusted environment, then safetensors' save_file or save_pretrained).")
        if not isinstance(value, _Tensor):
            raise _fail(path, f"entry {key!r} is a {type(value).__name__}, not a tensor")
        result[key] = value
    return result


def _member_data_offset(fh, info: zipfile.ZipInfo) -> int:
    # The local file header repeats the name and may carry a different extra field than the
    # central directory, so its own lengths decide where the data starts.
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError("bad local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def read_torch_bin(path: Path, rel: str | None = None) -> list[TensorInfo]:
    """Return the tensors of a zip-format ``torch.save`` file without executing its pickle."""
    path = Path(path)
    rel = rel or path.name
    try:
        # Opening a FIFO blocks until someone writes to it; a device never ends (HOSTILE 21).
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _fail(path, "not a regular file", "Point lora-inspector at a file or a checkpoint directory.")
        with open(path, "rb") as fh:
            # Decide from content, not the name (HOSTILE 11): torch.save's zip starts at byte 0, while a
            # safetensors file (or anything else) that merely carries a zip in its data does not.
            if fh.read(4) != b"PK\x03\x04" or not zipfile.is_zipfile(fh):
                raise _fail(path, "it is not a zip-format torch.save file (a raw pickle could run code when loaded)")
            return _read_zip(path, rel, fh)
    except InvalidInputError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, struct.error) as exc:
        raise InvalidInputError("Cannot read", path, f"broken zip container ({exc})", _HINT) from exc


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride)):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def _read_zip(path: Path, rel: str, fh) -> list[TensorInfo]:
    """The zip's tensors; ``fh`` is the one open file both the zip reader and the offsets use."""
    with zipfile.ZipFile(fh) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkls = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise _fail(path, "the zip holds no single <archive>/data.pkl")
        prefix = pkls[0][: -len("data.pkl")]
        if infos[pkls[0]].file_size > MAX_PICKLE_BYTES:
            raise _fail(path, f"data.pkl is larger than {MAX_PICKLE_BYTES} bytes")
        tensors = walk_pickle(path, zf.read(pkls[0]))
        out = []
        for name, t in tensors.items():
            member = infos.get(f"{prefix}data/{t.storage.key}")
            if member is None or member.compress_type != zipfile.ZIP_STORED:
                raise _fail(path, f"storage {t.storage.key!r} of {name!r} is missing or compressed")
            item = DTYPE_BITS[t.storage.dtype] // 8
            numel = math.prod(t.shape)
            if len(t.stride) != len(t.shape):
                raise _fail(path, f"tensor {name!r} has {len(t.shape)} dimensions but {len(t.stride)} strides")
            if numel and (t.offset + sum((s - 1) * d for s, d in zip(t.shape, t.stride)) + 1) * item > member.file_size:
                raise _fail(path, f"tensor {name!r} reaches past the end of its storage")
            start = _member_data_offset(fh, member) + t.offset * item
            # A view saved as is (w.T, w[:, 1]) is no single byte span: its strides come along.
            stride = None if _contiguous(t.shape, t.stride) else tuple(t.stride)
            if stride is not None and numel > sum((s - 1) * d for s, d in zip(t.shape, stride)) + 1:
                # A view that repeats its storage (expand, overlapping strides): a few bytes on disk
                # could stand for terabytes of values. A state dict has no such tensors.
                raise _fail(path, f"tensor {name!r} is a view that repeats its storage elements (strides {list(t.stride)}, shape {list(t.shape)})")
            out.append(TensorInfo(name, t.storage.dtype, t.shape, rel, start, start + numel * item, stride))
        return out
