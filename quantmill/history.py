"""Past runs at the command line: ``quantmill runs [RECIPE]`` and ``quantmill show RUN [VARIANT]``.

Everything is read from the run store (``QUANTMILL_RUNS_DIR``): each run's
``results.json``, its ``logs/<variant>.log`` files and the published cards. A run is
named by its folder or its run id (or a prefix of the id naming one run); an
unknown run or variant is an error that lists the valid choices.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from quantmill.errors import QuantmillError
from quantmill.outcome import Headline, VariantNumbers, describe_regression, headline, run_outcome
from quantmill.recipe.schema import SLUG
from quantmill.record import PublishStatus, RunRecord, RunStatus, VariantRecord
from quantmill.runstore import Run, RunStore

#: run ids listed in an error about an unknown run
CHOICES_SHOWN = 10


@dataclass(frozen=True)
class PastRun:
    """One run folder and what could be read of it (``problem`` says why the record is missing)."""

    recipe: str
    run: Run
    record: RunRecord | None
    problem: str | None = None

    @property
    def status(self) -> str:
        """The outcome of a completed run (``passed``, ``gate failed`` …), else the run's own status."""
        if self.record is None:
            return "unreadable"
        if self.record.status != RunStatus.COMPLETED:
            return self.record.status.value  # running, or interrupted while running
        return run_outcome(self.record).kind.value


def past_runs(store: RunStore, recipe: str | None = None) -> list[PastRun]:
    """The store's runs (of one recipe, or of all), oldest first."""
    found = []
    for name in [recipe] if recipe else _recipes_in(store):
        for run in store.runs(name):
            try:
                found.append(PastRun(name, run, run.read_record()))
            except QuantmillError as exc:
                found.append(PastRun(name, run, None, str(exc).replace(str(run.results_path), "results.json")))
    return sorted(found, key=lambda past: past.run.run_id)


def _recipes_in(store: RunStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if p.is_dir()) if store.root.is_dir() else []


def recipe_name(store: RunStore, given: str) -> str:
    """The recipe a ``quantmill runs`` argument names: a recipe name in the store, or a recipe file."""
    if SLUG.fullmatch(given):
        store.pull(given)  # a shared store: a recipe that only other workers ran
    if store.recipe_dir(given).is_dir():
        return given
    path = Path(given)
    if path.is_file():
        from quantmill.recipe import load_recipe

        return load_recipe(path).name
    known = ", ".join(_recipes_in(store)) or "none"
    raise QuantmillError(f"no runs of recipe {given!r} in {store.root}; recipes with runs: {known}")


def runs_table(runs: list[PastRun]) -> Table:
    """Newest first: recipe, run id, outcome, variants passed/failed, the best passing variant, regressions."""
    table = Table(title="runs (newest first)")
    for column in ("recipe", "run", "status", "variants", "best passing (recovery)", "baseline", "regressions"):
        table.add_column(column, overflow="fold")
    for past in reversed(runs):
        record = past.record
        if record is None:
            table.add_row(past.recipe, past.run.run_id, "[red]unreadable[/red]", escape(past.problem or ""), "", "", "")
            continue
        numbers = headline(record)
        best = numbers.best()
        table.add_row(
            past.recipe,
            past.run.run_id,
            _colored(past.status),
            numbers.counts,
            _best(best) if best else "-",
            _baseline(numbers),
            str(len(record.regressions)) if record.regressions else "-",
        )
    return table


def _colored(status: str) -> str:
    color = {"passed": "green", "regressed": "yellow", "running": "cyan", "planned": "cyan"}.get(status, "red")
    return f"[{color}]{status}[/{color}]"


def _best(best: VariantNumbers) -> str:
    size = f", {best.size_mb:.4g} MB" if best.size_mb is not None else ""
    return f"{best.variant} ({best.recovery:.3f}{size})"


def _baseline(numbers: Headline) -> str:
    if numbers.quality_metric is None or numbers.baseline_quality is None:
        return "-"
    return f"{numbers.quality_metric} {numbers.baseline_quality:.4g}"


