"""What a finished run came to: its one outcome, and its headline numbers.

:func:`run_outcome` is the only place that decides a run's outcome; the CLI's exit
code, the Prefect flow run's final state and the notifications all derive from it.
Worst first (a run has exactly one):

==================  ==========================================================  ====  ===========================
outcome             when                                                        exit  flow run ends
==================  ==========================================================  ====  ===========================
``publish failed``  a passing variant failed to publish                         4     Failed
``gate failed``     a variant did not pass (failed, inconclusive, never judged) 3     Failed
``regressed``       worse than the recipe's previous completed run              5     Completed, named Regressed
``passed``          every variant passed (and published, when publishing)       0     Completed
==================  ==========================================================  ====  ===========================

A search (``search:``) is judged by its winner: candidates that lost (failed a constraint, larger
than the winner …) are the search working, not a failed run; a search without a winner is ``gate
failed`` with the trace's summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from quantmill.errors import GateFailedError, PublishError, QuantmillError, RegressionError
from quantmill.record import PublishStatus, Regression, RunRecord, VariantRecord, VariantStatus
from quantmill.report.quality import quality_metric, recovery
from quantmill.report.render import status_counts


class Outcome(StrEnum):
    PASSED = "passed"
    REGRESSED = "regressed"
    GATE_FAILED = "gate failed"
    PUBLISH_FAILED = "publish failed"


_ERRORS: dict[Outcome, type[QuantmillError]] = {
    Outcome.PUBLISH_FAILED: PublishError,
    Outcome.GATE_FAILED: GateFailedError,
    Outcome.REGRESSED: RegressionError,
}


@dataclass(frozen=True)
class RunOutcome:
    """A run's outcome and one line that says why, naming the variants."""

    kind: Outcome
    summary: str

    @property
    def failed(self) -> bool:
        """A required gate or a publish failed: the flow run ends Failed."""
        return self.kind in (Outcome.GATE_FAILED, Outcome.PUBLISH_FAILED)

    def error(self) -> QuantmillError | None:
        """The error the CLI raises for this outcome (its ``exit_code`` is the exit code); None when it passed."""
        error_type = _ERRORS.get(self.kind)
        return error_type(self.summary) if error_type else None

    @property
    def exit_code(self) -> int:
        error = self.error()
        return error.exit_code if error else 0


def describe_regression(regression: Regression) -> str:
    """``rtn-w4 tiny_world_mc/acc 0.95 → 0.9`` or ``rtn-w4 verdict passed → failed``."""

    def shown(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return f"{regression.variant} {regression.what} {shown(regression.before)} → {shown(regression.after)}"


def run_outcome(record: RunRecord) -> RunOutcome:
    """The outcome of a finished run: publish failure before gate failure before regression."""
    variants = sorted(record.variants.items())  # the same words from the flow's record and from results.json
    if record.search is not None:
        if record.search.winner is None:
            return RunOutcome(Outcome.GATE_FAILED, f"the search found no variant: {record.search.summary}")
        variants = [(v, e) for v, e in variants if v == record.search.winner]
    unpublished = [v for v, e in variants if e.publish and e.publish.status == PublishStatus.FAILED]
    if unpublished:
        return RunOutcome(
            Outcome.PUBLISH_FAILED,
            f"{len(unpublished)} passing variant(s) failed to publish: {', '.join(unpublished)}",
        )
    failed = [f"{v} ({e.status.value})" for v, e in variants if e.status != VariantStatus.PASSED]
    if failed:
        return RunOutcome(Outcome.GATE_FAILED, f"{len(failed)} variant(s) did not pass: {', '.join(failed)}")
    if record.regressions:
        described = ", ".join(describe_regression(r) for r in record.regressions)
        return RunOutcome(
            Outcome.REGRESSED, f"{len(record.regressions)} regression(s) since the previous run: {described}"
        )
    return RunOutcome(Outcome.PASSED, status_counts(record))


@dataclass(frozen=True)
class VariantNumbers:
    """A variant's headline numbers (None where not measured).

    ``recovery`` is the quality metric relative to the baseline's, as in the report;
    ``reason`` says why it did not pass, or why its publish failed.
    """

    variant: str
    status: VariantStatus
    quality: float | None
    recovery: float | None
    ppl: float | None
    size_mb: float | None
    reason: str | None = None

    def describe(self, quality_metric: str | None) -> str:
        """``rtn-w4 passed: tiny_world_mc/acc 0.9 (recovery 0.973), ppl 2.4, 1.2 MB``."""
        parts = []
        if quality_metric and self.quality is not None:
            recovery = f" (recovery {self.recovery:.3f})" if self.recovery is not None else ""
            parts.append(f"{quality_metric} {self.quality:.4g}{recovery}")
        if self.ppl is not None and quality_metric != "ppl":
            parts.append(f"ppl {self.ppl:.4g}")
        if self.size_mb is not None:
            parts.append(f"{self.size_mb:.4g} MB")
        text = f"{self.variant} {self.status.value}" + (": " + ", ".join(parts) if parts else "")
        return text + (f" — {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class Headline:
    """A run's headline numbers: status counts, the baseline's quality and each variant's numbers."""

    counts: str
    quality_metric: str | None
    baseline_quality: float | None
    variants: list[VariantNumbers]

    def best(self) -> VariantNumbers | None:
        """The passing variant with the highest recovery (the smaller one on a tie)."""
        passing = [v for v in self.variants if v.status == VariantStatus.PASSED and v.recovery is not None]
        return max(passing, key=lambda v: (v.recovery, -(v.size_mb or 0.0)), default=None)


def _reason(entry: VariantRecord) -> str | None:
    if entry.status != VariantStatus.PASSED:
        return entry.error or (entry.verdict.describe_unmet() if entry.verdict else None) or None
    if entry.publish and entry.publish.status == PublishStatus.FAILED:
        return f"publish failed: {entry.publish.error}"
    return None


def headline(record: RunRecord) -> Headline:
    quality = quality_metric(record)
    baseline = record.baseline_evaluation()
    baseline_quality = baseline.value(quality) if baseline and quality else None
    numbers = []
    for variant, entry in record.variants.items():
        evaluation = entry.evaluation
        value = evaluation.value(quality) if evaluation and quality else None
        recovered = None
        if evaluation and baseline and quality in evaluation.metrics and quality in baseline.metrics:
            recovered = recovery(evaluation.metrics[quality], baseline.metrics[quality])
        numbers.append(
            VariantNumbers(
                variant=variant,
                status=entry.status,
                quality=value,
                recovery=recovered,
                ppl=evaluation.value("ppl") if evaluation else None,
                size_mb=evaluation.value("size_mb") if evaluation else None,
                reason=_reason(entry),
            )
        )
    return Headline(status_counts(record), quality, baseline_quality, numbers)
