"""The files and folders a written model carries besides its tensors and config.json.

``resize`` and ``merge`` copy them through the writer as they are: generation config, tokenizer
files (from the tokenizer's own directory when it is another), chat templates, and the module
folders sentence-transformers' ``modules.json`` names. Only what lives inside the input directory
is copied (docs/threat-model.md #21).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from inspector.errors import InvalidInputError
from inspector.io.paths import resolves_inside
from inspector.io.tokenizer import TOKENIZER_COMPANIONS, TOKENIZER_FILES

if TYPE_CHECKING:
    from inspector.io.writer import CheckpointWriter

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
        writer.copy_file(path, root=path.parent)  # listed inside that directory: still there when opened
    for folder in folders:
        writer.copy_tree(folder.path, folder.name, root=folder.root)


def tokenizer_from(extras: list[Path], tokenizer_dir: Path) -> str | None:
    """Where the output's tokenizer files come from, or None when neither input had any."""
    return str(tokenizer_dir) if any(p.name in TOKENIZER_FILES for p in extras) else None


def tree_entries(src: str | Path, root: str | Path) -> Iterator[tuple[tuple[str, ...], Path, bool]]:
    """What ``copy_tree`` copies of folder ``src``: (path parts below ``src``, source, is a folder),
    each folder before its contents. Regular files and folders only (no FIFOs, sockets, devices);
    hidden entries (.git, .cache) are left out, as side_files leaves them out; a symlink counts only
    where its real path stays inside ``root``, the input directory (docs/threat-model.md #21), and a
    folder reached twice (a link back up the tree) is walked once."""
    seen = {os.path.realpath(src)}
    stack: list[tuple[tuple[str, ...], Path]] = [((), Path(src))]
    while stack:
        rel, folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise InvalidInputError("Cannot read", folder, exc.strerror or str(exc), "Check that the folder exists and is readable.") from exc
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith(".") or (entry.is_symlink() and not resolves_inside(Path(root), path)):
                continue
            try:
                mode = os.stat(path).st_mode  # through links (those inside, as the Hub cache's blobs)
            except OSError:
                continue  # a dangling link: nothing to copy
            if stat.S_ISDIR(mode):
                real = os.path.realpath(path)
                if real not in seen:
                    seen.add(real)
                    yield (*rel, entry.name), path, True
                    stack.append(((*rel, entry.name), path))
            elif stat.S_ISREG(mode):
                yield (*rel, entry.name), path, False


def opened_inside(root: Path, src: Path, opened: os.stat_result) -> bool:
    """Is the file just opened through ``src`` the one ``src`` names now, living inside ``root``?"""
    try:
        now = os.stat(os.path.realpath(src))
    except OSError:
        return False
    return resolves_inside(root, src) and (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


def tree_bytes(src: str | Path, root: str | Path) -> int:
    """The bytes ``copy_tree(src, ..., root=root)`` copies (for ``extra_bytes``)."""
    return sum(os.stat(path).st_size for _, path, folder in tree_entries(src, root) if not folder)
