"""Load a recipe file: parse, validate the schema, expand the matrix, check semantics.

Every problem is collected before anything is raised, so one run of
``quantmill validate`` lists them all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from quantmill.errors import RecipeError, RecipeProblem
from quantmill.modelinfo import ModelShape
from quantmill.recipe import checks
from quantmill.recipe.errors import problems_from_validation
from quantmill.recipe.matrix import Variant, expand_matrix, expand_rows, matrix_size, merge_gates
from quantmill.recipe.schema import SLUG, GateRule, MixedRow, MixedSpace, Recipe
from quantmill.trust.boundary import check_recipe_trust
from quantmill.trust.capabilities import CapabilityRequest
from quantmill.trust.operator import OperatorSettings, get_operator
from quantmill.yamlio import LocatedDocument, load_yaml_file, load_yaml_text


@dataclass(frozen=True)
class LoadedRecipe:
    """A valid recipe with its expanded variants and where it came from.

    Attributes:
        recipe: the validated recipe.
        variants: expanded variants in matrix order; for a recipe with ``search:``, its uniform
            candidates (the space's matrix rows expanded, gated by the constraints) in space order.
        name: the recipe's name (its ``name:`` or the file's stem).
        path: the recipe file (None when loaded from a string).
        base_dir: folder that relative paths in the recipe are resolved against.
        text: the recipe's source text.
        shape: the model's shape when it could be read without downloading.
        capabilities: the code-bearing inputs the recipe asks for (all allowed, or it would not load).
    """

    recipe: Recipe
    variants: tuple[Variant, ...]
    name: str
    path: Path | None
    base_dir: Path
    text: str
    shape: ModelShape | None
    capabilities: tuple[CapabilityRequest, ...] = ()
    mixed_spaces: tuple[MixedSpace, ...] = ()
    """the search space's ``mixed:`` entries, whose candidates are made at run time (``flows/search.py``)"""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def trust_remote_code(self) -> bool:
        """Whether transformers may run the model's own code: the recipe asks and the operator allows it.

        Validation already refused an ungranted ``trust_remote_code`` under the untrusted
        policy; asking the operator again keeps a policy tightened after loading in force.
        """
        return self.recipe.model.trust_remote_code and get_operator().allows("remote_code", self.name, self.path)

    def resolve(self, relative: str) -> Path:
        """A path from the recipe, resolved against the recipe's folder."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def variant(self, variant_id: str) -> Variant:
        for variant in self.variants:
            if variant.id == variant_id:
                return variant
        raise KeyError(variant_id)


def _stem_name(path: Path | None) -> str:
    stem = (path.stem if path else "recipe").lower().replace(" ", "-")
    return stem if SLUG.match(stem) else "recipe"


def validate_document(
    doc: LocatedDocument, base_dir: Path, path: Path | None, text: str, operator: OperatorSettings | None = None
) -> LoadedRecipe:
    """Validate a parsed document; raises :class:`RecipeError` listing every problem.

    ``operator``: the settings to check the recipe against (default: this process's).
    """
    problems: list[RecipeProblem] = []
    if not isinstance(doc.data, dict):
        raise RecipeError([doc.problem((), "a recipe must be a mapping of keys to values", "see 'quantmill init'")])
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(doc.data)
    except ValidationError as exc:
        problems += problems_from_validation(exc, doc, Recipe)
    global_gates = list(recipe.gates) if recipe else []
    mixed_spaces: list[MixedSpace] = []
    if recipe is not None and recipe.search is not None:
        variants, mixed_spaces = _search_candidates(doc, recipe, problems)
    else:
        variants = expand_matrix(doc, global_gates, problems)
    shape = None
    capabilities: list[CapabilityRequest] = []
    if recipe is not None:
        name = recipe.name or _stem_name(path)
        shape, model_problems = checks.check_model(recipe, doc, base_dir)
        problems += model_problems
        problems += checks.check_matrix_or_search(recipe, doc)
        problems += checks.check_search(recipe, doc)
        problems += checks.check_variants(variants, shape, recipe.device, doc, recipe)
        problems += checks.check_data(recipe, variants, doc, base_dir)
        problems += checks.check_gates(recipe, variants, doc, base_dir)
        problems += checks.check_publish(recipe, variants, doc, name)
        capabilities, trust_problems = check_recipe_trust(recipe, variants, doc, base_dir, path, name, operator)
        problems += trust_problems
    if problems:
        problems.sort(key=lambda p: (p.line or 0, p.column or 0))
        raise RecipeError(problems)
    assert recipe is not None
    return LoadedRecipe(
        recipe, tuple(variants), name, path, base_dir, text, shape, tuple(capabilities), tuple(mixed_spaces)
    )


def _search_candidates(
    doc: LocatedDocument, recipe: Recipe, problems: list[RecipeProblem]
) -> tuple[list[Variant], list[MixedSpace]]:
    """The search space's uniform candidates (its matrix rows, expanded as a matrix is, gated by the recipe's
    gates and the search's constraints, which replace a gate on the same metric) and its ``mixed:`` entries."""
    assert recipe.search is not None
    rows: list[tuple[int, object]] = []
    mixed: list[MixedSpace] = []
    for index, row in enumerate(recipe.search.space):
        if "mixed" not in row:
            rows.append((index, row))
            continue
        try:
            entry = MixedRow.model_validate(row).mixed
        except ValidationError as exc:
            problems.extend(problems_from_validation(exc, doc, MixedRow, ("search", "space", index)))
            continue
        if entry in mixed:
            problems.append(doc.problem(("search", "space", index), "this mixed entry repeats an earlier one"))
        mixed.append(entry)
    if not _search_within_limits(doc, [row for _, row in rows], mixed, problems):
        return [], []
    return expand_rows(doc, ("search", "space"), rows, list(search_gates(recipe)), problems), mixed


#: mixed entries in one search: each runs its own sensitivity scan of the whole model
MAX_MIXED_ENTRIES = 8


def _search_within_limits(
    doc: LocatedDocument, rows: list[object], mixed: list[MixedSpace], problems: list[RecipeProblem]
) -> bool:
    """Whether the space's candidates (its rows' matrix, and up to ``steps`` per mixed entry) fit the operator's
    ``max_variants``, counted before anything is expanded, and its mixed entries the scans one search may run."""
    uniform, at_most_mixed = matrix_size(rows), sum(entry.steps for entry in mixed)
    limit = get_operator().max_variants
    if uniform + at_most_mixed > limit:
        problems.append(
            doc.problem(
                ("search", "space"),
                f"the search space makes up to {uniform + at_most_mixed} candidates ({uniform} from its rows, "
                f"up to {at_most_mixed} mixed), more than the limit of {limit}",
                "shorten the rows' lists or the mixed entries' steps (the operator sets QUANTMILL_MAX_VARIANTS)",
            )
        )
        return False
    if len(mixed) > MAX_MIXED_ENTRIES:
        problems.append(
            doc.problem(
                ("search", "space"),
                f"the search space has {len(mixed)} mixed entries; at most {MAX_MIXED_ENTRIES} "
                "(each runs its own sensitivity scan of the whole model)",
                "merge entries: one entry may list several levels",
            )
        )
        return False
    return True


def search_gates(recipe: Recipe) -> tuple[GateRule, ...]:
    """What every candidate of the recipe's search is judged by, uniform or mixed: the recipe's gates and the
    search's constraints (a constraint replaces a gate on the same metric); a recipe without a search: its gates."""
    constraints = recipe.search.constraints if recipe.search is not None else []
    return merge_gates(list(recipe.gates), list(constraints))


def load_recipe(path: str | Path, operator: OperatorSettings | None = None) -> LoadedRecipe:
    """Load and fully validate the recipe at ``path`` (against ``operator``, default: this process's settings).

    Raises:
        RecipeError: listing every problem with file, line, column and field path.
    """
    path = Path(path)
    doc = load_yaml_file(path)
    return validate_document(doc, path.resolve().parent, path, path.read_text(encoding="utf-8"), operator)


def load_recipe_text(text: str, base_dir: Path, file: str = "<string>") -> LoadedRecipe:
    """Like :func:`load_recipe` for a recipe held in memory."""
    return validate_document(load_yaml_text(text, file), base_dir, None, text)
