"""Find the code-bearing inputs of a recipe: the capabilities it asks for, with their locations.

Three capabilities exist (see :data:`quantmill.trust.operator.CAPABILITIES`):

* ``remote_code``: ``model.trust_remote_code``, or a task's ``dataset_kwargs.trust_remote_code``;
* ``task_code``: in an ``include_paths`` folder, a ``!function`` tag, a Python file, an
  ``include`` of a YAML outside the folder, a Jinja prompt template doing more than
  reading a field (``{{question}}``, ``{{doc.choices[0]}}`` are plain; ``{% … %}``,
  calls, filters and ``_``-attributes are code), a metric lm-eval has not registered
  (it would load it through HF ``evaluate.load``), or a YAML file whose aliases expand
  past the recipe loader's limits (it cannot be checked) — in every task config of a
  file, a group's inline tasks included;
* ``card_template``: ``publish.card_template``.

Task folders are walked without following links and at most ``max_files`` entries deep,
so ``include_paths: ["/"]`` costs a bounded listing, never a walk of the filesystem.
:func:`task_file_data_paths` lists where each task's data is read from, for the path
rules of :mod:`quantmill.trust.boundary`; :func:`model_code_map` finds a model's own code.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from quantmill.recipe.schema import Recipe
from quantmill.yamlio import MAX_DEPTH, MAX_NODES

Loc = tuple[str | int, ...]

_JINJA_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PLAIN_FIELD = re.compile(
    r"""^\s*[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*|\[\d+\]|\['[\w ]*'\]|\["[\w ]*"\])*\s*$"""
)


@dataclass(frozen=True)
class CapabilityRequest:
    """One place where a recipe asks for a capability.

    Attributes:
        capability: ``remote_code``, ``task_code`` or ``card_template``.
        loc: the recipe field that brings it in (``evaluation.include_paths[0]``).
        detail: what exactly asks for it (a file and the construct found in it).
    """

    capability: str
    loc: Loc
    detail: str

    def describe(self) -> str:
        return f"{self.capability}: {self.detail}"


@dataclass(frozen=True)
class FolderListing:
    """The regular files and links under a folder, as far as the caps allowed."""

    files: list[Path]
    total_bytes: int
    truncated: bool


def list_folder(folder: Path, max_files: int, max_bytes: int) -> FolderListing:
    """Files (and links, unfollowed) under ``folder``; stops once either cap is passed."""
    files: list[Path] = []
    total = 0
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs.sort()
        # a link to a folder is listed as an entry (to be checked), never walked into
        for name in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root) / name
            files.append(path)
            try:
                total += path.lstat().st_size
            except OSError:
                continue
            if len(files) > max_files or total > max_bytes:
                return FolderListing(files, total, True)
    return FolderListing(files, total, False)


class _TaggedLoader(yaml.SafeLoader):
    """Parses task YAML; a tag such as ``!function utils.f`` becomes a :class:`_Tagged`, never runs."""


@dataclass(frozen=True)
class _Tagged:
    tag: str
    value: Any


_TaggedLoader.add_multi_constructor(
    "!",
    lambda loader, suffix, node: _Tagged(
        "!" + suffix, loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else None
    ),
)


class TaskFileTooLarge(Exception):
    """A task YAML whose aliases expand past the recipe loader's limits (lm-eval would hang or crash on it too)."""


