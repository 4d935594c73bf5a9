"""Checks that need more than the schema: the model's shape, files, metrics, names."""

from __future__ import annotations

import re
import string
from pathlib import Path

from quantmill.dataref import DatasetRef
from quantmill.errors import RecipeProblem
from quantmill.metrics import BUILTIN_METRICS, RULES_FOR_DIRECTION, Direction, metric_direction, split_task_metric
from quantmill.modelinfo import TOKENIZER_FILES, ModelShape, find_model_dir, read_model_shape
from quantmill.recipe.matrix import Variant
from quantmill.recipe.schema import GateRule, Recipe
from quantmill.registry import did_you_mean
from quantmill.trust.capabilities import TaskFileTooLarge, list_folder, read_task_yaml
from quantmill.trust.operator import get_operator
from quantmill.yamlio import LocatedDocument

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REPO_TEMPLATE_FIELDS = ("model", "variant", "method", "recipe")

_DEFAULT_TASK_METRICS: dict[str, dict[str, Direction]] = {
    "multiple_choice": {"acc": "higher", "acc_norm": "higher"},
    "loglikelihood_rolling": {"word_perplexity": "lower", "byte_perplexity": "lower", "bits_per_byte": "lower"},
    "loglikelihood": {"perplexity": "lower", "acc": "higher"},
    "generate_until": {"exact_match": "higher"},
}


def _is(path: Path, kind: str) -> bool:
    """``path.exists()/is_file()/is_dir()`` that answers False for unusable paths (too long, bad bytes)."""
    try:
        return getattr(path, kind)()
    except (OSError, ValueError):
        return False


def is_local_model(model_id: str, base_dir: Path) -> bool:
    """A model id names a local folder if it exists or is written as a path."""
    path = Path(model_id).expanduser()
    if _is(path if path.is_absolute() else base_dir / path, "exists"):
        return True
    return model_id.startswith((".", "/", "~")) or not HUB_ID.match(model_id)


def hub_name_problem(name: str) -> str | None:
    """Why the Hub would reject ``name`` as a repo or namespace name, or None."""
    if not HUB_NAME.match(name):
        return "only letters, digits, '-', '_' and '.' are allowed, starting with a letter or digit (at most 96)"
    if "--" in name or ".." in name:
        return "'--' and '..' are not allowed"
    if name.endswith((".git", ".ipynb", "-", ".")):
        return "must not end with '.git', '.ipynb', '-' or '.'"
    return None


def local_task_metrics(include_paths: list[Path]) -> dict[str, dict[str, Direction]]:
    """Task name → metric → direction for every lm-eval task YAML under ``include_paths``.

    A folder over the operator's file or byte caps is skipped (the trust check reports it).
    """
    tasks: dict[str, dict[str, Direction]] = {}
    operator = get_operator()
    for folder in include_paths:
        if not _is(folder, "is_dir"):
            continue
        listing = list_folder(folder, operator.max_include_files, operator.max_include_bytes)
        if listing.truncated:
            continue
        for file in listing.files:
            if file.suffix != ".yaml":
                continue
            try:
                config = read_task_yaml(file)
            except TaskFileTooLarge:
                continue  # reported by the trust check
            if not isinstance(config, dict) or not isinstance(config.get("task"), str):
                continue
            metrics = dict(_DEFAULT_TASK_METRICS.get(config.get("output_type", "generate_until"), {}))
            for entry in config.get("metric_list") or []:
                if isinstance(entry, dict) and isinstance(entry.get("metric"), str):
                    metrics[entry["metric"]] = "higher" if entry.get("higher_is_better", True) else "lower"
            tasks[config["task"]] = metrics
    return tasks


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def _check_dataset(ref: DatasetRef | None, loc: tuple, doc: LocatedDocument, base_dir: Path) -> list[RecipeProblem]:
    if ref is None or ref.path is None:
        return []
    path = _resolve(base_dir, ref.path)
    if not _is(path, "is_file"):
        return [doc.problem(loc + ("path",), f"data file not found: {path}", "paths are relative to the recipe")]
    if path.suffix not in (".txt", ".jsonl", ".json"):
        return [doc.problem(loc + ("path",), f"unsupported data file type '{path.suffix}'", "use .txt or .jsonl")]
    return []


def check_model(recipe: Recipe, doc: LocatedDocument, base_dir: Path) -> tuple[ModelShape | None, list[RecipeProblem]]:
    model_id = recipe.model.id
    local = is_local_model(model_id, base_dir)
    if not local and recipe.model.base_model not in (None, model_id):
        return None, [
            doc.problem(
                ("model", "base_model"),
                f"'{recipe.model.base_model}' differs from the Hub model '{model_id}' being quantized",
                "base_model names the Hub id of a local model folder; remove it for a Hub model",
            )
        ]
    tokenizer = recipe.model.tokenizer
    if tokenizer and is_local_model(tokenizer, base_dir):
        folder = _resolve(base_dir, tokenizer)
        if not any(_is(folder / name, "is_file") for name in TOKENIZER_FILES):
            return None, [
                doc.problem(
                    ("model", "tokenizer"),
                    f"no tokenizer at {folder}: none of {', '.join(TOKENIZER_FILES)}",
                    "give a local tokenizer folder (relative to the recipe) or a hub id like 'org/name'",
                )
            ]
    if local:
        folder = _resolve(base_dir, model_id)
        if not _is(folder / "config.json", "is_file"):
            return None, [
                doc.problem(
                    ("model", "id"),
                    f"no model folder with a config.json at {folder}",
                    "give a local model folder (relative to the recipe) or a hub id like 'org/name'",
                )
            ]
        return _shape_of(folder, doc)
    cached = find_model_dir(model_id, revision=recipe.model.revision)
    return _shape_of(cached, doc) if cached else (None, [])