def find_run(store: RunStore, given: str | Path) -> Run:
    """The run a ``quantmill show`` argument names: a run folder, a run id, or a prefix of exactly one run id."""
    path = Path(given)
    if (path / "results.json").is_file():
        return Run(path)
    runs = [past.run for past in past_runs(store)]
    matches = [run for run in runs if run.run_id == str(given)] or [
        run for run in runs if run.run_id.startswith(str(given))
    ]
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(run.run_id for run in matches[-CHOICES_SHOWN:])
        raise QuantmillError(f"{given!r} names {len(matches)} runs in {store.root}: {shown}; give more of the id")
    recent = ", ".join(f"{run.path.parent.name}/{run.run_id}" for run in runs[-CHOICES_SHOWN:])
    raise QuantmillError(
        f"no run {str(given)!r} (neither a run folder nor a run id in {store.root}); recent runs: {recent or 'none'}"
    )


def run_view(run: Run, record: RunRecord) -> RenderableType:
    """A run: its outcome, provenance, each variant's numbers and reason, regressions, report and logs."""
    numbers = headline(record)
    lines = _fields(
        [
            ("recipe", f"{record.recipe} ({record.recipe_path}, sha256 {record.recipe_sha256[:12]})"),
            ("run", f"{record.run_id} in {run.path}"),
            ("status", _status_line(record)),
            ("started", _when(record)),
            ("model", f"{record.model.id}@{record.model.revision}" if record.model else "-"),
            ("device", record.device or "-"),
            ("baseline", _baseline(numbers)),
            ("report", _exists(run.path / "report.html")),
            ("logs", _exists(run.path / "logs")),
        ]
    )
    table = Table(title="variants")
    for column in ("variant", "status", "quality (recovery)", "ppl", "size MB", "why", "log"):
        table.add_column(column, overflow="fold")
    for entry in numbers.variants:
        quality = "-"
        if entry.quality is not None:
            quality = f"{entry.quality:.4g}" + (f" ({entry.recovery:.3f})" if entry.recovery is not None else "")
        table.add_row(
            entry.variant,
            _colored(entry.status.value) if entry.status.value != "pending" else "pending",
            quality,
            f"{entry.ppl:.4g}" if entry.ppl is not None else "-",
            f"{entry.size_mb:.4g}" if entry.size_mb is not None else "-",
            escape(entry.reason or ""),
            "yes" if log_path(run, entry.variant).is_file() else "-",
        )
    parts: list[RenderableType] = [lines, table]
    if record.regressions:
        parts.append(Text("regressions since the previous run:", style="yellow"))
        parts += [Text(f"  {describe_regression(r)} ({r.why})") for r in record.regressions]
    return Group(*parts)


def log_path(run: Run, variant_id: str) -> Path:
    """Where the run keeps a variant's step log (``baseline`` for the baseline's)."""
    return run.path / "logs" / f"{variant_id}.log"


def card_path(entry: VariantRecord) -> str | None:
    """The variant's model card: the one published (a local zoo's README.md, or the repository URL), else the
    artifact's README.md."""
    publish = entry.publish
    if publish and publish.status != PublishStatus.FAILED and publish.url:
        if publish.url.startswith("file://"):
            local = Path(publish.url.removeprefix("file://")) / "README.md"
            return str(local) if local.is_file() else publish.url
        return publish.url
    if entry.artifact and (entry.artifact / "README.md").is_file():
        return str(entry.artifact / "README.md")
    return None


