"""Resolve a user's path into a ``Checkpoint``: files, tensors, configs, tokenizer facts.

Accepts a model directory (single or sharded safetensors, legacy ``pytorch_model.bin``), a PEFT
adapter directory, a single ``.safetensors`` / ``.bin`` file, or a ``*.index.json``. Only headers
and small JSON files are read; neither torch nor transformers is imported.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from inspector.errors import InspectorError, InvalidInputError
from inspector.io.header import read_header
from inspector.io.paths import locate, resolves_inside
from inspector.io.stamp import FileStamp, changed
from inspector.io.tensor import TensorInfo
from inspector.io.tokenizer import TokenizerFacts, read_tokenizer
from inspector.io.torchbin import read_torch_bin
from inspector.units import printable

if TYPE_CHECKING:
    from inspector.io.hub import RemoteRead

Kind = Literal["model", "adapter"]
Format = Literal["safetensors", "pytorch-bin"]

MAX_JSON_BYTES = 64_000_000
_MAX_NAME_BYTES = 255  # NAME_MAX of Linux, macOS and Windows filesystems

# Checkpoint layouts in a directory, in the order a loader prefers them: a safetensors twin always
# wins over a pickle (docs/threat-model.md #17).
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapters.safetensors")  # the last: mlx-lm's, to name it
# In transformers' from_pretrained order: a single file wins over an index beside it (re-saving a
# sharded model unsharded deletes the old shards but leaves the index).
MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

# Config fields worth showing, with the aliases other architectures use for them.
MODEL_FIELDS = {
    "model_type": ("model_type",),
    "architectures": ("architectures",),
    "vocab_size": ("vocab_size", "n_vocab"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "tie_word_embeddings": ("tie_word_embeddings",),
    "dtype": ("dtype", "torch_dtype"),
}
ADAPTER_FIELDS = (
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "r",
    "lora_alpha",
    "target_modules",
    "modules_to_save",
    "use_rslora",
    "use_dora",
    "fan_in_fan_out",
    "lora_bias",
    "trainable_token_indices",
    "rank_pattern",
    "alpha_pattern",
)


@dataclass(frozen=True)
class Checkpoint:
    """Everything lora-inspector knows about one checkpoint without reading tensor data."""

    path: str  # as the user gave it
    root: Path  # directory the files live in
    kind: Kind
    format: Format
    files: tuple[str, ...]  # data files (and index) relative to root
    tensors: tuple[TensorInfo, ...]
    config: dict = field(default_factory=dict)  # config.json, or adapter_config.json for adapters
    tokenizer: TokenizerFacts | None = None
    warnings: tuple[str, ...] = ()
    # Every file read for this checkpoint as it was then (data files, index, config): readers of tensor
    # data and the writer compare against these, so a file changed meanwhile is never mixed in.
    stamps: tuple[FileStamp, ...] = ()
    # Read from the Hub (headers and small files only, inspector/io/hub.py): root is a stub without tensor data.
    remote: RemoteRead | None = None

    @cached_property
    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    @property
    def parameter_count(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def dtypes(self) -> dict[str, int]:
        return dict(sorted(Counter(t.dtype for t in self.tensors).items()))

    def key_config(self) -> dict:
        """The config fields the reports show (aliases resolved, nested text_config consulted)."""
        if self.kind == "adapter":
            return {k: self.config[k] for k in ADAPTER_FIELDS if k in self.config}
        sources = [self.config]
        if isinstance(self.config.get("text_config"), dict):
            sources.append(self.config["text_config"])
        out = {}
        for name, aliases in MODEL_FIELDS.items():
            for src in sources:
                hit = next((src[a] for a in aliases if a in src), None)
                if hit is not None:
                    out[name] = hit
                    break
        if "quantization_config" in self.config:
            out["quantization"] = (self.config["quantization_config"] or {}).get("quant_method", "yes") if isinstance(self.config["quantization_config"], dict) else "yes"
        return out


def _check_model_type(path: Path, config: dict) -> None:
    """model_type keys transformers' registry (and ours): a list or map there is no model type, and
    would be unhashable wherever it is looked up."""
    value = config.get("model_type")
    if value is not None and not isinstance(value, str):
        # A list or map is named by its type: its repr could be megabytes, or nested past repr's recursion limit.
        shown = repr(value)[:80] if isinstance(value, (int, float)) else f"a JSON {'object' if isinstance(value, dict) else 'list'}"
        raise InvalidInputError("Cannot read config.json", path, f"model_type is {shown}; expected a string such as \"llama\"",
                                "Fix model_type in config.json; transformers cannot load a config whose model_type is not a string.")


def _input_error(path: Path, why: str, hint: str) -> InvalidInputError:
    return InvalidInputError("Cannot read checkpoint", path, why, hint)


def read_json(path: Path, what: str = "JSON file", *, stamps: dict[Path, FileStamp] | None = None) -> dict:
    """Read a small JSON object (configs, indexes) with one clear error per failure; ``stamps``
    receives the identity of the file read."""
    hint = f"Fix or re-create the {what}; it must be a JSON object."
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInputError(f"Cannot read {what}", path, "not a regular file", hint)
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size > MAX_JSON_BYTES:
                raise InvalidInputError(f"Cannot read {what}", path, f"file is larger than {MAX_JSON_BYTES} bytes", hint)
            raw = fh.read(MAX_JSON_BYTES + 1)
        if stamps is not None:
            stamps[Path(path)] = FileStamp.of(path, st)
        data = json.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"Cannot read {what}", path, exc.strerror or str(exc), hint) from exc
    # ValueError covers UnicodeDecodeError, JSONDecodeError and integer literals past the 4,300-digit limit.
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"Cannot read {what}", path, f"not valid JSON ({exc})", hint) from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"Cannot read {what}", path, f"the top level is a JSON {type(data).__name__}, not an object", hint)
    try:
        # A "\ud800" escape parses to a lone surrogate that no report can print; serde_json refuses it too.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"Cannot read {what}", path, "it contains a lone surrogate escape (not valid Unicode)", hint) from exc
    return data


def _inside(root: Path, rel: str, index: Path) -> Path:
    """Resolve a shard name from an index, refusing anything that escapes the checkpoint directory."""
    hint = "The index must name shard files inside the checkpoint directory."
    shown = printable(repr(rel if len(rel) <= 80 else rel[:77] + "..."))
    if "\0" in rel:
        raise InvalidInputError("Cannot read sharded index", index, f"shard name {shown} contains a NUL byte", hint)
    if any(len(os.fsencode(part)) > _MAX_NAME_BYTES for part in Path(rel).parts):
        raise InvalidInputError("Cannot read sharded index", index, f"shard name {shown} is longer than {_MAX_NAME_BYTES} bytes, which no filesystem stores", hint)
    if not rel or rel.startswith(("/", "\\")) or ".." in Path(rel).parts or ":" in rel or "\\" in rel:
        raise InvalidInputError("Cannot read sharded index", index, f"shard name {shown} points outside the checkpoint", hint)
    target = root / rel
    if not resolves_inside(root, target):
        raise InvalidInputError("Cannot read sharded index", index, f"shard {rel!r} resolves outside the checkpoint (symlink?)", hint)
    return target


def _own_file(root: Path, path: Path) -> Path:
    """``path``, a file found in checkpoint directory ``root``, unless it links outside it (docs/threat-model.md #21)."""
    if not resolves_inside(root, path):
        raise _input_error(path, f"it is a symlink to '{path.resolve()}', outside the checkpoint directory",
                           "Copy the file into the checkpoint directory if you trust it, or give its path directly.")  # fmt: skip
    return path


def _read_file(path: Path, rel: str, stamps: dict[Path, FileStamp]) -> tuple[list[TensorInfo], Format]:
    if path.suffix == ".safetensors":
        tensors, _ = read_header(path, rel, stamps=stamps)
        return tensors, "safetensors"
    try:
        before = os.stat(path)
    except OSError as exc:
        raise _input_error(path, exc.strerror or str(exc), "Check that the file exists and is readable.") from exc
    tensors = read_torch_bin(path, rel)
    stamps[path] = FileStamp.of(path, before)
    error = changed(stamps[path])  # the zip's directory and data.pkl are read in several steps
    if error is not None:
        raise error
    return tensors, "pytorch-bin"


def _read_index(index: Path, stamps: dict[Path, FileStamp]) -> tuple[list[TensorInfo], list[str], Format, list[str]]:
    data = read_json(index, "sharded index", stamps=stamps)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise InvalidInputError("Cannot read sharded index", index, "weight_map is missing or not a map of tensor name -> shard file", "Re-create the index with save_pretrained().")
    root = index.parent
    shards = sorted(set(weight_map.values()))  # by file name: model-00001-of-N first, whatever the index lists first
    tensors: list[TensorInfo] = []
    fmt: Format = "safetensors"
    paths = {rel: _inside(root, rel, index) for rel in shards}  # every name checked before any file is read
    for rel, shard in paths.items():
        if not shard.exists():
            raise InvalidInputError("Cannot read sharded index", index, f"shard {rel!r} is listed but missing", "Download the missing shard, or re-save the checkpoint.")
        found, fmt = _read_file(shard, rel, stamps)
        listed = {k for k, v in weight_map.items() if v == rel}
        present = {t.name for t in found}
        if listed - present:
            name = sorted(listed - present)[0]
            raise InvalidInputError("Cannot read sharded index", index, f"tensor {name!r} is listed for {rel!r} but absent from it", "The index and shards disagree; re-download or re-save the checkpoint.")
        if present - listed:
            name = sorted(present - listed)[0]
            raise InvalidInputError("Cannot read sharded index", index, f"tensor {name!r} is in shard {rel!r} but the index maps it elsewhere or not at all", "The index and shards disagree; re-download or re-save the checkpoint.")
        tensors.extend(found)
    warnings = []
    meta = data.get("metadata")
    total = meta.get("total_size") if isinstance(meta, dict) else None
    actual = sum(t.nbytes for t in tensors)
    if total is not None and total != actual:
        warnings.append(f"index metadata.total_size is {total} but the shards hold {actual} bytes of tensor data")
    return tensors, shards, fmt, warnings


def _guess_kind(tensors: list[TensorInfo], directory: Path | None) -> Kind:
    if directory is not None and (directory / "adapter_config.json").is_file():
        return "adapter"
    names = [t.name for t in tensors]
    if any(n.startswith("base_model.model.") or ".lora_" in n for n in names):
        return "adapter"
    return "model"


def _checkpoint_subdirs(root: Path) -> list[Path]:
    """Subdirectories holding a model or an adapter (a Trainer's output_dir/checkpoint-<step>/, a
    multi-adapter save), the highest step last."""
    try:
        dirs = [d for d in root.iterdir() if d.is_dir() and ((d / "adapter_config.json").is_file() or (d / "config.json").is_file())]
    except OSError:
        return []
    return sorted(dirs, key=lambda d: (int(m.group(1)) if (m := re.search(r"(\d+)$", d.name)) else -1, d.name))


# Meta's original Llama (consolidated.NN.pth) and Mistral's (consolidated.safetensors) releases: other
# tensor names than transformers', so no PEFT adapter matches them.
NATIVE_FORMAT_HINT = ("Use the Hugging Face layout of the same model (config.json + model*.safetensors; Mistral repositories ship both), "
                      "or convert it with transformers' convert_llama_weights_to_hf.py (Meta) / convert_mistral_weights_to_hf.py (Mistral).")

# Weight files lora-inspector does not read, by name: what they are, and where to go instead.
_OTHER_FORMATS = (
    (".gguf", "a GGUF file (llama.cpp)", "Use the Hugging Face (safetensors) repository it was converted from."),
    (".h5", "TensorFlow weights", "Use the PyTorch / safetensors weights of the same model (most repositories ship both)."),
    (".msgpack", "Flax weights", "Use the PyTorch / safetensors weights of the same model (transformers converts with from_flax=True)."),
)


_SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}\.safetensors$")


