"""A local Hugging Face Hub-compatible HTTP server for tests.

It implements, strictly, the endpoints huggingface_hub calls to create repos,
commit files (preupload + NDJSON commit: inline files and file deletions, with the
parent-commit check), read repo info and files, validate card metadata by the Hub's
rules (``validate-yaml``, and on every commit that writes a README.md, as the Hub
does), and manage collections. Malformed requests get 400,
missing repos 404, writes without the right token 401. Failures can be injected
per path to test retries. It stores what it receives in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

HANG = 0  # a fail_next status: answer nothing (a Hub that times out)


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)
    pull_requests: list[dict] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


class HubState:
    def __init__(self, token: str | None) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.collections: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.failures: list[tuple[str, str, int]] = []  # (method, path regex, status) consumed in order
        self.hang_seconds = 5.0
        self.lock = threading.Lock()

    def fail_next(self, method: str, path_pattern: str, *statuses: int) -> None:
        """The next requests matching ``method`` and ``path_pattern`` answer these statuses, in order.

        ``HANG`` answers nothing: the request is dropped after ``hang_seconds`` unprocessed.
        """
        self.failures.extend((method, path_pattern, s) for s in statuses)

    def commits(self) -> list[dict]:
        return [c for repo in self.repos.values() for c in repo.commits]


# The Hub's license identifiers (hub-docs, repositories-licenses.md, plus the Llama 3/4 licenses the Hub
# added since); anything else must be ``other`` with a ``license_name``.
HUB_LICENSES = frozenset(
    [
        "apache-2.0",
        "mit",
        "openrail",
        "bigscience-openrail-m",
        "creativeml-openrail-m",
        "bigscience-bloom-rail-1.0",
        "bigcode-openrail-m",
        "afl-3.0",
        "artistic-2.0",
        "bsl-1.0",
        "bsd",
        "bsd-2-clause",
        "bsd-3-clause",
        "bsd-3-clause-clear",
        "c-uda",
        "cc",
        "cc0-1.0",
        "cc-by-2.0",
        "cc-by-2.5",
        "cc-by-3.0",
        "cc-by-4.0",
        "cc-by-sa-3.0",
        "cc-by-sa-4.0",
        "cc-by-nc-2.0",
        "cc-by-nc-3.0",
        "cc-by-nc-4.0",
        "cc-by-nd-4.0",
        "cc-by-nc-nd-3.0",
        "cc-by-nc-nd-4.0",
        "cc-by-nc-sa-2.0",
        "cc-by-nc-sa-3.0",
        "cc-by-nc-sa-4.0",
        "cdla-sharing-1.0",
        "cdla-permissive-1.0",
        "cdla-permissive-2.0",
        "wtfpl",
        "ecl-2.0",
        "epl-1.0",
        "epl-2.0",
        "etalab-2.0",
        "eupl-1.1",
        "agpl-3.0",
        "gfdl",
        "gpl",
        "gpl-2.0",
        "gpl-3.0",
        "lgpl",
        "lgpl-2.1",
        "lgpl-3.0",
        "isc",
        "lppl-1.3c",
        "ms-pl",
        "mpl-2.0",
        "odc-by",
        "odbl",
        "openrail++",
        "osl-3.0",
        "postgresql",
        "ofl-1.1",
        "ncsa",
        "unlicense",
        "zlib",
        "pddl",
        "lgpl-lr",
        "deepfloyd-if-license",
        "llama2",
        "llama3",
        "llama3.1",
        "llama3.2",
        "llama3.3",
        "llama4",
        "gemma",
        "unknown",
        "other",
    ]
)
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
# a Hub repo id: ``name`` (legacy, no namespace) or ``namespace/name``; never a path or a URL
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def _model_index_errors(index: object) -> list[str]:
    """``model-index`` as the Hub requires it: named models, each result with a task type, a dataset
    type and name, and metrics with a type and a value."""
    if not isinstance(index, list) or not index:
        return ["model-index must be a non-empty list"]
    errors = []
    for i, model in enumerate(index):
        where = f"model-index[{i}]"
        if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not model["name"]:
            errors.append(f"{where}.name must be a non-empty string")
            continue
        results = model.get("results")
        if not isinstance(results, list):
            errors.append(f"{where}.results must be a list")
            continue
        for j, result in enumerate(results):
            at = f"{where}.results[{j}]"
            if not isinstance(result, dict):
                errors.append(f"{at} must be a mapping")
                continue
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                errors.append(f"{at}.task.type is required")
            if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) for k in ("type", "name")):
                errors.append(f"{at}.dataset needs a type and a name")
            if not isinstance(metrics, list) or not metrics:
                errors.append(f"{at}.metrics must be a non-empty list")
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
                    errors.append(f"{at}.metrics[{k}] needs a type and a value")
    return errors


def metadata_errors(meta: dict) -> list[str]:
    """What the Hub refuses in a model card's metadata (the rules quantmill's cards can touch)."""
    errors = []
    license_id = meta.get("license")
    for one in license_id if isinstance(license_id, list) else [license_id] if license_id is not None else []:
        if one not in HUB_LICENSES:
            errors.append(f"license {one!r} is not one of the Hub's license identifiers (use 'other')")
    if license_id == "other" and not isinstance(meta.get("license_name"), str):
        errors.append("license 'other' needs a license_name")
    base = meta.get("base_model")
    for one in base if isinstance(base, list) else [base] if base is not None else []:
        if not isinstance(one, str) or not REPO_ID.match(one):
            errors.append(f"base_model {one!r} is not a Hub repo id")
    relation = meta.get("base_model_relation")
    if relation is not None and (relation not in BASE_MODEL_RELATIONS or base is None):
        errors.append(f"base_model_relation {relation!r} needs a base_model and one of {BASE_MODEL_RELATIONS}")
    for key in ("tags", "language", "datasets"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            errors.append(f"{key} must be a list of strings")
    for key in ("pipeline_tag", "library_name"):
        if key in meta and not isinstance(meta[key], str):
            errors.append(f"{key} must be a string")
    if "model-index" in meta:
        errors += _model_index_errors(meta["model-index"])
    return errors


def card_errors(text: str) -> list[str]:
    """The Hub's verdict on a README's YAML block: unparsable YAML, a non-mapping, or :func:`metadata_errors`."""
    match = re.match(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))", text)
    if match is None:
        return []  # no metadata block: nothing to refuse
    try:
        meta = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        return [f"invalid YAML: {exc}"]
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return ["the metadata must be a mapping"]
    return metadata_errors(meta)


def _hub_time() -> str:
    """The Hub's timestamp format: milliseconds and a Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Handler(BaseHTTPRequestHandler):
    server_version = "quantmill-test-hub/1.0"
    state: HubState

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # -- plumbing -------------------------------------------------------------------
    def _send(self, status: int, body=None, headers: dict[str, str] | None = None, error_code: str | None = None):
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        self.send_header(
            "Content-Type", "application/json" if not isinstance(body, bytes) else "application/octet-stream"
        )
        self.send_header("Content-Length", str(len(data)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None):
        self._send(status, {"error": message}, error_code=code)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json(self):
        try:
            return json.loads(self._body() or b"null")
        except ValueError:
            return None

    def _authorised(self) -> bool:
        if self.state.token is None:
            return True
        return self.headers.get("authorization") == f"Bearer {self.state.token}"

    def _injected(self, path: str) -> bool:
        with self.state.lock:
            for i, (method, pattern, status) in enumerate(self.state.failures):  # noqa: B007 -- used after the loop
                if method == self.command and re.search(pattern, path):
                    del self.state.failures[i]
                    break
            else:
                return False
        self._body()
        if status == HANG:  # a Hub that stops answering: no response, then the connection drops
            time.sleep(self.state.hang_seconds)
            self.close_connection = True
        else:
            self._error(status, f"injected {status}")
        return True
        return False

    def _dispatch(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        with self.state.lock:
            self.state.requests.append((self.command, path))
        if self._injected(path):
            return
        query = parse_qs(url.query)
        routes = [
            ("POST", r"^/api/repos/create$", self.create_repo),
            ("POST", r"^/api/validate-yaml$", self.validate_yaml),
            ("GET", r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$", self.model_info),
            ("POST", r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$", self.preupload),
            ("POST", r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$", self.commit),
            ("GET", r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$", self.tree),
            ("GET", r"^/api/models/(?P<repo>[^/]+/[^/]+)/commits/(?P<rev>[^/]+)$", self.list_commits),
            ("GET", r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", self.resolve),
            ("HEAD", r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", self.resolve),
            ("POST", r"^/api/collections$", self.create_collection),
            ("GET", r"^/api/collections/(?P<slug>[^/]+/[^/]+)$", self.get_collection),
            ("POST", r"^/api/collections/(?P<slug>[^/]+/[^/]+)/items$", self.add_item),
        ]
        for method, pattern, handler in routes:
            match = re.match(pattern, path)
            if method == self.command and match:
                return handler(query=query, **match.groupdict())
        self._error(404, f"no route for {self.command} {path}")

    do_GET = do_POST = do_HEAD = _dispatch

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorised()):
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
            return None
        return repo

    # -- endpoints ------------------------------------------------------------------
    def create_repo(self, query):
        if not self._authorised():
            return self._error(401, "Invalid credentials")
        body = self._json()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return self._error(400, "'name' is required")
        if body.get("type", "model") not in ("model", None):
            return self._error(400, "only model repos here")
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        url = f"http://{self.headers['Host']}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._send(409, {"error": "You already created this model repo", "url": url})
            private = bool(body.get("private")) or body.get("visibility") == "private"
            self.state.repos[repo_id] = Repo(repo_id, private)
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, query):
        body = self._json()
        if not isinstance(body, dict) or not isinstance(body.get("content"), str):
            return self._error(400, "'content' is required")
        errors = card_errors(body["content"])
        if errors:  # the shape huggingface_hub's HfApi._validate_yaml reads
            return self._send(400, {"errors": [{"message": e} for e in errors], "warnings": []})
        self._send(200, {"errors": [], "warnings": []})

    def model_info(self, query, repo, rev=None):
        found = self._repo(repo)
        if found is None:
            return
        card = found.files.get("README.md", b"").decode()
        card_data = yaml.safe_load(card[3 : card.index("\n---", 3)]) if card.startswith("---") else None
        self._send(
            200,
            {
                "id": repo,
                "modelId": repo,
                "sha": found.sha,
                "private": found.private,
                "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(found.files)],
                "cardData": card_data,
                "lastModified": _hub_time(),
            },
        )

    def preupload(self, query, repo, rev):
        if not self._authorised():
            return self._error(401, "Invalid credentials")
        if self._repo(repo) is None:
            return
        body = self._json()
        files = body.get("files") if isinstance(body, dict) else None
        if not isinstance(files, list) or not all(
            isinstance(f, dict)
            and isinstance(f.get("path"), str)
            and isinstance(f.get("size"), int)
            and isinstance(f.get("sample"), str)
            for f in files
        ):
            return self._error(400, "files must be a list of {path, sample, size}")
        self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})

    def commit(self, query, repo, rev):
        if not self._authorised():
            return self._error(401, "Invalid credentials")
        found = self._repo(repo)
        if found is None:
            return
        if self.headers.get("Content-Type") != "application/x-ndjson":
            return self._body() and self._error(400, "commits are NDJSON")
        try:
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        except ValueError:
            return self._error(400, "malformed NDJSON")
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            return self._error(400, "the first line must be a header with a summary")
        parent = lines[0]["value"].get("parentCommit")
        if parent is not None and parent != found.sha:
            return self._error(412, f"A commit has happened since {parent}: the branch is at {found.sha}")
        files: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            value = line.get("value") or {}
            if not isinstance(value.get("path"), str):
                return self._error(400, f"commit line {line.get('key')!r} without a path")
            if line.get("key") == "deletedFile":
                if value["path"] not in found.files:  # the Hub refuses to delete what is not there
                    return self._error(404, f"cannot delete {value['path']}: no such file", "EntryNotFound")
                deleted.append(value["path"])
                continue
            if line.get("key") != "file" or value.get("encoding") != "base64":
                return self._error(400, f"unsupported commit line {line.get('key')!r}")
            files[value["path"]] = base64.b64decode(value["content"])
        errors = card_errors(files["README.md"].decode()) if "README.md" in files else []
        if errors:  # the Hub rejects a commit whose card metadata does not validate
            return self._error(400, "invalid metadata in README.md: " + "; ".join(errors))
        oid = secrets.token_hex(20)
        commit = {
            "oid": oid,
            "summary": lines[0]["value"]["summary"],
            "files": sorted(files),
            "deleted": sorted(deleted),
            "pull_request": "create_pr" in query,
            "date": _hub_time(),
        }
        host = f"http://{self.headers['Host']}"
        with self.state.lock:
            if "create_pr" in query:
                found.pull_requests.append(commit | {"contents": files})
                number = len(found.pull_requests)
                return self._send(
                    200,
                    {
                        "commitUrl": f"{host}/{repo}/commit/{oid}",
                        "commitOid": oid,
                        "pullRequestUrl": f"{host}/{repo}/discussions/{number}",
                    },
                )
            for path in deleted:
                del found.files[path]
            found.files.update(files)
            found.commits.append(commit)
        self._send(200, {"commitUrl": f"{host}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})

    def _at_revision(self, repo_id: str, rev: str) -> Repo | None:
        """The repo, when it exists and ``rev`` is its main branch or head commit (else answered 404)."""
        found = self._repo(repo_id)
        if found is not None and rev not in ("main", found.sha):
            self._error(404, f"Revision {rev} not found", "RevisionNotFound")
            return None
        return found

    def tree(self, query, repo, rev):
        found = self._at_revision(repo, rev)
        if found is None:
            return
        self._send(
            200,
            [
                {"type": "file", "path": name, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
                for name, content in sorted(found.files.items())
            ],
        )

    def list_commits(self, query, repo, rev):
        """The branch's commits, newest first, as the Hub lists them (one page)."""
        found = self._at_revision(repo, rev)
        if found is None:
            return
        self._send(
            200,
            [
                {
                    "id": c["oid"],
                    "authors": [],
                    "date": c.get("date", "2000-01-01T00:00:00.000Z"),
                    "title": c["summary"],
                    "message": "",
                }
                for c in reversed(found.commits)
            ],
        )

    def resolve(self, query, repo, rev, file):
        found = self._at_revision(repo, rev)
        if found is None:
            return
        if file not in found.files:
            return self._error(404, f"{file} not found", "EntryNotFound")
        content = found.files[file]
        self._send(200, content, {"X-Repo-Commit": found.sha, "ETag": f'"{hashlib.sha256(content).hexdigest()}"'})

    def _collection_json(self, collection: dict) -> dict:
        return {**collection, "lastUpdated": _hub_time()}

    def create_collection(self, query):
        if not self._authorised():
            return self._error(401, "Invalid credentials")
        body = self._json()
        if not isinstance(body, dict) or not isinstance(body.get("title"), str) or not body.get("namespace"):
            return self._error(400, "title and namespace are required")
        with self.state.lock:
            for slug, existing in self.state.collections.items():
                if existing["title"] == body["title"] and existing["owner"]["name"] == body["namespace"]:
                    return self._send(409, {"error": "exists", "slug": slug})
            slug = f"{body['namespace']}/{re.sub(r'[^a-z0-9]+', '-', body['title'].lower()).strip('-')}-{secrets.token_hex(4)}"
            self.state.collections[slug] = {
                "slug": slug,
                "title": body["title"],
                "description": None,
                "owner": {"name": body["namespace"], "type": "org"},
                "items": [],
                "position": 0,
                "private": bool(body.get("private")),
                "theme": "green",
                "upvotes": 0,
            }
            self._send(200, self._collection_json(self.state.collections[slug]))

    def get_collection(self, query, slug):
        collection = self.state.collections.get(slug)
        if collection is None:
            return self._error(404, "collection not found")
        self._send(200, self._collection_json(collection))

    def add_item(self, query, slug):
        if not self._authorised():
            return self._error(401, "Invalid credentials")
        collection = self.state.collections.get(slug)
        body = self._json()
        if collection is None:
            return self._error(404, "collection not found")
        item = body.get("item") if isinstance(body, dict) else None
        if not isinstance(item, dict) or item.get("type") != "model" or item.get("id") not in self.state.repos:
            return self._error(400, "item must be an existing model repo")
        with self.state.lock:
            if any(i["id"] == item["id"] for i in collection["items"]):
                return self._send(409, {"error": "item already in collection"})
            collection["items"].append(
                {
                    "_id": secrets.token_hex(12),
                    "id": item["id"],
                    "type": "model",
                    "position": len(collection["items"]),
                    "note": {"text": body.get("note")} if body.get("note") else None,
                }
            )
        self._send(200, self._collection_json(collection))


class HubServer:
    """Start on 127.0.0.1 and a free port; ``endpoint`` is its URL."""

    def __init__(self, token: str | None = None) -> None:
        self.state = HubState(token)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
