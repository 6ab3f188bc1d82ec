"""``resize``: write a copy of BASE whose vocabulary matrices have N rows, streaming one tensor at a time."""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from inspector import interrupts
from inspector.checkpoint import Checkpoint, read_checkpoint
from inspector.errors import InvalidInputError, RefusedError, UsageError
from inspector.loader import TensorReader
from inspector.paths import locate, resolves_inside
from inspector.repair import MatrixResult, ResizePlan, ResizeResult, SubwordPlan, initializer_range, new_rows, padded, plan_resize, subword_pieces
from inspector.tensor import FLOAT_DTYPES
from inspector.tokenizer import TOKENIZER_COMPANIONS, TOKENIZER_FILES, read_tokenizer
from inspector.writer import CheckpointWriter, OutputTensor, tree_bytes

# Files of a model directory that are not tensors or the config: copied through as they are.
_TENSOR_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
# Configs of other weight formats, which the output does not have: Mistral's params.json describes
# consolidated.safetensors (and would keep the old vocab_size).
_OTHER_FORMAT_CONFIGS = ("params.json",)

# Folders a tokenizer's or processor's save_pretrained writes beside its files (transformers'
# CHAT_TEMPLATE_DIR: named chat templates): they travel with the tokenizer files.
TOKENIZER_FOLDERS = ("additional_chat_templates",)
# sentence-transformers' list of a model's modules; each module but the transformer (path "", the
# model directory itself) loads from the folder its "path" names: 1_Pooling, 2_Normalize, 2_Dense, ...
ST_MODULES = "modules.json"
MAX_MODULES_BYTES = 1_000_000  # a real modules.json is a few hundred bytes

Progress = Callable[[int, int], None]  # (bytes done now, total bytes)


@dataclass(frozen=True)
class SideFolder:
    """A folder the output carries as it is (CheckpointWriter.copy_tree)."""

    path: Path  # the folder in an input directory
    name: str  # its path in the output, relative ("1_Pooling")
    root: Path  # that input directory: links in the folder must stay inside it


def _copied(name: str) -> bool:
    """Is an entry of a model directory called ``name`` copied through? Not the tensors, the config
    (written anew), the index, other formats' configs, or hidden entries."""
    return not (name.startswith(".") or name == "config.json" or name in _OTHER_FORMAT_CONFIGS or name.endswith(_TENSOR_SUFFIXES) or name.endswith(".index.json"))


def side_files(directory: Path) -> list[Path]:
    """Small non-tensor files of a checkpoint dir (generation config, tokenizer, chat template, ...)."""
    out = []
    for path in sorted(directory.iterdir()):
        if not _copied(path.name):
            continue
        # Links count when they stay inside (a Hugging Face cache snapshot is all links into blobs/);
        # one that leads out is never copied into the output (docs/threat-model.md #21).
        # Any size: a 120 MB tokenizer.json left out would leave a model whose tokenizer does not load
        # (the free-space check counts these bytes too).
        if path.is_file() and resolves_inside(directory, path):
            out.append(path)
    return out


def output_side_files(base_root: Path, tokenizer_dir: Path) -> list[Path]:
    """The non-tensor files a written model carries: the base's side files, with the tokenizer
    files taken from ``tokenizer_dir`` instead when that is another directory."""
    tokenizer = TOKENIZER_FILES + TOKENIZER_COMPANIONS
    files = [p for p in side_files(base_root) if tokenizer_dir == base_root or p.name not in tokenizer]
    if tokenizer_dir != base_root:
        files += [tokenizer_dir / n for n in tokenizer if (tokenizer_dir / n).is_file()]
    return files


def module_folders(directory: Path) -> list[str]:
    """The folders sentence-transformers' modules.json names, as relative paths: SentenceTransformer(DIR)
    loads each module from its folder. The file is input like any other: only paths that stay inside
    ``directory`` (no "..", not absolute, not the directory itself) and are folders there count."""
    path = directory / ST_MODULES
    try:
        if not path.is_file() or not resolves_inside(directory, path) or path.stat().st_size > MAX_MODULES_BYTES:
            return []
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable or not JSON: sentence-transformers could not load it either
        return []
    names: list[str] = []
    for module in modules if isinstance(modules, list) else []:
        given = module.get("path") if isinstance(module, dict) else None
        parts = PurePosixPath(given).parts if isinstance(given, str) and "\\" not in given and "\0" not in given else ()
        if not parts or parts[0].startswith("/") or ".." in parts or not _copied(parts[0]):
            continue  # "" (the transformer: the model directory itself), or a path leading out
        folder = directory.joinpath(*parts)
        if folder.is_dir() and resolves_inside(directory, folder) and "/".join(parts) not in names:
            names.append("/".join(parts))
    # A folder inside another listed one travels with it.
    return [n for n in names if not any(n.startswith(other + "/") for other in names)]


