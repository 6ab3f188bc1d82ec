"""Where a checkpoint's files may really live (docs/threat-model.md #13, #21).

A directory from a stranger can hold a ``model.safetensors`` that is a symlink to
``~/.ssh/id_rsa``: scan would read it and merge would copy its bytes into the output. A file found
*in* a checkpoint directory is therefore used only when its real path stays inside that directory,
or follows the Hugging Face cache layout, where ``<repo>/snapshots/<rev>/<file>`` links to
``<repo>/blobs/<sha>``. A path the user names directly is their choice and is not checked.

Where a user names a Hub id instead of a path (``meta-llama/Llama-2-7b-hf``, as adapter configs
do), ``locate`` finds the snapshot that is already in the local cache; nothing is downloaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from inspector.errors import InvalidInputError


def resolves_inside(root: Path, path: Path) -> bool:
    """Does ``path`` (a file found in checkpoint directory ``root``) really live inside ``root``?"""
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    if real.is_relative_to(real_root):
        return True
    # The Hugging Face cache keeps files in <repo>/blobs and links them from <repo>/snapshots/<rev>/.
    return real_root.parent.name == "snapshots" and real.is_relative_to(real_root.parent.parent / "blobs")


# A Hub id as the Hub spells it: "org/name" (or a legacy one-word id such as "gpt2").
_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")


def hub_cache() -> Path:
    """The Hugging Face cache directory, with huggingface_hub's own environment variables."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")).expanduser()


def locate(given: str | Path) -> Path:
    """``given`` as a path; or, when nothing is there and it reads as a Hub id (``org/name``), the
    snapshot already downloaded to the local Hugging Face cache: what ``from_pretrained(id)`` would
    load offline. Never downloads. Raises InvalidInputError when neither exists."""
    path = Path(given)
    if path.exists() or not _REPO_ID.fullmatch(str(given)) or ".." in str(given):
        return path
    repo = hub_cache() / ("models--" + str(given).replace("/", "--"))
    snapshots = repo / "snapshots"
    try:
        ref = (repo / "refs" / "main").read_text().strip() if (repo / "refs" / "main").is_file() else ""
        if re.fullmatch(r"[0-9A-Za-z]+", ref) and (snapshots / ref).is_dir():  # a commit hash, never a path
            return snapshots / ref
        found = sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    except OSError:  # an unreadable cache: as if the id were not there
        found = []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InvalidInputError("Cannot pick a cached snapshot", repo, f"{len(found)} revisions are cached and refs/main names none of them",
                                f"Pass one snapshot directory, e.g. '{found[-1]}'.")
    if "/" in str(given):
        raise InvalidInputError("Cannot read checkpoint", given, f"no such file or directory, and no Hub snapshot of it in the cache ({hub_cache()})",
                                f"Check the path; if '{given}' is a Hub id, download it first with `hf download {given}` (lora-inspector never downloads).")
    return path
