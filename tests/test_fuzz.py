"""Bounded, seeded fuzzing of every input format through the real CLI.

Real checkpoints from the session fixtures are copied into ``tmp_path`` and mutated: safetensors
headers, sharded indexes, config.json / adapter_config.json, tokenizer files, and the zipped
pickle inside legacy ``.bin`` files. Each case runs ``scan`` and ``check`` in-process (some also
``merge`` and ``diff``) and must end in exit 0, 1 or 2 with no traceback and no "Internal error",
``Error:``/``Hint:`` lines on failure, parseable JSON with ``--format json``, within a few seconds,
with bounded memory, its inputs byte-for-byte unchanged, and a failed merge leaving nothing.

Each family runs its pinned cases (every bug this fuzz found, kept as a regression case) and then
seeded ones: case ``family#n`` draws from ``random.Random(f"{FUZZ_SEED}:{family}:{n}")`` alone,
so a failure message names everything needed to rerun it:

    LI_FUZZ_ONLY='index#17' pytest tests/test_fuzz.py           # one case
    LI_FUZZ_SEED=7 LI_FUZZ_COLLECT=/tmp/f.txt pytest tests/test_fuzz.py  # explore: list every failure
    LI_FUZZ_STRICT=1 pytest tests/test_fuzz.py                   # also assert the KNOWN_BUGS cases

One test per file family, each looping over its cases, rather than hundreds of pytest items.
"""

from __future__ import annotations

import copy
import json
import os
import pickletools
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from inspector.cli import main
from tests.hostile_corpus import Hung, copy_dir, deadline, snapshot
from tests.models import Built, make_tokenizer

REPO = Path(__file__).resolve().parent.parent
FUZZ_SEED = int(os.environ.get("LI_FUZZ_SEED", "1010"))  # another seed explores new cases; every case id names its seed
ONLY = os.environ.get("LI_FUZZ_ONLY")  # "family#n": run that one case (reproduce a failure)
COLLECT = os.environ.get("LI_FUZZ_COLLECT")  # a file: failures are appended there and the run goes on (exploring seeds)
STRICT = bool(os.environ.get("LI_FUZZ_STRICT"))  # assert KNOWN_BUGS cases too (an owner checking a fix)
LOG = os.environ.get("LI_FUZZ_LOG")  # a file: one line per command run (case, exit code, Error line), to review coverage
CASE_SECONDS = 8  # hard bound per command (SIGALRM); the tiny fixtures take milliseconds
MAX_RSS_BYTES = 3 * 2**30  # ru_maxrss is a process-wide high-water mark: this bounds the whole run
INDEX = "model.safetensors.index.json"
MERGE_EVERY, DIFF_EVERY = 9, 11  # every Nth case of a family also merges / diffs

# Cases known to fail, "family#case" -> what goes wrong, while a fix is pending. They still run (no
# hang, inputs unchanged, a failed merge leaves nothing) but their exit code and stderr are not
# asserted; delete the entry with the fix. Empty: every case passes.
KNOWN_BUGS: dict[str, str] = {}


# ---- running one case --------------------------------------------------------------------------------------


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@dataclass
class Runner:
    """Runs a case's commands and asserts the contract every exit must keep."""

    capsys: pytest.CaptureFixture[str]
    family: str
    ran: int = 0

    def run(self, case: str, argv: list[object], inputs: list[Path], *, out: Path | None = None) -> int:
        """One command of ``case``; returns its exit code after asserting the contract."""
        argv = [str(a) for a in argv]
        before = snapshot(*inputs)
        rss = _maxrss()
        start = time.monotonic()
        try:
            with deadline(CASE_SECONDS):
                rc = main(argv)
        except Hung as exc:
            self.capsys.readouterr()
            self._report(f"{case}\n  argv: {argv}\n  {exc}")
            return -1
        elapsed = time.monotonic() - start
        stdout, stderr = self.capsys.readouterr()
        self.ran += 1
        if LOG:
            with open(LOG, "a", encoding="utf-8") as fh:
                fh.write(f"{case} | {argv[0]} rc={rc} {elapsed:.3f}s | {(stderr.splitlines() or [''])[0][:200]}\n")
        try:
            self._verify(case, argv, rc, stdout, stderr, elapsed, rss, before, inputs, out)
            failure = None
        except AssertionError as exc:
            failure = str(exc)
        if failure is not None:  # reported outside the except block: no chained traceback
            self._report(failure)
        return rc

    def _report(self, message: str) -> None:
        if not COLLECT:
            pytest.fail(message, pytrace=False)
        with open(COLLECT, "a", encoding="utf-8") as fh:
            fh.write(message.splitlines()[0] + "\n  " + "\n  ".join(message.splitlines()[1:]) + "\n")

    def _verify(self, case: str, argv: list[str], rc: int, stdout: str, stderr: str, elapsed: float, rss: int, before: dict, inputs: list[Path],
                out: Path | None) -> None:
        where = f"{case}\n  argv: {argv}\n  rc={rc}\n  stderr: {stderr[:2000]!r}"
        assert elapsed < CASE_SECONDS, f"{where}\n  took {elapsed:.1f} s"
        assert _maxrss() < MAX_RSS_BYTES, f"{where}\n  max RSS grew from {rss >> 20} MiB to {_maxrss() >> 20} MiB"
        assert snapshot(*inputs) == before, f"{where}\n  an input changed"
        if out is not None and rc != 0:
            left = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
            assert not out.exists() and not left, f"{where}\n  a failed merge left {out.name if out.exists() else left}"
        if case.split(" ", 1)[0] in KNOWN_BUGS and not STRICT:
            return
        assert "Traceback" not in stderr and "Internal error" not in stderr, where
        assert rc in (0, 1, 2), where
        failed = rc == 2 or (argv[0] == "merge" and rc == 1)  # exit 1 of merge is a refusal, worded as an error
        if failed:
            lines = stderr.splitlines()
            assert any(line.startswith("Error: ") for line in lines) and any(line.startswith("Hint: ") for line in lines), where
        if "--format" in argv and argv[argv.index("--format") + 1] == "json" and (stdout or not failed):
            # A report, or (on failure, where anything is printed) the error as JSON: never half of one.
            try:
                json.loads(stdout)
            except ValueError as exc:
                raise AssertionError(f"{where}\n  stdout is not JSON ({exc}): {stdout[:300]!r}") from None
        if out is not None and rc == 0:
            assert (out / "config.json").is_file(), f"{where}\n  exit 0 but no merged model in {out}"

    def standard(self, case: Case, what: str, base: Path, adapter: Path, mutated: Path, original: Path, work: Path) -> None:
        """scan the mutated checkpoint, check BASE ADAPTER; pinned cases and every MERGE_EVERY-th /
        DIFF_EVERY-th seeded one also merge and diff the original against the mutated copy."""
        label = case.describe(what)
        inputs = [base, adapter]
        fmt = case.rng.choice(["json"] * 5 + ["rich", "markdown", "github", "html"])  # the other renderers see odd names too
        self.run(label, ["scan", mutated, "--tensors", "--format", fmt], inputs)
        self.run(label, ["check", base, adapter, "--format", "json"], inputs)
        if case.full:
            out = work / "merged"
            rc = self.run(label, ["merge", base, adapter, "--out", out, "--device", "cpu", "--format", "json"], inputs, out=out)
            if rc == 0:
                shutil.rmtree(out)
            self.run(label, ["diff", original, mutated, "--format", "json"], inputs + [original])


