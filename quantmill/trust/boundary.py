"""The trust boundary at load time: what a recipe may name, ask for and cost.

:func:`check_recipe_trust` returns the capabilities a recipe asks for and every
problem with it under the operator's settings. Rules that the operator configured
(a namespace allowlist, a zoo root, an endpoint, the caps) hold under every policy;
under the ``untrusted`` policy a recipe also gets no capability it was not granted,
names no file outside its own folder and the operator's data roots (nor a model or data
folder holding links out of them, special files, or a shard index naming files elsewhere;
nor task data outside them), sends the token to no endpoint of its own, names only repos
that carry ``{variant}`` (and no grouped GGUF repo on the Hub), and has a name no other
recipe file in its folder has. Under every policy, a model whose own code (``auto_map``)
the GGUF converter would run needs ``trust_remote_code`` (:func:`model_code_refusal`,
checked again on the downloaded folder by :mod:`quantmill.resolve`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from quantmill.errors import RecipeProblem
from quantmill.modelinfo import find_model_dir
from quantmill.recipe.matrix import Variant
from quantmill.recipe.schema import Recipe
from quantmill.trust.capabilities import (
    CapabilityRequest,
    FolderListing,
    Loc,
    list_folder,
    may_be_hub_id,
    model_code_map,
    requested_capabilities,
    task_file_data_paths,
)
from quantmill.trust.operator import CAPABILITIES, OperatorSettings, get_operator, operator_file
from quantmill.yamlio import LocatedDocument


def _resolve(base_dir: Path, path: str) -> Path:
    candidate = Path(path).expanduser()
    try:
        return (candidate if candidate.is_absolute() else base_dir / candidate).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop or an unusable name resolves nowhere
        return Path("/nonexistent-unresolvable")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def inside(path: Path, roots: list[Path]) -> bool:
    """``path`` (already resolved, links followed) lies in one of ``roots``."""
    return any(path == root or root in path.parents for root in roots)


def _roots(base_dir: Path, extra: list[Path]) -> list[Path]:
    return [base_dir.resolve()] + [root.expanduser().resolve() for root in extra]


def _recipe_paths(recipe: Recipe, variants: list[Variant], base_dir: Path) -> list[tuple[Loc, str]]:
    """Every local path a recipe names, with its location (model, tokenizer, data files, task folders)."""
    from quantmill.recipe.checks import is_local_model, variant_rows

    named: list[tuple[Loc, str]] = []
    if is_local_model(recipe.model.id, base_dir):
        named.append((("model", "id"), recipe.model.id))
    if recipe.model.tokenizer and is_local_model(recipe.model.tokenizer, base_dir):
        named.append((("model", "tokenizer"), recipe.model.tokenizer))
    datasets: list[tuple[Loc, object]] = [(("calibration", "dataset"), recipe.calibration.dataset)]
    if recipe.evaluation.perplexity:
        datasets.append((("evaluation", "perplexity", "dataset"), recipe.evaluation.perplexity.dataset))
    for variant in variants:
        training = getattr(variant.params, "training", None)
        if training is not None:
            datasets.append(((*variant_rows(recipe), variant.row, "training", "dataset"), training.dataset))
    for loc, ref in datasets:
        path = getattr(ref, "path", None)
        if path is not None:
            named.append((loc + ("path",), path))
    named += [(("evaluation", "include_paths", i), p) for i, p in enumerate(recipe.evaluation.include_paths)]
    return named


def _check_caps(
    recipe: Recipe, variants: list[Variant], doc: LocatedDocument, operator: OperatorSettings
) -> list[RecipeProblem]:
    from quantmill.recipe.checks import variant_rows  # checks imports the trust package

    problems = []
    hint = "the operator sets this limit (QUANTMILL_{}); ask them, or make the recipe smaller"
    calibration = recipe.calibration
    if calibration.num_samples * calibration.seq_len > operator.max_calibration_tokens:
        problems.append(
            doc.problem(
                ("calibration", "num_samples"),
                f"calibration num_samples × seq_len = {calibration.num_samples * calibration.seq_len} tokens "
                f"exceeds the limit of {operator.max_calibration_tokens}",
                hint.format("MAX_CALIBRATION_TOKENS"),
            )
        )
    perplexity = recipe.evaluation.perplexity
    if perplexity and perplexity.stride < operator.min_perplexity_stride:
        problems.append(
            doc.problem(
                ("evaluation", "perplexity", "stride"),
                f"perplexity stride {perplexity.stride} is below the minimum of {operator.min_perplexity_stride}",
                hint.format("MIN_PERPLEXITY_STRIDE"),
            )
        )
    for variant in variants:
        tokens = variant.spec.training_tokens(variant.params)
        if tokens > operator.max_training_tokens:
            problems.append(
                doc.problem(
                    (*variant_rows(recipe), variant.row, "training"),
                    f"variant '{variant.id}' trains on {tokens} tokens (steps × batch_size × seq_len × "
                    f"gradient_accumulation), over the limit of {operator.max_training_tokens}",
                    hint.format("MAX_TRAINING_TOKENS"),
                )
            )
    return problems


def _list_task_folders(
    recipe: Recipe, doc: LocatedDocument, base_dir: Path, operator: OperatorSettings, problems: list[RecipeProblem]
) -> list[tuple[int, Path, FolderListing]]:
    listings = []
    files_left, bytes_left = operator.max_include_files, operator.max_include_bytes
    for index, folder in enumerate(recipe.evaluation.include_paths):
        path = _resolve(base_dir, folder)
        try:
            if not path.is_dir():
                continue  # reported by the recipe checks
        except OSError:  # a name too long for the filesystem: also reported there
            continue
        listing = list_folder(path, files_left, bytes_left)
        if listing.truncated:
            problems.append(
                doc.problem(
                    ("evaluation", "include_paths", index),
                    f"task folders hold more than {operator.max_include_files} files or "
                    f"{operator.max_include_bytes} bytes: '{folder}' is too large",
                    "name a folder holding only task YAMLs (QUANTMILL_MAX_INCLUDE_FILES / _BYTES set the limits)",
                )
            )
            continue
        files_left -= len(listing.files)
        bytes_left -= listing.total_bytes
        listings.append((index, path, listing))
    return listings


def _check_paths(
    recipe: Recipe,
    variants: list[Variant],
    doc: LocatedDocument,
    base_dir: Path,
    listings: list[tuple[int, Path, FolderListing]],
    roots: list[Path],
) -> list[RecipeProblem]:
    problems = []
    hint = "paths must lie in the recipe's folder or an operator data root (QUANTMILL_DATA_ROOTS)"
    for loc, named in _recipe_paths(recipe, variants, base_dir):
        resolved = _resolve(base_dir, named)
        if not inside(resolved, roots):
            problems.append(doc.problem(loc, f"'{named}' resolves outside the recipe's folder and data roots", hint))
        elif loc[:2] != ("evaluation", "include_paths"):  # task folders: their listing, below
            problems += [doc.problem(loc, why, FOLDER_HINT) for why in _unsafe_entries(named, resolved, roots)]
    for index, _, listing in listings:
        for file in listing.files:
            loc = ("evaluation", "include_paths", index)
            if file.is_symlink() and not inside(_resolve(base_dir, str(file)), roots):
                problems.append(
                    doc.problem(loc, f"the link {file} points outside the recipe's folder and data roots", hint)
                )
                continue
            for data, maybe_hub in task_file_data_paths(file):
                scheme, _, rest = data.rpartition("://")
                if scheme.lower() in REMOTE_SCHEMES:
                    continue  # fetched, not read from this machine's disk
                if scheme and scheme.lower() != "file":  # zip://, tar://, memory://…: refused, not interpreted
                    problems.append(
                        doc.problem(loc, f"{file.name} reads data through '{scheme}://', which is not allowed", hint)
                    )
                    continue
                # relative names resolve against the worker's working folder or the task's: both must stay inside
                places = [_resolve(base, rest) for base in (file.parent, Path.cwd())]
                if maybe_hub and not scheme and may_be_hub_id(rest):  # "json", "org/name": a folder only if one exists
                    places = [place for place in places if place.exists()]
                if not all(inside(place, roots) for place in places):
                    problems.append(
                        doc.problem(
                            loc, f"{file.name} reads data at '{data}', outside the recipe's folder and data roots", hint
                        )
                    )
    return problems


#: URL schemes a task's data may name: fetched over the network (``hf://`` from the Hub), never from this disk
REMOTE_SCHEMES = ("http", "https", "hf")

#: entries walked in one named model, tokenizer or data folder (sharded checkpoints hold hundreds)
MAX_FOLDER_ENTRIES = 10_000
FOLDER_HINT = (
    "a model or data folder may hold only regular files, and links to files in the recipe's folder "
    "or an operator data root (QUANTMILL_DATA_ROOTS)"
)


def _unsafe_entries(named: str, resolved: Path, roots: list[Path]) -> list[str]:
    """Why reading the file or folder ``named`` could read beyond the roots or hang.

    A model folder inside the roots is read by the libraries file by file, links followed:
    a committed ``chat_template.jinja -> /proc/self/environ`` would be read as the chat
    template and saved into the artifact that gets published. So every link in it must
    lead to a file inside the roots, and a FIFO or device (a read that never ends) is refused.
    """
    try:
        if not resolved.is_dir():
            return [] if not resolved.exists() or resolved.is_file() else [f"'{named}' is not a regular file"]
    except OSError:
        return []  # unreadable: the recipe checks and the loader say so
    listing = list_folder(resolved, MAX_FOLDER_ENTRIES, sys.maxsize)
    if listing.truncated:
        return [f"'{named}' holds more than {MAX_FOLDER_ENTRIES} entries"]
    problems = []
    for entry in listing.files:
        shown = entry.relative_to(resolved)
        try:
            if entry.is_symlink():
                target = _resolve(resolved, str(entry))
                if not inside(target, roots):
                    problems.append(
                        f"the link '{shown}' in '{named}' points outside the recipe's folder and data roots"
                    )
                elif not target.is_file():
                    problems.append(f"the link '{shown}' in '{named}' leads to a folder or special file, not a file")
            elif not entry.is_file():
                problems.append(f"'{shown}' in '{named}' is not a regular file (a FIFO, socket or device)")
            if entry.name.endswith(".index.json") and entry.is_file():  # a Hub cache snapshot's is a link
                problems += [f"'{shown}' in '{named}' {why}" for why in _shards_elsewhere(entry)]
        except OSError as exc:
            problems.append(f"'{shown}' in '{named}' cannot be checked: {exc.strerror or exc}")
    return problems


_NAME_LINE = re.compile(r"^name:\s*[\"']?([a-z0-9][a-z0-9._-]*)", re.MULTILINE)


def _name_taken(recipe_path: Path, recipe_name: str) -> list[tuple[str, str]]:
    """(problem, hint) when another recipe file in the same folder has this recipe's name.

    A recipe's name picks its runs, its name grants and the repos it may write (a repo's card names the
    recipe that made it): a new file claiming ``name: <a nightly recipe>`` would take them over.
    """
    for other in sorted(recipe_path.parent.glob("*.y*ml")):
        try:
            if other.suffix not in (".yaml", ".yml") or other.resolve() == recipe_path.resolve():
                continue
            text = other.read_text(errors="replace")[:65_536]
        except OSError:
            continue
        found = _NAME_LINE.search(text)
        if (found.group(1) if found else other.stem) == recipe_name:
            return [
                (
                    f"recipe name '{recipe_name}' is also the name of {other.name}: a name picks runs, grants "
                    "and the repos a recipe may write",
                    "give each recipe its own name",
                )
            ]
    return []


def _shards_elsewhere(index: Path) -> list[str]:
    """A sharded checkpoint's index names its shards by file name; transformers (and llama.cpp's converter)
    join each to the folder as written, so ``../../other-model/x.safetensors`` loads weights from elsewhere."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        shards = set(weight_map.values()) if isinstance(weight_map, dict) else set()
    except (ValueError, AttributeError, TypeError):
        return ["is not a readable shard index"]
    foreign = sorted(str(s) for s in shards if not isinstance(s, str) or Path(s).name != s or s in ("", ".", ".."))
    missing = sorted(s for s in shards - set(foreign) if not (index.parent / s).is_file())
    problems = [f"names shards outside its folder: {', '.join(foreign[:3])}"] if foreign else []
    return problems + ([f"names shards that are not in its folder: {', '.join(missing[:3])}"] if missing else [])


