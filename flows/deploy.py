"""Register quantmill's deployments with a running Prefect server (``quantmill deploy``).

Deployments: ``nightly-zoo`` runs :func:`~quantmill.flows.zoo.zoo` over a recipes
folder on a cron schedule, and every recipe with its own ``schedule:`` gets a
``recipe-<name>`` deployment on that schedule (the zoo then skips it). They run
on a process work pool, created if missing (the schedule and pool default to
``quantmill.settings``); ``infra/`` holds Docker and
Kubernetes GPU pool templates for production.

Scheduled runs hold the worker's Hub token but run recipes from a folder that pull
requests change, so every deployment runs under the untrusted policy
(``QUANTMILL_POLICY=untrusted`` in its job environment): the operator's grants, roots
and caps decide what a recipe may do (``infra/operator.example.yaml``).
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.flows import Flow

from quantmill.errors import RecipeError
from quantmill.recipe import load_recipe
from quantmill.settings import get_settings
from quantmill.trust.operator import POLICY_ENV

#: the job environment of every scheduled deployment: recipes are untrusted input there
UNTRUSTED_JOB_VARIABLES = {"env": {POLICY_ENV: "untrusted"}}

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def ensure_process_pool(name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def deploy(
    recipes_dir: Path, *, work_pool: str | None = None, zoo_cron: str | None = None, source: Path = PROJECT_ROOT
) -> dict[str, str]:
    """Create or update the deployments; returns ``{deployment name: cron}``.

    ``work_pool`` and ``zoo_cron`` default to the settings' ``work_pool`` and ``nightly_cron``.

    Raises:
        RecipeError: when a recipe in the folder is invalid (nothing is registered then).
    """
    recipes = []
    problems = []
    for path in sorted(Path(recipes_dir).glob("*.yaml")):
        try:
            recipes.append((path.resolve(), load_recipe(path)))
        except RecipeError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RecipeError(problems)
    work_pool = work_pool or get_settings().work_pool
    zoo_cron = zoo_cron or get_settings().nightly_cron
    ensure_process_pool(work_pool)
    registered = {}
    zoo = Flow.from_source(source=str(source), entrypoint="flows/zoo.py:zoo")
    assert isinstance(zoo, Flow)  # from_source is only awaitable inside an event loop
    zoo.deploy(
        name="nightly-zoo",
        work_pool_name=work_pool,
        cron=zoo_cron,
        build=False,
        push=False,
        parameters={"recipes_dir": str(Path(recipes_dir).resolve()), "skip_scheduled": True},
        job_variables=UNTRUSTED_JOB_VARIABLES,
        print_next_steps=False,
    )
    registered["nightly-zoo"] = zoo_cron
    recipe_flow = Flow.from_source(source=str(source), entrypoint="flows/recipe.py:quantize_evaluate_publish")
    assert isinstance(recipe_flow, Flow)
    for path, loaded in recipes:
        if loaded.recipe.schedule:
            name = f"recipe-{loaded.name}"
            recipe_flow.deploy(
                name=name,
                work_pool_name=work_pool,
                cron=loaded.recipe.schedule,
                build=False,
                push=False,
                parameters={"recipe_path": str(path)},
                job_variables=UNTRUSTED_JOB_VARIABLES,
                print_next_steps=False,
            )
            registered[name] = loaded.recipe.schedule
    return registered
