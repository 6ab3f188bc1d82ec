"""Read a Hub repository's checkpoint without its tensor data (docs/commands.md, "Hub ids").

``scan``, ``check`` and a header-level ``diff`` need a checkpoint's headers, configs and tokenizer
files, never its tensor data. For a Hub id that is not in the local cache, this module fetches
exactly that through huggingface_hub (its endpoint, token, offline mode, cache and retries): the small
files whole with ``hf_hub_download`` (into the normal Hugging Face cache), each safetensors file's
``8 + N`` header bytes with two range requests. It lays them out in a private temporary directory
as the repository would look on disk, each safetensors file a sparse stub of its real size (its
header, then a hole), so ``read_checkpoint`` reads a remote checkpoint through the very parser and
bounds a local one meets (docs/threat-model.md) and the findings and JSON are the same.

A stub holds no tensor data: it is registered here, ``Checkpoint.remote`` says it was read remotely,
and whatever needs data (``--values``, merge, resize, convert, verify) refuses a Hub id that is not
cached, suggesting ``hf download``. Remote reads happen only inside ``paths.remote_reads()``, which
scan / check / diff and the Python API open; this module and huggingface_hub are imported only when
a Hub id is actually read remotely.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from inspector import interrupts
from inspector.errors import InspectorError, InvalidInputError
from inspector.io.paths import remote_mode
from inspector.io.tokenizer import TOKENIZER_FILES
from inspector.units import human_bytes, printable

# The non-tensor files read_checkpoint and check may open, fetched whole (params.json: Meta's and
# Mistral's native layouts, which check names).
SMALL_FILES = ("config.json", "generation_config.json", "adapter_config.json", "params.json", *TOKENIZER_FILES)
# Copied from read_checkpoint's order (checkpoint.py): the file it would pick is the one whose header is read.
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapters.safetensors")
_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
MAX_SMALL_FILE = 64_000_000  # a "small" file larger than this (a hostile tokenizer.json) is not downloaded for a header check
# The model-info JSON (the file listing with sizes, a few hundred bytes a file on the Hub: a model repo
# of 10,000 files lists in 2-3 MB with blobs=true): a larger or endless body (a broken or hostile
# endpoint) is refused once this much came, never read whole. 16 MB, not more: json.loads of a body of
# tiny values (`[[],[],...]`) costs ~25 times its size in Python objects.
MAX_MODEL_INFO = 16_000_000
# An error answer's body (huggingface_hub's message is in it) is read this far, decoded, and no further.
MAX_ERROR_BODY = 1_000_000
# Header fetches in flight: a 29-shard base in a few round trips. Bounded by the CPUs (TLS, parsing and
# the GIL are CPU work): 8 threads on 2 cores measured slower than 4 (docs/benchmarks.md, "Remote check").
_WORKERS = min(8, 2 * (os.cpu_count() or 1))
_RETRIES = 3  # per range request, on network errors and 5xx, with huggingface_hub's backoff
# The server is untrusted (docs/threat-model.md): what it lists and declares is bounded before it is used.
MAX_FILE_SIZE = 2**40  # a declared file size beyond 1 TiB is a lie (a sparse stub of 10**18 bytes fails to truncate)
MAX_SHARDS = 4096  # an index naming more would cost as many range requests (the largest real models have ~200)
MAX_PLACEHOLDERS = 1000  # names laid out for a repository without weights (read_checkpoint's words need a few)
_MAX_NAME = 1024  # bytes of a repository file name (each part at most 255): the stub path stays under PATH_MAX


def _timeout() -> float:
    """Seconds a request may stall: huggingface_hub's own client has none (a silent server would hang us)."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