@dataclass(frozen=True)
class Case:
    key: str  # "family#n" (seeded) or "family#pin-..." (fixed)
    rng: random.Random
    pin: Callable | None  # a fixed mutation, in place of the family's random one
    full: bool  # also merge and diff

    def describe(self, what: str) -> str:
        return f"{self.key} ({'pinned' if self.pin else f'FUZZ_SEED={FUZZ_SEED}'}): {what}"


def _cases(family: str, count: int, pins: dict[str, Callable] | None = None) -> list[Case]:
    """The pinned cases of ``family`` (every bug the fuzz found, kept as a regression case), then
    ``count`` seeded ones, each with its own Random; ``ONLY`` narrows to one."""
    out = [Case(f"{family}#{name}", random.Random(name), pin, True) for name, pin in (pins or {}).items()]
    out += [Case(f"{family}#{n}", random.Random(f"{FUZZ_SEED}:{family}:{n}"), None, n % MERGE_EVERY == 0 or n % DIFF_EVERY == 0) for n in range(count)]
    return [c for c in out if not ONLY or c.key == ONLY]


def _fresh(tmp_path: Path, case: Case) -> Path:
    work = tmp_path / case.key.split("#")[1]
    work.mkdir()
    return work


def _finish(runner: Runner, cases: list[Case]) -> None:
    assert ONLY or runner.ran >= len(cases) * 2, f"{runner.family}: only {runner.ran} commands ran"
    assert _maxrss() < MAX_RSS_BYTES


# ---- byte-level and JSON-level mutators shared by the families -----------------------------------------------

INTS = [0, 1, -1, 2, 3, 7, 8, 15, 16, 17, 63, 64, 65, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]
HUGE = 10**400  # valid JSON, an int to Python, too large for a float: float(), math.isfinite() and '%f' raise
INT_TEXT = [str(i).encode() for i in INTS] + [b"1e3", b"1.5", b"-0", b"00", b"1e999", b"NaN", b"Infinity", b"-1e-400", b"1" + b"0" * 5000]
JSON_BITS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"\\", b"\\u", b"\\ud800", b"\\u0000", b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"-", b"0", b"null", b"NaN", b" ", b"\n", b'"":', b"[]", b"{}"]
DEEP = 100_000  # deeper than any recursive parser's stack

STRINGS = ["", " ", "x", "LORA", "lora", "q_proj", "model.embed_tokens.weight", "lm_head.weight", ".*", "(a+)+$", "(.*)*", "[", "(?i)q_proj",
           "a{1000000}", "\\", "q_proj|v_proj", "^$", "\u202e", "\ud800", "模型", "x\ny", "x\0y", "[bold]", "\x1b[2J", "../../etc/passwd", "/etc/passwd",
           "x" * 5000, "8", "true", "None"]
# Replacement values by kind; a value is drawn kind first, so a rare kind (huge numbers) is not drowned by a long one.
Pool = list[list[object]]
SCALARS: list[object] = [None, True, False, *INTS[:12], 2**63, 10**30, HUGE, -HUGE, 0.0, -0.5, 0.5, 8.0, 1e308, float("inf"), float("-inf"), float("nan")]
LISTS: list[object] = [[], [1], [-1], [0.5], ["q_proj"], ["q_proj", 3], [None], [[]], [[0, 1]], [HUGE], [10**12], [True], ["x" * 300] * 3]
MAPS: list[object] = [{}, {"q_proj": 2}, {"": 1}, {".*": 0}, {"(": 1}, {"q_proj": "x"}, {"q_proj": 10**30}, {"q_proj": HUGE}, {"q_proj": -1.5},
                      {"a": {"b": {"c": []}}}, {"quant_method": "bitsandbytes"}, {"format": "pt"}, {"\ud800": 1}]
VALUES: Pool = [SCALARS, STRINGS, LISTS, MAPS]


def pick(rng: random.Random, pool: Pool) -> object:
    return copy.deepcopy(rng.choice(rng.choice(pool)))  # a copy: later edits of the document must not reach the pool


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def mutate_bytes(rng: random.Random, blob: bytes, lo: int = 0, hi: int | None = None) -> tuple[bytes, str]:
    """A byte-level mutation inside blob[lo:hi]: flip, bit flip, insert, delete, truncate, splice."""
    hi = len(blob) if hi is None else hi
    if hi <= lo:
        return blob + b"\x00", "append NUL"
    pos = rng.randrange(lo, hi)
    kind = rng.choice(["byte", "bit", "insert", "delete", "truncate", "duplicate"])
    if kind == "byte":
        b = rng.randrange(256)
        return blob[:pos] + bytes([b]) + blob[pos + 1 :], f"byte {pos} := {b:#04x}"
    if kind == "bit":
        bit = rng.randrange(8)
        return blob[:pos] + bytes([blob[pos] ^ (1 << bit)]) + blob[pos + 1 :], f"byte {pos} ^= {1 << bit:#04x}"
    if kind == "insert":
        piece = rng.choice(JSON_BITS)
        return blob[:pos] + piece + blob[pos:], f"insert {piece!r} at {pos}"
    if kind == "delete":
        k = rng.randint(1, 16)
        return blob[:pos] + blob[pos + k :], f"delete {k} bytes at {pos}"
    if kind == "truncate":
        return blob[:pos], f"truncate to {pos} bytes"
    k = rng.randint(1, 64)
    return blob[:pos] + blob[pos : pos + k] * 2 + blob[pos + k :], f"duplicate {k} bytes at {pos}"


