"""A stand-in for the Hugging Face Hub on loopback: the endpoints `huggingface_hub` 2.x calls
to download a model (read from its source: `HfApi.repo_info`, `HfApi.list_repo_tree`,
`get_hf_file_metadata` and `http_get`), serving model folders from disk.

- `GET /api/models/{repo}/revision/{rev}`: the model info (`sha` = the commit);
- `GET /api/models/{repo}/tree/{commit}?recursive=true`: every file (path, size, git oid);
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: the file, with `X-Repo-Commit`, `ETag` and
  `Content-Length`; unknown repositories, revisions and files answer 404 with the
  `X-Error-Code` the Hub sends (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`).

Each request's path is kept in `requests`, so a test can tell what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def git_oid(data: bytes) -> str:
    """A file's git blob id, as the Hub reports it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeHub:
    """Repositories by name: each a map of commit -> files (path -> bytes), and refs."""

    repos: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)
    refs: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    endpoint: str = ""

    def add(self, repo: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> None:
        """Serve `folder`'s files as `repo` at `commit`, which each of `refs` points at."""
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        self.repos.setdefault(repo, {})[commit] = files
        for ref in refs:
            self.refs.setdefault(repo, {})[ref] = commit

    def commit_of(self, repo: str, revision: str) -> str | None:
        if revision in self.repos.get(repo, {}):
            return revision
        return self.refs.get(repo, {}).get(unquote(revision))


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, code: str, body: bool) -> None:
        data = json.dumps({"error": code}).encode()
        self._send(404, data, {"X-Error-Code": code, "Content-Type": "application/json"}, body)

    def _answer(self, body: bool) -> None:
        hub = self.hub
        url = urlparse(self.path)
        path = unquote(url.path)
        hub.requests.append(path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo, kind, revision = "/".join(parts[2:4]), parts[4], parts[5]
            if repo not in hub.repos:
                return self._error("RepoNotFound", body)
            commit = hub.commit_of(repo, revision)
            if commit is None:
                return self._error("RevisionNotFound", body)
            files = hub.repos[repo][commit]
            if kind == "revision":
                info = {
                    "id": repo,
                    "modelId": repo,
                    "sha": commit,
                    "private": False,
                    "siblings": [{"rfilename": name} for name in files],
                }
                return self._send(200, json.dumps(info).encode(), _JSON, body)
            if kind == "tree":
                tree = [
                    {"type": "file", "path": name, "size": len(data), "oid": git_oid(data)}
                    for name, data in files.items()
                ]
                return self._send(200, json.dumps(tree).encode(), _JSON, body)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if repo not in hub.repos:
                return self._error("RepoNotFound", body)
            commit = hub.commit_of(repo, revision)
            if commit is None:
                return self._error("RevisionNotFound", body)
            data = hub.repos[repo][commit].get(name)
            if data is None:
                return self._error("EntryNotFound", body)
            headers = {"X-Repo-Commit": commit, "ETag": f'"{git_oid(data)}"'}
            return self._send(200, data, headers, body)
        self._error("RepoNotFound", body)


_JSON = {"Content-Type": "application/json"}


@contextmanager
def serving(hub: FakeHub) -> Iterator[FakeHub]:
    """Serve `hub` on a loopback port (`hub.endpoint`) until the block ends."""
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