@dataclass(frozen=True)
class RemoteRead:
    """What was read from the Hub for one checkpoint, for the reports (docs/json.md, ``remote``)."""

    repo_id: str
    revision: str  # as asked: a branch, tag or commit ("main" when none was given)
    commit: str  # the commit every file was read at
    endpoint: str
    downloaded: tuple[str, ...] = ()  # small files fetched whole into the Hugging Face cache
    cached: tuple[str, ...] = ()  # small files already in the cache (no transfer)
    headers: tuple[str, ...] = ()  # safetensors files whose header alone was range-read
    bytes_transferred: int = 0  # body bytes received: the model-info JSON, downloaded files and header ranges

    @property
    def shown(self) -> str:
        return self.repo_id if self.revision == "main" else f"{self.repo_id}@{self.revision}"

    def as_json(self) -> dict:
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit, "endpoint": self.endpoint,
                "downloaded": list(self.downloaded), "cached": list(self.cached), "headers": list(self.headers),
                "bytes_transferred": self.bytes_transferred}

    def summary(self) -> str:
        """One line for the text reports."""
        files = len(self.downloaded) + len(self.cached)
        return (f"read remotely from {self.endpoint} at {self.commit[:12]}: {len(self.headers)} safetensors header(s) and "
                f"{files} small file(s), {human_bytes(self.bytes_transferred)} transferred")


_STUBS: dict[Path, RemoteRead] = {}  # stub directory -> what was read into it
_LOCK = threading.Lock()
_AT_EXIT = False  # _cleanup registered with atexit


def offline() -> bool:
    """--offline, or huggingface_hub's own switches (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)."""
    mode = remote_mode()
    if mode is not None and mode.offline:
        return True
    if any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    import sys

    constants = sys.modules.get("huggingface_hub.constants")  # already imported (the API in a training script)
    return bool(constants is not None and constants.is_offline_mode())


def remote_of(root: Path) -> RemoteRead | None:
    """The remote read behind stub directory ``root``, or None for a real directory."""
    with _LOCK:
        return _STUBS.get(Path(root))


def forget(roots) -> None:
    """Remove these stub directories now (the end of a ``remote_reads()`` block)."""
    for root in list(roots):
        _forget(root)


def reword(exc: InspectorError, root: Path, remote: RemoteRead) -> InspectorError:
    """``exc`` (raised reading stub ``root``) naming the repository instead of the temporary directory."""
    here = str(root)

    def fix(text: str | None) -> str | None:
        return None if text is None else text.replace(here, remote.shown)

    exc.path, exc.why, exc.hint = fix(exc.path), fix(exc.why), fix(exc.hint)
    exc.args = (exc.message,)
    return exc


def _safe_name(name: object) -> bool:
    """A repository file name that stays inside the stub directory (the index and listing are the server's word)."""
    if not isinstance(name, str) or not name or len(name.encode(errors="replace")) > _MAX_NAME or "\0" in name or "\\" in name or ":" in name or name.startswith("/"):
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") and len(p.encode()) <= 255 for p in parts)


def _error(what: str, given: str, why: str, hint: str) -> InvalidInputError:
    return InvalidInputError(what, given, why, hint)