def _shape_of(folder: Path, doc: LocatedDocument) -> tuple[ModelShape | None, list[RecipeProblem]]:
    try:
        return read_model_shape(folder), []
    except ValueError as exc:  # a weight file that is not safetensors: say which, before anything loads it
        return None, [doc.problem(("model", "id"), f"{folder}: {exc}", "replace the model's weight files")]


def variant_rows(recipe: Recipe) -> tuple[str, str]:
    """Where the recipe's variants come from: the matrix's rows, or the search space's."""
    return ("search", "space") if recipe.search is not None else ("variants", "methods")


def check_matrix_or_search(recipe: Recipe, doc: LocatedDocument) -> list[RecipeProblem]:
    """A recipe lists a matrix (``variants``) or states a goal (``search``): exactly one of them.

    Both would publish the matrix's passing variants beside the search's winner; split them into two recipes.
    """
    if recipe.variants is None and recipe.search is None:
        return [doc.problem((), "a recipe needs 'variants' (a matrix) or 'search' (a goal)", "see 'quantmill init'")]
    if recipe.variants is not None and recipe.search is not None:
        return [
            doc.problem(
                ("search",),
                "give 'variants' or 'search', not both",
                "a search publishes only its winner: put the matrix in a recipe of its own",
            )
        ]
    return []


def check_search(recipe: Recipe, doc: LocatedDocument) -> list[RecipeProblem]:
    """The search's objective is measured by the evaluation, and its mixed entries have the data they need."""
    search = recipe.search
    if search is None:
        return []
    problems = []
    group = BUILTIN_METRICS[search.objective.metric].produced_by
    if group not in recipe.evaluation.metrics:
        key = "minimize" if search.objective.minimize else "maximize"
        problems.append(
            doc.problem(
                ("search", "objective", key),
                f"no evaluation measures '{search.objective.metric}'",
                f"add '{group}' to evaluation.metrics",
            )
        )
    for index, row in enumerate(search.space):
        mixed = row.get("mixed") if isinstance(row, dict) else None
        if isinstance(mixed, dict) and recipe.calibration.dataset is None:
            problems.append(  # the sensitivity scan measures each layer on calibration text, whatever the method
                doc.problem(
                    ("search", "space", index, "mixed"),
                    f"mixed {mixed.get('method', 'precision')} needs calibration data (its sensitivity scan reads it)",
                    "add calibration.dataset with 'path' or 'hub'",
                )
            )
    return problems


def check_variants(
    variants: list[Variant], shape: ModelShape | None, device: str, doc: LocatedDocument, recipe: Recipe
) -> list[RecipeProblem]:
    problems = []
    for variant in variants:
        for finding in variant.spec.check(variant.params, shape, device):
            problems.append(
                doc.problem(
                    (*variant_rows(recipe), variant.row, finding.field),
                    f"variant '{variant.id}': {finding.message}",
                    finding.hint,
                )
            )
    return problems


def check_data(recipe: Recipe, variants: list[Variant], doc: LocatedDocument, base_dir: Path) -> list[RecipeProblem]:
    problems = _check_dataset(recipe.calibration.dataset, ("calibration", "dataset"), doc, base_dir)
    needs = [v.id for v in variants if v.spec.needs_calibration(v.params)]
    if needs and recipe.calibration.dataset is None:
        problems.append(
            doc.problem(
                ("calibration",),
                f"variants {', '.join(needs)} need calibration data",
                "add calibration.dataset with 'path' or 'hub'",
            )
        )
    if recipe.evaluation.perplexity:
        problems += _check_dataset(
            recipe.evaluation.perplexity.dataset, ("evaluation", "perplexity", "dataset"), doc, base_dir
        )
    for variant in variants:
        training = getattr(variant.params, "training", None)
        if training is not None:
            problems += _check_dataset(
                training.dataset, (*variant_rows(recipe), variant.row, "training", "dataset"), doc, base_dir
            )
    for i, folder in enumerate(recipe.evaluation.include_paths):
        if not _is(_resolve(base_dir, folder), "is_dir"):
            problems.append(doc.problem(("evaluation", "include_paths", i), f"task folder not found: {folder}"))
    return problems