def mutate_json_text(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    """Text-level JSON damage beyond byte flips: huge literals, deep nesting, duplicate keys."""
    kind = rng.choice(["bytes", "bytes", "number", "deep", "dup-key", "bom", "empty"])
    if kind == "number":
        spots = list(re.finditer(rb"-?\d+(\.\d+)?", text))
        if spots:
            m = rng.choice(spots)
            new = rng.choice(INT_TEXT)
            return text[: m.start()] + new + text[m.end() :], f"number {m.group().decode()!r} at {m.start()} := {new[:20]!r}"
    if kind == "deep":
        pos = text.find(b":")
        if pos >= 0:
            opener = rng.choice([b"[", b'{"a":'])
            closer = b"]" if opener == b"[" else b"}"
            return text[: pos + 1] + opener * DEEP + b"1" + closer * DEEP + b"," + text[pos + 1 :], f"value nested {DEEP} deep at {pos}"
    if kind == "dup-key" and text.startswith(b"{"):
        m = text.find(b",", 1)
        if m > 0:
            first = text[1:m]
            return b"{" + first + b"," + text[1:], f"first member {first[:40]!r} duplicated"
    if kind == "bom":
        return b"\xef\xbb\xbf" + text, "UTF-8 BOM prepended"
    if kind == "empty":
        return b"", "emptied"
    return mutate_bytes(rng, text)


def _paths(node: object, path: tuple = (), out: list | None = None, depth: int = 0) -> list[tuple]:
    """Every (container path) inside a JSON value, capped so a 64-entry vocab does not dominate."""
    out = [] if out is None else out
    if depth > 8 or len(out) > 400:
        return out
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append(path + (key,))
        _paths(child, path + (key,), out, depth + 1)
    return out


def _get(node: object, path: tuple) -> object:
    for key in path:
        node = node[key]
    return node


def mutate_json(rng: random.Random, data: object, fields: list[str] | None = None, pool: Pool = VALUES) -> tuple[object, str]:
    """A structure-aware mutation: set a node (or a named top-level field) to a pool value, delete it,
    add a key, wrap it, or replace the whole document."""
    if rng.random() < 0.04 or not isinstance(data, (dict, list)):
        value = pick(rng, pool)
        return value, f"document := {_show(value)}"
    if fields and isinstance(data, dict) and rng.random() < 0.75:
        path: tuple = (rng.choice(fields),)
    else:
        paths = _paths(data)
        if not paths:
            return pick(rng, pool), "document replaced"
        path = rng.choice(paths)
    parent = _get(data, path[:-1]) if len(path) > 1 else data
    key = path[-1]
    kind = rng.choice(["set", "set", "set", "delete", "add", "wrap"])
    if kind == "delete" and (isinstance(parent, dict) and key in parent or isinstance(parent, list) and key < len(parent)):
        del parent[key]
        return data, f"delete {list(path)}"
    if kind == "add" and isinstance(parent, dict):
        new_key = rng.choice(STRINGS)
        value = pick(rng, pool)
        parent[new_key] = value
        return data, f"add {list(path[:-1]) + [new_key]} := {_show(value)}"
    if kind == "wrap" and isinstance(parent, (dict, list)) and (isinstance(parent, dict) or key < len(parent)):
        old = parent.get(key) if isinstance(parent, dict) else parent[key]
        parent[key] = rng.choice([[old], {"value": old}, [old, old]])
        return data, f"wrap {list(path)}"
    value = pick(rng, pool)
    if isinstance(parent, dict):
        parent[key] = value
    elif isinstance(parent, list) and key < len(parent):
        parent[key] = value
    return data, f"set {list(path)} := {_show(value)}"


def dump(data: object) -> bytes:
    # ensure_ascii: lone surrogates become \\ud800 escapes, as a hostile writer would spell them
    return json.dumps(data).encode()


def mutate_json_file(rng: random.Random, path: Path, fields: list[str] | None = None, pool: Pool = VALUES) -> str:
    """Mutate one JSON file: mostly structure-aware, sometimes at the text level."""
    raw = path.read_bytes()
    if rng.random() < 0.3:
        blob, what = mutate_json_text(rng, raw)
    else:
        data, what = mutate_json(rng, json.loads(raw), fields, pool)
        blob = dump(data)
    path.write_bytes(blob)
    return f"{path.name}: {what}"


# ---- (a) safetensors headers -----------------------------------------------------------------------------------

DTYPES = ["F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "I8", "U16", "U32", "U64", "F4", "F6_E2M3", "C64", "F33", "", "f32", None, 32, ["F32"]]
NAMES = ["", " ", "lm_head.weight", "model.embed_tokens.weight", "__metadata__", "\u202e", "a" * 1000, "x\ny", "[bold]", "模型.weight", "\ud800",
         "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj.lora_B.weight", "model.layers.99.mlp.weight"]


def _split(blob: bytes) -> tuple[bytes, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return blob[8 : 8 + n], blob[8 + n :]


def _join(header: bytes, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length % 2**64) + header + data


def mutate_header_entry(rng: random.Random, header: dict) -> str:
    """Change one tensor's description (many of these stay valid files with wrong contents)."""
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    kind = rng.choice(["dtype", "same-size-dtype", "shape-reverse", "shape-add-1", "shape-drop", "shape-int", "rename", "delete", "swap-offsets",
                       "offset-int", "entry-type", "metadata", "extra-field"])
    if kind == "dtype":
        entry["dtype"] = rng.choice(DTYPES)
        return f"{name}.dtype := {entry['dtype']!r}"
    if kind == "same-size-dtype":  # a valid file whose float tensor is now an integer one
        entry["dtype"] = {"F32": rng.choice(["I32", "U32"]), "F16": "I16", "BF16": "F16"}.get(entry["dtype"], "U8")
        return f"{name}.dtype := {entry['dtype']!r} (same size)"
    if kind == "shape-reverse":
        entry["shape"] = entry["shape"][::-1]
        return f"{name}.shape reversed to {entry['shape']}"
    if kind == "shape-add-1":
        entry["shape"].insert(rng.randint(0, len(entry["shape"])), 1)
        return f"{name}.shape := {entry['shape']}"
    if kind == "shape-drop" and entry["shape"]:
        entry["shape"].pop(rng.randrange(len(entry["shape"])))
        return f"{name}.shape := {entry['shape']}"
    if kind == "shape-int" and entry["shape"]:
        i = rng.randrange(len(entry["shape"]))
        entry["shape"][i] = rng.choice(INTS + [1.0, "16", None])
        return f"{name}.shape := {_show(entry['shape'])}"
    if kind == "rename":
        new = rng.choice(NAMES)
        header[new] = header.pop(name)
        return f"{name!r} renamed {new[:40]!r}"
    if kind == "delete":
        del header[name]
        return f"{name!r} deleted"
    if kind == "swap-offsets" and len(names) > 1:
        other = rng.choice([k for k in names if k != name])
        entry["data_offsets"], header[other]["data_offsets"] = header[other]["data_offsets"], entry["data_offsets"]
        return f"data_offsets of {name!r} and {other!r} swapped"
    if kind == "offset-int":
        i = rng.randrange(2)
        entry["data_offsets"][i] = rng.choice(INTS + [1.5, None, "0"])
        return f"{name}.data_offsets := {_show(entry['data_offsets'])}"
    if kind == "entry-type":
        header[name] = rng.choice([[], "F32", 1, None, [entry]])
        return f"{name!r} := {_show(header[name])}"
    if kind == "metadata":
        header["__metadata__"] = rng.choice([{"format": "pt"}, {"format": 1}, [], "pt", {"a": None}, {"format": "tf"}, {"format": "mlx"}, {}, None, {"x" * 300: "y"}])
        return f"__metadata__ := {_show(header['__metadata__'])}"
    entry[rng.choice(["extra", "dtype ", "DTYPE"])] = pick(rng, VALUES)
    return f"{name} gains an extra field"


def mutate_safetensors(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    header, data = _split(blob)
    kind = rng.choice(["entry", "entry", "entry", "header-bytes", "header-bytes", "int", "length", "truncate", "pad", "data-bytes"])
    if kind == "entry":
        parsed = json.loads(header)
        what = mutate_header_entry(rng, parsed)
        return _join(dump(parsed), data), what
    if kind == "header-bytes":
        new, what = mutate_bytes(rng, header)
        fix = rng.random() < 0.7  # mostly keep the length prefix right, so parsing goes deeper
        return _join(new, data, None if fix else len(header)), f"header {what}" + ("" if fix else " (length prefix kept)")
    if kind == "int":
        spots = list(re.finditer(rb"\d+", header))
        m = rng.choice(spots)
        value = rng.choice(INT_TEXT)
        return _join(header[: m.start()] + value + header[m.end() :], data), f"header integer {m.group().decode()} at {m.start()} := {value[:24]!r}"
    if kind == "length":
        size = len(blob)
        value = rng.choice([0, 1, 2, len(header) - 1, len(header) + 1, size - 8, size - 7, size, 2**63, 2**64 - 1, 100_000_000, 100_000_001])
        return _join(header, data, value), f"length prefix := {value}"
    if kind == "truncate":
        cut = rng.randrange(0, len(blob))
        return blob[:cut], f"file truncated to {cut} of {len(blob)} bytes"
    if kind == "pad":  # spaces after the JSON are legal (safetensors pads to 8 bytes itself)
        pad = rng.choice([b" " * rng.randint(1, 64), b"\x00" * 3, b"\t\n", b" " * 100_000])
        return _join(header + pad, data), f"header padded with {len(pad)} x {pad[:1]!r}"
    new, what = mutate_bytes(rng, data)
    return _join(header, new), f"data {what}"


def _huge_layer_index(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """The first layer-0 tensor's name says layer 1 followed by 5,000 zeros (past int()'s 4,300-digit limit)."""
    header, data = _split(blob)
    parsed = json.loads(header)
    name = next(k for k in parsed if ".layers.0." in k)
    parsed[name.replace(".layers.0.", ".layers.1" + "0" * 5000 + ".")] = parsed.pop(name)
    return _join(dump(parsed), data), f"{name!r}: layer index := 1 followed by 5,000 zeros"


def _target_weight_3d(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """A LoRA target's base weight stored [16, 1, 16] instead of [16, 16]: the same bytes, a valid file."""
    header, data = _split(blob)
    parsed = json.loads(header)
    name = "model.layers.1.self_attn.q_proj.weight"
    parsed[name]["shape"] = [16, 1, 16]
    return _join(dump(parsed), data), f"{name}.shape := [16, 1, 16]"


SAFETENSORS_PINS = {
    "base": {"pin-layer-index-5001-digits": _huge_layer_index, "pin-target-weight-3d": _target_weight_3d},
    "adapter": {"pin-layer-index-5001-digits": _huge_layer_index},
    "shard": {},
}


@pytest.mark.parametrize("target", ["base", "adapter", "shard"])
def test_fuzz_safetensors_headers(capsys, tmp_path: Path, llama: Built, lora_llama: Built, llama_sharded: Built, target: str) -> None:
    runner = Runner(capsys, f"safetensors-{target}")
    cases = _cases(runner.family, {"base": 40, "adapter": 40, "shard": 20}[target], SAFETENSORS_PINS[target])
    for case in cases:
        work, rng = _fresh(tmp_path, case), case.rng
        original = {"base": llama, "adapter": lora_llama, "shard": llama_sharded}[target].path
        base = copy_dir((llama_sharded if target == "shard" else llama).path, work / "base")
        adapter = copy_dir(lora_llama.path, work / "adapter")
        mutated = adapter if target == "adapter" else base
        if target == "shard":
            files = sorted(p for p in base.iterdir() if p.suffix == ".safetensors")
            file = rng.choice(files)
        else:
            file = mutated / ("adapter_model.safetensors" if target == "adapter" else "model.safetensors")
        blob, what = (case.pin or mutate_safetensors)(rng, file.read_bytes())
        file.write_bytes(blob)
        runner.standard(case, f"{file.name}: {what}", base, adapter, mutated, original, work)
        shutil.rmtree(work)
    _finish(runner, cases)


# ---- (b) sharded index -------------------------------------------------------------------------------------------

SHARD_NAMES: list[object] = ["..", "../model-00001-of-00009.safetensors", "/etc/passwd", "/dev/zero", "a" * 300, "x\0y.safetensors", "ünïcødé.safetensors",
                             "", ".", "/", "./", INDEX, "config.json", "sub/dir.safetensors", "C:\\x.safetensors", "~/x.safetensors", "\u202e.safetensors",
                             "\ud800.safetensors", "model.safetensors", " model-00001-of-00009.safetensors", "%s" * 40, 1, None, [], {}, True]


def mutate_index(rng: random.Random, model: Path) -> str:
    path = model / INDEX
    data = json.loads(path.read_text())
    weight_map: dict = data["weight_map"]
    shards = sorted(set(weight_map.values()))
    name = rng.choice(sorted(weight_map))
    kind = rng.choice(["shard-name", "shard-name", "shard-name", "rename-shard", "key", "move", "unlist-shard", "weight-map", "metadata", "total-size",
                       "top", "generic", "text", "text"])
    if kind == "shard-name":
        new = rng.choice(SHARD_NAMES)
        if rng.random() < 0.5:  # every tensor of that shard, so the shard is not also read under its own name
            old = weight_map[name]
            for k, v in weight_map.items():
                if v == old:
                    weight_map[k] = new
            what = f"shard {old!r} renamed in the index to {_show(new)}"
        else:
            weight_map[name] = new
            what = f"weight_map[{name!r}] := {_show(new)}"
    elif kind == "rename-shard":  # the file and the index agree: a valid checkpoint with odd shard names
        old = rng.choice(shards)
        new = rng.choice(["ünïcødé.safetensors", "\u202e.safetensors", "a" * 200 + ".safetensors", "with space.safetensors", "x.bin", "[bold].safetensors"])
        (model / old).rename(model / new)
        for k, v in weight_map.items():
            if v == old:
                weight_map[k] = new
        what = f"shard {old!r} renamed (file and index) to {new[:40]!r}"
    elif kind == "key":
        new = rng.choice(NAMES + ["model.norm.weight"])
        weight_map[new] = weight_map.pop(name)
        what = f"weight_map key {name!r} := {new[:40]!r}"
    elif kind == "move":
        weight_map[name] = rng.choice(shards)
        what = f"weight_map[{name!r}] moved to {weight_map[name]!r}"
    elif kind == "unlist-shard":
        gone = rng.choice(shards)
        data["weight_map"] = {k: v for k, v in weight_map.items() if v != gone}
        what = f"every tensor of {gone!r} unlisted"
    elif kind == "weight-map":
        data["weight_map"] = rng.choice([[], {}, None, "x", 1, [[name, shards[0]]], {name: {"file": shards[0]}}])
        what = f"weight_map := {_show(data['weight_map'])}"
    elif kind == "metadata":
        data["metadata"] = rng.choice([None, [], "x", 1, {}, {"total_size": {}}, {"format": "pt"}])
        what = f"metadata := {_show(data['metadata'])}"
    elif kind == "total-size":
        data.setdefault("metadata", {})["total_size"] = pick(rng, VALUES)
        what = f"metadata.total_size := {_show(data['metadata']['total_size'])}"
    elif kind == "top":
        key = rng.choice(["weight_map", "metadata"])
        data.pop(key, None)
        what = f"{key} deleted"
    elif kind == "generic":
        data, what = mutate_json(rng, data)
    else:
        blob, what = mutate_json_text(rng, path.read_bytes())
        path.write_bytes(blob)
        return f"{INDEX}: {what}"
    path.write_bytes(dump(data))
    return f"{INDEX}: {what}"


def test_fuzz_sharded_index(capsys, tmp_path: Path, llama_sharded: Built, lora_llama: Built) -> None:
    runner = Runner(capsys, "index")
    cases = _cases(runner.family, 60)
    for case in cases:
        work = _fresh(tmp_path, case)
        base = copy_dir(llama_sharded.path, work / "base")
        adapter = copy_dir(lora_llama.path, work / "adapter")
        what = mutate_index(case.rng, base)
        runner.standard(case, what, base, adapter, base, llama_sharded.path, work)
        if case.full:  # the index named directly, as a file
            runner.run(case.describe(what), ["scan", base / INDEX, "--format", "json"], [base])
        shutil.rmtree(work)
    _finish(runner, cases)


# ---- (c) config.json and adapter_config.json ---------------------------------------------------------------------

ADAPTER_FIELDS = ["r", "lora_alpha", "target_modules", "modules_to_save", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "fan_in_fan_out",
                  "lora_bias", "peft_type", "task_type", "base_model_name_or_path", "trainable_token_indices", "exclude_modules", "layers_to_transform",
                  "layers_pattern", "init_lora_weights", "layer_replication", "target_parameters", "alora_invocation_tokens", "ensure_weight_tying",
                  "bias", "auto_mapping", "revision"]
MODEL_FIELDS = ["vocab_size", "hidden_size", "num_hidden_layers", "tie_word_embeddings", "model_type", "architectures", "torch_dtype", "dtype",
                "text_config", "quantization_config", "embedding_size", "n_embd", "d_model", "n_vocab", "num_attention_heads", "intermediate_size",
                "pad_token_id", "bos_token_id", "eos_token_id", "max_position_embeddings"]
# Values aimed at the fields (module names and regexes, pattern maps, token ids, layer ranges), as a kind of their own.
CONFIG_VALUES: Pool = VALUES + [[
    "q_proj", ["q_proj", "v_proj"], ["embed_tokens", "lm_head"], "model.layers.0.self_attn.q_proj", ".*\\.(q_proj|v_proj)$", "(?P<x>", "(?=a)",
    {"q_proj": 8}, {"v_proj": 1}, {"model.layers.0.self_attn.q_proj": 2}, {"q_proj": 2.5}, {".*": 1e9}, {"q_proj": -1}, {"q_proj": True},
    {"embed_tokens": [1, 2]}, {"embed_tokens": [10**12]}, {"embed_tokens": [HUGE]}, [10**12], [63, 64, 65], [[0, 1], [1, 2]], [[0, 10**12]],
    [[0, HUGE]], "LlamaForCausalLM", ["LlamaModel"], ["GPT2LMHeadModel"], "gpt2", "llama", "bert", "float16", "bfloat16", "int8",
    {"vocab_size": 80}, {"vocab_size": "80"}, {"vocab_size": HUGE}, {"quant_method": "gptq", "bits": 4}, {"load_in_4bit": True}, 80, 1000, 2**40]]


def set_fields(**changes: object) -> Callable:
    """A pinned mutation: these top-level fields of a JSON file set to these values."""

    def mutate(rng: random.Random, path: Path) -> str:
        data = json.loads(path.read_bytes())
        data.update(changes)
        path.write_bytes(dump(data))
        return f"{path.name}: " + ", ".join(f"{k} := {_show(v)}" for k, v in changes.items())

    return mutate


ADAPTER_PINS = {
    "pin-lora_alpha-huge": set_fields(lora_alpha=HUGE),
    "pin-alpha_pattern-huge": set_fields(alpha_pattern={"q_proj": HUGE}),
    "pin-trainable_token_indices-huge": set_fields(trainable_token_indices=[HUGE]),
}
MODEL_PINS = {
    "pin-model_type-list": set_fields(model_type=["llama"]),  # was an unhashable-type 'Internal error' (base.py / diagnose.py)
    "pin-model_type-map": set_fields(model_type={"llama": 1}),
}


def _fuzz_config(capsys, tmp_path: Path, llama: Built, lora_llama: Built, family: str, count: int, pins, side: str, fields) -> None:
    """Mutate one config file (``side``: the copy of the base or of the adapter) per case and run the standard commands."""
    runner = Runner(capsys, family)
    cases = _cases(runner.family, count, pins)
    for case in cases:
        work = _fresh(tmp_path, case)
        base = copy_dir(llama.path, work / "base")
        adapter = copy_dir(lora_llama.path, work / "adapter")
        owner, original = (base, llama.path) if side == "base" else (adapter, lora_llama.path)
        file = owner / f"{family}.json"
        what = case.pin(case.rng, file) if case.pin else mutate_json_file(case.rng, file, fields, CONFIG_VALUES)
        runner.standard(case, what, base, adapter, owner, original, work)
        shutil.rmtree(work)
    _finish(runner, cases)


def test_fuzz_adapter_config(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    _fuzz_config(capsys, tmp_path, llama, lora_llama, "adapter_config", 60, ADAPTER_PINS, "adapter", ADAPTER_FIELDS)


def test_fuzz_model_config(capsys, tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    _fuzz_config(capsys, tmp_path, llama, lora_llama, "config", 40, MODEL_PINS, "base", MODEL_FIELDS)


# ---- (d) tokenizer files -----------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def sentencepiece_model(pieces: list[str]) -> bytes:
    """A minimal sentencepiece ModelProto: repeated field 1 (piece, score, type), all the reader needs."""
    out = b""
    for piece in pieces:
        raw = piece.encode()
        inner = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", 0.0) + b"\x18\x01"
        out += b"\x0a" + _varint(len(inner)) + inner
    return out


WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, 64)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tokenizer layouts, each read by a different branch: fast (tokenizer.json), sentencepiece
    (tokenizer.model + tokenizer_config.json + added_tokens.json), byte-level BPE (vocab.json + ...)."""
    root = tmp_path_factory.mktemp("fuzz-tokenizers")
    fast = make_tokenizer(root / "fast", size=64)
    spm = root / "spm"
    spm.mkdir()
    (spm / "tokenizer.model").write_bytes(sentencepiece_model(WORDS))
    decoder = {str(i): {"content": w, "special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False} for i, w in enumerate(WORDS[:3])}
    (spm / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder, "tokenizer_class": "LlamaTokenizer", "model_max_length": 64}))
    (spm / "added_tokens.json").write_text(json.dumps({"<s>": 1}))
    (spm / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    bpe = root / "bpe"
    bpe.mkdir()
    (bpe / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(WORDS)}))
    (bpe / "merges.txt").write_text("#version: 0.2\n")
    for name in ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        shutil.copy(spm / name, bpe / name)
    return {"fast": fast, "spm": spm, "bpe": bpe}


TOKEN_VALUES: Pool = VALUES + [[63, 64, 65, 10**12, 2**62, 2**63, HUGE, -5, {"content": "<new>"}, {"content": "<new>", "id": 64},
                                 {"content": "<new>", "id": 10**12}, {"content": "<new>", "id": HUGE}, {"content": 5, "id": 3}, {"<new>": 64},
                                 {"<new>": 10**12}, {"<new>": HUGE}, {"<new>": -1}, {"<new>": "64"}, [["w3", 0.0]], ["w3"]]]


def mutate_tokenizer(rng: random.Random, directory: Path, names: list[str]) -> str:
    files = [directory / name for name in names if name != "merges.txt"]
    file = rng.choice(files)
    if file.suffix == ".model":
        if rng.random() < 0.5:
            blob, what = mutate_bytes(rng, file.read_bytes())
        else:  # a piece whose declared length runs past the end, or a huge varint
            blob, what = file.read_bytes() + rng.choice([b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05ab", b"\x0f", b"\x0a" + b"\xff" * 11, b"\x0b"]), "a broken trailing field"
        file.write_bytes(blob)
        return f"{file.name}: {what}"
    fields = {"tokenizer.json": ["model", "added_tokens", "normalizer", "pre_tokenizer", "version"],
              "tokenizer_config.json": ["added_tokens_decoder", "tokenizer_class", "model_max_length", "chat_template"]}.get(file.name)
    if file.name == "tokenizer.json" and rng.random() < 0.5:  # aim at the vocabulary the reader counts
        data = json.loads(file.read_text())
        vocab = data["model"]["vocab"]
        kind = rng.choice(["id", "id", "vocab", "added", "model"])
        if kind == "id":
            token = rng.choice(sorted(vocab))
            vocab[token] = pick(rng, TOKEN_VALUES)
            what = f"model.vocab[{token!r}] := {_show(vocab[token])}"
        elif kind == "vocab":
            data["model"]["vocab"] = rng.choice([[], {}, None, "x", [["w3", 0.0], ["w4"]], [[]], [1, 2], list(vocab.items()), {str(i): str(i) for i in range(3)}])
            what = f"model.vocab := {_show(data['model']['vocab'])}"
        elif kind == "added":
            data["added_tokens"] = rng.choice([None, {}, "x", [None], [{"id": 10**12, "content": "<big>"}], [{"id": -1, "content": "<neg>"}],
                                               [{"id": 64, "content": "<new>"}] * 3, [{"id": "64", "content": "<str>"}]])
            what = f"added_tokens := {_show(data['added_tokens'])}"
        else:
            data["model"] = rng.choice([None, [], "WordLevel", {"type": "BPE"}, {"vocab": vocab, "type": 5}])
            what = f"model := {_show(data['model'])}"
        file.write_bytes(dump(data))
        return f"{file.name}: {what}"
    return mutate_json_file(rng, file, fields, TOKEN_VALUES)


def in_file(name: str, edit: Callable[[dict], None]) -> Callable:
    """A pinned mutation of one tokenizer JSON file."""

    def mutate(rng: random.Random, directory: Path) -> str:
        data = json.loads((directory / name).read_bytes())
        edit(data)
        (directory / name).write_bytes(dump(data))
        return f"{name}: {edit.__doc__}"

    return mutate


def _huge_added(data: dict) -> None:
    """added_tokens gains id 10**400"""
    data["added_tokens"].append({"id": HUGE, "content": "<big>", "special": True})


def _huge_vocab_id(data: dict) -> None:
    """w5's id := 10**400"""
    (data["model"]["vocab"] if "model" in data else data)["w5"] = HUGE


def _huge_added_json(data: dict) -> None:
    """'<big>' := 10**400"""
    data["<big>"] = HUGE


def _huge_decoder_key(data: dict) -> None:
    """added_tokens_decoder gains key '9' * 30"""
    data["added_tokens_decoder"]["9" * 30] = {"content": "<big>", "special": True}


# Token ids past any embedding (were an OverflowError 'Internal error' where check sizes the merge).
TOKENIZER_PINS = {
    "fast": {"pin-added-id-huge": in_file("tokenizer.json", _huge_added), "pin-vocab-id-huge": in_file("tokenizer.json", _huge_vocab_id)},
    "spm": {"pin-added_tokens-huge": in_file("added_tokens.json", _huge_added_json), "pin-decoder-key-huge": in_file("tokenizer_config.json", _huge_decoder_key)},
    "bpe": {"pin-vocab-id-huge": in_file("vocab.json", _huge_vocab_id)},
}


@pytest.mark.parametrize("layout", ["fast", "spm", "bpe"])
def test_fuzz_tokenizer_files(capsys, tmp_path: Path, llama: Built, lora_llama: Built, tokenizers: dict[str, Path], layout: str) -> None:
    runner = Runner(capsys, f"tokenizer-{layout}")
    names = sorted(f.name for f in tokenizers[layout].iterdir())
    cases = _cases(runner.family, 20, TOKENIZER_PINS[layout])
    for i, case in enumerate(cases):
        work = _fresh(tmp_path, case)
        base = copy_dir(llama.path, work / "base")
        adapter = copy_dir(lora_llama.path, work / "adapter")
        for name in names:  # where training scripts save an extended tokenizer
            shutil.copy(tokenizers[layout] / name, adapter / name)
        what = case.pin(case.rng, adapter) if case.pin else mutate_tokenizer(case.rng, adapter, names)
        runner.standard(case, what, base, adapter, adapter, lora_llama.path, work)
        if i % 4 == 1:  # the same tokenizer named by --tokenizer, beside a clean adapter
            runner.run(case.describe(what), ["check", base, lora_llama.path, "--tokenizer", adapter, "--format", "json"], [base, adapter])
        if i % 4 == 2 and not case.full:  # merge copies tokenizer files and resizes to them
            out = work / "merged"
            rc = runner.run(case.describe(what), ["merge", base, adapter, "--out", out, "--device", "cpu", "--format", "json"], [base, adapter], out=out)
            if rc == 0:
                shutil.rmtree(out)
        shutil.rmtree(work)
    _finish(runner, cases)


# ---- (e) zipped pickles (.bin) -----------------------------------------------------------------------------------

# Opcode snippets inserted between data.pkl's opcodes: stack and memo abuse, forbidden globals,
# oversized length fields, a protocol switch, STOP early.
OPCODES = [b"0", b"1", b"2", b"(", b")", b"N", b".", b"]", b"}", b"t", b"\x85", b"\x86", b"\x87", b"R", b"b", b"s", b"u", b"a", b"e", b"\x94", b"q\x00",
           b"h\x00", b"h\xff", b"j\xff\xff\xff\xff", b"K\xff", b"J\xff\xff\xff\x7f", b"\x8a\x09" + b"\xff" * 9, b"\x8b\xff\xff\xff\x7f", b"X\xff\xff\xff\x7f",
           b"\x8c\x05hello", b"\x8c\x05hel", b"cos\nsystem\n", b"cbuiltins\neval\n", b"\x93", b"Q", b"\x88", b"\x89", b"G" + struct.pack(">d", float("nan")),
           b"\x80\x05", b"\x95" + struct.pack("<Q", 2**60), b"\x8e" + struct.pack("<Q", 2**62), b"l", b"d", b"\x81", b"\x92", b"ios\nsystem\n", b"\x82\xff",
           b"P", b"\x96", b"\x97", b"\x98"]


def _ops(pkl: bytes) -> list[tuple[str, object, int, int]]:
    """(opcode name, arg, start, end) of every opcode in an intact pickle."""
    ops = list(pickletools.genops(pkl))
    out = []
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(pkl)
        out.append((op.name, arg, pos, end))
    return out


def _int_op(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str_op(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


STORAGES = ["FloatStorage", "HalfStorage", "DoubleStorage", "BFloat16Storage", "LongStorage", "ByteStorage", "BoolStorage", "ComplexFloatStorage",
            "QInt8Storage", "UntypedStorage", "Storage", "", "FloatStorage\n"]


def mutate_pickle(rng: random.Random, pkl: bytes, sentinel: Path) -> tuple[bytes, str]:
    ops = _ops(pkl)
    kind = rng.choice(["bytes", "bytes", "insert", "insert", "delete", "int", "int", "string", "global", "truncate", "gadget"])
    if kind == "insert":
        _, _, pos, _ = rng.choice(ops)
        snippet = rng.choice(OPCODES)
        return pkl[:pos] + snippet + pkl[pos:], f"data.pkl: opcode bytes {snippet[:12]!r} inserted at {pos}"
    if kind == "delete":
        name, _, pos, end = rng.choice(ops)
        return pkl[:pos] + pkl[end:], f"data.pkl: opcode {name} at {pos} deleted"
    if kind == "int":
        spots = [o for o in ops if o[0] in ("BININT1", "BININT2", "BININT", "LONG1")]
        name, arg, pos, end = rng.choice(spots)
        value = rng.choice(INTS + [-(2**63), 2**100, -(10**30)])
        return pkl[:pos] + _int_op(value) + pkl[end:], f"data.pkl: {name} {arg} at {pos} := {value}"
    if kind == "string":
        spots = [o for o in ops if o[0] in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8")]
        name, arg, pos, end = rng.choice(spots)
        value = rng.choice(NAMES + STRINGS + ["0", "1", "99", "cpu", "cuda:0", "meta"])
        return pkl[:pos] + _str_op(value) + pkl[end:], f"data.pkl: string {arg!r} at {pos} := {value[:40]!r}"
    if kind == "global":
        spots = [o for o in ops if o[0] in ("GLOBAL", "STACK_GLOBAL")]
        name, arg, pos, end = rng.choice(spots)
        if name != "GLOBAL":
            return pkl[:pos] + b"." + pkl[end:], f"data.pkl: {name} at {pos} := STOP"
        module, attr = rng.choice([("torch", rng.choice(STORAGES)), ("torch._utils", "_rebuild_tensor"), ("collections", "defaultdict"),
                                   ("torch", "Tensor"), ("__builtin__", "set"), ("torch._utils", "_rebuild_parameter_with_state")])
        return pkl[:pos] + b"c" + module.encode() + b"\n" + attr.encode() + b"\n" + pkl[end:], f"data.pkl: GLOBAL {arg!r} at {pos} := {module} {attr!r}"
    if kind == "truncate":
        cut = rng.randrange(len(pkl))
        return pkl[:cut], f"data.pkl truncated to {cut} of {len(pkl)} bytes"
    if kind == "gadget":  # code that would run if anything unpickled the file: the sentinel must stay absent
        _, _, pos, _ = rng.choice(ops[1:])
        call = b"cposix\nsystem\n(" + _str_op(f"touch {sentinel}") + b"tR0"
        return pkl[:pos] + call + pkl[pos:], f"data.pkl: os.system gadget inserted at {pos}"
    blob, what = mutate_bytes(rng, pkl)
    return blob, f"data.pkl: {what}"


def _members(blob: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    import io

    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


def _zip(members: list[tuple[str, bytes]], compress: set[str] = frozenset()) -> bytes:
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        warnings.simplefilter("ignore")  # a duplicate member name is the point of "dup-pkl"
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data, zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED)
    return buf.getvalue()


def mutate_torch_bin(rng: random.Random, blob: bytes, sentinel: Path) -> tuple[bytes, str]:
    members = [(info.filename, data) for info, data in _members(blob)]
    pkl_at = next(i for i, (name, _) in enumerate(members) if name.endswith("/data.pkl"))
    prefix = members[pkl_at][0][: -len("data.pkl")]
    kind = rng.choice(["pickle"] * 6 + ["zip-bytes", "central-dir", "truncate", "deflate-flip", "drop-storage", "short-storage", "dup-pkl", "rename-pkl",
                                        "prefix-garbage", "append-garbage"])
    if kind == "pickle":
        pkl, what = mutate_pickle(rng, members[pkl_at][1], sentinel)
        members[pkl_at] = (members[pkl_at][0], pkl)
        return _zip(members), what + ", re-zipped"
    if kind == "zip-bytes":
        new, what = mutate_bytes(rng, blob)
        return new, f"zip {what}"
    if kind == "central-dir":
        start = blob.rfind(b"PK\x01\x02", 0, len(blob) - 22)
        start = blob.find(b"PK\x01\x02") if start < 0 else rng.choice([blob.find(b"PK\x01\x02"), start])
        new, what = mutate_bytes(rng, blob, start, len(blob))
        return new, f"zip central directory: {what}"
    if kind == "truncate":
        cut = rng.randrange(len(blob))
        return blob[:cut], f"zip truncated to {cut} of {len(blob)} bytes"
    if kind == "deflate-flip":
        out = bytearray(_zip(members, {members[pkl_at][0]}))
        start = out.find(b"data.pkl") + len("data.pkl") + rng.randrange(1, 40)
        out[start] ^= 1 << rng.randrange(8)
        return bytes(out), f"data.pkl deflated, bit flipped at {start}"
    storages = [i for i, (name, _) in enumerate(members) if name.startswith(prefix + "data/")]
    if kind == "drop-storage" and storages:
        i = rng.choice(storages)
        return _zip(members[:i] + members[i + 1 :]), f"storage {members[i][0]} removed"
    if kind == "short-storage" and storages:
        i = rng.choice(storages)
        members[i] = (members[i][0], members[i][1][: rng.randrange(len(members[i][1]) or 1)])
        return _zip(members), f"storage {members[i][0]} cut to {len(members[i][1])} bytes"
    if kind == "dup-pkl":
        return _zip(members + [(prefix + "data.pkl", b"\x80\x02}q\x00.")]), "a second data.pkl"
    if kind == "rename-pkl":
        new = rng.choice(["data.pkl", "x/y/data.pkl", prefix + "data.pk", prefix + "DATA.PKL", "../data.pkl"])
        members[pkl_at] = (new, members[pkl_at][1])
        return _zip(members), f"data.pkl renamed {new!r}"
    if kind == "prefix-garbage":
        return b"\0" * rng.choice([1, 64, 4096]) + blob, "garbage prepended"
    return blob + bytes(rng.randrange(256) for _ in range(rng.choice([1, 22, 100]))), "garbage appended"


def _surrogate_name(rng: random.Random, blob: bytes, sentinel: Path) -> tuple[bytes, str]:
    """The first tensor name in data.pkl becomes a lone surrogate (BINUNICODE decodes with surrogatepass)."""
    members = [(info.filename, data) for info, data in _members(blob)]
    i = next(i for i, (name, _) in enumerate(members) if name.endswith("/data.pkl"))
    pkl = members[i][1]
    name, arg, pos, end = next(o for o in _ops(pkl) if o[0] in ("BINUNICODE", "SHORT_BINUNICODE") and "." in o[1])
    members[i] = (members[i][0], pkl[:pos] + _str_op(arg + "\ud800") + pkl[end:])
    return _zip(members), f"data.pkl: tensor name {arg!r} + lone surrogate '\\ud800', re-zipped"


BIN_PINS = {"pin-name-lone-surrogate": _surrogate_name}


@pytest.mark.parametrize("side", ["base", "adapter"])
def test_fuzz_torch_bin(capsys, tmp_path: Path, llama: Built, llama_bin: Built, lora_llama: Built, lora_llama_bin: Built, side: str) -> None:
    runner = Runner(capsys, f"bin-{side}")
    sentinel = tmp_path.parent / f"{tmp_path.name}-pwned"  # outside every snapshot: asserted apart
    cases = _cases(runner.family, 45, BIN_PINS)
    for case in cases:
        work = _fresh(tmp_path, case)
        base = copy_dir((llama_bin if side == "base" else llama).path, work / "base")
        adapter = copy_dir((lora_llama if side == "base" else lora_llama_bin).path, work / "adapter")
        mutated = base if side == "base" else adapter
        file = mutated / ("pytorch_model.bin" if side == "base" else "adapter_model.bin")
        blob, what = (case.pin or mutate_torch_bin)(case.rng, file.read_bytes(), sentinel)
        file.write_bytes(blob)
        original = (llama_bin if side == "base" else lora_llama_bin).path
        runner.standard(case, f"{file.name}: {what}", base, adapter, mutated, original, work)
        assert not sentinel.exists(), f"{case.describe(what)}: pickle code ran"
        shutil.rmtree(work)
    _finish(runner, cases)


# ---- one case as the console script runs it --------------------------------------------------------------------


def test_fuzz_smoke_subprocess(tmp_path: Path, llama: Built, lora_llama: Built) -> None:
    """One mutated header through a real process: exit code, no traceback, stdout/stderr as users see them."""
    rng = random.Random(f"{FUZZ_SEED}:subprocess")
    base = copy_dir(llama.path, tmp_path / "base")
    blob, what = mutate_safetensors(rng, (base / "model.safetensors").read_bytes())
    (base / "model.safetensors").write_bytes(blob)
    before = snapshot(base)
    proc = subprocess.run([sys.executable, "-m", "inspector", "check", str(base), str(lora_llama.path), "--format", "json"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    case = f"subprocess (FUZZ_SEED={FUZZ_SEED}): model.safetensors: {what}\n  rc={proc.returncode}\n  stderr: {proc.stderr[:2000]!r}"
    assert proc.returncode in (0, 1, 2), case
    assert "Traceback" not in proc.stderr and "Internal error" not in proc.stderr, case
    if proc.returncode == 2:
        assert proc.stderr.startswith("Error: ") and "\nHint: " in proc.stderr, case
    if proc.stdout or proc.returncode != 2:
        json.loads(proc.stdout)
    assert snapshot(base) == before, case
    # The children's high-water mark: this one process, unlike ru_maxrss of the test process itself.
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 < MAX_RSS_BYTES, case