def _other_format(name: str) -> tuple[str, str] | None:
    return next(((what, hint) for suffix, what, hint in _OTHER_FORMATS if name.endswith(suffix)), None)


def _nothing_readable(root: Path, names: tuple[str, ...]) -> InvalidInputError:
    """Why a directory holds no checkpoint lora-inspector reads, as precisely as its files tell."""
    files = sorted(p.name for p in root.iterdir() if p.is_file())
    loose = [n for n in files if n.endswith(".safetensors")]
    if loose:  # several (one would have been read)
        shown = ", ".join(printable(n) for n in loose[:4]) + (", ..." if len(loose) > 4 else "")
        if any(_SHARD_NAME.search(n) for n in loose):
            return _input_error(root, f"{len(loose)} .safetensors files ({shown}) but no model.safetensors.index.json",
                                "Download the index too (it says which tensor is in which shard), or point at one file to read it alone.")
        return _input_error(root, f"{len(loose)} .safetensors files ({shown}) and none of the names a checkpoint directory has",
                            "Point at the one file to read.")
    if "params.json" in files and any(n.startswith("consolidated.") for n in files):
        return _input_error(root, "it is in a native format (params.json + consolidated.* weights), not the Hugging Face layout PEFT adapters use",
                            NATIVE_FORMAT_HINT)
    other = next(((n, *_other_format(n)) for n in files if _other_format(n)), None)
    if other:
        return _input_error(root, f"it holds {other[1]} ({printable(other[0])}), not safetensors or PyTorch weights", other[2])
    if "config.json" in files and not any(n.endswith((".bin", ".pt", ".pth")) for n in files):
        return _input_error(root, "it has a config.json but no weight files (not downloaded yet?)",
                            "Download the weights too, e.g. `hf download REPO --include '*.safetensors' '*.json'`.")
    inside = _checkpoint_subdirs(root)
    hint = (f"It holds checkpoints in subdirectories ({', '.join(d.name for d in inside[:5])}{', ...' if len(inside) > 5 else ''}): "
            f"pass one, e.g. '{inside[-1]}'." if inside else "Point at a directory written by save_pretrained(), or at a .safetensors file.")
    return _input_error(root, f"no checkpoint files found (looked for {', '.join(names)})", hint)


