"""A local stand-in of the Hugging Face Hub endpoints that ``huggingface_hub`` uses to publish.

It is a real HTTP server on 127.0.0.1 driven by the real ``huggingface_hub`` client (point
``HF_ENDPOINT`` or ``HfApi(endpoint=...)`` at ``hub.url`` and set ``HF_HUB_DISABLE_XET=1`` so the
client uses the plain LFS "basic" transfer instead of Xet). Only the endpoints the client calls
are implemented, with the Hub's wire formats:

- ``POST /api/repos/create`` (409 when the repo exists)
- ``GET /api/models/{repo}[/revision/{rev}]`` (model/repo info)
- ``POST /api/validate-yaml``
- ``POST /api/models/{repo}/preupload/{rev}`` (upload mode + remote oid per file)
- ``POST /{repo}.git/info/lfs/objects/batch`` (no ``actions`` for blobs already stored: dedupe/resume)
- ``PUT /_lfs/{oid}`` and ``POST /_lfs_verify/{repo}`` (basic transfer)
- ``POST /api/models/{repo}/commit/{rev}`` (ndjson)
- ``POST /api/models/{repo}/paths-info/{rev}``, ``GET /api/models/{repo}/tree/{rev}[/{path}]``
- ``HEAD/GET /{repo}/resolve/{rev}/{path}`` (with Range), for downloads and header reads

LFS blobs are stored on disk under ``root/lfs/<sha256>``; every request and every uploaded byte is
counted so tests can assert "a second publish uploads nothing". ``hold_after_uploads`` injects a
fault: once that many LFS PUTs completed, the next PUT blocks (``held`` is set) until ``release``
is set, then the connection is dropped without an answer, as when a publisher's machine dies.
``download_faults`` injects network errors into downloads: each GET of a file body takes the next
number N from the list, sends the headers (full length) and only N bytes of the body, then drops the
connection, as a flaky network does mid-file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
# Extensions the Hub's default .gitattributes (plus GGUF) route to LFS whatever their size.
LFS_EXTENSIONS = (".gguf", ".bin", ".dat", ".imatrix", ".safetensors", ".png", ".pt", ".npz", ".zip", ".gz")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RepoFile:
    path: str
    size: int
    lfs_sha256: str | None  # None: a regular (git) file
    content: bytes | None  # regular files only

    @property
    def oid(self) -> str:
        if self.lfs_sha256 is not None:
            pointer = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.lfs_sha256}\nsize {self.size}\n"
            ).encode()
            return git_blob_sha1(pointer)
        assert self.content is not None
        return git_blob_sha1(self.content)


@dataclass
class Commit:
    oid: str
    summary: str
    description: str
    paths: list[str]


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, RepoFile] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1].oid if self.commits else "0" * 40


@dataclass
class Request:
    method: str
    path: str
    bytes_in: int
    status: int
    authorization: str | None
    range: str | None = None  # the Range header of the request (downloads resuming)


class HubStandIn:
    """Start with ``HubStandIn(root).start()``; stop with ``.stop()``. ``url`` is the endpoint."""

    def __init__(self, root: Path, *, token: str | None = None) -> None:
        self.root = Path(root)
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)
        self.token = token  # when set, write endpoints need "Authorization: Bearer <token>"
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.lfs_puts: list[str] = []  # oids whose upload completed
        self.lfs_bytes_received = 0
        self.hold_after_uploads: int | None = None
        self._admitted = 0  # LFS PUTs let through (see _lfs_put)
        #: Byte counts after which the next file-body GETs are cut off (one entry per dropped GET).
        self.download_faults: list[int] = []
        self.download_bytes_sent = 0
        #: Answers that differ from the Hub's, per route ("resolve", "model_info"): ``headers``
        #: replace the Hub's headers (an ETag like ``../../x``), or ``status`` (+ ``body``) replaces
        #: the whole answer. For tests of what a broken or hostile endpoint can make the client do.
        self.answers: dict[str, dict[str, Any]] = {}
        self.held = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> HubStandIn:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- helpers for tests -------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "lfs" / sha256

    def file_bytes(self, repo_id: str, path: str) -> bytes:
        f = self.repos[repo_id].files[path]
        if f.lfs_sha256 is not None:
            return self.blob_path(f.lfs_sha256).read_bytes()
        assert f.content is not None
        return f.content

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.lfs_puts.clear()
            self.lfs_bytes_received = 0
            self._admitted = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: HubStandIn

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # -- plumbing ----------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = self.rfile.readline().strip()
                n = int(line.split(b";")[0], 16)
                if n == 0:
                    self.rfile.readline()
                    break
                out += self.rfile.read(n)
                self.rfile.readline()
            return bytes(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: Any = None, *, headers: dict[str, str] | None = None,
              raw: bytes | None = None, head: bool = False) -> None:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        self._status = status

    def _record(self, nbytes: int) -> None:
        hub = self.server_hub
        with hub.lock:
            hub.requests.append(Request(self.command, self.path, nbytes, getattr(self, "_status", 0),
                                        self.headers.get("Authorization"), self.headers.get("Range")))

    def _authorized(self) -> bool:
        tok = self.server_hub.token
        if tok is None:
            return True
        return self.headers.get("Authorization") == f"Bearer {tok}"

    def _repo(self, repo_id: str) -> Repo | None:
        return self.server_hub.repos.get(repo_id)

    def _dispatch(self, method: str) -> None:
        body = self._body() if method in ("POST", "PUT") else b""
        url = urlparse(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        self._status = 0
        try:
            self._route(method, path, query, body)
        except _Dropped:
            self.close_connection = True
        finally:
            self._record(len(body))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # -- routes ------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        hub = self.server_hub
        # The LFS PUT goes to a pre-signed storage URL: no Authorization header, as on the Hub.
        write = method in ("POST", "PUT") and not path.startswith(("/api/validate-yaml", "/_lfs/"))
        if write and not self._authorized():
            return self._send(401, {"error": "Invalid credentials in Authorization header"})

        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body or b"{}")
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            with hub.lock:
                if repo_id in hub.repos:
                    return self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
                hub.repos[repo_id] = Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
            return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

        if method == "POST" and path == "/api/validate-yaml":
            return self._send(200, {"errors": [], "warnings": []})

        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m and method == "GET" and self._answered("model_info", head=False):
            return
        if m and method == "GET":
            repo = self._repo(m.group(1))
            if repo is None:
                return self._send(404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
            return self._send(200, {
                "id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha, "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(repo.files)],
            })

        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|paths-info|tree)/([^/]+)(?:/(.*))?", path)
        if m:
            repo_id, action, _rev, sub = m.groups()
            repo = self._repo(repo_id)
            if repo is None:
                return self._send(404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
            if action == "preupload" and method == "POST":
                return self._preupload(repo, json.loads(body))
            if action == "commit" and method == "POST":
                return self._commit(repo, body)
            if action == "paths-info" and method == "POST":
                return self._paths_info(repo, body)
            if action == "tree" and method == "GET":
                return self._tree(repo, sub or "", query)

        m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m and method == "POST":
            return self._lfs_batch(m.group(1), json.loads(body))

        m = re.fullmatch(r"/_lfs/([0-9a-f]{64})", path)
        if m and method == "PUT":
            return self._lfs_put(m.group(1), body)

        m = re.fullmatch(r"/_lfs_verify/(.+)", path)
        if m and method == "POST":
            payload = json.loads(body)
            ok = hub.blob_path(payload["oid"]).is_file()
            return self._send(200 if ok else 404, {"success": ok})

        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and method in ("GET", "HEAD"):
            return self._resolve(m.group(1), m.group(3), head=method == "HEAD")

        return self._send(404, {"error": f"stand-in: no route for {method} {path}"})

    def _preupload(self, repo: Repo, payload: dict[str, Any]) -> None:
        files = []
        for f in payload["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["size"] >= LFS_SIZE_THRESHOLD or f["path"].endswith(LFS_EXTENSIONS) or b"\0" in sample
            remote = repo.files.get(f["path"])
            # The Hub answers the remote oid: the sha256 for an LFS file, the git sha1 for a regular one.
            oid = None
            if remote is not None:
                oid = remote.lfs_sha256 if remote.lfs_sha256 is not None else remote.oid
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": files, "commitOid": repo.sha})

    def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> None:
        hub = self.server_hub
        if repo_id not in hub.repos:
            return self._send(404, {"message": "Repository not found"})
        objects = []
        for obj in payload["objects"]:
            item: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if not hub.blob_path(obj["oid"]).is_file():
                item["actions"] = {
                    "upload": {"href": f"{hub.url}/_lfs/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{hub.url}/_lfs_verify/{repo_id}", "header": {}},
                }
            objects.append(item)
        self._send(200, {"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str, body: bytes) -> None:
        hub = self.server_hub
        with hub.lock:
            # Count PUTs as they are admitted, not as they complete: the client uploads in
            # parallel, and two PUTs in flight must not both slip past the hold.
            hold = hub.hold_after_uploads is not None and hub._admitted >= hub.hold_after_uploads
            if not hold:
                hub._admitted += 1
            hub.lfs_bytes_received += len(body)
        if hold:
            # Signal only once every admitted upload has landed, so a test that kills the
            # client on ``held`` sees exactly ``hold_after_uploads`` completed uploads.
            deadline = time.monotonic() + 60
            while len(hub.lfs_puts) < (hub.hold_after_uploads or 0) and time.monotonic() < deadline:
                time.sleep(0.01)
            hub.held.set()
            hub.release.wait(timeout=60)
            raise _Dropped()
        if hashlib.sha256(body).hexdigest() != oid:
            return self._send(400, {"error": "sha256 mismatch"})
        tmp = hub.blob_path(oid).with_suffix(".partial")
        tmp.write_bytes(body)
        tmp.replace(hub.blob_path(oid))
        with hub.lock:
            hub.lfs_puts.append(oid)
        self._send(200, raw=b"", headers={"ETag": f'"{oid}"'})

    def _commit(self, repo: Repo, body: bytes) -> None:
        hub = self.server_hub
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = lines[0]["value"]
        new: dict[str, RepoFile] = {}
        for item in lines[1:]:
            v = item["value"]
            if item["key"] == "file":
                data = base64.b64decode(v["content"])
                new[v["path"]] = RepoFile(v["path"], len(data), None, data)
            elif item["key"] == "lfsFile":
                if not hub.blob_path(v["oid"]).is_file():
                    return self._send(422, {"error": f"LFS object {v['oid']} for {v['path']} was never uploaded"})
                new[v["path"]] = RepoFile(v["path"], v["size"], v["oid"], None)
            elif item["key"] == "deletedFile":
                repo.files.pop(v["path"], None)
            else:
                return self._send(400, {"error": f"stand-in: unsupported commit op {item['key']}"})
        with hub.lock:
            repo.files.update(new)
            oid = hashlib.sha1(f"{repo.sha}{header['summary']}{sorted(new)}{len(repo.commits)}".encode()).hexdigest()
            repo.commits.append(Commit(oid, header["summary"], header.get("description", ""), sorted(new)))
        self._send(200, {"commitUrl": f"{hub.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid,
                         "success": True, "pullRequestUrl": None})

    def _entry(self, f: RepoFile) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "path": f.path, "size": f.size, "oid": f.oid}
        if f.lfs_sha256 is not None:
            out["lfs"] = {"oid": f.lfs_sha256, "size": f.size, "pointerSize": 134}
        return out

    def _paths_info(self, repo: Repo, body: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        out = []
        for p in paths:
            if p in repo.files:
                out.append(self._entry(repo.files[p]))
            elif any(k.startswith(p.rstrip("/") + "/") for k in repo.files):
                out.append({"type": "directory", "path": p.rstrip("/"), "oid": "0" * 40})
        self._send(200, out)

    def _tree(self, repo: Repo, sub: str, query: dict[str, list[str]]) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for p in sorted(repo.files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(len(parts)):
                    dirs.add(prefix + "/".join(parts[: i + 1]))
            out.append(self._entry(repo.files[p]))
        out = [{"type": "directory", "path": d, "oid": "0" * 40} for d in sorted(dirs)] + out
        self._send(200, out)

    def _answered(self, route: str, *, head: bool) -> bool:
        """Send a replacement answer for ``route`` when the test set one with a ``status``."""
        answer = self.server_hub.answers.get(route)
        if not answer or "status" not in answer:
            return False
        raw = str(answer.get("body", "")).encode()
        self._send(int(answer["status"]), raw=raw, headers=dict(answer.get("headers", {})), head=head)
        return True

    def _resolve(self, repo_id: str, path: str, *, head: bool) -> None:
        if self._answered("resolve", head=head):
            return
        repo = self._repo(repo_id)
        if repo is None:
            return self._send(404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"}, head=head)
        if path not in repo.files:
            return self._send(404, {"error": "Entry not found"}, headers={"X-Error-Code": "EntryNotFound"}, head=head)
        f = repo.files[path]
        data = self.server_hub.file_bytes(repo_id, path)
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{f.lfs_sha256 or f.oid}"', "Accept-Ranges": "bytes"}
        if f.lfs_sha256 is not None:
            headers["X-Linked-Etag"] = f'"{f.lfs_sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        headers.update(self.server_hub.answers.get("resolve", {}).get("headers", {}))
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._send_body(206, data[start : end + 1], headers, head)
        self._send_body(200, data, headers, head)

    def _send_body(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        hub = self.server_hub
        cut = None
        if not head:
            with hub.lock:
                if hub.download_faults:
                    cut = hub.download_faults.pop(0)
                hub.download_bytes_sent += len(body) if cut is None else min(cut, len(body))
        if cut is None:
            return self._send(status, raw=body, headers=headers, head=head)
        # The promised length, a part of the body, then the connection goes away.
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self._status = status
        raise _Dropped()


class _Dropped(Exception):
    """Raised inside a handler to close the connection without an answer."""
