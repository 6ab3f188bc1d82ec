"""A local stand-in for the Hugging Face Hub's HTTP API, for the routes huggingface_hub uses to read
a repository: model info (``/api/models/{repo}[/revision/{rev}]``) and ``/{repo}/resolve/{rev}/{file}``
(HEAD and GET, with ``Range``), answering with the headers the client reads (``X-Repo-Commit``,
``ETag``, ``Content-Range``, ``X-Error-Code``).

Started by the tests on 127.0.0.1 (port 0) in a thread; huggingface_hub is pointed at it with
``HF_ENDPOINT``. It counts the body bytes it serves per file (a repository's model-info JSON under
``(repo, INFO)``), so a test can assert that no tensor data was read. Files are ``bytes`` or a
``Path`` (read by range: a sparse 5 GB shard costs nothing).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

File = bytes | Path
INFO = "<model-info>"  # the file name the model-info API's bytes are counted under
TOKEN = "hf_test_token"  # the token of the tests' account: the one a private repository accepts
# A raw answer (a broken or hostile server's): status, headers ("{path}" in a value is the request's
# path: a redirect to itself), body. Content-Length is the body's unless the headers give one.
Raw = tuple[int, dict[str, str], bytes]


@dataclass
class Repo:
    revisions: dict[str, dict[str, File]]  # branch or tag -> {file name -> content}
    gated: bool = False  # files need an Authorization header (any token: the tests' account was granted access)
    private: bool = False  # model info and files answer 401 RepoNotFound without "Authorization: Bearer {TOKEN}"
    missing: set[str] = field(default_factory=set)  # listed by the API, but 404 EntryNotFound when fetched
    # A hostile server's lies: the size the file listing gives (any JSON value), and the size a HEAD's
    # Content-Length and a range's Content-Range give (the body sent is the real file's).
    listed: dict[str, object] = field(default_factory=dict)
    declared: dict[str, int] = field(default_factory=dict)
    info: bytes | None = None  # the model-info body sent instead of the listing (a broken server's JSON, or none)

    def commit(self, rev: str) -> str:
        return hashlib.sha1(f"{id(self)}:{rev}".encode()).hexdigest()

    def files(self, rev: str) -> tuple[str, dict[str, File]] | None:
        """(commit, files) for a branch, tag or commit hash."""
        for name, files in self.revisions.items():
            if rev in (name, self.commit(name)):
                return self.commit(name), files
        return None


@dataclass
class Served:
    bytes: Counter = field(default_factory=Counter)  # (repo, file) -> body bytes sent
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    ended: int = 0  # endless answers ended (the client hung up): their bytes are counted

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


def _size(content: File) -> int:
    return len(content) if isinstance(content, bytes) else content.stat().st_size


def _read(content: File, start: int, end: int) -> bytes:
    if isinstance(content, bytes):
        return content[start:end]
    with open(content, "rb") as fh:
        fh.seek(start)
        return fh.read(end - start)


def _etag(content: File) -> str:
    if isinstance(content, bytes):
        return hashlib.sha256(content).hexdigest()
    st = content.stat()
    return hashlib.sha256(f"{content}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


class HubServer:
    """``with HubServer(repos) as hub: ... hub.url ... hub.served.total``"""

    def __init__(self, repos: dict[str, Repo], *, status: int | None = None, ranges: bool = True, endless_range_error: int | None = None,
                 cut_ranges: int = 0, stall_ranges: float = 0.0, latency: float = 0.0, fail_first: int = 0,
                 endless_info: str | None = None, raw_info: Raw | None = None, raw_range: Raw | None = None):
        self.repos = repos
        self.status = status  # answer every request with this (a 5xx: the Hub is down)
        # answer range requests with this status and an endless chunked body (a hostile server)
        self.endless_range_error = endless_range_error
        self.cut_ranges = cut_ranges  # the first N range answers promise their bytes and send half (the connection drops)
        self.stall_ranges = stall_ranges  # seconds each range request waits before its answer (a stalled server)
        self.latency = latency  # seconds every request waits before its answer (a round trip to a distant Hub)
        self.fail_first = fail_first  # the first N model-info requests answered 503 (a moment's outage)
        # answer model-info requests with a JSON listing that never ends (a hostile server): "chunked" (no
        # length) or "declared" (a Content-Length of 10**12)
        self.endless_info = endless_info
        self.raw_info = raw_info  # the answer to every model-info request
        self.raw_range = raw_range  # the answer to every range request
        self.ranges = ranges  # False: ignore Range headers, as a broken proxy does (whole files, 200)
        self.served = Served()
        self._lock = threading.Lock()
        self._server = _Quiet(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll: shutdown() waits up to one poll interval (0.5 s by default, per test).
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> HubServer:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, repo: str, name: str, n: int, method: str, path: str) -> None:
        with self._lock:
            self.served.bytes[(repo, name)] += n
            self.served.requests.append((method, path))


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that hangs up mid-body (it asked for less) is no test failure; asserts say the rest


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall between them

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None, *, repo: str = "", name: str = "") -> None:
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = 0 if self.command == "HEAD" else len(body)
            if sent:
                self.wfile.write(body)
            hub.count(repo, name, sent, self.command, self.path)

        def _raw(self, raw: Raw, repo: str, name: str) -> None:
            code, headers, body = raw
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value.replace("{path}", self.path))
            if not any(key.lower() == "content-length" for key in headers):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = 0
            if self.command != "HEAD":
                try:
                    self.wfile.write(body)
                    sent = len(body)
                except OSError:  # the client hung up (it read what it wanted of an error)
                    self.close_connection = True
            hub.count(repo, name, sent, self.command, self.path)

        def _error(self, code: int, error_code: str, message: str, commit: str | None = None) -> None:
            headers = {"X-Error-Code": error_code, "X-Error-Message": message, "Content-Type": "application/json"}
            if commit:
                headers["X-Repo-Commit"] = commit
            self._send(code, json.dumps({"error": message}).encode(), headers)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            if hub.latency:
                time.sleep(hub.latency)
            failing = False
            if self.path.startswith("/api/models/"):
                with hub._lock:
                    failing, hub.fail_first = hub.fail_first > 0, max(0, hub.fail_first - 1)
            if failing:
                return self._send(503, b"upstream unavailable", {"Content-Type": "text/plain"})
            if hub.status is not None:
                return self._send(hub.status, b"upstream unavailable", {"Content-Type": "text/plain"})
            path = unquote(urlsplit(self.path).path)
            if path.startswith("/api/models/"):
                if hub.raw_info is not None:
                    return self._raw(hub.raw_info, path[len("/api/models/"):].partition("/revision/")[0], INFO)
                return self._info(path[len("/api/models/"):])
            if "/resolve/" in path:
                repo, _, rest = path.lstrip("/").partition("/resolve/")
                for repo_rev in hub.repos.get(repo, Repo({})).revisions:  # a revision may hold "/" (refs/pr/1)
                    if rest.startswith(repo_rev + "/"):
                        return self._resolve(repo, repo_rev, rest[len(repo_rev) + 1:])
                rev, _, name = rest.partition("/")
                return self._resolve(repo, rev, name)
            self._send(404, b"not found")

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and self.headers.get("Authorization") != f"Bearer {TOKEN}"):
                self._error(401, "RepoNotFound", "Repository not found")  # the Hub's word for a private one too
                return None
            return repo

        def _info(self, rest: str) -> None:
            repo_id, _, rev = rest.partition("/revision/")
            repo = self._repo(repo_id)
            if repo is None:
                return
            found = repo.files(rev or "main")
            if found is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            commit, files = found
            if hub.endless_info is not None:
                return self._endless_info(repo_id, commit)
            if repo.info is not None:
                return self._send(200, repo.info, {"Content-Type": "application/json"}, repo=repo_id, name=INFO)
            siblings = [{"rfilename": n, "size": repo.listed.get(n, _size(c)), "blobId": _etag(c)[:40]} for n, c in sorted(files.items())]
            body = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo.private, "gated": "manual" if repo.gated else False,
                    "siblings": siblings}
            self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, repo=repo_id, name=INFO)

        def _endless_info(self, repo_id: str, commit: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            chunked = hub.endless_info == "chunked"
            self.send_header(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(10**12))))
            self.end_headers()
            hub.count(repo_id, INFO, 0, self.command, self.path)  # the request now, its bytes once the client hung up
            siblings = b'{"rfilename": "model.safetensors", "size": 1},' * 1000
            sent = 0
            try:
                for piece in (b'{"sha": "%s", "siblings": [' % commit.encode(), *[siblings] * 6000):  # 276 MB at most
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    sent += len(piece)  # until the client hangs up (the limit: a test that hangs still ends)
            except OSError:
                pass
            with hub._lock:
                hub.served.bytes[(repo_id, INFO)] += sent
                hub.served.ended += 1
            self.close_connection = True

        def _resolve(self, repo_id: str, rev: str, name: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            found = repo.files(rev)
            if found is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            commit, files = found
            if repo.gated and not self.headers.get("Authorization"):
                return self._error(401, "GatedRepo", "Access to model is restricted. You must have access to it and be authenticated to access it.")
            if name not in files or name in repo.missing:
                return self._error(404, "EntryNotFound", "Entry not found", commit)
            content = files[name]
            size = _size(content)
            headers = {"X-Repo-Commit": commit, "ETag": f'"{_etag(content)}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            wanted = self.headers.get("Range") if hub.ranges else None
            if wanted is not None and hub.stall_ranges:
                time.sleep(hub.stall_ranges)
            if wanted is not None and hub.endless_range_error is not None:
                return self._endless(hub.endless_range_error, repo_id, name)
            if wanted is not None and hub.raw_range is not None:
                return self._raw(hub.raw_range, repo_id, name)
            if wanted is None:
                if self.command == "HEAD":
                    return self._head(repo.declared.get(name, size), headers, repo_id, name)
                if size > 50_000_000:  # a whole shard: the tests never want one
                    return self._error(500, "TooLarge", "the test server does not serve whole shards")
                return self._send(200, _read(content, 0, size), headers, repo=repo_id, name=name)
            match = _RANGE.match(wanted.strip())
            start = int(match.group(1)) if match else size
            if start >= size:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            end = min(int(match.group(2)) + 1 if match.group(2) else size, size)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{repo.declared.get(name, size)}"
            cut = False
            with hub._lock:
                if hub.cut_ranges > 0:
                    hub.cut_ranges -= 1
                    cut = True
            if cut:
                return self._cut(_read(content, start, end), headers, repo_id, name)
            self._send(206, _read(content, start, end), headers, repo=repo_id, name=name)

        def _cut(self, body: bytes, headers: dict, repo: str, name: str) -> None:
            self.send_response(206)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            hub.count(repo, name, len(body) // 2, self.command, self.path)

        def _endless(self, code: int, repo: str, name: str) -> None:
            self.send_response(code)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            chunk = b"x" * 65536
            sent = 0
            try:
                while sent < 2_000_000_000:  # until the client hangs up (the cap: a test that hangs still ends)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            except OSError:
                pass
            hub.count(repo, name, sent, self.command, self.path)
            self.close_connection = True

        def _head(self, size: int, headers: dict, repo: str, name: str) -> None:
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            hub.count(repo, name, 0, "HEAD", self.path)

    return Handler
