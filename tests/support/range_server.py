"""A range-capable HTTP server on 127.0.0.1 that answers what huggingface_hub asks to read files.

It serves real local files as if they were in Hub repositories:

- ``HEAD|GET /{org}/{repo}/resolve/{revision}/{path}`` with ``Range: bytes=a-b`` support
  (206 + ``Content-Range``), ``X-Repo-Commit`` and ``ETag`` headers as the Hub sends them;
- ``GET /api/models/{org}/{repo}`` and ``/api/models/{org}/{repo}/revision/{revision}``: the
  model info JSON with ``sha`` and ``siblings`` (the file listing).

It counts the bytes it sent in response bodies, so tests can check that only headers travel.
Point ``HF_ENDPOINT`` at ``server.url``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class RangeServer:
    """``with RangeServer({"org/repo": {"file.gguf": Path(...)}}) as srv: ... srv.url``."""

    def __init__(self, repos: Mapping[str, Mapping[str, Path]], *, commit: str = COMMIT,
                 honour_ranges: bool = True, private: Mapping[str, str] | None = None) -> None:
        self.repos = {r: dict(files) for r, files in repos.items()}
        self.commit = commit
        self.honour_ranges = honour_ranges
        #: repo -> the token that may read it (others get 401, as the Hub answers).
        self.private = dict(private or {})
        self.bytes_sent = 0
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # keep test output clean
                return

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _send(self, status: int, body: bytes, headers: Mapping[str, str], *, head: bool) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                    with server._lock:
                        server.bytes_sent += len(body)

            def _error(self, status: int, code: str, message: str, *, head: bool) -> None:
                body = json.dumps({"error": message}).encode()
                self._send(status, b"" if head else body,
                           {"Content-Type": "application/json", "X-Error-Code": code,
                            "X-Error-Message": message},
                           head=head)

            def _serve(self, *, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests.append((self.command, path, rng))
                repo_m = re.match(r"^/(?:api/models/)?([^/]+/[^/]+)", path)
                if repo_m and repo_m[1] in server.private:
                    if self.headers.get("Authorization") != f"Bearer {server.private[repo_m[1]]}":
                        return self._error(401, "", "Invalid username or password.", head=head)
                m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
                if m:
                    return self._model_info(m[1], m[2], head=head)
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if m:
                    return self._file(m[1], m[2], m[3], rng, head=head)
                self._error(404, "EntryNotFound", f"no route {path}", head=head)

            def _model_info(self, repo: str, rev: str | None, *, head: bool) -> None:
                if repo not in server.repos:
                    return self._error(404, "RepoNotFound", "Repository not found", head=head)
                if rev not in (None, "main", server.commit):
                    return self._error(404, "RevisionNotFound", "Invalid rev id", head=head)
                info = {
                    "id": repo,
                    "modelId": repo,
                    "sha": server.commit,
                    "private": False,
                    "siblings": [{"rfilename": f} for f in sorted(server.repos[repo])],
                }
                self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head=head)

            def _file(self, repo: str, rev: str, fname: str, rng: str | None, *, head: bool) -> None:
                if repo not in server.repos:
                    return self._error(404, "RepoNotFound", "Repository not found", head=head)
                if rev not in ("main", server.commit):
                    return self._error(404, "RevisionNotFound", "Invalid rev id", head=head)
                local = server.repos[repo].get(fname)
                if local is None:
                    return self._error(404, "EntryNotFound", "Entry not found", head=head)
                size = local.stat().st_size
                etag = '"' + hashlib.sha256(f"{local}:{size}".encode()).hexdigest() + '"'
                base = {"X-Repo-Commit": server.commit, "ETag": etag, "Accept-Ranges": "bytes",
                        "Content-Type": "application/octet-stream"}
                if head:
                    return self._send(200, b"", {**base, "Content-Length": str(size)}, head=True)
                m = _RANGE.match(rng or "") if server.honour_ranges else None
                if m is None:
                    with open(local, "rb") as f:
                        return self._send(200, f.read(), base, head=False)
                start = int(m[1])
                end = min(int(m[2]) if m[2] else size - 1, size - 1)
                if start >= size:
                    return self._send(416, b"", {**base, "Content-Range": f"bytes */{size}"}, head=False)
                with open(local, "rb") as f:
                    f.seek(start)
                    body = f.read(end - start + 1)
                self._send(206, body, {**base, "Content-Range": f"bytes {start}-{end}/{size}"}, head=False)

        return Handler