def read_checkpoint(path: str | Path, *, with_tokenizer: bool = True) -> Checkpoint:
    """Resolve ``path`` (directory, file, or index) into a ``Checkpoint``; headers only."""
    try:
        return _read_checkpoint(path, with_tokenizer)
    except OSError as exc:  # a directory without read/execute permission, a name the OS refuses, ...
        where = exc.filename if exc.filename is not None else path
        raise _input_error(Path(os.fsdecode(where)), exc.strerror or str(exc),
                           "Check that the path exists and that you may read it (directories need read and execute permission).") from exc


def _read_checkpoint(path: str | Path, with_tokenizer: bool) -> Checkpoint:
    given = str(path)
    path = locate(path)  # a Hub id ("org/name") resolves to its snapshot in the local cache, or to a remote read's stub
    hub = sys.modules.get("inspector.io.hub")  # imported only where a Hub id was read remotely
    remote = hub.remote_of(path) if hub is not None else None
    if remote is None:
        return _read_located(given, path, with_tokenizer)
    try:
        ckpt = _read_located(given, path, with_tokenizer)
        # The stub directory is temporary: reports name the repository.
        tokenizer = dataclasses.replace(ckpt.tokenizer, directory=remote.shown) if ckpt.tokenizer is not None else None
        return dataclasses.replace(ckpt, remote=remote, tokenizer=tokenizer)
    except InspectorError as exc:
        raise hub.reword(exc, path, remote) from exc.__cause__
    except OSError as exc:  # read_checkpoint's words for it, naming the repository rather than the temporary stub
        where = Path(os.fsdecode(exc.filename)) if exc.filename is not None else path
        raise hub.reword(_input_error(where, exc.strerror or str(exc), "The repository names a file this system cannot hold: download it and check the local copy."),
                         path, remote) from exc