def variant_view(run: Run, record: RunRecord, variant_id: str) -> RenderableType:
    """One variant's whole record: provenance, gates with their numbers, metrics, artifact, card, publish, log."""
    entry = variant_of(record, variant_id)
    cached = entry.cached
    publish = entry.publish
    published = "-"
    if publish is not None:
        published = publish.status.value + (f" → {publish.url}" if publish.url else "")
        published += f" (commit {publish.commit})" if publish.commit else ""
        published += f": {publish.error}" if publish.error else ""
    fields = _fields(
        [
            ("variant", f"{variant_id}: {entry.method} {entry.setting or ''}".rstrip()),
            ("status", entry.status.value + (f" — {entry.error}" if entry.error else "")),
            ("recipe", f"{record.recipe} ({record.recipe_path}, sha256 {record.recipe_sha256[:12]})"),
            ("run", f"{record.run_id} in {run.path} ({_status_line(record)})"),
            ("started", _when(record)),
            ("model", f"{record.model.id}@{record.model.revision}" if record.model else "-"),
            ("device", record.device or "-"),
            ("quantmill", record.quantmill_version),
            (
                "cached",
                ", ".join(step for step in ("quantize", "evaluate", "servable") if getattr(cached, step))
                if cached
                else "-",
            ),
            ("artifact", _exists(entry.artifact) if entry.artifact else "-"),
            ("card", card_path(entry) or "-"),
            ("published", published),
            ("log", _exists(log_path(run, variant_id))),
        ]
    )
    parts: list[RenderableType] = [fields]
    if entry.verdict and entry.verdict.outcomes:
        gates = Table(title="gates")
        for column in ("metric", "rule", "threshold", "level", "observed", "baseline", "compared", "result", "note"):
            gates.add_column(column, overflow="fold")
        for rule in entry.verdict.outcomes:
            gates.add_row(
                rule.metric,
                rule.rule,
                f"{rule.threshold:g}",
                rule.level,
                _number(rule.observed),
                _number(rule.baseline),
                _number(rule.compared),
                _colored(rule.result) if rule.passed or rule.level == "required" else "[yellow]warning[/yellow]",
                escape(rule.note),
            )
        parts.append(gates)
    if entry.evaluation and entry.evaluation.metrics:
        baseline = record.baseline_evaluation()
        metrics = Table(title="metrics")
        for column in ("metric", "value", "± stderr", "baseline"):
            metrics.add_column(column)
        for name, value in entry.evaluation.metrics.items():
            metrics.add_row(
                name,
                _number(value.value),
                _number(value.stderr) if value.stderr is not None else "",
                _number(baseline.value(name)) if baseline else "-",
            )
        parts.append(metrics)
    return Group(*parts)


def variant_of(record: RunRecord, variant_id: str) -> VariantRecord:
    if variant_id not in record.variants:
        raise QuantmillError(
            f"no variant {variant_id!r} in run {record.run_id}; its variants: {', '.join(record.variants) or 'none'}"
        )
    return record.variants[variant_id]


def _fields(pairs: list[tuple[str, str]]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in pairs:
        table.add_row(name, escape(value))
    return table


def _status_line(record: RunRecord) -> str:
    if record.status != RunStatus.COMPLETED:
        return f"{record.status.value} (not finished: running, or stopped before it completed)"
    outcome = run_outcome(record)
    return f"{outcome.kind.value} (exit {outcome.exit_code}): {outcome.summary}"


def _when(record: RunRecord) -> str:
    started = record.started.strftime("%Y-%m-%d %H:%M:%S UTC")
    if record.finished is None:
        return started
    return f"{started}, took {(record.finished - record.started).total_seconds():.0f} s"


def _exists(path: Path) -> str:
    return str(path) if path.exists() else f"{path} (missing)"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def show_runs(console: Console, recipe: str | None, store_root: Path, last: int) -> int:
    """``quantmill runs``: the last ``last`` runs (of one recipe), newest first."""
    store = RunStore(store_root)
    runs = past_runs(store, recipe_name(store, recipe) if recipe else None)
    if not runs:
        console.print(f"no runs in {store.root}", highlight=False)
        return 0
    console.print(runs_table(runs[-last:]))
    if len(runs) > last:
        console.print(f"{len(runs) - last} older run(s) not shown (--last N)", highlight=False)
    return 0


def show(console: Console, given: str, variant: str | None, store_root: Path, as_json: bool) -> int:
    """``quantmill show``: a run, or one of its variants, as text or as the record's JSON."""
    run = find_run(RunStore(store_root), given)
    record = run.read_record()
    if as_json:
        data = record.to_json() if variant is None else variant_of(record, variant).model_dump(mode="json")
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return 0
    console.print(run_view(run, record) if variant is None else variant_view(run, record, variant))
    return 0
