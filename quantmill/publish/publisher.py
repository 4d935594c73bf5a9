"""Publish one variant: refuse what did not pass, build its card, commit once, never twice.

Idempotence: the card's metadata carries ``quantmill.fingerprint``, a hash of the
files and the card's own text. Publishing the same thing again finds the same
fingerprint in the target, and no file beside the variant's, and makes no commit.
A commit replaces the repo's files with exactly the variant's (stale ones are
deleted in the same commit; see :mod:`quantmill.publish.targets`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from quantmill.errors import PublishError
from quantmill.evaluation.results import EvaluationResult
from quantmill.filehash import sha256_of
from quantmill.gates import Verdict
from quantmill.publish.card import CardInputs, render_card
from quantmill.publish.targets import CARD, HubTarget, LocalZoo, Target, front_matter, quantmill_metadata, stale_files
from quantmill.recipe.checks import is_local_model, render_repo_name
from quantmill.recipe.load import LoadedRecipe
from quantmill.recipe.matrix import Variant
from quantmill.recipe.schema import Publish
from quantmill.record import PublishOutcome, PublishStatus, VariantRecord, VariantStatus
from quantmill.runstore import COMPLETE_MARKER, exclusive_lock
from quantmill.settings import get_settings
from quantmill.trust.operator import get_operator, hub_endpoint

log = logging.getLogger(__name__)

_NOT_PUBLISHED = {COMPLETE_MARKER}


def publishable(variants: Mapping[str, VariantRecord], force: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The variants that may be published: those that passed, plus any forced by name."""
    return [v for v, entry in variants.items() if entry.status == VariantStatus.PASSED or v in force]


def make_target(loaded: LoadedRecipe, target: str | None = None) -> Target:
    """The recipe's publish target (``target`` overrides the recipe's choice)."""
    publish = loaded.recipe.publish
    kind = target or publish.target
    if kind == "local":
        return LocalZoo(loaded.resolve(publish.path))
    if kind == "hub":
        return HubTarget(endpoint=hub_endpoint(publish.endpoint))
    raise PublishError("publishing is off for this recipe (publish.target: none)")


#: where a recipe's GGUF variants go when its ``publish.repo_name`` is not set: one repo for every type
GGUF_REPO_NAME = "{model}-GGUF"


def is_grouped(loaded: LoadedRecipe, variant: Variant) -> bool:
    """A GGUF variant of a recipe that leaves ``publish.repo_name`` unset: it shares ``{model}-GGUF``
    with the recipe's other GGUF types (a ``repo_name`` of the recipe's own keeps one repo per type)."""
    return variant.method == "gguf" and "repo_name" not in loaded.recipe.publish.model_fields_set


def repo_id_for(loaded: LoadedRecipe, variant: Variant) -> str:
    publish = loaded.recipe.publish
    template = GGUF_REPO_NAME if is_grouped(loaded, variant) else publish.repo_name
    return f"{publish.namespace}/{render_repo_name(template, loaded.recipe, variant, loaded.name)}"


def base_model_license(loaded: LoadedRecipe) -> str | None:
    """The license the base model declares in its card (local README, or the Hub's card data)."""
    model_id = loaded.recipe.model.id
    if is_local_model(model_id, loaded.base_dir):
        card = loaded.resolve(model_id) / CARD
        return front_matter(card.read_text()).get("license") if card.is_file() else None
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=hub_endpoint(loaded.recipe.publish.endpoint)).model_info(
            model_id, revision=loaded.recipe.model.revision
        )
    except Exception as exc:  # noqa: BLE001 -- any failure to read it means we do not know the license
        log.warning("could not read the license of %s: %s", model_id, type(exc).__name__)
        return None
    return info.card_data.get("license") if info.card_data else None


def card_license(loaded: LoadedRecipe) -> str:
    """The license a card declares: the recipe's, else the base model's.

    Raises:
        PublishError: neither says.
    """
    license_id = loaded.recipe.publish.license or base_model_license(loaded)
    if not license_id:
        raise PublishError(f"the license of {loaded.recipe.model.id} is unknown: set publish.license in the recipe")
    return license_id


def upload_files(artifact_path: Path) -> dict[str, Path]:
    """The variant's files as they will be uploaded (path in the repo → file), the card aside.

    One definition for the publisher and for every check that must see exactly what is published.
    """
    return {
        str(p.relative_to(artifact_path)): p
        for p in sorted(artifact_path.rglob("*"))
        if p.is_file() and p.name not in _NOT_PUBLISHED
    }


