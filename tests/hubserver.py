"""A loopback Hugging Face Hub for tests: the HTTP protocol huggingface_hub 2.4 really speaks.

No machine here reaches huggingface.co, so tests serve tiny GPT-NeoX repos built locally
from 127.0.0.1 and point huggingface_hub at them (`endpoint=hub.endpoint`, or HF_ENDPOINT
before huggingface_hub is imported). What is implemented is what the installed client calls
(read from its source, `hf_api.py`, `file_download.py`, `utils/_http.py`):

* ``GET  /api/models/{repo}/refs``                      -> branches with target commits
* ``GET  /api/models/{repo}[/revision/{rev}]``          -> model info (sha, siblings)
* ``GET  /api/models/{repo}/tree/{rev}[/{path}]``       -> files with size, git oid and LFS
  metadata (sha256, size, pointerSize), paginated with a ``Link: <...>; rel="next"`` header
  like the Hub (1000 entries a page, 50 with ``expand``); ``lastCommit`` only with expand
* ``POST /api/models/{repo}/paths-info/{rev}``          -> the same entries for given paths
* ``HEAD/GET /{repo}/resolve/{rev}/{path}``             -> regular files: 200 with ``ETag``
  (git oid), ``X-Repo-Commit``, ``Content-Length``; LFS files: 302 to a second listener
  (the "CDN", another origin, so the client does not follow it on HEAD and reads the
  metadata from the redirect itself) with ``X-Linked-Etag`` (sha256), ``X-Linked-Size``,
  ``X-Repo-Commit``
* ``GET  {cdn}/blobs/{sha256}``                         -> the LFS object, honouring
  ``Range: bytes=N-`` with 206 / ``Content-Range`` (the client resumes with it)

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) as the Hub does,
which is how the client raises its typed errors.

Fault injection (`HubServer.add_fault`): an HTTP status (5xx, 429 with Retry-After) on any
kind of request, a connection dropped after N body bytes, a truncated body, a corrupted
body (bytes flipped, same length). Every request is logged (`HubServer.log`): method, kind,
path, status and body bytes sent, so a test can assert e.g. that a census downloaded no
weight bytes.

Usage::

    with HubServer() as hub:
        hub.add_branch("EleutherAI/pythia-tiny", "step0", checkpoint_dir)
        api = HfApi(endpoint=hub.endpoint, token=False)
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")
LFS_POINTER_SIZE = 134  # bytes of a git-lfs pointer file, as the Hub reports it
COMMIT_DATE = "2023-02-13T12:00:00.000Z"


# --- repository content ------------------------------------------------------------------
@dataclass(frozen=True)
class HubFile:
    path: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def oid(self) -> str:
        """The git blob sha1 (what the Hub reports as `oid` and the ETag of regular files)."""
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def is_lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def entry(self, commit: str | None = None) -> dict:
        """The `/tree` and `/paths-info` JSON entry."""
        out: dict = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.is_lfs:
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": LFS_POINTER_SIZE}
        if commit is not None:
            out["lastCommit"] = {"id": commit, "title": "Upload checkpoint", "date": COMMIT_DATE}
        return out


@dataclass
class HubRepo:
    repo_id: str
    branches: dict[str, str] = field(default_factory=dict)       # branch -> commit sha
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)  # sha -> files

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        return None


@dataclass
class Fault:
    """One injected failure. `on` is a request kind (refs, info, tree, paths-info, resolve,
    cdn, any); `path` an fnmatch pattern on the file path (`*` matches API calls too);
    `times` how often it fires (None: forever)."""

    kind: str                    # "status" | "drop" | "truncate" | "corrupt"
    on: str = "cdn"
    path: str = "*"
    revision: str | None = None
    status: int = 503
    after_bytes: int | None = None   # drop: bytes sent before the connection is cut
    retry_after: int | None = 0      # 429: Retry-After seconds
    times: int | None = 1
    fired: int = 0


@dataclass(frozen=True)
class LogEntry:
    method: str
    kind: str          # refs | info | tree | paths-info | resolve | cdn | unknown
    path: str          # the URL path (with query)
    file: str | None   # file path in the repo for resolve/cdn requests
    status: int
    bytes_sent: int    # body bytes the response carries (logged before it is sent: no race with the client)
    range: str | None


# --- the server --------------------------------------------------------------------------
class HubServer:
    """Hub-protocol HTTP server on 127.0.0.1 (an API listener and a "CDN" listener)."""

    def __init__(self, *, tree_page_size: int = 1000, tree_page_size_expand: int = 50) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.blobs: dict[str, bytes] = {}          # sha256 -> LFS object
        self.faults: list[Fault] = []
        self.log: list[LogEntry] = []
        self.tree_page_size = tree_page_size
        self.tree_page_size_expand = tree_page_size_expand
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.endpoint = ""
        self.cdn = ""

    # -- lifecycle
    def start(self) -> "HubServer":
        for role in ("api", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.hub = self          # type: ignore[attr-defined]
            server.role = role         # type: ignore[attr-defined]
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"hub-{role}", daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- content
    def add_branch(self, repo_id: str, branch: str, files: Path | str | Mapping[str, bytes],
                   *, title: str = "Upload checkpoint") -> str:
        """Create or move `branch` to a new commit holding `files` (a folder or a mapping).

        Returns the new commit sha (unique per call, like a real re-upload)."""
        if isinstance(files, (str, Path)):
            root = Path(files)
            content = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        else:
            content = dict(files)
        with self._lock:
            repo = self.repos.setdefault(repo_id, HubRepo(repo_id))
            hub_files = {path: HubFile(path, data) for path, data in sorted(content.items())}
            digest = hashlib.sha1()
            digest.update(f"{repo_id}\0{branch}\0{title}\0{len(repo.commits)}\0".encode())
            for path, f in hub_files.items():
                digest.update(f"{path}\0{f.oid}\0".encode())
                if f.is_lfs:
                    self.blobs[f.sha256] = f.data
            sha = digest.hexdigest()
            repo.commits[sha] = hub_files
            repo.branches[branch] = sha
        return sha

    def delete_branch(self, repo_id: str, branch: str) -> None:
        with self._lock:
            self.repos[repo_id].branches.pop(branch)

    def commit_of(self, repo_id: str, branch: str) -> str:
        return self.repos[repo_id].branches[branch]

    # -- faults and the log
    def add_fault(self, kind: str, **kwargs) -> Fault:
        fault = Fault(kind=kind, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget faults and the request log."""
        with self._lock:
            self.faults.clear()
            self.log.clear()

    def requests(self, *, kind: str | None = None, method: str | None = None,
                 file: str | None = None) -> list[LogEntry]:
        with self._lock:
            entries = list(self.log)
        return [
            e for e in entries
            if (kind is None or e.kind == kind) and (method is None or e.method == method)
            and (file is None or (e.file is not None and fnmatch.fnmatch(e.file, file)))
        ]

    def bytes_sent(self, *, file: str = "*", kind: str | None = None) -> int:
        """Body bytes served for files matching `file` (e.g. `*.safetensors`)."""
        return sum(e.bytes_sent for e in self.requests(kind=kind, file=file))

    def _take_fault(self, kinds: tuple[str, ...], request_kind: str, file: str | None,
                    revision: str | None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.kind not in kinds or fault.on not in (request_kind, "any"):
                    continue
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                if file is None and fault.path != "*":
                    continue
                if file is not None and not fnmatch.fnmatch(file, fault.path):
                    continue
                if fault.revision is not None and revision is not None and fault.revision != revision:
                    continue
                fault.fired += 1
                return fault
        return None

    def _record(self, entry: LogEntry) -> None:
        with self._lock:
            self.log.append(entry)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"

    # quiet: tests read HubServer.log instead
    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- routing
    def _dispatch(self, method: str) -> None:
        self._kind, self._file, self._revision, self._method = "unknown", None, None, method
        body = b""
        if method == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = parse_qs(url.query)
        try:
            if self.server.role == "cdn":  # type: ignore[attr-defined]
                self._kind = "cdn"
                if len(parts) == 2 and parts[0] == "blobs":
                    self._file = unquote(query.get("file", [""])[0]) or None
                    return self._serve_cdn(method, parts[1])
                return self._error(404, "EntryNotFound", "no such object")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = f"{unquote(parts[2])}/{unquote(parts[3])}"
                rest = parts[4:]
                if not rest:
                    self._kind = "info"
                    return self._model_info(method, repo_id, None, query)
                action = rest[0]
                if action == "refs":
                    self._kind = "refs"
                    return self._refs(method, repo_id, query)
                if action == "revision" and len(rest) >= 2:
                    self._kind = "info"
                    return self._model_info(method, repo_id, unquote("/".join(rest[1:])), query)
                if action == "tree" and len(rest) >= 2:
                    self._kind = "tree"
                    return self._tree(method, repo_id, unquote(rest[1]), unquote("/".join(rest[2:])), query)
                if action == "paths-info" and len(rest) >= 2:
                    self._kind = "paths-info"
                    form = parse_qs(body.decode())
                    return self._paths_info(method, repo_id, unquote(rest[1]), form)
            if len(parts) >= 5 and parts[2] == "resolve":
                self._kind = "resolve"
                repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
                return self._resolve(method, repo_id, unquote(parts[3]), unquote("/".join(parts[4:])))
            return self._error(404, None, f"no route for {url.path}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- helpers
    def _status_fault(self) -> bool:
        fault = self.hub._take_fault(("status",), self._kind, self._file, self._revision)
        if fault is None:
            return False
        headers = {}
        if fault.status == 429 and fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        self._send(fault.status, b'{"error": "injected fault"}', "application/json", headers=headers,
                   method=self._method)
        return True

    def _send(self, status: int, body: bytes, content_type: str, *, headers: Mapping[str, str] | None = None,
              method: str = "GET", content_length: int | None = None) -> int:
        sent = len(body) if method != "HEAD" else 0
        # Log before answering: the client may act on the response (and a test read the
        # log) before this thread would get to log after writing it.
        self._log(method, status, sent)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if sent:
            self.wfile.write(body)
        return sent

    def _log(self, method: str, status: int, sent: int) -> None:
        self.hub._record(LogEntry(method=method, kind=self._kind, path=self.path, file=self._file,
                                  status=status, bytes_sent=sent, range=self.headers.get("Range")))

    def _json(self, method: str, payload, *, headers: Mapping[str, str] | None = None) -> None:
        self._send(200, json.dumps(payload).encode(), "application/json", headers=headers, method=method)

    def _error(self, status: int, code: str | None, message: str, *, method: str = "GET",
               headers: Mapping[str, str] | None = None) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._send(status, json.dumps({"error": message}).encode(), "application/json", headers=extra,
                   method=method)

    def _repo(self, repo_id: str, method: str) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found", method=method)
        return repo

    def _commit(self, repo: HubRepo, revision: str, method: str) -> str | None:
        self._revision = revision
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", method=method)
        return sha

    # -- API
    def _refs(self, method: str, repo_id: str, query: dict) -> None:
        if self._status_fault() or (repo := self._repo(repo_id, method)) is None:
            return
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in repo.branches.items()]
        payload = {"branches": branches, "converts": [], "tags": []}
        if query.get("include_prs"):
            payload["pullRequests"] = []
        self._json(method, payload)

    def _model_info(self, method: str, repo_id: str, revision: str | None, query: dict) -> None:
        if self._status_fault() or (repo := self._repo(repo_id, method)) is None:
            return
        sha = self._commit(repo, revision or "main", method)
        if sha is None:
            return
        files = repo.commits[sha]
        blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for f in files.values():
            sib: dict = {"rfilename": f.path}
            if blobs:
                sib.update({"size": f.size, "blobId": f.oid})
                if f.is_lfs:
                    sib["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": LFS_POINTER_SIZE}
            siblings.append(sib)
        self._json(method, {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": sha, "lastModified": COMMIT_DATE, "private": False,
            "disabled": False, "gated": False, "tags": ["gpt_neox"], "library_name": "transformers",
            "siblings": siblings,
        })

    def _tree(self, method: str, repo_id: str, revision: str, path: str, query: dict) -> None:
        if self._status_fault() or (repo := self._repo(repo_id, method)) is None:
            return
        sha = self._commit(repo, revision, method)
        if sha is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries: list[dict] = []
        folders: set[str] = set()
        for f in repo.commits[sha].values():
            if not f.path.startswith(prefix):
                continue
            rel = f.path[len(prefix):]
            if not recursive and "/" in rel:
                folder = prefix + rel.split("/")[0]
                if folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                     "size": 0, "path": folder})
                continue
            entries.append(f.entry(sha if expand else None))
        if prefix and not entries:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", method=method,
                               headers={"X-Repo-Commit": sha})
        page = self.hub.tree_page_size_expand if expand else self.hub.tree_page_size
        cursor = int(query.get("cursor", ["0"])[0])
        chunk = entries[cursor:cursor + page]
        headers = {}
        if cursor + page < len(entries):
            base = f"{self.hub.endpoint}{urlsplit(self.path).path}"
            headers["Link"] = (f"<{base}?recursive={str(recursive).lower()}&expand={str(expand).lower()}"
                               f"&cursor={cursor + page}>; rel=\"next\"")
        self._json(method, chunk, headers=headers)

    def _paths_info(self, method: str, repo_id: str, revision: str, form: dict) -> None:
        if self._status_fault() or (repo := self._repo(repo_id, method)) is None:
            return
        sha = self._commit(repo, revision, method)
        if sha is None:
            return
        expand = form.get("expand", ["False"])[0].lower() in ("1", "true")
        files = repo.commits[sha]
        out = [files[p].entry(sha if expand else None) for p in form.get("paths", []) if p in files]
        self._json(method, out)

    # -- downloads
    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        self._file = path
        if self._status_fault() or (repo := self._repo(repo_id, method)) is None:
            return
        sha = self._commit(repo, revision, method)
        if sha is None:
            return
        f = repo.commits[sha].get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", method=method,
                               headers={"X-Repo-Commit": sha})
        if f.is_lfs:
            # The Hub redirects LFS objects to a CDN on another origin; the metadata the
            # client needs rides on this redirect (it does not follow it on HEAD).
            location = f"{self.hub.cdn}/blobs/{f.sha256}?file={quote(path)}"
            return self._send(302, b"", "text/plain", method=method, headers={
                "Location": location, "ETag": f'"{f.oid}"', "X-Repo-Commit": sha,
                "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
            })
        self._serve_bytes(method, f.data, {"ETag": f'"{f.oid}"', "X-Repo-Commit": sha})

    def _serve_cdn(self, method: str, sha256: str) -> None:
        if self._status_fault():
            return
        data = self.hub.blobs.get(sha256)
        if data is None:
            return self._error(404, "EntryNotFound", f"no LFS object {sha256}", method=method)
        self._serve_bytes(method, data, {"ETag": f'"{sha256}"'})

    def _serve_bytes(self, method: str, data: bytes, headers: dict[str, str]) -> None:
        total = len(data)
        start, end = 0, total - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            first, _, last = range_header[len("bytes="):].partition("-")
            start = int(first) if first else 0
            end = min(int(last), total - 1) if last else total - 1
            if start >= total:
                return self._error(416, None, "range not satisfiable", method=method,
                                   headers={"Content-Range": f"bytes */{total}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{total}"}
        body = data[start:end + 1]
        headers = {**headers, "Accept-Ranges": "bytes"}
        if method == "HEAD":
            self._send(status, body, "application/octet-stream", headers=headers, method=method)
            return
        fault = self.hub._take_fault(("drop", "truncate", "corrupt"), self._kind, self._file, self._revision)
        if fault is None:
            self._send(status, body, "application/octet-stream", headers=headers, method=method)
        elif fault.kind == "corrupt":
            # same length, last bytes flipped: only a content hash can notice
            bad = bytearray(body)
            for i in range(max(0, len(bad) - 8), len(bad)):
                bad[i] ^= 0xFF
            self._send(status, bytes(bad), "application/octet-stream", headers=headers, method=method)
        elif fault.kind == "truncate":
            self._send(status, body[: len(body) // 2], "application/octet-stream", headers=headers, method=method)
        else:  # drop: promise the whole body, send part of it, cut the connection
            cut = len(body) // 2 if fault.after_bytes is None else min(fault.after_bytes, len(body))
            self._log(method, status, cut)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