def output_side_folders(base_root: Path, tokenizer_dir: Path) -> list[SideFolder]:
    """The folders a written model carries: the base's sentence-transformers module folders, and
    the tokenizer's folders from ``tokenizer_dir`` (the base unless another tokenizer is written)."""
    folders = {n: SideFolder(base_root / n, n, base_root) for n in module_folders(base_root)}
    for name in TOKENIZER_FOLDERS:
        folder = tokenizer_dir / name
        if folder.is_dir() and resolves_inside(tokenizer_dir, folder):
            folders[name] = SideFolder(folder, name, tokenizer_dir)
        elif name in folders:  # the base's own chat templates do not belong to another tokenizer
            del folders[name]
    return list(folders.values())


def side_bytes(files: list[Path], folders: list[SideFolder]) -> int:
    """What the side files and folders add to the output (the writer's free-space check counts it)."""
    return sum(p.stat().st_size for p in files) + sum(tree_bytes(f.path, f.root) for f in folders)


def copy_side(writer: CheckpointWriter, files: list[Path], folders: list[SideFolder]) -> None:
    for path in files:
        writer.copy_file(path)
    for folder in folders:
        writer.copy_tree(folder.path, folder.name, root=folder.root)


def tokenizer_from(extras: list[Path], tokenizer_dir: Path) -> str | None:
    """Where the output's tokenizer files come from, or None when neither input had any."""
    return str(tokenizer_dir) if any(p.name in TOKENIZER_FILES for p in extras) else None


def updated_config(config: dict, rows: int) -> dict:
    """config.json with vocab_size set (in text_config too, where the text model keeps it)."""
    new = dict(config)
    if "vocab_size" in new or not isinstance(new.get("text_config"), dict):
        new["vocab_size"] = rows
    if isinstance(new.get("text_config"), dict) and "vocab_size" in new["text_config"]:
        new["text_config"] = {**new["text_config"], "vocab_size": rows}
    return new


def output_plan(base: Checkpoint, plan: ResizePlan, dtype: str | None = None) -> list[OutputTensor]:
    return [OutputTensor(t.name, dtype or t.dtype, plan.new_shape(t.shape, t.name) if plan.touches(t.name) else t.shape) for t in base.tensors]


def grow(old, plan: ResizePlan, name: str, *, seed: int, init_range: float, subword: SubwordPlan | None):
    """The resized tensor: the kept old rows bit-identical, then ``plan.init`` rows (new tokens, and
    padding rows new tokens now use), then mean padding rows. Statistics come from the kept rows."""
    import torch

    kept = plan.kept
    # An untied head draws its own random rows, as transformers samples it apart from the embedding;
    # stored copies of one tied weight (T5's shared / encoder / decoder embed_tokens) draw the same.
    seed = seed + zlib.crc32(name.encode()) if name in plan.apart else seed
    bias = name in plan.biases
    if bias:
        flat = old.reshape(-1)
        if plan.rows <= kept:
            return flat[: plan.rows].reshape(plan.new_shape(old.shape, name)).clone()
        # Zeros where transformers pads with zeros whatever --init says (zero_biases).
        zero = name in plan.zero_biases
        base = flat[:kept]
        added = new_rows(base, max(0, plan.requested - kept), "zero" if zero else plan.init, seed=seed, initializer_range=init_range, subword=subword, bias=True)
        pad = new_rows(base, plan.rows - max(plan.requested, kept), "zero" if zero else "mean", bias=True)
        return torch.cat([base, added.to(old.dtype), pad.to(old.dtype)]).reshape(plan.new_shape(old.shape, name))
    if plan.rows <= kept:
        return old[: plan.rows].clone()
    base = old[:kept]
    added = new_rows(base, max(0, plan.requested - kept), plan.init, seed=seed, initializer_range=init_range, subword=subword)
    pad = new_rows(base, plan.rows - max(plan.requested, kept), "mean")
    return torch.cat([base, added.to(old.dtype), pad.to(old.dtype)])


def _target_rows(base: Checkpoint, vocab: int | None, tokenizer: str | None, like: str | None) -> tuple[int, str]:
    given = [x for x in (vocab, tokenizer, like) if x is not None]
    if len(given) != 1:
        raise UsageError("Invalid options", None, "give exactly one of --vocab, --tokenizer and --like", "e.g. `lora-inspector resize BASE --out DIR --like ADAPTER`.")
    if vocab is not None:
        return vocab, f"--vocab {vocab}"
    if tokenizer is not None:
        folder = locate(tokenizer)
        facts = read_tokenizer(folder) if folder.is_dir() else None
        if facts is None:
            raise UsageError("Cannot read tokenizer", tokenizer, "no tokenizer files in this directory", "Pass the directory tokenizer.save_pretrained() wrote.")
        return facts.size, f"--tokenizer {tokenizer}: {facts.length} tokens"
    from inspector.check import run_check

    diagnosis = run_check(base, like, command="resize")
    if diagnosis.plan.rows is None:
        raise UsageError("Cannot resize", like, "the adapter implies no vocabulary size", "Pass --vocab N instead.")
    return diagnosis.plan.rows, f"--like {like}: {diagnosis.plan.source}"


