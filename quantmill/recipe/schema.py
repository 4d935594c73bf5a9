"""The recipe language: pydantic models for what a YAML recipe may say.

Every default lives here, in the field definitions. Unknown keys are errors.
``quantmill schema`` exports these models (with the method rows) as JSON Schema.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quantmill.dataref import DatasetRef
from quantmill.metrics import EXTRA_METRIC_GROUPS, ExtraMetricGroup

SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class Strict(BaseModel):
    # NaN compares false with everything: a rule "max: .nan" would fail every variant while looking valid
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelRef(Strict):
    """The model to quantize."""

    id: str = Field(..., min_length=1, max_length=512, description="hub id (org/name) or local folder")
    revision: str | None = Field(
        None, max_length=128, description="commit, tag or branch to pin; hub models should pin a commit"
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="load dtype")
    trust_remote_code: bool = Field(False, description="run code shipped with the model; only when you trust it")
    tokenizer: str | None = Field(None, description="tokenizer hub id or folder, if not the model's own")
    base_model: str | None = Field(
        None,
        max_length=200,
        description="the Hub id (org/name) a local model folder is a copy of: the cards' base_model",
    )

    @field_validator("base_model")
    @classmethod
    def _hub_id(cls, value: str | None) -> str | None:
        from quantmill.recipe.checks import HUB_ID, hub_name_problem  # checks imports this module

        if value is None:
            return value
        if not HUB_ID.match(value):
            raise ValueError(f"must be a Hub model id like 'org/name', got '{value}'")
        for part in value.split("/"):
            reason = hub_name_problem(part)
            if reason:
                raise ValueError(f"'{value}' is not a valid Hub id: '{part}': {reason}")
        return value


class Calibration(Strict):
    """Data fed to methods that calibrate (GPTQ, AWQ, INT8, static FP8, GGUF imatrix)."""

    dataset: DatasetRef | None = Field(None, description="required when a calibrated method is in the matrix")
    num_samples: int = Field(128, gt=0, le=100_000, description="samples drawn (128, as in the GPTQ paper)")
    seq_len: int = Field(512, gt=0, le=131_072, description="tokens per sample")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="sampling seed")


class Perplexity(Strict):
    """Sliding-window token perplexity on a text corpus."""

    dataset: DatasetRef
    max_length: int = Field(256, gt=1, le=131_072, description="window length in tokens")
    stride: int = Field(128, gt=0, le=131_072, description="window step; tokens scored once each")
    max_documents: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _stride_fits(self) -> Perplexity:
        if self.stride > self.max_length:
            raise ValueError(f"stride ({self.stride}) must not exceed max_length ({self.max_length})")
        return self


class Evaluation(Strict):
    """What every variant (and the baseline, once) is measured on."""

    tasks: list[str] = Field(default_factory=list, description="lm-eval task names")
    include_paths: list[str] = Field(default_factory=list, description="folders of local lm-eval task YAMLs")
    limit: int | None = Field(None, gt=0, description="examples per task (None: all)")
    num_fewshot: int = Field(0, ge=0, le=64)
    batch_size: int | Literal["auto"] = Field("auto", description="'auto' or a positive integer")
    apply_chat_template: bool = False
    perplexity: Perplexity | None = None
    metrics: list[ExtraMetricGroup] = Field(
        default_factory=lambda: list(EXTRA_METRIC_GROUPS), description="extra measurements: size, speed, memory"
    )
    seed: int = Field(1234, ge=0, le=2**32 - 1, description="lm-eval's random, numpy and torch seeds")

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value <= 0:
            raise ValueError("batch_size must be 'auto' or a positive integer")
        return value

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a task is listed twice")
        return value


THRESHOLD_KEYS = ("min", "max", "max_drop", "max_drop_pct", "min_recovery", "max_increase", "max_increase_pct")


class GateRule(Strict):
    """One pass/fail rule on one metric; exactly one threshold per rule."""

    metric: str = Field(..., min_length=1, description="'ppl', 'size_gb', … or '<task>/<metric>'")
    min: float | None = Field(None, description="value must be at least this")
    max: float | None = Field(None, description="value must be at most this")
    max_drop: float | None = Field(None, ge=0, description="baseline - value, at most (higher-is-better metrics)")
    max_drop_pct: float | None = Field(None, ge=0, le=100, description="drop in % of baseline, at most")
    min_recovery: float | None = Field(None, gt=0, description="value / baseline, at least (llm-compressor's recovery)")
    max_increase: float | None = Field(None, ge=0, description="value - baseline, at most (lower-is-better metrics)")
    max_increase_pct: float | None = Field(None, ge=0, description="increase in % of baseline, at most")
    significance: float | None = Field(
        None,
        ge=0,
        le=10,
        description="relative rules: excuse a miss within k·stderr of the threshold value "
        "(inconclusive when k·stderr is wider than the rule)",
    )
    level: Literal["required", "warn"] = Field("required", description="'warn' reports but never fails a variant")

    @model_validator(mode="after")
    def _one_threshold(self) -> GateRule:
        given = [key for key in THRESHOLD_KEYS if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a gate needs exactly one threshold, got {len(given)} ({', '.join(given) or 'none'}); "
                f"use one of {', '.join(THRESHOLD_KEYS)}"
            )
        return self

    @property
    def rule(self) -> str:
        return next(key for key in THRESHOLD_KEYS if getattr(self, key) is not None)

    @property
    def threshold(self) -> float:
        return getattr(self, self.rule)


class Variants(Strict):
    """The matrix: one row per method; list-valued axes (bits, types …) expand."""

    methods: list[dict[str, Any]] = Field(
        ..., min_length=1, description="rows like {method: gptq, bits: [4, 8], group_size: 128}"
    )
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-variant changes keyed by variant id"
    )


class Objective(Strict):
    """What a search optimises: exactly one of ``minimize`` or ``maximize``, naming a built-in cost metric."""

    minimize: Literal["size_mb", "size_gb", "bits_per_weight", "peak_rss_gb", "load_s"] | None = Field(
        None, description="the metric to make as small as possible"
    )
    maximize: Literal["decode_tok_s", "prefill_tok_s"] | None = Field(
        None, description="the metric to make as large as possible"
    )

    @model_validator(mode="after")
    def _one_goal(self) -> Objective:
        if (self.minimize is None) == (self.maximize is None):
            raise ValueError("give exactly one of 'minimize' or 'maximize', e.g. {minimize: size_mb}")
        return self

    @property
    def metric(self) -> str:
        return self.minimize or self.maximize  # type: ignore[return-value]  # the validator set one

    @property
    def lower_is_better(self) -> bool:
        return self.minimize is not None

    def describe(self) -> str:
        return f"minimize {self.minimize}" if self.minimize else f"maximize {self.maximize}"


class MixedSpace(Strict):
    """Mixed-precision candidates: a per-layer assignment of the given levels, at ``steps`` target average
    precisions between the lowest and the highest level (made at run time from a sensitivity scan)."""

    method: str = Field(..., description="gptq or rtn (levels in 'bits'), gguf (levels in 'types')")
    bits: list[int] | None = Field(None, min_length=2, description="gptq/rtn: the bit widths a layer may get")
    group_size: int | None = Field(None, gt=0, description="gptq/rtn: group size of every layer")
    types: list[str] | None = Field(None, min_length=2, description="gguf: the tensor types a layer may get")
    steps: int = Field(4, ge=1, le=16, description="target average precisions between the lowest and highest level")

    @model_validator(mode="after")
    def _levels_fit_method(self) -> MixedSpace:
        from quantmill.registry import did_you_mean, method_names  # the registry imports methods, which import this

        if self.method not in method_names():
            hint = did_you_mean(self.method, method_names())
            raise ValueError(f"unknown method '{self.method}'" + (f"; {hint}" if hint else ""))
        if self.method in ("gptq", "rtn"):
            if self.bits is None or self.types is not None:
                raise ValueError(f"mixed {self.method} takes its levels in 'bits' (e.g. [2, 4, 8]), not 'types'")
            from quantmill.registry import get_method

            allowed = get_args(get_method(self.method).params.model_fields["bits"].annotation)
            if any(b not in allowed for b in self.bits):
                raise ValueError(f"mixed {self.method}: bits {self.bits} are not all allowed; valid: {list(allowed)}")
        elif self.method == "gguf":
            if self.types is None or self.bits is not None or self.group_size is not None:
                raise ValueError("mixed gguf takes its levels in 'types' (e.g. [q2_k, q4_k, q8_0]), not 'bits'")
            from quantmill.methods.gguf import TENSOR_TYPES

            unknown = [t for t in self.types if t.lower() not in TENSOR_TYPES]
            if unknown:
                raise ValueError(f"mixed gguf: unknown tensor type(s) {unknown}; valid: {', '.join(TENSOR_TYPES)}")
        else:
            raise ValueError(f"mixed precision supports gptq, rtn and gguf, not '{self.method}'")
        return self


class MixedRow(Strict):
    """A space entry whose candidates assign precision per layer."""

    mixed: MixedSpace


class Budget(Strict):
    """How much a search may spend."""

    full_evaluations: int = Field(..., gt=0, le=1000, description="full evaluations (evaluate + servable) at most")


class Search(Strict):
    """Goal-seeking: the best candidate under ``objective`` that meets every constraint, for at most
    ``budget.full_evaluations`` full evaluations (``quantmill.search.strategy``); only the winner is published."""

    objective: Objective
    constraints: list[GateRule] = Field(..., min_length=1, description="rules the winner must pass (gate language)")
    space: list[dict[str, Any]] = Field(
        ...,
        min_length=1,
        description="matrix rows like {method: gguf, types: [q4_k_m, q8_0]}, or {mixed: {method: gptq, bits: [2, 8]}}",
    )
    budget: Budget
    proxy_documents: int = Field(
        8, gt=0, le=10_000, description="documents of the perplexity corpus the screening proxy scores"
    )


class Publish(Strict):
    """Where accepted variants go."""

    target: Literal["local", "hub", "none"] = Field("local", description="'local' folder zoo, the 'hub', or 'none'")
    path: str = Field("zoo", description="local zoo folder (target: local), relative to the recipe")
    namespace: str = Field("quantmill", description="user or organisation")
    repo_name: str = Field("{model}-{variant}", description="template: {model} {variant} {method} {recipe}")
    private: bool = False
    collection: str | None = Field(None, max_length=128, description="zoo collection title")
    license: str | None = Field(None, description="license id; inherited from the base model when unset")
    card_template: str | None = Field(None, description="Jinja model card template replacing the built-in one")
    card_extras: dict[str, str] = Field(default_factory=dict, description="extra sections for the model card")
    endpoint: str | None = Field(None, description="hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    create_pr: bool = Field(False, description="open a pull request instead of committing to main")

    @field_validator("endpoint")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("endpoint must be an http(s) URL")
        return value


class Recipe(Strict):
    """A quantize → evaluate → gate → publish recipe."""

    name: str | None = Field(None, description="slug naming runs and repos (default: file name)")
    description: str = Field("", max_length=4000)
    model: ModelRef
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    calibration: Calibration = Field(default_factory=Calibration)
    evaluation: Evaluation
    variants: Variants | None = Field(None, description="the matrix; optional when 'search' is given")
    search: Search | None = Field(None, description="find the best variant under a goal instead of listing them")
    gates: list[GateRule] = Field(default_factory=list, description="rules every variant must pass")
    publish: Publish = Field(default_factory=Publish)
    schedule: str | None = Field(None, description="cron expression for nightly runs, e.g. '0 2 * * *'")

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str | None) -> str | None:
        if value is not None and not SLUG.match(value):
            raise ValueError("name must be lowercase letters, digits, '.', '_' or '-' (at most 64)")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.match(r"^(auto|cpu|cuda(:\d{1,2})?)$", value):
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from quantmill.recipe.cron import check_cron

            check_cron(value)
        return value