def _check_publish(
    recipe: Recipe, variants: list[Variant], doc: LocatedDocument, base_dir: Path, operator: OperatorSettings
) -> list[RecipeProblem]:
    publish = recipe.publish
    untrusted = operator.policy == "untrusted"
    problems = []
    if publish.card_template:
        template = _resolve(base_dir, publish.card_template)
        if not inside(template, _roots(base_dir, operator.card_template_dirs)):
            problems.append(
                doc.problem(
                    ("publish", "card_template"),
                    f"card template '{publish.card_template}' resolves outside the recipe's folder",
                    "keep the template next to the recipe, or in an operator card template folder "
                    "(QUANTMILL_CARD_TEMPLATE_DIRS)",
                )
            )
        elif not _is_file(template):
            problems.append(doc.problem(("publish", "card_template"), f"card template not found: {template}"))
    own_endpoint = publish.endpoint is not None and publish.endpoint != operator.hub_endpoint
    if own_endpoint and (untrusted or operator.hub_endpoint is not None):
        problems.append(
            doc.problem(
                ("publish", "endpoint"),
                f"the Hub endpoint comes from the operator, not the recipe (recipe says {publish.endpoint})",
                "remove publish.endpoint; the operator sets QUANTMILL_HUB_ENDPOINT",
            )
        )
    if operator.namespaces and publish.namespace not in operator.namespaces:
        problems.append(
            doc.problem(
                ("publish", "namespace"),
                f"namespace '{publish.namespace}' is not one the operator allows",
                f"use one of {', '.join(operator.namespaces)}",
            )
        )
    grouped_gguf = "repo_name" not in publish.model_fields_set and any(v.method == "gguf" for v in variants)
    if untrusted and publish.target == "hub" and grouped_gguf:
        problems.append(
            doc.problem(
                ("publish", "repo_name"),
                "the GGUF variants would go to the grouped repo '{model}-GGUF', which every recipe of this model "
                "writes, replacing its files of the same types",
                "set publish.repo_name with {variant} (one repo per GGUF type), e.g. '{model}-{variant}'",
            )
        )
    if untrusted and "{variant}" not in publish.repo_name:
        problems.append(
            doc.problem(
                ("publish", "repo_name"),
                f"repo_name '{publish.repo_name}' does not contain {{variant}}, so it could overwrite any repo",
                "include {variant}, e.g. '{model}-{variant}'",
            )
        )
    if untrusted or operator.zoo_root is not None:
        zoo = _resolve(base_dir, publish.path)
        allowed = operator.zoo_root.expanduser().resolve() if operator.zoo_root else base_dir.resolve()
        if not inside(zoo, [allowed]):
            problems.append(
                doc.problem(
                    ("publish", "path"),
                    f"the local zoo '{publish.path}' resolves to {zoo}, outside {allowed}",
                    "the operator's zoo root (QUANTMILL_ZOO_ROOT) holds every local zoo",
                )
            )
    return problems