def resize_checkpoint(
    base_path: str,
    out: str,
    *,
    vocab: int | None = None,
    tokenizer: str | None = None,
    like: str | None = None,
    init: str | None = None,
    pad_to: int | None = None,
    seed: int = 0,
    force: bool = False,
    max_shard_size: int = 5_000_000_000,
    progress: Progress | None = None,
) -> ResizeResult:
    """Write BASE with its vocabulary matrices resized into OUT (safe writer: staging, verify, rename)."""
    interrupts.heavy_import("torch")  # stop signals held while it loads (see inspector/interrupts.py)
    base = read_checkpoint(base_path)
    if base.kind != "model":
        raise UsageError("Not a base model", base_path, "this is a PEFT adapter", "Pass the base model directory; use --like ADAPTER to take the size from the adapter.")

    rows, reason = _target_rows(base, vocab, tokenizer, like)
    if like is not None and pad_to is not None and padded(rows, pad_to) != rows:
        raise UsageError("Invalid options", None, f"--pad-to-multiple-of {pad_to} would make {padded(rows, pad_to)} rows, but the adapter needs exactly {rows}",
                         "Leave --pad-to-multiple-of out with --like: PEFT loads the adapter only onto its own row count.")
    like_dir = locate(like) if like else None
    # The new tokenizer: --tokenizer, or the extended one training saved beside the adapter (--like).
    new_tok = locate(tokenizer) if tokenizer else (like_dir if like_dir and read_tokenizer(like_dir) else None)
    both_known = new_tok is not None and base.tokenizer is not None
    chosen = init or ("subword_mean" if both_known else "mean")
    if chosen == "subword_mean" and not both_known:
        raise UsageError("Cannot use --init subword_mean", base_path, "it needs the old tokenizer (in BASE) and the new one (--tokenizer DIR, or in the --like adapter)",
                         "Pass --tokenizer DIR, or choose --init mean.")
    plan = plan_resize(base, rows, reason, chosen, pad_to)
    packed = [n for n in plan.matrices + plan.biases if base.by_name[n].dtype not in FLOAT_DTYPES]
    if packed:  # new rows need arithmetic on the old ones; packed or FP8 values (with their scales) have none
        raise RefusedError("Resize refused", base_path, f"{packed[0]} is {base.by_name[packed[0]].dtype}, a quantized vocabulary matrix",
                           "Resize the full-precision base the quantized copy was made from.")
    if both_known and base.tokenizer.size < min(plan.old_rows, plan.requested):
        # Padding rows past the old tokenizer (Qwen2 keeps ~270) that new tokens now take: never
        # trained as tokens, so they are initialized like new rows instead of kept.
        plan = dataclasses.replace(plan, fresh_from=base.tokenizer.size)
    notes: list[str] = []
    subword = None
    if chosen == "subword_mean" and plan.requested > plan.kept:
        try:
            subword = subword_pieces(base.root, new_tok, plan.kept, plan.rows)
        except InvalidInputError as exc:
            if init is not None:  # asked for: the user hears why it cannot be done
                raise
            # The default only: transformers could not load a tokenizer (a sentencepiece model
            # without protobuf, ...); the mean needs none.
            chosen = "mean"
            plan = dataclasses.replace(plan, init=chosen)
            notes.append(f"subword_mean (the default here) fell back to mean: {exc.message}")

    # Tokenizer files travel with the result: the new tokenizer if given, else the adapter's
    # (--like: the one training used), else the base's own.
    tok_source = new_tok or base.root
    inputs = [base.root] + [p for p in (new_tok, like_dir) if p]
    extras = output_side_files(base.root, tok_source)
    folders = output_side_folders(base.root, tok_source)
    result = ResizeResult(Path(out), plan, subword=subword, tokenizer_from=tokenizer_from(extras, tok_source), warnings=notes)
    written = read_tokenizer(tok_source) if result.tokenizer_from else None
    if written is not None and written.size > plan.rows:
        result.warnings.append(f"the tokenizer written with the model ({written.length} tokens, from {tok_source}) needs {written.size} rows but the model "
                               f"has {plan.rows}: token ids {plan.rows}..{written.size - 1} are out of range (check reports LI201)")
    init_range = initializer_range(base.config)
    with CheckpointWriter(out, inputs=inputs, tensors=output_plan(base, plan), max_shard_size=max_shard_size, force=force,
                          extra_bytes=side_bytes(extras, folders), stamps=base.stamps) as writer:
        with TensorReader(base.root, base.stamps) as reader:  # refuses files changed since their headers were read
            for info in base.tensors:
                tensor = reader.read(info)
                if plan.touches(info.name):
                    tensor = grow(tensor, plan, info.name, seed=seed, init_range=init_range, subword=subword)
                    result.matrices.append(MatrixResult(info.name, info.shape, tuple(tensor.shape), "zero" if info.name in plan.zero_biases else chosen))
                writer.write(info.name, tensor)
                if progress:
                    progress(info.nbytes, base.total_bytes)
                del tensor
        writer.add_file("config.json", json.dumps(updated_config(base.config, plan.rows), indent=2) + "\n")
        copy_side(writer, extras, folders)
        writer.commit()
    return result
