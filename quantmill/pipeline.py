"""Starting a run: validate, plan, and lay out the run folder.

The flows in ``flows/`` drive the work itself; this module holds the plain steps
that both the flows and the CLI share.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from quantmill import __version__
from quantmill.errors import RecipeError
from quantmill.plan import build_plan
from quantmill.recipe import LoadedRecipe, load_recipe
from quantmill.registry import did_you_mean
from quantmill.runstore import Run, RunStore
from quantmill.settings import get_settings


def select_variants(loaded: LoadedRecipe, only: list[str] | None) -> list[str]:
    """Variant ids to run: all, or those named by ``--only`` (each must exist)."""
    ids = [v.id for v in loaded.variants]
    if not only:
        return ids
    unknown = [name for name in only if name not in ids]
    if unknown:
        from quantmill.errors import RecipeProblem

        raise RecipeError(
            [
                RecipeProblem(
                    str(loaded.path),
                    "--only",
                    f"no variant '{name}'",
                    hint="; ".join(x for x in (did_you_mean(name, ids), f"variants: {', '.join(ids)}") if x),
                )
                for name in unknown
            ]
        )
    return [i for i in ids if i in only]


def start_run(recipe_path: Path, only: list[str] | None = None, store: RunStore | None = None) -> Run:
    """Validate the recipe and create its run folder with the plan and a results file.

    Returns:
        the new run; its ``results.json`` lists the selected variants as ``pending``.
    """
    loaded = load_recipe(recipe_path)
    selected = select_variants(loaded, only)
    store = store or RunStore(get_settings().runs_dir)
    run = store.create_run(loaded.name, loaded.text, build_plan(loaded).to_dict())
    run.write_results(
        {
            "recipe": loaded.name,
            "recipe_path": str(Path(recipe_path).resolve()),
            "recipe_sha256": loaded.sha256,
            "run_id": run.run_id,
            "started": datetime.now(UTC).isoformat(),
            "quantmill_version": __version__,
            "status": "planned",
            "variants": {v.id: {"method": v.method, "status": "pending"} for v in loaded.variants if v.id in selected},
        }
    )
    return run
