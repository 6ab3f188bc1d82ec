"""Restricted reader for legacy ``torch.save`` files (``pytorch_model.bin``, ``adapter_model.bin``).

Nothing here unpickles. ``data.pkl`` is walked opcode by opcode (``pickletools.genops`` only
decodes) by a tiny stack machine that knows the handful of globals torch.save emits for a state
dict; any other global, opcode or shape of data is rejected before anything could run. The result
is the same header-level facts the safetensors reader gives: names, dtypes, shapes, byte spans.

The file is hostile until proven otherwise (docs/threat-model.md): what it may cost is capped in
bytes inflated, opcodes walked, stack height and nesting depth, and every message quotes its data
through ``_show``, which neither recurses nor copies more than a few dozen characters.
"""

from __future__ import annotations

import gc
import io
import math
import os
import pickletools
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from inspector.errors import InvalidInputError
from inspector.io.header import is_unicode
from inspector.io.tensor import DTYPE_BITS, TensorInfo

# Inflated size, counted while inflating: the declared size is the file's word, and deflate turns
# 61 KB into gigabytes.
MAX_PICKLE_BYTES = 64_000_000
# Each opcode adds at most one stack slot or memo entry, so counting opcodes bounds the walk's time
# and memory alike: ~3 s and ~500 MB at worst. torch.save writes ~32 opcodes a tensor, so this is
# ~125,000 tensors, more than any adapter or shard holds.
MAX_PICKLE_OPS = 4_000_000
MAX_PICKLE_STACK = 100_000  # torch.save's SETITEMS batches hold 1,000 entries
MAX_PICKLE_DEPTH = 32  # a state dict with its _metadata nests 3 deep
MAX_DIMS = 64  # math.prod over a million huge "dimensions" would never finish
_CHUNK = 1 << 20

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


_MARK = _Mark()  # one object for every MARK: a million of them must not cost a million objects


def _fail(path: Path, why: str, hint: str = _HINT) -> InvalidInputError:
    return InvalidInputError("Refusing to read pickle", path, why, hint)


def _cut(text: str, room: int = 60) -> str:
    return text if len(text) <= room else text[:room] + "..."


def _show(value: object, inner: bool = False) -> str:
    """A repr of file-controlled data for a message: one level deep, long text and numbers cut."""
    if isinstance(value, (tuple, list)) and not inner:
        shown = [_show(v, True) for v in value[:4]] + (["..."] if len(value) > 4 else [])
        if isinstance(value, list):
            return f"[{', '.join(shown)}]"
        return f"({shown[0]},)" if len(value) == 1 else f"({', '.join(shown)})"
    if isinstance(value, (tuple, list, dict)):
        return f"<a {type(value).__name__} of {len(value)}>"
    if isinstance(value, (str, bytes)):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    if type(value) is int and value.bit_length() > 64:  # repr of a huge int is slow, or refused outright
        return f"<a {value.bit_length()}-bit integer>"
    if isinstance(value, (int, float)) or value is None:
        return repr(value)
    if isinstance(value, _Global):
        return f"{_cut(value.module)}.{_cut(value.name)}"
    return f"<a {type(value).__name__.lstrip('_')}>"


def _ints(path: Path, value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and 0 <= v < 2**63 for v in value):
        raise _fail(path, f"{what} is {_show(value)}, not a tuple of non-negative 64-bit integers")
    if len(value) > MAX_DIMS:
        raise _fail(path, f"{what} has {len(value)} dimensions, more than {MAX_DIMS}")
    return value


def _call(path: Path, func: object, args: object) -> object:
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise _fail(path, f"REDUCE of {_show(func)}, which is not an allowed global")
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
    raise _fail(path, f"REDUCE of {_show(func)}")


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
        raise _fail(path, f"unexpected persistent id {_show(pid)}")
    return _Storage(STORAGE_DTYPES[pid[1].name], pid[2], pid[4])


def _opcodes(path: Path, data: bytes | io.BytesIO) -> Iterator[tuple[str, object]]:
    """(name, argument) of each opcode, decoded one at a time: a list of them all costs ~100 bytes an opcode."""
    try:
        for op, arg, _pos in pickletools.genops(data):
            yield op.name, arg
    except MemoryError:
        raise
    except Exception as exc:  # genops raises ValueError and friends on malformed input
        raise _fail(path, f"malformed pickle ({_cut(str(exc), 200)})") from exc


_CONSTANTS = {"NEWTRUE": True, "NEWFALSE": False, "NONE": None}
_LITERALS = ("BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES")


