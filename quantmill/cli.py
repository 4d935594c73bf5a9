"""The ``quantmill`` command line: parse arguments, call one library function, render.

Heavy libraries (torch, transformers, Prefect) are imported inside commands, so
``quantmill --help`` and ``quantmill validate`` stay fast. Known errors become one
message and an exit code (2: invalid recipe, 3: a required gate failed, 4: a passing
variant failed to publish, 5: a regression against the previous run, 1: other, 130: interrupted);
``QUANTMILL_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from quantmill import __version__
from quantmill.errors import GateFailedError, PublishError, QuantmillError, RecipeError, RegressionError
from quantmill.server import DEFAULT_PORT
from quantmill.settings import get_settings
from quantmill.trust.operator import POLICY_HELP, capability_lines, use_untrusted_policy

if TYPE_CHECKING:
    from quantmill.record import RunRecord

console = Console()
err_console = Console(stderr=True)
#: errors that are a run's outcome, not a fault: one line of summary, no traceback hint
RUN_OUTCOMES = (GateFailedError, PublishError, RegressionError)
#: how wide output is drawn without a terminal (CI logs, pipes), unless COLUMNS says otherwise
WIDTH_WITHOUT_TERMINAL = 160


def _recipe_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            files.extend(found or [path])  # an empty folder is reported as not a recipe
        else:
            files.append(path)
    return files


def cmd_validate(args: argparse.Namespace) -> int:
    from quantmill.recipe import load_recipe

    failed = 0
    for file in _recipe_files(args.recipes):
        try:
            loaded = load_recipe(file)
        except RecipeError as exc:
            failed += 1
            err_console.print(f"[red]✗[/red] {file}: {len(exc.problems)} problem(s)", soft_wrap=True)
            for problem in exc.problems:
                err_console.print(f"  {problem.format()}", markup=False, highlight=False, soft_wrap=True)
            continue
        console.print(f"[green]✓[/green] {file}: {len(loaded.variants)} variants", highlight=False)
        for line in capability_lines(loaded.capabilities):
            console.print(f"  [yellow]{escape(line)}[/yellow]", highlight=False, soft_wrap=True)
    return 2 if failed else 0


def _human_bytes(count: int | None) -> str:
    if count is None:
        return "?"
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{count} B"
        size /= 1000
    return "?"


def cmd_plan(args: argparse.Namespace) -> int:
    from quantmill.pipeline import cache_status, latest_completed
    from quantmill.plan import BUILT_IN_CHECKS, build_plan, last_outcomes
    from quantmill.recipe import load_recipe
    from quantmill.resolve import resolve_device
    from quantmill.runstore import RunStore

    loaded = load_recipe(args.recipe)
    store = RunStore(get_settings().runs_dir)
    cache = store.recipe_dir(loaded.name) / ".cache"
    plan = build_plan(
        loaded,
        cache_status(loaded, cache, resolve_device(loaded.recipe.device)),
        last_outcomes(latest_completed(store, loaded.name)),
    )
    if args.json:
        sys.stdout.write(json.dumps(plan.to_dict(), indent=2) + "\n")
        for line in capability_lines(loaded.capabilities):  # on stderr: the JSON is the Plan's
            err_console.print(escape(line), highlight=False, soft_wrap=True)
        return 0
    table = Table(title=f"{plan.recipe}: {plan.model} (baseline ≈ {_human_bytes(plan.baseline_bytes)} at 16-bit)")
    table.add_column("variant", no_wrap=True)
    last_run = any(row.last_run for row in plan.variants)
    for column in ("method", "setting", "bits/w", "≈ size", "gates", "publish as", "cache") + (
        ("last run",) if last_run else ()
    ):
        table.add_column(column, overflow="fold")
    shared = (
        plan.variants[0].gates
        if plan.variants and all(v.gates == plan.variants[0].gates for v in plan.variants)
        else None
    )
    for row in plan.variants:
        gates = "shared" if shared is not None else "\n".join(row.gates) or "-"
        repo = row.publish_to.rsplit("/", 1)[-1] if row.publish_to else "-"
        table.add_row(
            row.id,
            row.method,
            row.setting,
            f"{row.bits_per_weight:g}",
            _human_bytes(row.expected_bytes),
            gates,
            repo,
            row.cache,
            *(((row.last_run or "-").split(":", 1)[0],) if last_run else ()),
        )
    console.print(table)
    for row in plan.variants:
        if row.last_run and ":" in row.last_run:  # why it failed last time, in full
            console.print(f"last run: {row.id} {escape(row.last_run)}", highlight=False, soft_wrap=True)
    console.print("built-in checks for every variant: " + "; ".join(BUILT_IN_CHECKS), highlight=False)
    if shared:
        console.print("gates for every variant: " + "; ".join(shared), highlight=False)
    targets = {v.publish_to.rsplit("/", 1)[0] for v in plan.variants if v.publish_to}
    if targets:
        console.print(f"publish target: {', '.join(sorted(targets))} (accepted variants only)", highlight=False)
    if plan.search:
        search = plan.search
        console.print(
            f"search: {search.objective} under {'; '.join(search.constraints)}, at most {search.budget} full "
            f"evaluations; the rows above are its uniform candidates, only the winner is published; "
            f"screening proxy: {search.proxy or 'none'}",
            highlight=False,
        )
        for mixed in search.mixed:
            console.print(f"search: mixed {mixed}", highlight=False)
    for note in plan.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    for line in capability_lines(loaded.capabilities):
        console.print(f"[yellow]{escape(line)}[/yellow]", highlight=False, soft_wrap=True)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from quantmill.recipe.jsonschema import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
        console.print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    target: Path = args.path
    if target.exists() and not args.force:
        raise QuantmillError(f"{target} already exists; pass --force to overwrite it")
    template = resources.files("quantmill").joinpath("templates/starter.yaml").read_text()
    from quantmill.runstore import atomic_write_text

    atomic_write_text(target, template)
    console.print(f"wrote {target}; check it with: quantmill validate {target}")
    return 0


def _prefect_defaults() -> None:
    """Quiet, local Prefect unless the user configured otherwise: their ``PREFECT_API_URL``, else the server
    ``quantmill server start`` started while it answers, else Prefect's ephemeral server (~13 s a run)."""
    import os

    from quantmill.server import running_api_url

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Prefect's 20 s default fails the whole run on a busy machine ("Timed out while attempting to connect")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not os.environ.get("PREFECT_API_URL") and (url := running_api_url()):
        os.environ["PREFECT_API_URL"] = url