def _read_located(given: str, path: Path, with_tokenizer: bool) -> Checkpoint:
    if not path.exists():
        raise _input_error(path, "no such file or directory", "Check the path; a checkpoint is a directory with config.json or adapter_config.json, or a .safetensors file.")
    if path.is_dir():
        root = path
        names = ADAPTER_FILES if (root / "adapter_config.json").is_file() else MODEL_FILES
        found = next((n for n in names if (root / n).exists()), None)
        if found is None:
            st_files = sorted(p.name for p in root.glob("*.safetensors"))
            if len(st_files) == 1:
                found = st_files[0]
            else:
                raise _nothing_readable(root, names)
        entry = _own_file(root, root / found)
    else:
        if not stat.S_ISREG(path.stat().st_mode):
            raise _input_error(path, "not a regular file", "Point at a checkpoint directory or a .safetensors file.")
        root, entry, found = path.parent, path, path.name
        if not (found.endswith((".safetensors", ".bin", ".pt", ".pth", ".index.json"))):
            other = _other_format(found)
            if other:
                raise _input_error(path, f"it is {other[0]}, not safetensors or PyTorch weights", other[1])
            raise _input_error(path, "unknown file type", "Give a .safetensors, .bin or *.index.json file, or a checkpoint directory.")

    warnings: list[str] = []
    stamps: dict[Path, FileStamp] = {}
    if path.is_dir() and found in ("model.safetensors", "pytorch_model.bin") and (root / f"{found}.index.json").exists():
        warnings.append(f"{found}.index.json is ignored: transformers loads {found} when both are present (a stale index of an older sharded save?)")
    if found.endswith(".index.json"):
        tensors, files, fmt, warnings = _read_index(entry, stamps)
        files = [found, *files]
    else:
        tensors, fmt = _read_file(entry, found, stamps)
        files = [found]

    # adapter_config.json speaks for the directory's adapter files only; a loose file is judged by its keys.
    kind = _guess_kind(tensors, root if (path.is_dir() or found in ADAPTER_FILES) else None)
    # A loose file's siblings describe it only when it carries the canonical name save_pretrained uses.
    canonical = path.is_dir() or found in ADAPTER_FILES or found in MODEL_FILES
    config: dict = {}
    config_name = "adapter_config.json" if kind == "adapter" else "config.json"
    if canonical and (root / config_name).is_file():
        config = read_json(_own_file(root, root / config_name), config_name, stamps=stamps)
        if kind == "model":
            _check_model_type(root / config_name, config)
    tokenizer = read_tokenizer(root) if with_tokenizer and canonical else None
    if kind == "adapter" and path.is_dir():
        warnings += _named_adapters(root)
    return Checkpoint(given, root, kind, fmt, tuple(files), tuple(tensors), config, tokenizer, tuple(warnings), tuple(stamps.values()))


def _named_adapters(root: Path) -> list[str]:
    """PEFT's save_pretrained writes the "default" adapter at the top and every other named adapter in
    a subdirectory of its name: say that the others were not read, and how to read them."""
    named = [d for d in _checkpoint_subdirs(root) if (d / "adapter_config.json").is_file()]
    if not named:
        return []
    names = ", ".join(f"{printable(d.name)}/" for d in named[:5]) + (", ..." if len(named) > 5 else "")
    return [f"{root} also holds {len(named)} named adapter(s) in subdirectories ({names}); this reads the one at the top. "
            f"Pass a subdirectory to read another, e.g. '{named[0]}'."]