class _Walker:
    """The stack machine. Beside each stack value sits its nesting depth (0 for a scalar), negative
    while the value is a dict or list still being filled: only those may change, so a depth once
    known stays true, and a dict or list can never come to hold itself."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stack: list = []
        self.depths: list[int] = []
        self.memo: dict = {}
        self.memo_depth: dict = {}  # memo key -> depth of a tuple, dict or list; None while still being filled
        self.open_memo: dict[int, list] = {}  # stack index of a dict or list being filled -> its memo keys
        self.handlers = {name: getattr(self, method) for name, method in _HANDLERS.items()}

    def run(self, ops: Iterator[tuple[str, object]]) -> dict:
        for count, (name, arg) in enumerate(ops, 1):
            if count > MAX_PICKLE_OPS:
                raise _fail(self.path, f"it has more than {MAX_PICKLE_OPS:,} pickle opcodes (about {MAX_PICKLE_OPS // 32:,} tensors)")
            if name == "STOP":
                break
            handler = self.handlers.get(name)
            if handler is None:
                raise _fail(self.path, f"pickle opcode {name} is not allowed")
            handler(name, arg)
        if len(self.stack) != 1 or not isinstance(self.stack[0], dict):
            raise _fail(self.path, "the pickle does not hold a state dict")
        return self.stack[0]

    # -- the stack ------------------------------------------------------------------------------

    def _push(self, value: object, depth: int = 0) -> None:
        if len(self.stack) >= MAX_PICKLE_STACK:
            raise _fail(self.path, f"its stack grows past {MAX_PICKLE_STACK:,} values")
        if depth > MAX_PICKLE_DEPTH:
            raise _fail(self.path, f"its data nests more than {MAX_PICKLE_DEPTH} levels deep")
        self.stack.append(value)
        self.depths.append(depth)

    def _pop(self, n: int) -> tuple[list, int]:
        if len(self.stack) < n:
            raise _fail(self.path, "stack underflow")
        items, depth = self._take(len(self.stack) - n)
        if any(item is _MARK for item in items):
            raise _fail(self.path, "a MARK where a value belongs")
        return items, depth

    def _pop_mark(self) -> tuple[list, int]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self._take(i + 1)
                del self.stack[i], self.depths[i]
                return items
        raise _fail(self.path, "MARK missing")

    def _take(self, start: int) -> tuple[list, int]:
        """Remove the values from ``start`` up; return them and the deepest of their depths."""
        deepest = 0
        for i in range(start, len(self.stack)):
            depth = self.depths[i]
            if depth < 0:  # a dict or list leaves the stack complete: its memo entries learn its depth
                depth = -depth
                for key in self.open_memo.pop(i, ()):
                    self.memo_depth[key] = depth
            deepest = max(deepest, depth)
        items = self.stack[start:]
        del self.stack[start:], self.depths[start:]
        return items, deepest

    def _target(self, name: str, kind: type, what: str):
        """The dict or list that ``name`` fills: on top of the stack, and still being filled."""
        if not self.stack or not isinstance(self.stack[-1], kind):
            raise _fail(self.path, f"{name} on something that is not a {what}")
        if self.depths[-1] >= 0:  # a memo reference: its other copies would not see the change
            raise _fail(self.path, f"{name} on a {what} that was already complete")
        return self.stack[-1]

    def _grow(self, depth: int) -> None:
        """The filled dict or list on top now holds values ``depth`` deep."""
        if depth + 1 > MAX_PICKLE_DEPTH:
            raise _fail(self.path, f"its data nests more than {MAX_PICKLE_DEPTH} levels deep")
        self.depths[-1] = min(self.depths[-1], -(depth + 1))

    # -- opcodes, each called as handler(name, arg) -------------------------------------------------

    def skip(self, name: str, arg: object) -> None:  # PROTO, FRAME
        pass

    def literal(self, name: str, arg: object) -> None:
        self._push(arg)

    def constant(self, name: str, arg: object) -> None:
        self._push(_CONSTANTS[name])

    def mark(self, name: str, arg: object) -> None:
        self._push(_MARK)

    def empty(self, name: str, arg: object) -> None:
        if name == "EMPTY_TUPLE":
            self._push((), 1)
        else:
            self._push({} if name == "EMPTY_DICT" else [], -1)

    def make_tuple(self, name: str, arg: object) -> None:
        items, depth = self._pop_mark() if name == "TUPLE" else self._pop(int(name[-1]))
        self._push(tuple(items), depth + 1)

    def put(self, name: str, arg: object) -> None:
        if not self.stack:
            raise _fail(self.path, "stack underflow")
        if self.stack[-1] is _MARK:
            raise _fail(self.path, f"{name} of a MARK")
        key = len(self.memo) if name == "MEMOIZE" else arg
        if key in self.memo:  # the pickler never reuses a key: a depth noted for it could go stale
            raise _fail(self.path, f"memo key {_show(key)} is used twice")
        self.memo[key] = self.stack[-1]
        depth = self.depths[-1]
        if depth < 0:
            self.memo_depth[key] = None
            self.open_memo.setdefault(len(self.stack) - 1, []).append(key)
        elif depth:
            self.memo_depth[key] = depth

    def get(self, name: str, arg: object) -> None:
        if arg not in self.memo:
            raise _fail(self.path, f"memo key {_show(arg)} missing")
        depth = self.memo_depth.get(arg, 0)
        if depth is None:
            raise _fail(self.path, f"memo key {_show(arg)} is a dict or list used before it is complete")
        self._push(self.memo[arg], depth)

    def global_(self, name: str, arg: object) -> None:
        if name == "GLOBAL":
            module, _, attr = arg.partition(" ")
        else:
            if len(self.stack) < 2 or not all(isinstance(s, str) for s in self.stack[-2:]):
                raise _fail(self.path, "STACK_GLOBAL without two names")
            (module, attr), _ = self._pop(2)
        if (module, attr) not in _ALLOWED:
            raise _fail(self.path, f"it references the global {_cut(module)}.{_cut(attr)}")
        self._push(_Global(module, attr))

    def persid(self, name: str, arg: object) -> None:
        (pid,), _ = self._pop(1)
        self._push(_persistent(self.path, pid))

    def reduce(self, name: str, arg: object) -> None:
        (func, args), _ = self._pop(2)
        result = _call(self.path, func, args)
        self._push(result, -1 if isinstance(result, dict) else 0)  # OrderedDict(): a new dict to fill

    def setitems(self, name: str, arg: object) -> None:
        if name == "SETITEM" and len(self.stack) < 3:  # the dict, a key and a value
            raise _fail(self.path, "stack underflow")
        items, depth = self._pop(2) if name == "SETITEM" else self._pop_mark()
        target = self._target(name, dict, "dict")
        if len(items) % 2:
            raise _fail(self.path, f"{name} on something that is not a dict")
        for k, v in zip(items[::2], items[1::2]):
            if not isinstance(k, str):
                raise _fail(self.path, f"dict key {_show(k)} is not a string")
            target[k] = v
        self._grow(depth)

    def appends(self, name: str, arg: object) -> None:
        if name == "APPEND" and len(self.stack) < 2:  # the list and an item
            raise _fail(self.path, "stack underflow")
        items, depth = self._pop(1) if name == "APPEND" else self._pop_mark()
        self._target(name, list, "list").extend(items)
        self._grow(depth)

    def build(self, name: str, arg: object) -> None:
        # state_dict()'s ``_metadata`` attribute arrives as BUILD on the OrderedDict: drop it.
        (state,), _ = self._pop(1) if self.stack else ((None,), 0)
        if not isinstance(state, dict) or not self.stack or not isinstance(self.stack[-1], dict):
            raise _fail(self.path, "BUILD on something that is not a state dict")


_HANDLERS = {
    "PROTO": "skip", "FRAME": "skip", "MARK": "mark",
    **{name: "literal" for name in _LITERALS}, **{name: "constant" for name in _CONSTANTS},
    "EMPTY_DICT": "empty", "EMPTY_LIST": "empty", "EMPTY_TUPLE": "empty",
    "TUPLE": "make_tuple", "TUPLE1": "make_tuple", "TUPLE2": "make_tuple", "TUPLE3": "make_tuple",
    "BINPUT": "put", "LONG_BINPUT": "put", "PUT": "put", "MEMOIZE": "put",
    "BINGET": "get", "LONG_BINGET": "get", "GET": "get",
    "GLOBAL": "global_", "STACK_GLOBAL": "global_", "BINPERSID": "persid", "REDUCE": "reduce",
    "SETITEM": "setitems", "SETITEMS": "setitems", "APPEND": "appends", "APPENDS": "appends", "BUILD": "build",
}


def walk_pickle(path: Path, data: bytes | io.BytesIO) -> dict[str, _Tensor]:
    """Evaluate ``data`` as a restricted pickle and return its name -> tensor map."""
    # The walk makes millions of containers but no cycles (see _Walker): the cyclic collector would
    # only rescan them again and again (it doubled the time of a 4 M-opcode pickle).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _state_dict(path, _Walker(path).run(_opcodes(path, data)))
    finally:
        if collecting:
            gc.enable()


def _state_dict(path: Path, top: dict) -> dict[str, _Tensor]:
    """The pickle's top-level dict as name -> tensor, or why it is not a plain state dict."""
    result = {}
    nested = next(((k, v) for k, v in top.items() if isinstance(v, dict) and v and all(isinstance(t, _Tensor) for t in v.values())), None)
    for key, value in ([nested] if nested else []) + list(top.items()):  # a nested state dict is named first
        if isinstance(value, dict) and value and all(isinstance(v, _Tensor) for v in value.values()):
            # A training checkpoint ({"model": state_dict, "optimizer": ...}): readable, but not a model.
            raise InvalidInputError("Cannot read a training checkpoint as a model", path,
                                    f"its tensors are nested under {_show(key)} ({len(value)} of them), not at the top level",
                                    f"Save the {_show(key)} entry by itself (torch.load in a trusted environment, then safetensors' save_file or save_pretrained).")
        if not isinstance(value, _Tensor):
            raise _fail(path, f"entry {_show(key)} is a {type(value).__name__}, not a tensor")
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
    except (OSError, zipfile.BadZipFile, zlib.error, ValueError, EOFError, struct.error) as exc:
        raise InvalidInputError("Cannot read", path, f"broken zip container ({exc})", _HINT) from exc
    except MemoryError:
        pass  # refused below, once this clause has let go of the traceback that holds the walker's memory
    raise _fail(path, "reading its data.pkl ran out of memory")


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride)):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def _read_pickle(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> io.BytesIO:
    """data.pkl, inflated a chunk at a time and counted: its declared size may lie."""
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # bzip2 and lzma inflate a whole chunk at once, however large; torch.save stores data.pkl as is.
        raise _fail(path, "data.pkl is encrypted or compressed other than by deflate")
    if info.file_size > MAX_PICKLE_BYTES:
        raise _fail(path, f"data.pkl is larger than {MAX_PICKLE_BYTES:,} bytes")
    data = io.BytesIO()  # grows in place: a list of chunks joined would hold the pickle twice
    with zf.open(info) as member:
        while chunk := member.read(_CHUNK):
            if data.tell() + len(chunk) > MAX_PICKLE_BYTES:
                raise _fail(path, f"data.pkl inflates to more than {MAX_PICKLE_BYTES:,} bytes")
            data.write(chunk)
    data.seek(0)
    return data


def _read_zip(path: Path, rel: str, fh) -> list[TensorInfo]:
    """The zip's tensors; ``fh`` is the one open file both the zip reader and the offsets use."""
    with zipfile.ZipFile(fh) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkls = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise _fail(path, "the zip holds no single <archive>/data.pkl")
        prefix = pkls[0][: -len("data.pkl")]
        tensors = walk_pickle(path, _read_pickle(path, zf, infos[pkls[0]]))
        out = []
        for name, t in tensors.items():
            if not is_unicode(name):  # valid in a pickle (surrogatepass), but no report can print it
                raise _fail(path, f"tensor name {_show(name)} contains a lone surrogate (not valid Unicode)")
            member = infos.get(f"{prefix}data/{t.storage.key}")
            if member is None or member.compress_type != zipfile.ZIP_STORED:
                raise _fail(path, f"storage {_show(t.storage.key)} of {_show(name)} is missing or compressed")
            item = DTYPE_BITS[t.storage.dtype] // 8
            numel = math.prod(t.shape)
            if len(t.stride) != len(t.shape):
                raise _fail(path, f"tensor {_show(name)} has {len(t.shape)} dimensions but {len(t.stride)} strides")
            if numel and (t.offset + sum((s - 1) * d for s, d in zip(t.shape, t.stride)) + 1) * item > member.file_size:
                raise _fail(path, f"tensor {_show(name)} reaches past the end of its storage")
            start = _member_data_offset(fh, member) + t.offset * item
            # A view saved as is (w.T, w[:, 1]) is no single byte span: its strides come along.
            stride = None if _contiguous(t.shape, t.stride) else tuple(t.stride)
            if stride is not None and numel > sum((s - 1) * d for s, d in zip(t.shape, stride)) + 1:
                # A view that repeats its storage (expand, overlapping strides): a few bytes on disk
                # could stand for terabytes of values. A state dict has no such tensors.
                raise _fail(path, f"tensor {_show(name)} is a view that repeats its storage elements (strides {list(t.stride)}, shape {list(t.shape)})")
            out.append(TensorInfo(name, t.storage.dtype, t.shape, rel, start, start + numel * item, stride))
        return out
