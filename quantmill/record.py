"""The run record: what one run did, typed — the contents of its ``results.json``.

A :class:`RunRecord` holds the run (recipe, model, device, status), its
:class:`BaselineRecord` and one :class:`VariantRecord` per variant (status,
evaluation, verdict, cache hits, publish outcome). The pipeline fills it in and
writes it after every step; the CLI, the reports and publishing read it back.

``results.json`` carries ``schema_version``. Version 2 is this model. Version 1
(quantmill before the typed record) had the same fields as loose JSON; it is
read through :func:`upgrade_v1`. Any other version is refused with an error
naming the file and the versions this quantmill reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantmill.errors import RunStoreError
from quantmill.evaluation.results import EvaluationResult
from quantmill.gates import Verdict
from quantmill.search.trace import SearchTrace

SCHEMA_VERSION = 2
#: the versions :func:`parse_record` accepts, oldest first
READABLE_VERSIONS = (1, 2)


class RunStatus(StrEnum):
    PLANNED = "planned"  # the run folder exists, nothing ran yet
    RUNNING = "running"
    COMPLETED = "completed"  # every variant has an outcome and the report is written


class VariantStatus(StrEnum):
    PENDING = "pending"  # selected for this run, no outcome yet
    PASSED = "passed"  # every required gate holds
    FAILED = "failed"  # a required gate failed, or quantization or evaluation did
    INCONCLUSIVE = "inconclusive"  # no required gate failed, but the evaluation was too small to decide one


class PublishStatus(StrEnum):
    PUBLISHED = "published"  # one commit made
    UNCHANGED = "unchanged"  # the target already had exactly this content: no commit
    FAILED = "failed"


class _Record(BaseModel):
    # NaN and infinity are legitimate measurements (an unbounded ratio, a metric lm-eval could
    # not compute). results.json is written with json.dumps, which keeps them as NaN/Infinity;
    # "constants" makes model_dump_json do the same instead of writing null.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class ModelRef(_Record):
    """The base model as this run used it."""

    id: str
    revision: str


class CachedSteps(_Record):
    """Which of a variant's steps were answered from the cache instead of running."""

    quantize: bool = False
    evaluate: bool = False
    servable: bool = False


class PublishOutcome(_Record):
    """What publishing one variant did.

    Attributes:
        status: a commit, nothing (same content already there), or a failure.
        variant, repo_id, url: where it went (unset when publishing failed before that was known).
        fingerprint: hash of the files and the card (what makes republishing idempotent).
        commit, collection: the commit made and the collection it was added to, if any.
        error: why publishing failed.
    """

    status: PublishStatus
    variant: str | None = None
    repo_id: str | None = None
    url: str | None = None
    fingerprint: str | None = None
    commit: str | None = None
    collection: str | None = None
    error: str | None = None


class Regression(_Record):
    """A variant that got worse than in the previous completed run of the recipe."""

    variant: str
    what: str  # the metric, or "verdict"
    before: Any
    after: Any
    why: str


class BaselineRecord(_Record):
    """The unquantized model's evaluation; both unset when the baseline was not measured."""

    evaluation: EvaluationResult | None = None
    error: str | None = None
    cached: bool = False


class VariantRecord(_Record):
    """One variant's outcome.

    Attributes:
        method: the quantization method.
        status: pending until the variant has a verdict, then passed, failed or inconclusive
            (only passed variants are published).
        setting: the variant's parameters in words (``w4 · g128``).
        error: why it failed, when quantization, evaluation or the baseline did.
        artifact: the quantized output folder.
        evaluation, verdict: what was measured, and the gates' judgement of it.
        cached: which steps came from the cache.
        publish: what publishing it did (unset when it was not published).
    """

    method: str
    status: VariantStatus = VariantStatus.PENDING
    setting: str | None = None
    error: str | None = None
    artifact: Path | None = None
    evaluation: EvaluationResult | None = None
    verdict: Verdict | None = None
    cached: CachedSteps | None = None
    publish: PublishOutcome | None = None

    @property
    def fully_cached(self) -> bool:
        return self.cached is not None and self.cached.quantize and self.cached.evaluate


class RunRecord(_Record):
    """One run of one recipe (see the module docstring)."""

    schema_version: Literal[2] = 2  # SCHEMA_VERSION
    recipe: str
    recipe_path: Path
    recipe_sha256: str
    run_id: str
    started: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished: datetime | None = None
    quantmill_version: str
    status: RunStatus = RunStatus.PLANNED
    inputs_fingerprint: str | None = None  # what the zoo compares to decide whether a recipe changed
    model: ModelRef | None = None
    device: str | None = None
    baseline: BaselineRecord | None = None  # unset until the baseline step finished
    variants: dict[str, VariantRecord] = Field(default_factory=dict)
    regressions: list[Regression] = Field(default_factory=list)
    search: SearchTrace | None = None  # a recipe with search: every candidate's numbers and outcome, the winner

    def baseline_evaluation(self) -> EvaluationResult | None:
        return self.baseline.evaluation if self.baseline else None

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to ``results.json``."""
        return self.model_dump(mode="json")


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 ``results.json`` as version 2.

    Version 1 was written by quantmill before the typed record, as loose JSON built
    field by field; its fields and values are exactly the ones version 2 declares,
    so upgrading only restamps the version. A later change to the record's shape
    becomes version 3, with its conversion here.
    """
    return {**data, "schema_version": 2}


def parse_record(data: Any, source: str | Path) -> RunRecord:
    """The record in ``data`` (parsed ``results.json``), read by its ``schema_version``.

    Raises:
        RunStoreError: naming ``source``, when the version is not one this quantmill
            reads or the content does not match it.
    """
    from quantmill import __version__

    if not isinstance(data, dict):
        raise RunStoreError(f"{source} is not a run record (expected a JSON object)")
    version = data.get("schema_version")
    if type(version) is not int or version not in READABLE_VERSIONS:  # (True == 1 in Python)
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise RunStoreError(
            f"{source} has schema_version {version!r}; quantmill {__version__} reads versions {readable}"
            + (
                " (it was written by a newer quantmill: upgrade quantmill)"
                if type(version) is int and version > SCHEMA_VERSION
                else ""
            )
        )
    try:
        return RunRecord.model_validate(upgrade_v1(data) if version == 1 else data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top)'}: {error['msg']}" for error in exc.errors()[:5]
        )
        raise RunStoreError(f"{source} is not a valid version-{version} run record: {problems}") from None