def cmd_server(args: argparse.Namespace) -> int:
    from quantmill import server

    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    if args.action == "start":
        info = server.start_server(args.port, ui=not args.no_ui)
        say(f"Prefect server running (pid {info.pid}): {info.ui_url}; `quantmill run` uses it")
        return 0
    status = server.server_status() if args.action == "status" else server.stop_server()
    pid = status.info.pid if status.info else None
    if args.action == "stop":
        say(
            {"stopped": "no server was started", "stale": "its process was gone; cleared the record"}.get(
                status.state, f"stopped the Prefect server (pid {pid})"
            )
        )
        return 0
    if status.state == "running" and status.info:
        say(f"running (pid {pid}): {status.info.ui_url}; log: {status.log}")
        return 0
    say(
        {
            "stopped": "stopped: runs start Prefect's ephemeral server (start one with: quantmill server start)",
            "stale": "stopped (stale record: its process is gone); runs start Prefect's ephemeral server",
            "unhealthy": f"not answering (pid {pid}); stop it with: quantmill server stop; log: {status.log}",
        }[status.state]
    )
    return 1  # not running: `quantmill server status || quantmill server start`


def cmd_run(args: argparse.Namespace) -> int:
    import os

    from quantmill.recipe import load_recipe

    loaded = load_recipe(args.recipe)  # an invalid or refused recipe stops here, before Prefect starts
    if args.verbose:  # the steps' log capture also streams what the libraries print
        os.environ["QUANTMILL_VERBOSE"] = "1"
        get_settings.cache_clear()  # settings read before this line did not see it
    from quantmill.console_view import EVERY_TRANSITION, OUTCOME_STAGES, follow_new_run, results_table
    from quantmill.runstore import Run, RunStore

    # verbose output is a stream of lines even on a terminal: a live table would be torn by it
    live = console.is_terminal and not args.verbose
    with follow_new_run(
        RunStore(get_settings().runs_dir),
        loaded.name,
        console,
        live=live,
        line_stages=EVERY_TRANSITION if args.verbose else OUTCOME_STAGES,
    ):
        run_path = None if args.no_replay else _replayed(args)
        replayed = run_path is not None
        if run_path is None:
            run_path = _run_flow(args)
    run = Run(run_path)
    record = run.read_record()
    console.print(results_table(record))
    if replayed:
        console.print("every step was cached: replayed without Prefect (no flow run; --no-replay runs the flow)")
    console.print(f"results: {run.results_path}", highlight=False, soft_wrap=True)
    raise_unless_all_passed(record)
    return 0


