"""Where published variants go: a local folder laid out like the Hub, or a Hub endpoint.

Both take one commit per variant, all files at once: the Hub through
``HfApi.create_commit`` (``upload_folder`` may split a folder into several
commits), the local zoo by building the new repo content beside the old and
swapping it in with renames under a lock.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from quantmill.errors import PublishError, QuantmillError
from quantmill.runstore import atomic_write_text, exclusive_lock
from quantmill.trust.files import open_no_follow

CARD = "README.md"


def front_matter(text: str) -> dict:
    """The YAML metadata block at the top of a model card ({} when there is none)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    data = yaml.safe_load(text[3:end])
    return data if isinstance(data, dict) else {}


class Target(Protocol):
    """A place to publish repos to."""

    def url(self, repo_id: str) -> str: ...

    def read_card(self, repo_id: str) -> str | None: ...

    def commit(
        self, repo_id: str, files: dict[str, Path | bytes], message: str, *, private: bool, create_pr: bool
    ) -> str: ...

    def add_to_collection(self, namespace: str, title: str, repo_id: str, note: str) -> str: ...


class LocalZoo:
    """``<root>/<namespace>/<repo>/…``: the Hub's layout on disk; commits are logged in ``.commits.jsonl``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _repo_dir(self, repo_id: str) -> Path:
        path = (self.root / repo_id).resolve()
        if self.root.resolve() not in path.parents:
            raise PublishError(f"repo id {repo_id!r} would escape the zoo folder")
        return path

    def _lock(self, name: str) -> Path:
        """Locks live in ``<root>/.locks``, out of the Hub-like layout."""
        return self.root / ".locks" / (name.replace("/", "--") + ".lock")

    def url(self, repo_id: str) -> str:
        return self._repo_dir(repo_id).as_uri()

    def read_card(self, repo_id: str) -> str | None:
        card = self._repo_dir(repo_id) / CARD
        return card.read_text() if card.is_file() else None

    def commit(
        self,
        repo_id: str,
        files: dict[str, Path | bytes],
        message: str,
        *,
        private: bool = False,
        create_pr: bool = False,
    ) -> str:
        repo = self._repo_dir(repo_id)
        commit_id = secrets.token_hex(20)
        with exclusive_lock(self._lock(repo_id)):
            staging = repo.parent / f".{repo.name}.staging-{commit_id[:8]}"
            try:
                if repo.is_dir():  # links stay links: a hard link to a link's target would be written through
                    shutil.copytree(repo, staging, copy_function=os.link, symlinks=True)
                staging.mkdir(parents=True, exist_ok=True)
                for path_in_repo, source in files.items():
                    target = staging / path_in_repo
                    target.parent.mkdir(parents=True, exist_ok=True)
                    folder = target.parent.resolve()
                    if folder != staging.resolve() and staging.resolve() not in folder.parents:
                        raise PublishError(f"{path_in_repo} would be written outside the repo (through a link)")
                    target.unlink(missing_ok=True)  # never write through a hard link into the old version
                    if isinstance(source, bytes):
                        target.write_bytes(source)
                    else:
                        shutil.copyfile(source, target)
                entry = {
                    "commit": commit_id,
                    "message": message,
                    "files": sorted(files),
                    "private": private,
                    "pull_request": create_pr,
                    "time": datetime.now(UTC).isoformat(),
                }
                with open_no_follow(staging / ".commits.jsonl", "a") as log:
                    log.write(json.dumps(entry) + "\n")
                old = repo.parent / f".{repo.name}.old-{commit_id[:8]}"
                if repo.is_dir():
                    os.rename(repo, old)
                os.rename(staging, repo)
                shutil.rmtree(old, ignore_errors=True)
            except (OSError, QuantmillError) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise PublishError(f"could not publish {repo_id} to {self.root}: {exc}") from exc
        return commit_id

    def add_to_collection(self, namespace: str, title: str, repo_id: str, note: str) -> str:
        slug = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")
        path = self.root / namespace / "collections" / f"{slug}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self._lock(f"{namespace}/collections/{slug}")):
            data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"title": title, "items": []}
            data["items"] = [i for i in data["items"] if i["id"] != repo_id] + [{"id": repo_id, "note": note}]
            atomic_write_text(path, json.dumps(data, indent=2) + "\n")  # a fresh temporary file, never a link
        return f"{namespace}/{slug}"


_hub_timeout_installed: float | None = None


def bound_hub_requests(seconds: float) -> None:
    """Make huggingface_hub's shared HTTP client give up after ``seconds`` without an answer.

    Its default client waits forever, so a Hub that stops answering would hang the
    publish step, and with it the night's run; a timeout turns into an error that the
    publish task retries (publishing is idempotent). 0 keeps the client as it is
    (e.g. one a user configured with ``set_client_factory`` for a proxy).
    """
    global _hub_timeout_installed
    if not seconds or _hub_timeout_installed == seconds:
        return
    import httpx
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory  # keeps the library's request hooks

    def factory() -> httpx.Client:
        client = default_client_factory()
        client.timeout = httpx.Timeout(seconds, connect=min(seconds, 10.0))
        return client

    set_client_factory(factory)
    _hub_timeout_installed = seconds


class HubTarget:
    """Any Hub endpoint through the real ``huggingface_hub`` client; the token comes from its usual sources."""

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        from huggingface_hub import HfApi

        from quantmill.settings import get_settings

        bound_hub_requests(get_settings().hub_timeout)
        self.api = HfApi(endpoint=endpoint, token=token)

    def url(self, repo_id: str) -> str:
        return f"{self.api.endpoint.rstrip('/')}/{repo_id}"

    def read_card(self, repo_id: str) -> str | None:
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        # A private, throw-away cache: the shared Hugging Face cache is keyed by repo id alone,
        # so a card cached from another endpoint could answer for this one.
        with tempfile.TemporaryDirectory(prefix="quantmill-card-") as cache:
            try:
                return Path(self.api.hf_hub_download(repo_id, CARD, cache_dir=cache)).read_text()
            except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
                return None

    def commit(
        self,
        repo_id: str,
        files: dict[str, Path | bytes],
        message: str,
        *,
        private: bool = False,
        create_pr: bool = False,
    ) -> str:
        from huggingface_hub import CommitOperationAdd

        self.api.create_repo(repo_id, private=private, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=p, path_or_fileobj=s if isinstance(s, bytes) else str(s))
            for p, s in sorted(files.items())
        ]
        info = self.api.create_commit(repo_id, operations, commit_message=message, create_pr=create_pr)
        return info.oid or ""

    def add_to_collection(self, namespace: str, title: str, repo_id: str, note: str) -> str:
        collection = self.api.create_collection(title, namespace=namespace, exists_ok=True)
        self.api.add_collection_item(collection.slug, item_id=repo_id, item_type="model", note=note, exists_ok=True)
        return collection.slug