def check_recipe_trust(
    recipe: Recipe,
    variants: list[Variant],
    doc: LocatedDocument,
    base_dir: Path,
    recipe_path: Path | None,
    recipe_name: str,
    operator: OperatorSettings | None = None,
) -> tuple[list[CapabilityRequest], list[RecipeProblem]]:
    """The capabilities ``recipe`` asks for, and its problems under the operator's settings."""
    operator = operator or get_operator()
    untrusted = operator.policy == "untrusted"
    problems = _check_caps(recipe, variants, doc, operator)
    listings = _list_task_folders(recipe, doc, base_dir, operator, problems)
    requests = requested_capabilities(recipe, listings)
    problems += _check_publish(recipe, variants, doc, base_dir, operator)
    if untrusted:
        problems += _check_paths(recipe, variants, doc, base_dir, listings, _roots(base_dir, operator.data_roots))
        if recipe_path is not None:
            problems += [doc.problem(("name",), *why) for why in _name_taken(recipe_path, recipe_name)]
        own_file = operator_file()
        if own_file is not None and inside(own_file, [base_dir.resolve()]):
            problems.append(
                doc.problem(
                    (),
                    f"the operator settings file {own_file} lies in the recipes folder, where a change could edit it",
                    "keep QUANTMILL_OPERATOR_FILE outside the recipes folder",
                )
            )
    allowed = {c for c in CAPABILITIES if operator.allows(c, recipe_name, recipe_path)}
    # a name grant holds only for the file named after the recipe (OperatorSettings.granted): else its path
    by_name = recipe_path is None or recipe_path.stem == recipe_name
    grant_key = recipe_name if by_name else f"'{recipe_path.resolve() if recipe_path else ''}'"
    for request in requests:
        if request.capability not in allowed:
            problems.append(
                doc.problem(
                    request.loc,
                    f"needs capability '{request.capability}' ({request.detail}), which the untrusted policy "
                    f"refuses unless the operator grants it to recipe '{recipe_name}'",
                    "an operator grants it in the operator settings file: "
                    f"grants: {{{grant_key}: [{request.capability}]}}",
                )
            )
    model = recipe.model
    folders = [find_model_dir(model.id, base_dir, model.revision)]
    if model.tokenizer:
        folders.append(find_model_dir(model.tokenizer, base_dir))
    refused = model_code_refusal(recipe, variants, [f for f in folders if f is not None])
    if refused is not None:
        problems.append(doc.problem(("model", "id"), *refused))
    return requests, problems


def model_code_refusal(recipe: Recipe, variants: Sequence[Variant], folders: list[Path]) -> tuple[str, str] | None:
    """Why making the recipe's variants from these model folders would run the model's own code that the
    recipe did not allow (problem, hint); None when nothing would. Checked at validation for folders on disk,
    and again on the resolved folders before any variant is made (a Hub model is on disk only then)."""
    running = ", ".join(sorted({v.method for v in variants if v.spec.runs_model_code}))
    if not running or recipe.model.trust_remote_code:
        return None
    for folder in folders:
        code_map = model_code_map(folder)
        if code_map is not None:
            return (
                f"the model ships its own code (auto_map in {folder.name}/{code_map}), which making {running} "
                "variants runs",
                f"set model.trust_remote_code: true (capability remote_code) to allow it, or drop the {running} rows",
            )
    return None
