"""Where a checkpoint's files may really live (docs/threat-model.md #13, #21).

A directory from a stranger can hold a ``model.safetensors`` that is a symlink to
``~/.ssh/id_rsa``: scan would read it and merge would copy its bytes into the output. A file found
*in* a checkpoint directory is therefore used only when its real path stays inside that directory,
or follows the Hugging Face cache layout, where ``<repo>/snapshots/<rev>/<file>`` links to
``<repo>/blobs/<sha>``. A path the user names directly is their choice and is not checked.

Where a user names a Hub id instead of a path (``meta-llama/Llama-2-7b-hf``, as adapter configs
do), ``locate`` finds the snapshot that is already in the local cache; scan, check, diff and explore read an
uncached one's headers remotely (inspector/io/hub.py); nothing else is ever downloaded.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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


@dataclass
class RemoteMode:
    """Inside ``remote_reads()``: a Hub id that is not cached may be read remotely (inspector/io/hub.py)."""

    offline: bool  # --offline: the cache only
    reads: dict = field(default_factory=dict)  # (endpoint, repo, revision) -> stub: one remote read per repository per block


class _State(threading.local):  # per thread, as a command or an API call runs in one
    mode: RemoteMode | None = None


_STATE = _State()


@contextmanager
def remote_reads(*, offline: bool = False) -> Iterator[None]:
    """Within this block (scan, check, diff, the Python API), a Hub id that is not in the cache is
    read remotely, headers and small files only, unless ``offline`` (or HF_HUB_OFFLINE): the cache
    only. Elsewhere (commands that read tensor data) an uncached Hub id is an error."""
    mode = RemoteMode(offline)
    previous, _STATE.mode = _STATE.mode, mode
    try:
        yield
    finally:
        _STATE.mode = previous
        if mode.reads:  # the block's stubs go with it: an API caller's long-running process keeps none
            from inspector.io import hub

            hub.forget(mode.reads.values())


def remote_mode() -> RemoteMode | None:
    return _STATE.mode


# A Hub id as the Hub spells it: "org/name" (or a legacy one-word id such as "gpt2"), optionally
# "@revision" (a branch, tag or commit; branches may hold "/", as refs/pr/1 does).
_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")
_REVISION = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)*")
# What makes a cached snapshot a checkpoint rather than the configs a header check left there.
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def hub_cache() -> Path:
    """The Hugging Face cache directory, with huggingface_hub's own environment variables."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")).expanduser()


def parse_hub_id(given: str) -> tuple[str, str | None] | None:
    """``("org/name", "rev" or None)`` when ``given`` reads as a Hub id (``org/name@rev``), else None."""
    repo, at, rev = given.partition("@")
    if ".." in given or not _REPO_ID.fullmatch(repo) or (at and not _REVISION.fullmatch(rev)):
        return None
    return repo, rev or None


def _has_weights(snapshot: Path) -> bool:
    """Does a cached snapshot hold weights (not only the config and tokenizer files a remote check fetched)?"""
    if any((snapshot / n).is_file() for n in _WEIGHTS) or any(p.is_file() for p in snapshot.glob("*.safetensors")):
        return True
    for name in _INDEXES:
        try:
            weight_map = json.loads((snapshot / name).read_bytes()).get("weight_map")
            return all((snapshot / str(f)).is_file() for f in set(weight_map.values()))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, RecursionError, AttributeError, TypeError):
            return True  # unreadable: read_checkpoint says why, in its own words
    return False


def _cached(repo: Path, rev: str | None) -> Path | None:
    """The snapshot of ``rev`` (refs/main without one) in cache folder ``repo``, holding weights; None when there is none."""
    snapshots = repo / "snapshots"
    try:
        ref_file = repo / "refs" / (rev or "main")
        ref = ref_file.read_text().strip() if ref_file.is_file() else (rev or "")
        if re.fullmatch(r"[0-9A-Za-z]+", ref) and (snapshots / ref).is_dir():  # a commit hash, never a path
            return snapshots / ref if _has_weights(snapshots / ref) else None
        if rev is not None:
            return None
        found = sorted(p for p in snapshots.iterdir() if p.is_dir() and _has_weights(p)) if snapshots.is_dir() else []
    except OSError:  # an unreadable cache: as if the id were not there
        found = []
    if len(found) > 1:
        raise InvalidInputError("Cannot pick a cached snapshot", repo, f"{len(found)} revisions are cached and refs/main names none of them",
                                f"Pass one snapshot directory, e.g. '{found[-1]}'.")
    return found[0] if found else None


def locate(given: str | Path) -> Path:
    """``given`` as a path; or, when nothing is there and it reads as a Hub id (``org/name[@rev]``),
    the snapshot already downloaded to the local Hugging Face cache (what ``from_pretrained(id)``
    would load offline); or, inside ``hub.remote_reads()`` (scan, check, diff) and not offline, a
    stub of the repository read remotely: its headers and small files (inspector/io/hub.py).
    Raises InvalidInputError when neither exists."""
    path = Path(given)
    hub_id = parse_hub_id(str(given))
    if path.exists() or hub_id is None:
        return path
    repo_id, rev = hub_id
    snapshot = _cached(hub_cache() / ("models--" + repo_id.replace("/", "--")), rev)
    if snapshot is not None:
        return snapshot
    if ("/" not in repo_id and rev is None) or (rev is None and Path(repo_id.split("/")[0]).is_dir()):
        return path  # a missing file name, or a missing path in a local folder ("out/adapter"): a typo, not a Hub id
    if remote_mode() is not None:
        # Imported (and huggingface_hub with it) only when a Hub id is read remotely.
        from inspector.io import hub

        if hub.offline():
            raise hub.offline_error(str(given), repo_id)
        return hub.read_remote(repo_id, rev, str(given))
    raise InvalidInputError("Cannot read checkpoint", given, f"no such file or directory, and no Hub snapshot of it with its weights in the cache ({hub_cache()})",
                            f"Check the path; if '{given}' is a Hub id, download it first with `hf download {repo_id}"
                            f"{f' --revision {rev}' if rev else ''}` (this command reads tensor data; scan, check, diff and explore read a Hub id's headers remotely).")