def read_task_yaml(file: Path) -> Any:
    """A task YAML's data (tags such as ``!function`` kept as :class:`_Tagged`, never run); None when it is
    unreadable. Aliases are counted on the composed node graph before anything is built: a 1 KB file of
    nested aliases expands to billions of values, and an alias inside itself never ends.

    Raises:
        TaskFileTooLarge: past ``yamlio.MAX_NODES`` values or ``yamlio.MAX_DEPTH`` levels.
    """
    try:
        text = file.read_text()
        root = yaml.compose(text, Loader=_TaggedLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    stack, seen = [(root, 0)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES or depth > MAX_DEPTH:
            raise TaskFileTooLarge(f"expands to more than {MAX_NODES} values or {MAX_DEPTH} levels (YAML aliases)")
        if isinstance(node, yaml.MappingNode):
            stack += [(part, depth + 1) for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, depth + 1) for item in node.value]
    try:
        return yaml.load(text, Loader=_TaggedLoader)
    except yaml.YAMLError:
        return None


def _values(data: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a nested YAML structure, depth first."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield str(k), v
            yield from _values(v, str(k))
    elif isinstance(data, list):
        for item in data:
            yield key, item
            yield from _values(item, key)


def is_plain_jinja(text: str) -> bool:
    """True when ``text`` uses Jinja only to read fields (``{{question}}``), nothing that runs code."""
    if "{%" in text or "{#" in text:
        return False
    return all(_PLAIN_FIELD.match(expression) for expression in _JINJA_EXPRESSION.findall(text))


def task_file_findings(file: Path, folder: Path) -> list[tuple[str, str]]:
    """What in one file of a task folder is code: (capability, description) per finding."""
    name = file.relative_to(folder) if folder in file.parents else file
    if file.suffix == ".py":
        return [("task_code", f"{name}: Python file")]
    if file.suffix not in (".yaml", ".yml"):
        return []
    try:
        data = read_task_yaml(file)
    except TaskFileTooLarge as too_large:
        return [("task_code", f"{name}: {too_large}: cannot be checked")]
    findings = []
    for key, value in _values(data):
        if isinstance(value, _Tagged):
            findings.append(("task_code", f"{name}: {key}: {value.tag} {value.value or ''}".rstrip()))
        elif isinstance(value, str) and "{" in value and not is_plain_jinja(value):
            findings.append(("task_code", f"{name}: {key}: Jinja beyond field access: {json.dumps(value[:80])}"))
        elif key == "include" and isinstance(value, str):
            target = (file.parent / value).resolve()
            if folder.resolve() not in target.parents:
                findings.append(("task_code", f"{name}: include of {value}, outside the task folder"))
    kwargs = data.get("dataset_kwargs") if isinstance(data, dict) else None
    if isinstance(kwargs, dict) and kwargs.get("trust_remote_code"):  # the data set's own loading code
        findings.append(("remote_code", f"{name}: dataset_kwargs.trust_remote_code"))
    findings += [("task_code", f"{name}: metric_list: {why}") for why in _metrics_loaded_as_code(data)]
    return findings


def _metrics_loaded_as_code(data: Any) -> list[str]:
    """Metrics of a task that lm-eval would load as code: a name it has not registered goes to
    HF ``evaluate.load(name)``, which imports a local script at that path (or a Hub Space's)."""
    named = [
        entry
        for config in _mappings(data)  # a group's inline task configs are tasks too
        if isinstance(entries := config.get("metric_list"), list)
        for entry in entries
        if isinstance(entry, dict)
    ]
    found = []
    for entry in named:
        metric = entry.get("metric")
        if not isinstance(metric, str):
            continue  # a tag (``!function``) is reported as one
        if entry.get("hf_evaluate") is True:
            found.append(f"{json.dumps(metric[:80])} with hf_evaluate: true loads HF evaluate code")
        elif metric not in LM_EVAL_METRICS:
            found.append(
                f"{json.dumps(metric[:80])} is not an lm-eval metric: lm-eval would load it as code (HF evaluate)"
            )
    return found


#: lm-eval's built-in metrics (``lm_eval.api.metrics`` registers them); a test keeps this equal to lm-eval's
#: registry. Kept as data: validation runs where lm-eval is not installed (the PR workflow), and a task's
#: own metrics are registered by its Python, which is ``task_code`` already.
LM_EVAL_METRICS = frozenset(
    {
        "acc", "acc_all", "acc_bytes", "acc_mutual_info", "acc_norm", "bits_per_byte", "bleu", "brier_score",
        "bypass", "byte_perplexity", "chrf", "chrf++", "exact_match", "f1", "likelihood", "mcc", "perplexity",
        "ter", "word_perplexity",
    }
)  # fmt: skip


def may_be_hub_id(name: str) -> bool:
    """``name`` reads as a builder (``json``) or a Hub data set id (``org/name``), not as a path."""
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1


#: task YAML fields naming files lm-eval's data loading reads (``dataset_path`` may be a local folder)
_DATA_FIELDS = ("data_files", "data_dir")


def task_file_data_paths(file: Path) -> list[tuple[str, bool]]:
    """Where a task YAML's data sets may read from, in every task config it holds: ``dataset_path``
    (paired with True: it may be a builder or a Hub id, :func:`may_be_hub_id`) and
    ``dataset_kwargs.data_files`` / ``data_dir`` (a name or glob, a list, or a split → name(s) mapping;
    paired with False: always a path or URL)."""
    if file.suffix not in (".yaml", ".yml"):
        return []
    try:
        data = read_task_yaml(file)
    except TaskFileTooLarge:
        return []  # task_code, reported by task_file_findings
    paths: list[tuple[str, bool]] = []
    for config in _mappings(data):  # a group's inline task configs are tasks too
        dataset_path = config.get("dataset_path")
        if isinstance(dataset_path, str):
            paths.append((dataset_path, True))
        kwargs = config.get("dataset_kwargs")
        if not isinstance(kwargs, dict):
            continue
        for field in _DATA_FIELDS:
            value = kwargs.get(field)
            for item in value.values() if isinstance(value, dict) else [value]:
                paths += [(v, False) for v in (item if isinstance(item, list) else [item]) if isinstance(v, str)]
    return paths


def _mappings(data: Any) -> Iterator[dict]:
    """Every mapping in a nested YAML structure, ``data`` itself first."""
    if isinstance(data, dict):
        yield data
        for value in data.values():
            yield from _mappings(value)
    elif isinstance(data, list):
        for item in data:
            yield from _mappings(item)


#: files in which a model maps classes to Python files of its own (``auto_map``): transformers imports
#: them when ``trust_remote_code`` is on, as llama.cpp's converter sets it for several families
CODE_MAPS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def model_code_map(model_dir: Path | None) -> str | None:
    """The first file in ``model_dir`` that maps classes to the model's own code (``auto_map``), or None."""
    if model_dir is None:
        return None
    for name in CODE_MAPS:
        try:
            config = json.loads((model_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("auto_map"):
            return name
    return None


def requested_capabilities(
    recipe: Recipe, include_listings: list[tuple[int, Path, FolderListing]]
) -> list[CapabilityRequest]:
    """Every capability ``recipe`` asks for, given the listings of its task folders."""
    requests: list[CapabilityRequest] = []
    if recipe.model.trust_remote_code:
        requests.append(
            CapabilityRequest(
                "remote_code",
                ("model", "trust_remote_code"),
                f"trust_remote_code: true runs the code shipped with {recipe.model.id}",
            )
        )
    for index, folder, listing in include_listings:
        loc: Loc = ("evaluation", "include_paths", index)
        for file in listing.files:
            if file.is_symlink():
                continue  # links are path problems, reported by the boundary check
            requests += [CapabilityRequest(c, loc, finding) for c, finding in task_file_findings(file, folder)]
    if recipe.publish.card_template:
        requests.append(CapabilityRequest("card_template", ("publish", "card_template"), recipe.publish.card_template))
    return requests