def read_remote(repo_id: str, revision: str | None, given: str) -> Path:
    """Fetch ``repo_id``'s small files and safetensors headers; return the stub directory to read."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    rev = revision or "main"
    mode = remote_mode()
    key = (endpoint, repo_id, rev)
    if mode is not None and key in mode.reads:  # read once per run: check's error path locates an adapter again
        return mode.reads[key]
    with _hub_errors(given, repo_id, rev, endpoint):
        info, info_bytes = _model_info(endpoint, repo_id, rev, given)
        sha, siblings = info.get("sha"), info.get("siblings")
        commit = sha if isinstance(sha, str) and sha.isascii() and sha.isalnum() else rev
        # The server's word, whatever its types: an entry that is no object or names no safe file is skipped.
        sizes = {s["rfilename"]: _declared(s.get("size")) for s in (siblings if isinstance(siblings, list) else [])
                 if isinstance(s, dict) and _safe_name(s.get("rfilename"))}
        remote = RemoteRead(repo_id, rev, commit, endpoint)
        global _AT_EXIT
        with interrupts.held():  # a stop between making the directory and registering it would leak it
            root = Path(tempfile.mkdtemp(prefix="lora-inspector-hub-"))
            with _LOCK:
                if not _AT_EXIT:  # once: stubs now go at the end of each block, and the registry empties often
                    atexit.register(_cleanup)
                    _AT_EXIT = True
                _STUBS[root] = remote  # registered at once: removed at exit whatever happens
        try:
            remote = _fill(root, remote, sizes, given)
        except BaseException:
            _forget(root)
            raise
        remote = replace(remote, bytes_transferred=remote.bytes_transferred + info_bytes)
        with _LOCK:
            _STUBS[root] = remote
        if mode is not None:
            mode.reads[key] = root
        return root


def _model_info(endpoint: str, repo_id: str, rev: str, given: str) -> tuple[dict, int]:
    """The model-info JSON object and the bytes received for it. The request ``HfApi.model_info(repo_id,
    revision=rev, files_metadata=True)`` makes (its URL, ``blobs=True``, huggingface_hub's session and
    headers: token, user agent, offline mode; its error mapping), but the body is streamed with a cap
    (MAX_MODEL_INFO): huggingface_hub would read an endless one into memory. With the retries
    huggingface_hub gives downloads but not this call: a moment's 5xx, 429 or dropped connection is not
    the end of a CI run."""
    import time
    from urllib.parse import quote

    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import build_hf_headers, get_session

    url = f"{endpoint}/api/models/{repo_id}/revision/{quote(rev, safe='')}"
    received = 0  # every attempt's body bytes, as they came over the wire (before any decompression)
    for attempt in range(_RETRIES + 1):
        try:
            with get_session().stream("GET", url, params={"blobs": True}, headers=build_hf_headers(), timeout=_timeout()) as response:
                try:
                    info = _info_body(response, repo_id, rev, given)
                finally:
                    received += response.num_bytes_downloaded
            return info, received
        except (HfHubHTTPError, httpx2.TransportError) as exc:
            response = getattr(exc, "response", None)
            status = response.status_code if isinstance(exc, HfHubHTTPError) and response is not None else None
            if attempt == _RETRIES or not (isinstance(exc, httpx2.TransportError) or status == 429 or (status or 0) >= 500):
                raise
            time.sleep(min(0.5 * 2**attempt, 4))
    raise AssertionError("unreachable")


def _info_body(response, repo_id: str, rev: str, given: str) -> dict:
    """The model-info answer as a JSON object, read no further than MAX_MODEL_INFO bytes."""
    _raise_for_error(response)
    hint = _hostile_hint(repo_id, rev)

    def too_large(size: int) -> InvalidInputError:
        return _error("Cannot read Hub repository", given,
                      f"its model info (the file listing) is {size} bytes or more, more than the {MAX_MODEL_INFO} a header check reads", hint)

    length = response.headers.get("Content-Length", "")
    if length.isascii() and length.isdigit() and int(length[:40]) > MAX_MODEL_INFO:
        raise too_large(int(length[:40]))  # declared: refused before a byte of the body is read
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > MAX_MODEL_INFO:
            raise too_large(len(data))  # the connection is closed unread: the rest never comes
    try:
        info = json.loads(data)  # a bytearray as it is: no second copy of up to MAX_MODEL_INFO bytes
    except (ValueError, RecursionError) as exc:
        raise _error("Cannot read Hub repository", given, f"its model info is not JSON ({printable(str(exc) or type(exc).__name__)})", hint) from None
    if not isinstance(info, dict):
        raise _error("Cannot read Hub repository", given, f"its model info is not a JSON object (a {type(info).__name__})", hint)
    return info


def _declared(size: object) -> int | None:
    """A size as the server declares it, if it is one a file can have (else unknown)."""
    return size if isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_FILE_SIZE else None


def _cleanup() -> None:
    with _LOCK:
        roots = list(_STUBS)
    for root in roots:
        _forget(root)


def _forget(root: Path) -> None:
    # Deleted first, then dropped from the registry: a second signal during the delete leaves it known to atexit.
    shutil.rmtree(root, ignore_errors=True)
    with _LOCK:
        _STUBS.pop(root, None)


def _fill(root: Path, remote: RemoteRead, sizes: dict[str, int | None], given: str) -> RemoteRead:
    """Pick the weight file read_checkpoint would, download the small files (and the index), range-read the header(s)."""
    names = _ADAPTER_FILES if "adapter_config.json" in sizes else _MODEL_FILES
    entry = next((n for n in names if n in sizes), None)
    if entry is None:
        loose = [n for n in sizes if n.endswith(".safetensors") and "/" not in n]
        entry = loose[0] if len(loose) == 1 else None
    if entry is not None and entry.endswith((".bin", ".bin.index.json")):
        raise _bin_only(given, remote, entry)  # before downloading anything: the hint downloads it all
    small = [n for n in SMALL_FILES if n in sizes] + ([entry] if entry is not None and entry.endswith(".index.json") else [])
    pool = ThreadPoolExecutor(max_workers=_WORKERS)
    try:
        # In flight together: each is a HEAD for its size, then a HEAD and a GET in hf_hub_download.
        got = list(pool.map(lambda name: _small_file(root, remote, name, sizes[name], given), small))
        downloaded = tuple(n for n, g in zip(small, got) if g is not None)
        cached = tuple(n for n, g in zip(small, got) if g is None)
        transferred = sum(g or 0 for g in got)
        if entry is None:
            _placeholders(root, sizes)  # names only: read_checkpoint's own words for a repository it cannot read
            return replace(remote, downloaded=downloaded, cached=cached, bytes_transferred=transferred)
        shards = [entry]
        if entry.endswith(".index.json"):
            shards = _index_shards(root / entry, sizes)
            if len(shards) > MAX_SHARDS:
                raise _error("Cannot read Hub repository", given, f"its index names {len(shards)} shards, more than the {MAX_SHARDS} a header check reads remotely",
                             f"Download the repository and check the local copy: `{_hf_download(remote.repo_id, remote.revision)}`.")
        transferred += sum(pool.map(lambda name: _header(root, remote, name, sizes[name], given), shards))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return replace(remote, downloaded=downloaded, cached=cached, headers=tuple(shards), bytes_transferred=transferred)


def _placeholders(root: Path, sizes: dict[str, int | None]) -> None:
    top = [name for name in sizes if "/" not in name][:MAX_PLACEHOLDERS]  # a listing may hold 100,000 names
    for name in top:
        if not (root / name).exists():
            (root / name).touch()


def _index_shards(index: Path, sizes: dict[str, int | None]) -> list[str]:
    """The shards an index names that the repository holds; read_checkpoint judges the rest (missing,
    outside the checkpoint) with the words it has for a local index."""
    try:
        weight_map = json.loads(index.read_bytes()).get("weight_map")
    except (ValueError, RecursionError, AttributeError):
        return []  # not a JSON object: read_checkpoint says so
    if not isinstance(weight_map, dict):
        return []
    return sorted({v for v in weight_map.values() if isinstance(v, str) and _safe_name(v) and v in sizes and v.endswith(".safetensors")})


def _small_file(root: Path, remote: RemoteRead, name: str, size: int | None, given: str) -> int | None:
    """Download ``name`` into the Hugging Face cache (unless there) and copy it into the stub; the bytes
    transferred, or None when it was already cached."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import tqdm as hf_tqdm

    from inspector.io.paths import hub_cache

    def too_large(size: int) -> InvalidInputError:
        return _error("Cannot read Hub repository", given, f"{name} is {size} bytes or more, more than the {MAX_SMALL_FILE} a header check downloads",
                      f"Download the repository and check the local copy: `{_hf_download(remote.repo_id, remote.revision)}`.")

    if size is not None and size > MAX_SMALL_FILE:
        raise too_large(size)
    cache = hub_cache()
    before = try_to_load_from_cache(remote.repo_id, name, cache_dir=cache, revision=remote.commit)
    if not isinstance(before, str):
        # The listing is the server's word: the size the download itself will get is checked too, before it starts.
        dry = hf_hub_download(remote.repo_id, name, revision=remote.commit, cache_dir=cache, endpoint=remote.endpoint,
                              etag_timeout=_timeout(), dry_run=True)
        if dry.file_size is not None and dry.file_size > MAX_SMALL_FILE:
            raise too_large(dry.file_size)
    # No progress bar: on a terminal each download left a blank line on stderr before the report.
    try:
        local = hf_hub_download(remote.repo_id, name, revision=remote.commit, cache_dir=cache, endpoint=remote.endpoint, etag_timeout=_timeout(),
                                tqdm_class=_capped(hf_tqdm))
    except _TooLarge as exc:  # the body went on past the limit, whatever the HEAD announced
        raise too_large(exc.args[0]) from None
    except OSError as exc:
        if exc.errno is not None:  # the system's (a full disk, permissions): the CLI's words for those
            raise
        # huggingface_hub's own (e.g. "Consistency check failed": the body was not the size announced)
        why = printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise _error("Cannot read Hub repository", given, f"downloading {name} failed: {why}",
                     f"This is the network or the Hub, not the model: retry; the endpoint is {remote.endpoint} (HF_ENDPOINT).") from exc
    got = os.path.getsize(local)
    if got > MAX_SMALL_FILE:
        raise too_large(got)
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(local, target)  # a copy, not a link: read_checkpoint refuses links leading out of a checkpoint
    return None if isinstance(before, str) else got