def fingerprint(files: dict[str, Path], card_text: str) -> str:
    """What a commit would hold: the card's text and each file's name and sha256 (each file read once while
    it is unchanged: an unchanged rerun re-checks every published variant)."""
    digest = hashlib.sha256(card_text.encode())
    for name, path in sorted(files.items()):
        digest.update(f"{name}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


def holds(target: Target, repo_id: str, print_: str, names: Iterable[str]) -> bool:
    """Whether the target already holds exactly this: a card with fingerprint ``print_`` and no file
    beside ``names`` (and the card)."""
    existing = target.read_card(repo_id)
    return (
        existing is not None
        and quantmill_metadata(existing).get("fingerprint") == print_
        and not stale_files(target.files(repo_id), [*names, CARD])  # (a quantmill before deletions left some)
    )


def refuse_unless_owned(target: Target, repo_id: str, recipe: str) -> None:
    """Under the untrusted policy, refuse to commit to a repo that another recipe (or anyone but quantmill)
    made: a recipe names its repo (``{variant}`` alone does not stop ``Llama-3.1-8B-Instruct-{variant}``),
    and the zoo's production repos must not be replaced by whatever model a pull request brings.

    Raises:
        PublishError: the repo exists and its card does not name ``recipe`` as its publisher.
    """
    if get_operator().policy != "untrusted":
        return
    card = target.read_card(repo_id)
    if card is None and not target.files(repo_id):
        return  # a new repo
    publisher = quantmill_metadata(card).get("recipe")
    if publisher != recipe:
        made_by = f"recipe '{publisher}'" if publisher else "someone other than quantmill"
        raise PublishError(
            f"{target.url(repo_id)} was published by {made_by}, not by recipe '{recipe}': under the untrusted "
            "policy a recipe writes only repos it made (choose another repo_name, or have the operator publish it)"
        )


def commit_unless_present(
    target: Target,
    repo_id: str,
    files: dict[str, Path],
    card_text: str,
    print_: str,
    message: str,
    publish: Publish,
    recipe: str,
    keep: Iterable[str] = (),
) -> str | None:
    """Commit ``files`` and the card (keeping ``keep`` as they are) as one commit; the commit id, or None
    when the target already holds exactly this: a card with fingerprint ``print_`` and no other file.

    Check and commit happen under one lock, so two runs on this machine publishing the same
    content at once make one commit between them. Under the untrusted policy ``recipe`` writes
    only a new repo or one whose card says that recipe published it (:func:`refuse_unless_owned`).
    """
    lock_name = hashlib.sha256(target.url(repo_id).encode()).hexdigest()[:24]
    with exclusive_lock(get_settings().cache_dir / "publish-locks" / f"{lock_name}.lock"):
        if holds(target, repo_id, print_, [*files, *keep]):
            return None
        refuse_unless_owned(target, repo_id, recipe)
        return target.commit(
            repo_id,
            {**files, CARD: card_text.encode()},
            message,
            private=publish.private,
            create_pr=publish.create_pr,
            keep=keep,
        )


def publish_variant(
    loaded: LoadedRecipe,
    variant: Variant,
    *,
    artifact_path: Path,
    provenance: dict[str, Any],
    evaluation: EvaluationResult,
    baseline: EvaluationResult | None,
    verdict: Verdict,
    revision: str,
    target: Target,
    run_id: str,
    force: bool = False,
    related: list[dict[str, str]] | None = None,
) -> PublishOutcome:
    """Publish ``variant`` as one commit, or do nothing if the target already has exactly this.

    Raises:
        PublishError: the variant did not pass (and ``force`` is off), the license is
            unknown, or the target refused the commit.
    """
    if verdict.status != "passed" and not force:
        raise PublishError(f"{variant.id} is '{verdict.status}': only variants that pass their gates are published")
    license_id = card_license(loaded)
    repo_id = repo_id_for(loaded, variant)
    inputs = CardInputs(
        loaded,
        variant,
        repo_id,
        provenance,
        evaluation,
        baseline,
        verdict,
        license_id,
        revision,
        forced=force and verdict.status != "passed",
        related=list(related or []),
    )
    card = render_card(inputs)
    files = upload_files(artifact_path)
    print_ = fingerprint(files, str(card))
    card.data.quantmill = {**card.data.quantmill, "fingerprint": print_}
    text = str(card)
    publish = loaded.recipe.publish
    message = f"quantmill: {variant.id} from recipe {loaded.name} (run {run_id})" + (
        " [forced]" if inputs.forced else ""
    )
    commit = commit_unless_present(target, repo_id, files, text, print_, message, publish, loaded.name)
    if commit is None:
        log.info("%s: %s already has this exact content; no commit", variant.id, repo_id)
        return PublishOutcome(
            status=PublishStatus.UNCHANGED,
            variant=variant.id,
            repo_id=repo_id,
            url=target.url(repo_id),
            fingerprint=print_,
        )
    collection = None
    if publish.collection:
        note = f"{variant.method} {variant.id}, {evaluation.value('size_mb') or 0:.3g} MB"
        collection = target.add_to_collection(publish.namespace, publish.collection, repo_id, note)
    return PublishOutcome(
        status=PublishStatus.PUBLISHED,
        variant=variant.id,
        repo_id=repo_id,
        url=target.url(repo_id),
        fingerprint=print_,
        commit=commit,
        collection=collection,
    )