def _replayed(args: argparse.Namespace) -> Path | None:
    """The run folder of an unchanged rerun replayed from the cache (:mod:`quantmill.replay`); None: not all cached."""
    from quantmill.replay import replay_cached_run

    run = replay_cached_run(args.recipe, only=args.only, publish=not args.no_publish, target=args.target)
    return run.path if run is not None else None


def _run_flow(args: argparse.Namespace) -> Path:
    """Run the recipe's Prefect flow; returns its run folder."""
    _prefect_defaults()
    from quantmill.flows.recipe import keep_run_logs_off_the_console, run_recipe

    if not args.verbose:
        keep_run_logs_off_the_console()
    outcome = run_recipe(
        str(args.recipe),
        only=args.only,
        workers=args.workers,
        processes=args.processes,
        publish=not args.no_publish,
        target=args.target,
    )
    return Path(outcome["run_path"])


def raise_unless_all_passed(record: RunRecord) -> None:
    """The run's outcome as an error whose exit code is the run's (:mod:`quantmill.outcome`):
    a publish failure (4), else a variant that did not pass (3), else a regression (5)."""
    from quantmill.outcome import run_outcome

    error = run_outcome(record).error()
    if error is not None:
        raise error


def cmd_publish(args: argparse.Namespace) -> int:
    from quantmill.publish.publish_run import publish_run

    for outcome in publish_run(args.run, force=args.force or [], target=args.target):
        console.print(f"{outcome.variant}: {outcome.status.value} → {outcome.url}", highlight=False)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from quantmill.diff import capability_summary, diff_recipes, recipes_at, to_markdown

    head_ref = args.head or args.recipes_dir  # default: the working tree's recipes folder
    with recipes_at(args.base, args.recipes_dir) as base, recipes_at(head_ref, args.recipes_dir) as head:
        changes = diff_recipes(base, head)
    if args.format == "md":
        sys.stdout.write(to_markdown(changes))
    else:
        table = Table(title=f"recipes: {args.base} → {head_ref}")
        for column in ("recipe", "status", "variants +/−/~", "gates", "publish", "will re-run"):
            table.add_column(column, overflow="fold")
        for c in changes:
            variants = " ".join(
                x
                for x in (
                    "+" + ",".join(c.variants_added) if c.variants_added else "",
                    "−" + ",".join(c.variants_removed) if c.variants_removed else "",
                    "~" + ",".join(c.variants_changed) if c.variants_changed else "",
                )
                if x
            )
            table.add_row(
                c.file,
                c.status,
                c.error or variants or "-",
                "\n".join(c.gates) or "-",
                "\n".join(c.publish) or "-",
                ", ".join(c.rerun) or "-",
            )
        console.print(table)
        for c in changes:  # below the table: capability details are long
            for line in capability_summary(c):
                console.print(f"{c.file}: [yellow]capability {escape(line)}[/yellow]", highlight=False, soft_wrap=True)
    return 2 if any(c.status == "invalid" for c in changes) else 0


