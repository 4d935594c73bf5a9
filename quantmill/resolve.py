"""Pin the recipe's model to one exact revision and a local folder.

Hub models are downloaded with ``snapshot_download`` (retrying is the caller's
job) and pinned to the commit the snapshot came from; local folders are pinned to
a hash of their contents, so an edited checkpoint counts as a new revision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from quantmill.errors import QuantmillError
from quantmill.filehash import sha256_of
from quantmill.recipe.checks import is_local_model
from quantmill.recipe.load import LoadedRecipe

_MODEL_FILE_SUFFIXES = (
    ".json",
    ".jsonl",
    ".yaml",
    ".safetensors",
    ".bin",
    ".model",
    ".txt",
    ".py",
    ".gguf",
    ".tiktoken",
)


@dataclass(frozen=True)
class ResolvedModel:
    """The baseline as a local folder plus the revision that pins it.

    Attributes:
        id: the recipe's model id.
        path: local folder with the weights.
        revision: hub commit sha, or ``sha256:<hash>`` of a local folder's files.
        tokenizer_path: the tokenizer's folder.
    """

    id: str
    path: Path
    revision: str
    tokenizer_path: Path


def content_hash(folder: Path) -> str:
    """sha256 over the names and sha256 digests of a folder's model and data files (each file read once
    while it is unchanged: :func:`quantmill.filehash.sha256_of`)."""
    digest = hashlib.sha256()
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in _MODEL_FILE_SUFFIXES and "__pycache__" not in p.parts
    ]
    for file in sorted(files):
        digest.update(f"{file.relative_to(folder)}\0{sha256_of(file)}\n".encode())
    return "sha256:" + digest.hexdigest()


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise QuantmillError(f"cannot download '{repo_id}'@{revision or 'main'}: {exc}") from exc


def resolve_model(loaded: LoadedRecipe) -> ResolvedModel:
    """Resolve the recipe's model (and tokenizer) to local folders and a pinned revision."""
    model = loaded.recipe.model
    if is_local_model(model.id, loaded.base_dir):
        path = loaded.resolve(model.id)
        revision = content_hash(path)
    else:
        path = _download(model.id, model.revision)
        revision = path.name  # snapshot folders are named after the commit sha
    tokenizer = path
    if model.tokenizer:
        tokenizer = (
            loaded.resolve(model.tokenizer)
            if is_local_model(model.tokenizer, loaded.base_dir)
            else _download(model.tokenizer, None)
        )
    _refuse_unallowed_model_code(loaded, [path, tokenizer])
    return ResolvedModel(model.id, path, revision, tokenizer)


def _refuse_unallowed_model_code(loaded: LoadedRecipe, folders: list[Path]) -> None:
    """Validation could check only folders already on disk: a Hub model is checked here, once downloaded."""
    from quantmill.trust.boundary import model_code_refusal

    refused = model_code_refusal(loaded.recipe, loaded.variants, folders)
    if refused is not None:
        problem, hint = refused
        raise QuantmillError(f"{loaded.recipe.model.id}: {problem} ({hint})")


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
