"""What a change to a recipes folder will do: ``quantmill diff BASE [HEAD]``.

For reviewers of recipe pull requests: recipes added, removed and changed; per
changed recipe the variants added, removed and changed, gates tightened or
loosened, publish settings changed, the capabilities (code-bearing inputs) it asks
for and which of them the change adds, and which variants the next nightly run will
redo because what determines their results changed.

Everything from a recipe is escaped in the Markdown (a pull-request comment), so a
recipe cannot inject HTML, tables, links or mentions into it.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantmill.errors import QuantmillError, RecipeError
from quantmill.recipe import LoadedRecipe, load_recipe
from quantmill.recipe.schema import GateRule
from quantmill.trust.operator import OperatorSettings

_TIGHTER_WHEN_HIGHER = {"min", "min_recovery"}


@dataclass
class RecipeChange:
    file: str
    status: str  # added, removed, changed, invalid
    variants_added: list[str] = field(default_factory=list)
    variants_removed: list[str] = field(default_factory=list)
    variants_changed: list[str] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    rerun: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    capabilities_added: list[str] = field(default_factory=list)
    error: str | None = None


@contextmanager
def recipes_at(ref: str, recipes_subdir: str = "recipes", repo: Path = Path(".")) -> Iterator[Path]:
    """The recipes folder as of ``ref``: a folder path as is, or a git ref extracted with ``git archive``.

    The whole tree is extracted, so paths in recipes (models, data) resolve as they did at that ref.
    """
    if Path(ref).is_dir():
        yield Path(ref)
        return
    result = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", ref], capture_output=True, check=False)
    if result.returncode != 0:
        raise QuantmillError(f"'{ref}' is neither a folder nor a git ref here: {result.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="quantmill-diff-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        top = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--show-prefix"], capture_output=True, text=True, check=False
        ).stdout.strip()
        yield Path(tmp) / top / recipes_subdir


def _load_all(folder: Path, operator: OperatorSettings | None = None) -> dict[str, LoadedRecipe | RecipeError]:
    loaded: dict[str, LoadedRecipe | RecipeError] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            loaded[path.name] = load_recipe(path, operator)
        except RecipeError as exc:
            loaded[path.name] = exc
    return loaded


def _result_key(loaded: LoadedRecipe, variant_id: str) -> str:
    """What in the recipe determines a variant's results (revision and library versions come on top)."""
    recipe = loaded.recipe
    variant = loaded.variant(variant_id)
    parts: dict[str, Any] = {
        "model": recipe.model.model_dump(mode="json"),
        "device": recipe.device,
        "params": variant.params.model_dump(mode="json"),
        "evaluation": recipe.evaluation.model_dump(mode="json"),
    }
    if variant.spec.needs_calibration(variant.params):
        parts["calibration"] = recipe.calibration.model_dump(mode="json")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _gate_changes(label: str, old: tuple[GateRule, ...], new: tuple[GateRule, ...]) -> list[str]:
    def index(gates):
        return {(g.metric, g.rule): g for g in gates}

    before, after = index(old), index(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        metric, rule = key
        if key not in before:
            changes.append(f"{label}: tightened — new rule {metric} {rule} {after[key].threshold:g}")
        elif key not in after:
            changes.append(f"{label}: loosened — removed {metric} {rule} {before[key].threshold:g}")
        else:
            a, b = before[key], after[key]
            if a.threshold != b.threshold:
                higher = b.threshold > a.threshold
                tighter = higher if rule in _TIGHTER_WHEN_HIGHER else not higher
                changes.append(
                    f"{label}: {'tightened' if tighter else 'loosened'} — {metric} {rule} "
                    f"{a.threshold:g} → {b.threshold:g}"
                )
            if a.level != b.level:
                word = "loosened" if b.level == "warn" else "tightened"
                changes.append(f"{label}: {word} — {metric} {rule} is now {b.level}")
    return changes


def _capabilities(loaded: LoadedRecipe) -> list[str]:
    return sorted({request.describe() for request in loaded.capabilities})


def compare_recipes(old: LoadedRecipe, new: LoadedRecipe, file: str) -> RecipeChange:
    change = RecipeChange(file, "changed")
    change.capabilities = _capabilities(new)
    change.capabilities_added = [c for c in change.capabilities if c not in _capabilities(old)]
    old_ids, new_ids = [v.id for v in old.variants], [v.id for v in new.variants]
    change.variants_added = [v for v in new_ids if v not in old_ids]
    change.variants_removed = [v for v in old_ids if v not in new_ids]
    by_change: dict[str, list[str]] = {}  # a gate change → the variants it applies to
    for variant_id in new_ids:
        if variant_id not in old_ids:
            change.rerun.append(variant_id)
            continue
        before, after = old.variant(variant_id), new.variant(variant_id)
        if before.params != after.params:
            change.variants_changed.append(variant_id)
        if _result_key(old, variant_id) != _result_key(new, variant_id):
            change.rerun.append(variant_id)
        for text in _gate_changes("", before.gates, after.gates):
            by_change.setdefault(text, []).append(variant_id)
    common = [v for v in new_ids if v in old_ids]
    for text, variants in by_change.items():
        label = "all variants" if variants == common else ", ".join(variants)
        change.gates.append(f"{label}{text}")
    old_publish, new_publish = old.recipe.publish.model_dump(), new.recipe.publish.model_dump()
    for key in sorted(set(old_publish) | set(new_publish)):
        if old_publish.get(key) != new_publish.get(key):
            change.publish.append(f"{key}: {old_publish.get(key)!r} → {new_publish.get(key)!r}")
    return change


def diff_recipes(base: Path, head: Path) -> list[RecipeChange]:
    """Changes from the recipes in ``base`` to those in ``head``; unchanged recipes are not listed.

    Only ``head`` is held to the operator's settings: ``base`` is what was already accepted
    (checked with the defaults), and its extracted copy lies outside the operator's roots.
    """
    before, after = _load_all(base, OperatorSettings.model_construct()), _load_all(head)
    changes = []
    for file in sorted(set(before) | set(after)):
        old, new = before.get(file), after.get(file)
        if isinstance(new, RecipeError):
            changes.append(RecipeChange(file, "invalid", error=str(new)))
        elif new is None:
            changes.append(RecipeChange(file, "removed"))
        elif old is None or isinstance(old, RecipeError):
            ids = [v.id for v in new.variants]
            capabilities = _capabilities(new)
            status = "added" if old is None else "changed"
            changes.append(
                RecipeChange(file, status, ids, rerun=ids, capabilities=capabilities, capabilities_added=capabilities)
            )
        elif old.text != new.text:
            change = compare_recipes(old, new, file)
            if any(
                (
                    change.variants_added,
                    change.variants_removed,
                    change.variants_changed,
                    change.gates,
                    change.publish,
                    change.rerun,
                    change.capabilities_added,
                )
            ):
                changes.append(change)  # an edit of comments alone changes nothing and is not listed
    return changes


def capability_summary(change: RecipeChange) -> list[str]:
    """The capabilities a changed recipe asks for, those the change adds marked ``NEW``."""
    return [("NEW " if c in change.capabilities_added else "") + c for c in change.capabilities]


# HTML, cell breaks, links and images ([...]), code spans and @mentions; emphasis is harmless
_MARKDOWN_ESCAPES = str.maketrans({c: f"&#{ord(c)};" for c in "&<>|`[]@\\"} | {"\n": "<br>", "\r": ""})


def escape_markdown(text: str) -> str:
    """Text from a recipe made inert in a Markdown table cell: no HTML, links, mentions or cell breaks."""
    return text.translate(_MARKDOWN_ESCAPES)


def to_markdown(changes: list[RecipeChange]) -> str:
    """A PR comment body; all recipe-derived text is escaped."""
    if not changes:
        return "### quantmill: no recipe changes\n"
    lines = [
        "### quantmill: what this change does to the recipes",
        "",
        "| recipe | status | variants | gates | publish | capabilities | will re-run |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in changes:
        variants = "; ".join(
            x
            for x in (
                f"+{', '.join(c.variants_added)}" if c.variants_added else "",
                f"−{', '.join(c.variants_removed)}" if c.variants_removed else "",
                f"~{', '.join(c.variants_changed)}" if c.variants_changed else "",
            )
            if x
        )
        cells = [
            c.file,
            c.status,
            c.error or variants or "-",
            "\n".join(c.gates) or "-",
            "\n".join(c.publish) or "-",
            "\n".join(capability_summary(c)) or "-",
            ", ".join(c.rerun) or "-",
        ]
        lines.append("| " + " | ".join(escape_markdown(cell) for cell in cells) + " |")
    if any(c.capabilities_added for c in changes):
        lines += ["", "**This change adds capabilities (code that would run); a maintainer must review them.**"]
    return "\n".join(lines) + "\n"
