"""Operator settings: what the machine's owner decides, never a recipe.

They come from ``QUANTMILL_*`` environment variables and an operator settings file
(YAML or TOML) named by ``QUANTMILL_OPERATOR_FILE``; the environment wins over the
file. A recipe can ask for capabilities and name paths; these settings decide what
it gets: the policy, per-recipe grants, the Hub endpoint, the namespaces it may
publish to, the local zoo root, folders its files may come from, resource caps,
where run notifications go, and the size above which a published GGUF file is split.
"""

from __future__ import annotations

import fnmatch
import os
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

Capability = Literal["remote_code", "task_code", "card_template"]
CAPABILITIES: dict[str, str] = {
    "remote_code": "runs Python shipped with the model (model.trust_remote_code, auto_map in its config)",
    "task_code": "runs lm-eval task code (!function, Python files, Jinja beyond field access in task YAML)",
    "card_template": "renders the recipe's own Jinja model card template (sandboxed)",
}
Policy = Literal["trusted", "untrusted"]
NotifyEvent = Literal["failure", "regression", "publish"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("failure", "regression", "publish")
OPERATOR_FILE_ENV = "QUANTMILL_OPERATOR_FILE"
POLICY_ENV = "QUANTMILL_POLICY"


class OperatorSettings(BaseSettings):
    """The trusted side of the boundary.

    Attributes:
        policy: ``trusted`` (a developer running their own recipes: capabilities are
            listed but allowed, paths may be anywhere) or ``untrusted`` (CI, nightly
            workers: a capability is refused unless granted, every path a recipe names
            must lie in its folder or a data root, the endpoint is the operator's).
        grants: recipe name or path glob → capabilities granted to it.
        hub_endpoint: the only Hub endpoint publishing talks to (None: huggingface_hub's default).
        namespaces: the namespaces recipes may publish to (empty: any).
        zoo_root: the folder a local zoo must lie in (None: the recipe's folder, under ``untrusted``).
        card_template_dirs: extra folders custom card templates may come from.
        data_roots: extra folders a recipe's files (data, task folders, models) may come from.
        max_variants: the largest matrix a recipe may expand to, counted before expanding.
        max_calibration_tokens: calibration ``num_samples × seq_len``.
        max_training_tokens: QAT ``steps × batch_size × seq_len × gradient_accumulation``.
        min_perplexity_stride: the smallest perplexity window step.
        max_include_files: files under all ``include_paths`` together.
        max_include_bytes: bytes under all ``include_paths`` together.
        max_data_file_bytes: bytes read from one data file (calibration, perplexity, training texts).
        notify_urls: webhook URLs (Slack-compatible incoming webhooks) a finished run is announced to
            (``quantmill.notify``); secrets, never shown.
        notify_on: the events that are announced: ``failure`` (a variant did not pass, a publish
            failed or the run errored), ``regression``, ``publish`` (a variant was published).
        notify_timeout: seconds one webhook call may take before it is given up.
        report_url_base: where the run store is served; a notification links
            ``<report_url_base>/<recipe>/<run-id>/report.html`` instead of the report's ``file://`` URL.
        gguf_split_max_mb: a GGUF file larger than this many MB (10^6 bytes, llama.cpp's ``M``) is
            published as shards of at most this much tensor data each (``llama-gguf-split
            --split-max-size``). The default, 48 000 (``48G``), keeps every shard, with the metadata
            the first one also carries, under the Hub's 50 GB per-file limit.
    """

    model_config = SettingsConfigDict(env_prefix="QUANTMILL_", extra="ignore")

    policy: Policy = "trusted"
    grants: dict[str, list[Capability]] = Field(default_factory=dict)
    hub_endpoint: str | None = None
    namespaces: list[str] = Field(default_factory=list)
    zoo_root: Path | None = None
    card_template_dirs: list[Path] = Field(default_factory=list)
    data_roots: list[Path] = Field(default_factory=list)
    max_variants: int = Field(256, gt=0)
    max_calibration_tokens: int = Field(1 << 24, gt=0)
    max_training_tokens: int = Field(1 << 28, gt=0)
    min_perplexity_stride: int = Field(1, gt=0)
    max_include_files: int = Field(2_000, gt=0)
    max_include_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_data_file_bytes: int = Field(1 << 30, gt=0)
    notify_urls: list[SecretStr] = Field(default_factory=list)
    notify_on: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    notify_timeout: float = Field(10.0, gt=0)
    report_url_base: str | None = None
    gguf_split_max_mb: int = Field(48_000, gt=0)

    @field_validator("hub_endpoint")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("hub_endpoint must be an http(s) URL")
        return value

    @field_validator("notify_urls")
    @classmethod
    def _webhooks(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(not url.get_secret_value().startswith(("https://", "http://")) for url in value):
            raise ValueError("notify_urls must be http(s) webhook URLs")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file = os.environ.get(OPERATOR_FILE_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if file:
            path = Path(file)
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def granted(self, recipe_name: str, recipe_path: Path | None) -> set[str]:
        """Capabilities granted to a recipe, matched by its resolved path, or by its name when its file
        is named after it (``demo`` for ``…/demo.yaml``; or the recipe was given as text, not a file).

        The name is a field in the file: any new file could claim ``name: demo``. Renaming a file onto
        ``demo.yaml`` replaces that recipe, which a review sees.
        """
        name_is_the_files = recipe_path is None or recipe_path.stem == recipe_name
        names = ([recipe_name] if name_is_the_files else []) + ([str(recipe_path.resolve())] if recipe_path else [])
        return {
            capability
            for pattern, capabilities in self.grants.items()
            if any(fnmatch.fnmatchcase(name, pattern) for name in names)
            for capability in capabilities
        }

    def allows(self, capability: str, recipe_name: str, recipe_path: Path | None) -> bool:
        return self.policy == "trusted" or capability in self.granted(recipe_name, recipe_path)


def operator_file() -> Path | None:
    file = os.environ.get(OPERATOR_FILE_ENV)
    return Path(file).expanduser().resolve() if file else None


@cache
def get_operator() -> OperatorSettings:
    """The operator's settings, read once per process (``use_untrusted_policy`` re-reads them)."""
    return OperatorSettings()


def use_untrusted_policy() -> None:
    """Refuse ungranted capabilities in this process and its children (``--policy untrusted``).

    A command-line flag can only tighten the operator's policy, never loosen it.
    """
    os.environ[POLICY_ENV] = "untrusted"
    get_operator.cache_clear()


def hub_endpoint(recipe_endpoint: str | None) -> str | None:
    """The endpoint that Hub calls (and the token) go to: the operator's, else what validation let the recipe say."""
    return get_operator().hub_endpoint or recipe_endpoint


POLICY_HELP = (
    "untrusted: refuse capabilities (remote_code, task_code, card_template) the operator has not granted, "
    "paths outside the recipe's folder and data roots, and a recipe's own Hub endpoint "
    "(the policy of pull requests and nightly workers; it can only tighten the operator's settings)"
)


def capability_lines(requests) -> list[str]:
    """One line per capability a recipe asks for, for ``validate`` and ``plan``."""
    from quantmill.yamlio import format_loc

    policy = get_operator().policy
    return [f"capability {r.describe()} (at {format_loc(r.loc)}; policy {policy})" for r in requests]
