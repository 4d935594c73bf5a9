"""What a person sees while a run runs, and when it ends.

On a terminal, a live table: one row per variant plus the baseline, with its stage
(queued … done), how long it has been at work, and its numbers as they land. Without
a terminal (CI, Prefect workers), plain lines. After the run, the results table.

The view reads two things the run writes: its progress events (``quantmill.progress``)
for stages and times, and its record (``results.json``) for the numbers, which are
formatted as the run's report formats them (``quantmill.report.render.rows``) so the
console and the report never disagree. :func:`follow_new_run` drives the view from a
thread while the flow runs in the caller's; nothing here imports Prefect.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from quantmill.errors import RunStoreError
from quantmill.progress import BASELINE, STAGES, StageEvent, logs_dir, read_events
from quantmill.record import PublishStatus, RunRecord, VariantRecord, VariantStatus
from quantmill.report.quality import quality_metric
from quantmill.report.render import COLUMNS, rows
from quantmill.runstore import Run, RunStore, created_in_this_process

#: stages a line is printed for, without a terminal. Only the outcome by default: one line
#: per transition is ~5 lines per variant, which for the demo's 8 variants alone is over the
#: 60 lines ``make demo`` may print. ``--verbose`` prints every transition.
OUTCOME_STAGES = ("done",)
EVERY_TRANSITION = tuple(stage for stage in STAGES if stage != "queued")  # queued: where every row starts
STATUS_STYLES = {"passed": "green", "failed": "red", "inconclusive": "yellow"}


@dataclass
class StageRow:
    """Where one variant (or the baseline) is: its stage and when its work started and ended."""

    name: str
    stage: str = "queued"
    started: float | None = None  # first event past "queued"
    ended: float | None = None  # the "done" event
    status: str | None = None  # as the "done" event reports it (the record has the final word)
    cached: bool = False

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.ended if self.ended is not None and self.stage == "done" else now) - self.started


@dataclass(frozen=True)
class Numbers:
    """A row's measured numbers as display text ("-" when not measured yet)."""

    quality: str
    recovery: str
    ppl: str
    size_mb: str
    bits: str
    status: str  # passed, failed, inconclusive; "" while pending; "reference" for the baseline
    cached: bool
    reason: str  # the unmet rules or the error; "" when none

    @property
    def quality_and_recovery(self) -> str:
        return self.quality if self.recovery == "-" else f"{self.quality} ({self.recovery})"


def numbers_of(record: RunRecord) -> dict[str, Numbers]:
    """Every variant's numbers, and the baseline's (as ``baseline``) once it was measured."""
    found = {name: _numbers(cells, record.variants[name]) for name, cells in _cells(record).items()}
    if record.baseline is not None:
        # the baseline formatted as the report formats a variant: a record whose one variant has its evaluation
        alone = record.model_copy(
            update={"variants": {BASELINE: VariantRecord(method="", evaluation=record.baseline.evaluation)}}
        )
        cells = _cells(alone)[BASELINE]
        found[BASELINE] = Numbers(
            cells["quality"],
            "-",  # the reference itself
            cells["ppl"],
            cells["size MB"],
            cells["bits/w"],
            "failed" if record.baseline.error else "reference",
            record.baseline.cached,
            record.baseline.error or "",
        )
    return found


def _cells(record: RunRecord) -> dict[str, dict[str, str]]:
    return {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in rows(record)}