def check_gates(recipe: Recipe, variants: list[Variant], doc: LocatedDocument, base_dir: Path) -> list[RecipeProblem]:
    """Every gate names a metric the evaluation produces, with a rule that fits its direction."""
    evaluation = recipe.evaluation
    local = local_task_metrics([_resolve(base_dir, p) for p in evaluation.include_paths])
    produced = [
        m
        for m, info in BUILTIN_METRICS.items()
        if info.produced_by in (*evaluation.metrics, "servable")
        or (info.produced_by == "perplexity" and evaluation.perplexity)
    ]
    for task in evaluation.tasks:
        produced += [f"{task}/{metric}" for metric in local.get(task, {})]
    problems: list[RecipeProblem] = []
    sources: list[tuple[tuple[str | int, ...], GateRule]] = [
        (("gates", i), gate) for i, gate in enumerate(recipe.gates)
    ]
    if recipe.search is not None:
        sources += [(("search", "constraints", i), gate) for i, gate in enumerate(recipe.search.constraints)]
    seen = {id(gate) for _, gate in sources}
    located = len(sources)  # the rules above are located at their own metric; a row's own gates at the row's
    for variant in variants:
        for gate in variant.gates:
            if id(gate) not in seen:
                seen.add(id(gate))
                sources.append(((*variant_rows(recipe), variant.row, "gates"), gate))
    for index, (loc, gate) in enumerate(sources):
        problem = _gate_problem(gate, evaluation.tasks, local, produced, recipe)
        if problem:
            problems.append(doc.problem(loc + ("metric",) if index < located else loc, *problem))
    return problems


def _gate_problem(gate, tasks, local, produced, recipe) -> tuple[str, str | None] | None:
    name = gate.metric
    split = split_task_metric(name)
    if split is None:
        if name not in BUILTIN_METRICS:
            return f"unknown metric '{name}'", "; ".join(
                x
                for x in (
                    did_you_mean(name, produced),
                    f"use a built-in ({', '.join(BUILTIN_METRICS)}) or '<task>/<metric>'",
                )
                if x
            )
        if name not in produced:
            source = BUILTIN_METRICS[name].produced_by
            fix = "add evaluation.perplexity" if source == "perplexity" else f"add '{source}' to evaluation.metrics"
            return f"no evaluation produces '{name}'", fix
    else:
        task, metric = split
        if task not in tasks:
            return f"task '{task}' is not in evaluation.tasks", did_you_mean(
                task, tasks
            ) or f"add '{task}' to evaluation.tasks"
        if task in local and metric not in local[task]:
            return f"task '{task}' does not report '{metric}'", f"it reports {', '.join(local[task])}"
    direction = metric_direction(name, local)
    allowed = RULES_FOR_DIRECTION[gate.rule]
    if direction is None and len(allowed) == 1:
        return (
            f"cannot tell whether higher or lower is better for '{name}', so '{gate.rule}' is ambiguous",
            "use min or max",
        )
    if direction is not None and direction not in allowed:
        better = "lower" if direction == "lower" else "higher"
        fits = [r for r, dirs in RULES_FOR_DIRECTION.items() if direction in dirs]
        return f"'{gate.rule}' does not fit '{name}', for which {better} is better", f"use one of {', '.join(fits)}"
    return None


def check_publish(
    recipe: Recipe, variants: list[Variant], doc: LocatedDocument, recipe_name: str
) -> list[RecipeProblem]:
    publish = recipe.publish
    problems = []
    reason = hub_name_problem(publish.namespace)
    if reason:
        problems.append(doc.problem(("publish", "namespace"), f"invalid namespace '{publish.namespace}': {reason}"))
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(publish.repo_name) if f is not None]
    except ValueError as exc:
        return problems + [doc.problem(("publish", "repo_name"), f"invalid template: {exc}")]
    specs = [(spec, conv) for _, f, spec, conv in string.Formatter().parse(publish.repo_name) if f is not None]
    if any(spec or conv for spec, conv in specs):
        return problems + [
            doc.problem(
                ("publish", "repo_name"),
                "format specs and conversions are not allowed in repo_name",
                "write plain fields such as {model}-{variant}",
            )
        ]
    bad = [f for f in fields if f not in REPO_TEMPLATE_FIELDS]
    if bad:
        problems.append(
            doc.problem(
                ("publish", "repo_name"),
                f"template field '{{{bad[0]}}}' is not allowed",
                f"use only {', '.join('{' + f + '}' for f in REPO_TEMPLATE_FIELDS)}",
            )
        )
        return problems
    for variant in variants:
        name = render_repo_name(publish.repo_name, recipe, variant, recipe_name)
        reason = hub_name_problem(name)
        if reason:
            problems.append(
                doc.problem(("publish", "repo_name"), f"repo name '{name}' for '{variant.id}' is invalid: {reason}")
            )
            break
    return problems


def render_repo_name(template: str, recipe: Recipe, variant: Variant, recipe_name: str) -> str:
    """The repo name for ``variant``; only plain named fields exist, so nothing executes."""
    model = Path(recipe.model.id.rstrip("/")).name
    return template.format(model=model, variant=variant.id, method=variant.method, recipe=recipe_name)
