"""A small in-memory stand-in for the Hugging Face Hub (stdlib only), served on 127.0.0.1 for the tests.

It speaks the part of the REST API that `huggingface_hub` uses for head sets: repo create, model info,
tree listing, preupload + NDJSON commit (regular, base64-inline uploads; no LFS or Xet), resolve/download
with `X-Repo-Commit`/`ETag` headers and byte ranges, model search by `filter`, pull requests from
`create_pr`. Every commit keeps its snapshot, so a commit id resolves to the files as they were.
Tags come from the README's YAML like on the Hub: its `tags`, `library_name`, and `base_model:<id>` /
`base_model:<relation>:<id>`. `hub.requests` records (method, path) for assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


@dataclass
class Repo:
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: bytes}
    refs: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1" -> sha
    downloads: int = 0

    def files(self, rev: str) -> dict[str, bytes] | None:
        sha = self.refs.get(rev, rev)
        return self.commits.get(sha)

    def tags(self) -> list[str]:
        card = self.files("main").get("README.md", b"").decode()
        match = re.match(r"^---\n(.*?)\n---", card, re.S)
        data = (yaml.safe_load(match[1]) if match else None) or {}
        tags = list(data.get("tags") or [])
        if data.get("library_name"):
            tags.append(data["library_name"])
        for base in [data["base_model"]] if isinstance(data.get("base_model"), str) else data.get("base_model") or []:
            tags.append(f"base_model:{base}")
            if data.get("base_model_relation"):
                tags.append(f"base_model:{data['base_model_relation']}:{base}")
        return list(dict.fromkeys(tags))


def _sha(*parts: object) -> str:
    return hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()


class FakeHub:
    """In-memory repos plus the HTTP server that serves them; use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        # poll every 10 ms: shutdown() waits up to one poll interval (the 0.5 s default cost every test 0.5 s)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def create(self, repo_id: str, private: bool = False) -> Repo:
        sha = _sha("init", repo_id)
        repo = self.repos[repo_id] = Repo(private=private, commits={sha: {}}, refs={"main": sha})
        return repo

    def commit(self, repo_id: str, files: dict[str, bytes], rev: str = "main", pr: bool = False) -> tuple[str, str]:
        """Apply a commit on top of `rev`; returns (new sha, ref it landed on)."""
        repo = self.repos[repo_id]
        parent = repo.refs.get(rev, rev)
        tree = {**repo.commits[parent], **files}
        sha = _sha(parent, len(repo.commits), *sorted(tree))
        repo.commits[sha] = {k: v for k, v in tree.items() if v is not None}
        ref = f"refs/pr/{sum(r.startswith('refs/pr/') for r in repo.refs) + 1}" if pr else rev
        repo.refs[ref] = sha
        return sha, ref


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def send(self, code: int, body: object = b"", headers: dict[str, str] | None = None, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def error(self, code: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.send(code, {"error": message}, {"X-Error-Code": kind, "X-Error-Message": message, **(headers or {})})

    def route(self) -> tuple[list[str], dict[str, list[str]]]:
        url = urlsplit(self.path)
        self.hub.requests.append((self.command, url.path))
        return [unquote(p) for p in url.path.strip("/").split("/")], parse_qs(url.query)

    def repo(self, repo_id: str) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self.error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
        return repo

    def files_at(self, repo: Repo, rev: str) -> dict[str, bytes] | None:
        files = repo.files(rev)
        if files is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return files

    def info(self, repo_id: str, repo: Repo, rev: str = "main") -> dict:
        files = repo.files(rev) or {}
        return {"id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": repo.refs.get(rev, rev),
                "private": repo.private, "gated": False, "disabled": False, "downloads": repo.downloads, "likes": 0,
                "tags": repo.tags(), "library_name": "headhunter" if "headhunter" in repo.tags() else None,
                "siblings": [{"rfilename": p} for p in sorted(files)],
                "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"}

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        parts, query = self.route()
        if parts[:2] == ["api", "models"] and len(parts) == 2:  # search: every filter value must be a tag
            wanted, author, text = query.get("filter", []), query.get("author", [None])[0], query.get("search", [""])[0]
            found = [self.info(rid, r) for rid, r in sorted(self.hub.repos.items())
                     if not r.private and all(t in r.tags() for t in wanted)
                     and author in (None, rid.split("/")[0]) and text.lower() in rid.lower()]
            return self.send(200, found[: int(query.get("limit", [1000])[0])])
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            if (repo := self.repo(repo_id)) is None:
                return None
            rev = rest[1] if len(rest) >= 2 else "main"
            if (files := self.files_at(repo, rev)) is None:
                return None
            if not rest or rest[0] == "revision":
                return self.send(200, self.info(repo_id, repo, rev))
            if rest[0] == "tree":
                prefix = "/".join(rest[2:])
                listing = [{"type": "file", "path": p, "size": len(b), "oid": _sha(b)} for p, b in sorted(files.items())
                           if not prefix or p.startswith(prefix + "/")]
                return self.send(200, listing)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, rev, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if (repo := self.repo(repo_id)) is None or (files := self.files_at(repo, rev)) is None:
                return None
            sha = repo.refs.get(rev, rev)
            if path not in files:
                return self.error(404, "EntryNotFound", f"Entry not found: {path}", {"X-Repo-Commit": sha})
            data, code, extra = files[path], 200, {}
            ranged = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            if ranged:
                start, stop = int(ranged[1]), min(int(ranged[2] or len(data) - 1), len(data) - 1)
                extra = {"Content-Range": f"bytes {start}-{stop}/{len(data)}"}
                data, code = data[start : stop + 1], 206
            elif self.command == "GET":
                repo.downloads += 1
            return self.send(code, data, {"X-Repo-Commit": sha, "ETag": f'"{_sha(files[path])}"', **extra},
                             "application/octet-stream")
        if parts == ["api", "whoami-v2"]:
            return self.send(200, {"type": "user", "name": "tester", "orgs": [], "auth": {"accessToken": {"role": "write"}}})
        return self.error(404, "NoRoute", f"fakehub has no route GET {self.path}")

    def do_POST(self) -> None:
        parts, query = self.route()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if parts == ["api", "validate-yaml"]:
            return self.send(200, {"errors": [], "warnings": []})
        if parts == ["api", "repos", "create"]:
            req = json.loads(body)
            repo_id = f"{req.get('organization') or 'tester'}/{req['name']}"
            with self.hub.lock:
                exists = repo_id in self.hub.repos
                if not exists:
                    self.hub.create(repo_id, private=bool(req.get("private")))
            return self.send(409 if exists else 200, {"url": f"{self.hub.endpoint}/{repo_id}", "name": repo_id,
                                                      **({"error": "You already created this model repo"} if exists else {})})
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] in ("preupload", "commit"):
            repo_id, rev = "/".join(parts[2:4]), parts[5]
            if (repo := self.repo(repo_id)) is None or self.files_at(repo, rev) is None:
                return None
            if parts[4] == "preupload":
                modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in json.loads(body)["files"]]
                return self.send(200, {"files": modes})
            changes: dict[str, bytes] = {}
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    changes[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    changes[item["value"]["path"]] = None  # type: ignore[assignment]
                elif item["key"] != "header":
                    return self.error(400, "BadRequest", f"fakehub does not support {item['key']} (LFS/Xet)")
            with self.hub.lock:
                sha, ref = self.hub.commit(repo_id, changes, rev, pr=query.get("create_pr") == ["1"])
            pr_url = f"{self.hub.endpoint}/{repo_id}/discussions/{ref.rsplit('/', 1)[1]}" if ref.startswith("refs/pr/") else None
            return self.send(200, {"commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha,
                                   "pullRequestUrl": pr_url})
        return self.error(404, "NoRoute", f"fakehub has no route POST {self.path}")