def _numbers(cells: dict[str, str], entry: VariantRecord) -> Numbers:
    reason = cells["unmet rule / error"]
    if entry.publish is not None and entry.publish.status == PublishStatus.FAILED:
        reason = f"publish failed: {entry.publish.error}"
    return Numbers(
        cells["quality"],
        cells["recovery"],
        cells["ppl"],
        cells["size MB"],
        cells["bits/w"],
        "" if entry.status == VariantStatus.PENDING else entry.status.value,
        entry.fully_cached,
        "" if reason == "-" else reason,
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def _status(numbers: Numbers | None, row: StageRow | None = None) -> Text:
    status = numbers.status if numbers else ((row.status or "") if row else "")
    cached = numbers.cached if numbers else bool(row and row.cached)
    return Text(status + (" (cached)" if cached and status else ""), style=STATUS_STYLES.get(status, "dim"))


class RunView:
    """One run's progress: apply its events and its record, render a table or lines."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.time() if started is None else started
        self.rows: dict[str, StageRow] = {BASELINE: StageRow(BASELINE)}
        self.record: RunRecord | None = None
        self.numbers: dict[str, Numbers] = {}
        self.logs: Path | None = None  # where the run's step logs are, once known

    def apply(self, event: StageEvent) -> StageRow:
        """Move the event's variant to its stage; returns its row."""
        row = self.rows.setdefault(event.variant, StageRow(event.variant))
        row.stage = event.stage
        if event.stage != "queued" and row.started is None:
            row.started = event.t
        if event.stage == "done" and row.ended is None:  # a published variant is done again after publishing
            row.ended = event.t
            row.status = event.fields.get("status")
            row.cached = bool(event.fields.get("cached"))
        return row

    def update(self, record: RunRecord) -> None:
        """Take the numbers from the run's latest record (rows for variants no event named yet: queued)."""
        self.record = record
        for name in record.variants:
            self.rows.setdefault(name, StageRow(name))
        self.numbers = numbers_of(record)

    def has_outcome(self, name: str) -> bool:
        """Whether the record holds this row's outcome (its numbers are final)."""
        found = self.numbers.get(name)
        return found is not None and found.status != ""

    def _quality(self) -> str | None:
        return quality_metric(self.record) if self.record else None

    def table(self, now: float | None = None) -> Table:
        """The live table: stage, elapsed time and numbers of every row."""
        now = time.time() if now is None else now
        title = f"{self.record.recipe} — run {self.record.run_id}" if self.record else "starting the run…"
        caption = f"step logs in {self.logs}" if self.logs else None
        table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
        table.add_column("variant", no_wrap=True)
        table.add_column("stage")
        quality = self._quality()
        for column in ("elapsed", _quality_header(quality), *_ppl_column(quality), "size MB"):
            table.add_column(column, justify="right")
        table.add_column("verdict")
        for name, row in self.rows.items():
            numbers = self.numbers.get(name)
            landed = numbers if numbers and numbers.status else None  # the record has the row's outcome
            table.add_row(
                name,
                Text(row.stage, style="bold" if row.stage not in ("queued", "done") else "dim"),
                _duration(row.elapsed(now)),
                landed.quality_and_recovery if landed else "",
                *_ppl_column(quality, landed.ppl if landed else ""),
                landed.size_mb if landed else "",
                _status(landed, row),
            )
        return table

    def line(self, event: StageEvent) -> str:
        """One plain line for an event: ``[  12.3s] gptq-w4-g128  evaluating``; a ``done`` line carries the numbers."""
        width = max(len(name) for name in self.rows)
        text = f"[{event.t - self.started:7.1f}s] {event.variant:<{width}}  {event.stage}"
        numbers = self.numbers.get(event.variant)
        if event.stage != "done":
            return text
        if numbers is None:  # not in the record: a search candidate that needed no full evaluation says why
            status = str(event.fields.get("status", ""))
            return f"{text} {status}" if status else text
        status = numbers.status or str(event.fields.get("status", ""))
        parts = [status + (" (cached)" if numbers.cached else "")]
        quality = self._quality()
        if numbers.quality != "-":
            ratio = f" ({_ratio_name(quality)} {numbers.recovery})" if numbers.recovery != "-" else ""
            parts.append(f"{quality or 'quality'} {numbers.quality}{ratio}")
        if numbers.ppl != "-" and _ppl_column(quality):
            parts.append(f"ppl {numbers.ppl}")
        if numbers.size_mb != "-":
            parts.append(f"{numbers.size_mb} MB")
        if numbers.reason:
            parts.append(f"— {numbers.reason}")
        return f"{text} {'  '.join(parts)}"


def _ratio_name(quality: str | None) -> str:
    """What the variant/baseline ratio is called: a recovery for a higher-is-better score; for
    perplexity (lower is better) the same ratio is shown as a multiple of the baseline, where above 1 is worse."""
    return "x baseline" if quality == "ppl" else "recovery"


def _quality_header(quality: str | None) -> str:
    return f"{quality or 'quality'} ({_ratio_name(quality)})"


def _ppl_column(quality: str | None, cell: str = "ppl") -> tuple[str, ...]:
    """The ppl column's header or cell, or nothing when perplexity is already the quality column."""
    return () if quality == "ppl" else (cell,)


def results_table(record: RunRecord) -> Table:
    """The table a run ends with: baseline and variants; status, quality (recovery), ppl, size, bits/weight, reason."""
    quality = quality_metric(record)
    table = Table(title=f"{record.recipe} — run {record.run_id}", title_justify="left")
    table.add_column("variant", no_wrap=True)
    table.add_column("status")
    for column in (_quality_header(quality), *_ppl_column(quality), "size MB", "bits/w"):
        table.add_column(column, justify="right")
    table.add_column("reason", overflow="fold")
    found = numbers_of(record)
    for name in (BASELINE, *record.variants):
        if name not in found:
            continue
        numbers = found[name]
        table.add_row(
            name,
            _status(numbers),
            numbers.quality_and_recovery,
            *_ppl_column(quality, numbers.ppl),
            numbers.size_mb,
            numbers.bits,
            escape(numbers.reason),
        )
    return table


class RunFollower:
    """Follows one run folder's events and record, and shows them on a console: live or as lines."""

    def __init__(self, console: Console, *, live: bool, line_stages: Sequence[str] = OUTCOME_STAGES) -> None:
        self.console = console
        self.view = RunView()
        self.line_stages = tuple(line_stages)
        self.run: Run | None = None
        self._offset = 0
        self._record_stamp: tuple[int, int, int] | None = None
        self._held: list[StageEvent] = []  # "done" events whose numbers the record does not hold yet
        self._live = Live(console=console, transient=True, auto_refresh=False) if live else None

    def start(self) -> None:
        if self._live is not None:
            self._live.start()
            self._live.update(self.view.table(), refresh=True)

    def attach(self, run: Run) -> None:
        self.run = run
        self.view.logs = logs_dir(run.path)

    def poll(self, *, final: bool = False) -> None:
        """Read what the run wrote since the last poll and show it; ``final`` prints every held line."""
        if self.run is None:
            return
        events, self._offset = read_events(self.run.path, self._offset)
        self._read_record()
        for event in events:
            known = self.view.rows.get(event.variant)
            again = event.stage == "done" and known is not None and known.ended is not None
            self.view.apply(event)
            if self._live is None and event.stage in self.line_stages and not again:
                self._held.append(event)
        if self._live is not None:
            self._live.update(self.view.table(), refresh=True)
            return
        still_held = []
        for event in self._held:
            if event.stage == "done" and not final and not self.view.has_outcome(event.variant):
                still_held.append(event)  # the done event can land before the record that holds its numbers
            else:
                self.console.print(self.view.line(event), markup=False, highlight=False, soft_wrap=True)
        self._held = still_held

    def _read_record(self) -> None:
        assert self.run is not None
        try:
            found = self.run.results_path.stat()
        except FileNotFoundError:
            return
        stamp = (found.st_ino, found.st_mtime_ns, found.st_size)  # each write replaces the file: a new inode
        if stamp == self._record_stamp:
            return
        try:
            record = self.run.read_record()
        except RunStoreError:
            return  # not written yet: the next poll reads it
        first = self.view.record is None
        self._record_stamp = stamp
        self.view.update(record)
        if first and self._live is None:
            count = len(record.variants)
            self.console.print(
                f"run {record.run_id}: baseline and {count} variant{'s' if count != 1 else ''}; "
                f"step logs in {logs_dir(self.run.path)}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def stop(self) -> None:
        try:
            self.poll(final=True)
        finally:
            if self._live is not None:
                self._live.stop()


@contextlib.contextmanager
def follow_new_run(
    store: RunStore,
    recipe: str,
    console: Console,
    *,
    live: bool,
    line_stages: Sequence[str] = OUTCOME_STAGES,
    interval: float = 0.5,
) -> Iterator[RunFollower]:
    """Show the progress of the run of ``recipe`` that starts in ``store`` while the block runs.

    The run is the first folder of the recipe that was not there on entry and that this
    process created (another run of the recipe may start meanwhile, here or on a worker
    sharing the store); the flow creates it once it has started, so until then there is
    nothing to follow. The block runs the flow;
    a thread polls every ``interval`` seconds, and a last poll on exit shows what is left.
    """
    before = {run.path for run in store.runs(recipe)}
    follower = RunFollower(console, live=live, line_stages=line_stages)
    stopping = threading.Event()
    broken: list[Exception] = []  # the view only informs: its failure must not fail or garble the run

    def attach_new_run() -> None:
        started = [run for run in store.runs(recipe) if run.path not in before and created_in_this_process(run)]
        if started:
            follower.attach(started[0])

    def follow() -> None:
        try:
            while not stopping.wait(interval):
                if follower.run is None:
                    attach_new_run()
                follower.poll()
        except Exception as exc:  # noqa: BLE001 -- reported once the run ends
            broken.append(exc)

    follower.start()
    thread = threading.Thread(target=follow, name="quantmill-progress", daemon=True)
    thread.start()
    try:
        yield follower
    finally:
        stopping.set()
        thread.join()
        try:
            if follower.run is None:  # the block ended within the first interval
                attach_new_run()
            follower.stop()
        except Exception as exc:  # noqa: BLE001
            broken.append(exc)
        if broken:
            console.print(f"(the progress view stopped: {type(broken[0]).__name__}: {broken[0]})", markup=False)