class _TooLarge(Exception):
    pass


def _capped(base: type) -> type:
    """A progress bar for hf_hub_download, always disabled (huggingface_hub's own class, so that its
    xet download path finds every method it calls), that stops the download once more than
    MAX_SMALL_FILE bytes came (a server can announce one size in its HEAD and send another)."""

    class Capped(base):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.received = 0

        def update(self, n: int | float | None = 1):
            self.received += int(n or 0)
            if self.received > MAX_SMALL_FILE:
                raise _TooLarge(self.received)
            return super().update(n)

    return Capped


def _header(root: Path, remote: RemoteRead, name: str, listed: int | None, given: str) -> int:
    """Write ``name``'s stub: its first ``8 + N`` bytes (N its header length), then a hole up to its real
    size. Returns the bytes transferred. A header whose length or size is wrong is written as far as it
    goes, for read_checkpoint to refuse in the words it has for the same local file."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import hf_hub_url

    url = hf_hub_url(remote.repo_id, name, revision=remote.commit, endpoint=remote.endpoint)
    first, size = _range(url, 0, 8)
    size = size if size is not None else listed
    if size is None:
        raise _error("Cannot read Hub repository", given, f"the Hub gave no size for {name}", "Retry; if it persists, download the file and check the local copy.")
    if size > MAX_FILE_SIZE:
        raise _error("Cannot read Hub repository", given, f"the Hub says {name} is {size} bytes, more than any real file ({MAX_FILE_SIZE})",
                     "The server is broken or hostile: check HF_ENDPOINT (and a proxy), or download the file and check the local copy.")
    blob = first
    if len(first) == 8:
        (n,) = struct.unpack("<Q", first)
        if n > constants.SAFETENSORS_MAX_HEADER_LENGTH:
            raise _error("Cannot read safetensors header", f"{remote.shown}/{name}",
                         f"its header is {n} bytes, more than the {constants.SAFETENSORS_MAX_HEADER_LENGTH} huggingface_hub reads remotely",
                         f"Download the file and check the local copy: `{_hf_download(remote.repo_id, remote.revision, name)}`.")
        if 0 < n <= size - 8:
            header, _ = _range(url, 8, 8 + n)
            blob += header
    target = root / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(blob)
            fh.truncate(max(size, len(blob)))  # the data region: a hole, never fetched
    except OSError as exc:  # a size or name this filesystem refuses (EFBIG, ENAMETOOLONG, ...), or a full disk
        raise _error("Cannot read Hub repository", given, f"cannot lay out {name} ({size} bytes) in a temporary stub: {exc.strerror or exc}",
                     f"Check the space in {tempfile.gettempdir()} (TMPDIR), or download the file and check the local copy.") from exc
    return len(blob)


def _range(url: str, start: int, end: int) -> tuple[bytes, int | None]:
    """Bytes [start, end) of ``url`` and the file's total size (from Content-Range), through
    huggingface_hub's session (token, endpoint, offline mode) with its backoff. Never reads more than
    asked for, even from a server that ignores the range. A connection lost mid-body is retried here
    (huggingface_hub's backoff covers the request, not the body read inside it)."""
    import time

    for attempt in range(_RETRIES + 1):
        try:
            return _range_once(url, start, end)
        except _BodyLost:
            if attempt == _RETRIES:
                raise
            time.sleep(min(0.5 * 2**attempt, 4))
    raise AssertionError("unreachable")


def _range_once(url: str, start: int, end: int) -> tuple[bytes, int | None]:
    import httpx2
    from huggingface_hub.utils import build_hf_headers, http_stream_backoff

    headers = {**build_hf_headers(), "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
    with http_stream_backoff("GET", url, headers=headers, max_retries=_RETRIES, base_wait_time=0.5, max_wait_time=4, timeout=_timeout()) as response:
        # A network error inside this block would be thrown into huggingface_hub's retry generator, which
        # cannot retry there ("generator didn't stop after throw()", an internal error): it leaves as ours.
        try:
            return _body(response, url, start, end)
        except httpx2.TransportError as exc:
            raise _BodyLost(f"{type(exc).__name__} while reading the response: {exc}") from exc


def _body(response, url: str, start: int, end: int) -> tuple[bytes, int | None]:
    _raise_for_error(response)
    total = None
    content_range = response.headers.get("Content-Range", "")
    declared = content_range.rpartition("/")[2]
    if response.status_code == 206 and "/" in content_range and declared.isascii() and declared.isdigit():
        total = int(declared[:40])  # 40 digits or more is refused as too large either way
    elif response.status_code == 200 and start == 0:
        length = response.headers.get("Content-Length", "")
        total = int(length[:40]) if length.isascii() and length.isdigit() else None
    data = bytearray()
    if response.status_code == 200 and start > 0:
        raise _RangeIgnored(url)
    for chunk in response.iter_bytes():
        data += chunk[: end - start - len(data)]
        if len(data) >= end - start:
            break
    return bytes(data), total


def _raise_for_error(response) -> None:
    """huggingface_hub's exception for an error answer (``hf_raise_for_status``: its mapping of the status,
    X-Error-Code and message), from at most MAX_ERROR_BODY bytes of the decoded body. Not by Content-Length:
    that is the compressed size (1 MB of gzip can decode to 1 GB), and an endless body declares none."""
    if response.status_code < 400:
        return
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    body = bytearray()
    for chunk in response.iter_bytes():  # decoded in bounded pieces by httpx2
        body += chunk[: MAX_ERROR_BODY - len(body)]
        if len(body) >= MAX_ERROR_BODY:
            break  # the connection is closed unread: the rest never comes
    # The headers that describe the body as sent go: the synthetic answer's body is the decoded, capped one.
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    hf_raise_for_status(httpx2.Response(response.status_code, headers=headers, content=bytes(body), request=response.request))


class _BodyLost(Exception):
    pass


class _RangeIgnored(Exception):
    pass


def _bin_only(given: str, remote: RemoteRead, entry: str) -> InvalidInputError:
    return _error("Cannot read Hub repository", given,
                  f"its weights are PyTorch .bin files ({entry}), whose tensor table sits inside a zip archive and cannot be read with range requests",
                  f"Download it and check the local copy (lora-inspector reads it from the cache, without unpickling): "
                  f"`{_hf_download(remote.repo_id, remote.revision)} --include '*.bin' '*.json' '*.model' '*.txt'`.")


@contextmanager
def _hub_errors(given: str, repo_id: str, rev: str, endpoint: str) -> Iterator[None]:
    """huggingface_hub's exceptions as Error/Hint, saying whose fault it is: the id, the access, or the network."""
    import httpx2
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import get_token

    what = "Cannot read Hub repository"
    network = (f"This is the network or the Hub, not the model: check the connection (and a proxy), then retry; "
               f"`--offline` reads the local cache only. The endpoint is {endpoint} (HF_ENDPOINT).")
    try:
        yield
    except OfflineModeIsEnabled as exc:
        raise offline_error(given, repo_id) from exc
    except GatedRepoError as exc:
        why = "it is a gated repository and no token is set" if get_token() is None else "it is a gated repository and this token has not been granted access"
        raise _error(what, given, why, f"Accept the license on the model page ({endpoint}/{repo_id}) and set HF_TOKEN "
                     "(or run `hf auth login`) with a token of that account.") from exc
    except RepositoryNotFoundError as exc:
        raise _error(what, given, f"no repository '{repo_id}' on {endpoint} (or it is private)",
                     "Check the id (org/name); for a private repository set HF_TOKEN (or run `hf auth login`).") from exc
    except RevisionNotFoundError as exc:
        raise _error(what, given, f"'{repo_id}' has no revision '{rev}'",
                     f"Give a branch, tag or commit that exists, e.g. '{repo_id}@main'.") from exc
    except LocalEntryNotFoundError as exc:  # hf_hub_download's word for "the Hub could not be reached"
        raise _error(what, given, f"cannot reach {endpoint} ({printable(str(exc).splitlines()[0])})", network) from exc
    except EntryNotFoundError as exc:
        name = getattr(exc, "response", None) and str(exc.response.request.url).rpartition("/")[2]
        raise _error(what, given, f"the repository lists {name or 'a file'} but the Hub has no such file at {rev}",
                     "The repository changed while it was read, or is broken: retry, or give a commit (org/name@sha).") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if getattr(exc, "response", None) is not None else None
        if status is not None and status >= 500:
            raise _error(what, given, f"the Hub answered {status} (a server error)", network) from exc
        raise _error(what, given, f"the Hub refused the request ({status}: {printable(str(exc).splitlines()[0])})",
                     "Check HF_TOKEN and the id; retry later if it says too many requests.") from exc
    except (httpx2.TransportError, _RangeIgnored, _BodyLost) as exc:
        why = ("it ignored a range request (it would send whole shards)" if isinstance(exc, _RangeIgnored)
               else str(exc) if isinstance(exc, _BodyLost) else f"{type(exc).__name__}: {exc}")
        raise _error(what, given, f"cannot reach {endpoint} ({printable(why)})", network) from exc
    except httpx2.RequestError as exc:  # not the network's: a redirect loop, a body not in its declared encoding
        raise _error(what, given, f"{endpoint} answered as no Hub does ({printable(f'{type(exc).__name__}: {exc}'.splitlines()[0])})",
                     _hostile_hint(repo_id, rev)) from exc


def offline_error(given: str, repo_id: str) -> InvalidInputError:
    from inspector.io.paths import hub_cache

    return _error("Cannot read checkpoint", given, f"it is not in the local Hugging Face cache ({hub_cache()}) with its weights, "
                  "and offline mode (--offline or HF_HUB_OFFLINE) rules out the network",
                  f"Run without --offline to read its headers from the Hub, or download it first: `hf download {repo_id}`.")


def refuse_data(checkpoints, command: str) -> None:
    """Refuse to read tensor data from a checkpoint read remotely (its stub holds none)."""
    for ckpt in checkpoints:
        remote = getattr(ckpt, "remote", None)
        if remote is not None:
            raise InvalidInputError(f"Cannot run {command}", ckpt.path, "it reads tensor data, and this checkpoint's headers were read from the Hub without it",
                                    download_hint(remote))


def download_hint(remote: RemoteRead) -> str:
    """What to do about a checkpoint read remotely when tensor data is needed."""
    return f"Download it first (`{_hf_download(remote.repo_id, remote.revision)}`), then run again: the cached copy is used."


def _hf_download(repo_id: str, revision: str, *names: str) -> str:
    """The `hf download` command for ``repo_id`` (and ``names`` in it) at the revision asked for."""
    rev = f" --revision {revision}" if revision != "main" else ""
    return " ".join(("hf download", repo_id, *names)) + rev


def _hostile_hint(repo_id: str, revision: str) -> str:
    """The hint for an answer no Hub gives: the endpoint is at fault, not the model."""
    return ("The server is broken or hostile: check HF_ENDPOINT (and a proxy); "
            f"or download the repository and check the local copy: `{_hf_download(repo_id, revision)}`.")
