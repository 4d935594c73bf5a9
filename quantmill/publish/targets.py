"""Where published variants go: a local folder laid out like the Hub, or a Hub endpoint.

Both take one commit per variant, all files at once: the Hub through
``HfApi.create_commit`` (``upload_folder`` may split a folder into several
commits), the local zoo by building the new repo content beside the old and
swapping it in with renames under a lock.

A commit makes the repo hold exactly the given files (and those it is told to
keep as they are: the grouped GGUF repo keeps the files of types a run did not
measure): files an earlier version had and this one has not (stale weights of a
changed file set) are deleted in the same commit. Only the target's own housekeeping survives: the Hub's
``.gitattributes`` (the Hub writes it when it creates a repo; it says which
files are stored in LFS, and no runtime loads it) and the local zoo's commit log.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from quantmill.errors import PublishError, QuantmillError
from quantmill.runstore import atomic_write_text, exclusive_lock
from quantmill.trust.files import LinkRefusedError, open_no_follow

CARD = "README.md"


def front_matter(text: str) -> dict:
    """The YAML metadata block at the top of a model card ({} when there is none)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:  # someone else's card: unreadable metadata is no metadata
        return {}
    return data if isinstance(data, dict) else {}


def quantmill_metadata(card: str | None) -> dict:
    """The ``quantmill`` block of a card's metadata ({} when there is none or it is not a mapping)."""
    block = front_matter(card or "").get("quantmill")
    return block if isinstance(block, dict) else {}


class Target(Protocol):
    """A place to publish repos to."""

    def url(self, repo_id: str) -> str: ...

    def read_card(self, repo_id: str) -> str | None: ...

    def files(self, repo_id: str) -> set[str]:
        """The repo's files (paths in the repo), housekeeping aside; empty when there is no repo."""
        ...

    def commit(
        self,
        repo_id: str,
        files: dict[str, Path | bytes],
        message: str,
        *,
        private: bool,
        create_pr: bool,
        keep: Iterable[str] = (),
    ) -> str:
        """Make the repo hold exactly ``files`` plus the paths in ``keep`` (already there, left as they are)."""
        ...

    def last_commit(self, repo_id: str) -> tuple[str, str] | None:
        """The repo's latest commit on its main branch: (id, message title); None when it has none."""
        ...

    def add_to_collection(self, namespace: str, title: str, repo_id: str, note: str) -> str: ...


def stale_files(existing: set[str], new: Iterable[str]) -> list[str]:
    """What a commit of ``new`` deletes from a repo holding ``existing`` (housekeeping already left out)."""
    return sorted(existing - set(new))


class LocalZoo:
    """``<root>/<namespace>/<repo>/…``: the Hub's layout on disk; commits are logged in ``.commits.jsonl``."""

    COMMIT_LOG = ".commits.jsonl"

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

    def files(self, repo_id: str) -> set[str]:
        repo = self._repo_dir(repo_id)
        if not repo.is_dir():
            return set()
        return {
            str(p.relative_to(repo))
            for p in repo.rglob("*")
            if (p.is_file() or p.is_symlink()) and p.relative_to(repo).as_posix() != self.COMMIT_LOG
        }

    def commit(
        self,
        repo_id: str,
        files: dict[str, Path | bytes],
        message: str,
        *,
        private: bool = False,
        create_pr: bool = False,
        keep: Iterable[str] = (),
    ) -> str:
        repo = self._repo_dir(repo_id)
        kept = set(keep)
        commit_id = secrets.token_hex(20)
        with exclusive_lock(self._lock(repo_id)):
            # The new version is built from nothing but the given files (so files the old
            # version had and this one has not are gone) plus the commit log, then swapped in.
            staging = repo.parent / f".{repo.name}.staging-{commit_id[:8]}"
            try:
                deleted = stale_files(self.files(repo_id), [*files, *kept])
                staging.mkdir(parents=True)
                old_log = repo / self.COMMIT_LOG
                if old_log.is_symlink():
                    raise LinkRefusedError(f"{old_log} is a symbolic link; quantmill does not write through links")
                if old_log.is_file():
                    shutil.copyfile(old_log, staging / self.COMMIT_LOG)  # a copy: it is appended to below
                for path_in_repo, source in files.items():
                    target = staging / path_in_repo
                    target.parent.mkdir(parents=True, exist_ok=True)
                    folder = target.parent.resolve()
                    if folder != staging.resolve() and staging.resolve() not in folder.parents:
                        raise PublishError(f"{path_in_repo} would be written outside the repo")
                    if isinstance(source, bytes):
                        target.write_bytes(source)
                    else:
                        shutil.copyfile(source, target)
                for path_in_repo in sorted(kept - set(files)):
                    (staging / path_in_repo).parent.mkdir(parents=True, exist_ok=True)
                    os.link(self._repo_dir(repo_id) / path_in_repo, staging / path_in_repo)  # same disk: no copy
                entry = {
                    "commit": commit_id,
                    "message": message,
                    "files": sorted(files),
                    "deleted": deleted,
                    "private": private,
                    "pull_request": create_pr,
                    "time": datetime.now(UTC).isoformat(),
                }
                with open_no_follow(staging / self.COMMIT_LOG, "a") as log:
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

    def last_commit(self, repo_id: str) -> tuple[str, str] | None:
        log = self._repo_dir(repo_id) / self.COMMIT_LOG
        lines = log.read_text().splitlines() if log.is_file() else []
        if not lines:
            return None
        entry = json.loads(lines[-1])
        return entry["commit"], entry["message"]

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

    #: files the Hub keeps in every repo that no commit of quantmill deletes
    HOUSEKEEPING = frozenset({".gitattributes"})

    def _head(self, repo_id: str) -> tuple[str | None, set[str]]:
        """The repo's current commit and files (housekeeping aside); (None, empty) when there is no repo."""
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            info = self.api.model_info(repo_id)
        except RepositoryNotFoundError:
            return None, set()
        return info.sha, {s.rfilename for s in info.siblings or []} - self.HOUSEKEEPING

    def files(self, repo_id: str) -> set[str]:
        return self._head(repo_id)[1]

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
        keep: Iterable[str] = (),
    ) -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        self.api.create_repo(repo_id, private=private, exist_ok=True)
        head, existing = self._head(repo_id)
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=p, path_or_fileobj=s if isinstance(s, bytes) else str(s))
            for p, s in sorted(files.items())
        ]
        operations += [CommitOperationDelete(path_in_repo=p) for p in stale_files(existing, [*files, *keep])]
        # parent_commit: the Hub refuses the commit if the repo moved since it was listed, so
        # a file committed meanwhile by someone else is never deleted unseen.
        info = self.api.create_commit(
            repo_id, operations, commit_message=message, create_pr=create_pr, parent_commit=head
        )
        return info.oid or ""

    def last_commit(self, repo_id: str) -> tuple[str, str] | None:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            commits = self.api.list_repo_commits(repo_id)  # newest first
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return None
        return (commits[0].commit_id, commits[0].title) if commits else None

    def add_to_collection(self, namespace: str, title: str, repo_id: str, note: str) -> str:
        collection = self.api.create_collection(title, namespace=namespace, exists_ok=True)
        self.api.add_collection_item(collection.slug, item_id=repo_id, item_type="model", note=note, exists_ok=True)
        return collection.slug