def cmd_zoo(args: argparse.Namespace) -> int:
    _prefect_defaults()
    from quantmill.flows.zoo import zoo

    outcomes = zoo(str(args.recipes), publish=not args.no_publish)
    for name, outcome in outcomes.items():
        console.print(
            f"{name}: {outcome['status']}"
            + (f" (failed: {', '.join(outcome['failed'])})" if outcome.get("failed") else ""),
            highlight=False,
        )
    return 3 if any(o.get("failed") or o["status"] == "invalid" for o in outcomes.values()) else 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from quantmill.flows.deploy import deploy

    for name, cron in deploy(args.recipes, work_pool=args.work_pool, zoo_cron=args.cron).items():
        console.print(f"deployment {name}: cron '{cron}'", highlight=False)
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from quantmill.llamacpp import setup_llama_cpp

    found = setup_llama_cpp(build=not args.no_build, cuda=args.cuda, say=lambda line: console.print(f"• {line}"))
    for name, path in sorted(found.tools.items()):
        console.print(f"  {name}: {path}", highlight=False)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from quantmill.console_view import results_table
    from quantmill.report.render import write_report
    from quantmill.runstore import Run

    record = Run(args.run).read_record()
    previous = Run(args.compare).read_record() if args.compare else None
    regressions = write_report(args.run, record, previous)
    console.print(results_table(record))
    for regression in regressions:
        console.print(
            f"[red]regression[/red] {regression.variant} {regression.what}: {regression.before} → "
            f"{regression.after} ({regression.why})",
            highlight=False,
        )
    console.print(f"report: {args.run / 'report.html'}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from quantmill.history import show_runs

    return show_runs(console, args.recipe, get_settings().runs_dir, args.last)


def cmd_show(args: argparse.Namespace) -> int:
    from quantmill.history import show

    return show(console, args.run, args.variant, get_settings().runs_dir, args.json)


def _at_least_one(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantmill",
        description="Declarative quantize → evaluate → gate → publish pipelines for Hugging Face causal LMs.",
        epilog="Exit codes: 0 ok, 1 error, 2 invalid or refused recipe, 3 a required gate failed, "
        "4 a passing variant failed to publish, 5 a regression against the previous run, 130 interrupted. "
        "Set QUANTMILL_DEBUG=1 for tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"quantmill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        command.add_argument("--policy", choices=["untrusted"], help=POLICY_HELP)
        return command

    init = add("init", cmd_init, "write a commented starter recipe")
    init.add_argument("path", type=Path, nargs="?", default=Path("recipe.yaml"), help="where to write it")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    schema = add("schema", cmd_schema, "print the recipe JSON Schema (for editor autocompletion)")
    schema.add_argument("-o", "--output", type=Path, help="write to a file instead of stdout")

    validate = add("validate", cmd_validate, "check recipes and report every problem with its location")
    validate.add_argument("recipes", type=Path, nargs="+", metavar="RECIPE", help="recipe files or folders")

    plan = add("plan", cmd_plan, "show the variants a recipe expands to, their sizes, gates and targets")
    plan.add_argument("recipe", type=Path)
    plan.add_argument("--json", action="store_true", help="machine-readable output")

    run = add("run", cmd_run, "run a recipe (creates a run folder in the run store)")
    run.add_argument("recipe", type=Path)
    run.add_argument("--only", action="append", metavar="VARIANT", help="run only this variant (repeatable)")
    run.add_argument(
        "--workers",
        type=int,
        help="concurrent tasks in this process, heavy ones taking turns (default: QUANTMILL_WORKERS, else 4)",
    )
    run.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="run variants in N worker processes, N heavy steps at once (needs quantmill[distributed])",
    )
    run.add_argument("--no-publish", action="store_true", help="evaluate and gate, but publish nothing")
    run.add_argument("--target", choices=["local", "hub"], help="override the recipe's publish target")
    run.add_argument(
        "--no-replay",
        action="store_true",
        help="run the Prefect flow even when every step is cached (an unchanged rerun is otherwise "
        "replayed from the cache in this process, without a flow run)",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="print every stage transition and stream the libraries' output (always kept in the run's logs/)",
    )

    diff = add("diff", cmd_diff, "what a recipe change will do: variants, gates, publish targets, re-runs")
    diff.add_argument("base", help="git ref or recipes folder before the change")
    diff.add_argument("head", nargs="?", help="git ref or folder after it (default: the working tree's recipes)")
    diff.add_argument("--recipes-dir", default="recipes", help="the recipes folder inside the repository")
    diff.add_argument("--format", choices=["table", "md"], default="table", help="md: a pull-request comment")

    zoo = add("zoo", cmd_zoo, "run every recipe in a folder whose inputs changed (the nightly job)")
    zoo.add_argument("recipes", type=Path, help="folder of recipes")
    zoo.add_argument("--no-publish", action="store_true")

    deploy = add("deploy", cmd_deploy, "register the nightly zoo and scheduled recipes with a Prefect server")
    deploy.add_argument("recipes", type=Path, nargs="?", default=Path("recipes"), help="folder of recipes")
    deploy.add_argument(
        "--work-pool", help="process work pool, created if missing (default: QUANTMILL_WORK_POOL, else quantmill-local)"
    )
    deploy.add_argument(
        "--cron", help="schedule of the nightly zoo run (default: QUANTMILL_NIGHTLY_CRON, else 0 2 * * *)"
    )

    publish = add(
        "publish",
        cmd_publish,
        "publish a finished run's passing variants (again, or to another target), with the recipe as the run saved it",
    )
    publish.add_argument("run", type=Path, help="a run folder: runs/<recipe>/<run-id>")
    publish.add_argument(
        "--force",
        action="append",
        metavar="VARIANT",
        help="publish this variant although it did not pass its gates (the card says so); repeatable",
    )
    publish.add_argument("--target", choices=["local", "hub"], help="override the recipe's publish target")

    setup = add("setup", cmd_setup, "fetch and build external tools (llama.cpp's converter and quantizer)")
    setup.add_argument("tool", choices=["llama-cpp"], help="what to set up")
    setup.add_argument("--no-build", action="store_true", help="only fetch the source (conversion works, no imatrix)")
    setup.add_argument(
        "--cuda",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="build with CUDA (default: when nvcc and a GPU are present)",
    )

    server = add("server", cmd_server, "a long-lived local Prefect server that runs reuse (cheap reruns)")
    server.add_argument("action", choices=["start", "stop", "status"])
    server.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"start: the port on 127.0.0.1 (default {DEFAULT_PORT})"
    )
    server.add_argument("--no-ui", action="store_true", help="start: without Prefect's web UI")

    report = add("report", cmd_report, "write and show a run's report (report.md, report.html, plots)")
    report.add_argument("run", type=Path, help="a run folder: runs/<recipe>/<run-id>")
    report.add_argument("--compare", type=Path, metavar="RUN", help="flag regressions against this earlier run")

    runs = add("runs", cmd_runs, "list past runs in the run store: outcome, variants passed/failed, headline numbers")
    runs.add_argument("recipe", nargs="?", metavar="RECIPE", help="only this recipe's runs (a name or a recipe file)")
    runs.add_argument("--last", type=_at_least_one, default=20, metavar="N", help="show the newest N runs (default 20)")

    show = add("show", cmd_show, "show a past run, or one variant's whole record (gates, artifact, card, log)")
    show.add_argument("run", metavar="RUN", help="a run folder, a run id, or the start of one")
    show.add_argument("variant", nargs="?", metavar="VARIANT", help="one of the run's variants")
    show.add_argument("--json", action="store_true", help="print the record (or the variant's) as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from quantmill.redact import install_log_redaction, redact

    if args.policy:
        use_untrusted_policy()
    install_log_redaction()
    _draw_wide_without_terminal()
    try:
        return args.handler(args)
    except RecipeError as exc:
        err_console.print(redact(str(exc)), markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except RUN_OUTCOMES as exc:
        err_console.print(f"[red]✗[/red] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except QuantmillError as exc:
        if _debugging():
            raise
        err_console.print(f"[red]error:[/red] {redact(str(exc))}", highlight=False)
        err_console.print("[dim]set QUANTMILL_DEBUG=1 for the traceback[/dim]")
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as exc:  # a bug, not bad input: one line unless debugging
        if _debugging():
            raise
        err_console.print(f"[red]internal error:[/red] {type(exc).__name__}: {redact(str(exc))}", highlight=False)
        err_console.print("[dim]set QUANTMILL_DEBUG=1 for the traceback, and please report it[/dim]")
        return 1


def _draw_wide_without_terminal() -> None:
    """Tables are not cut to 80 columns in a CI log or a pipe, where nothing is as narrow (rich's default there)."""
    import os

    for each in (console, err_console):
        if not each.is_terminal and not os.environ.get("COLUMNS"):
            each.width = WIDTH_WITHOUT_TERMINAL


def _debugging() -> bool:
    """``QUANTMILL_DEBUG=1``; off when the settings themselves are invalid (that error is shown plainly)."""
    try:
        return get_settings().debug
    except QuantmillError:
        return False


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
