"""quantmill's environment settings, read once, in one place (``QUANTMILL_*``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Environment variables that change quantmill's behaviour.

    Attributes:
        runs_dir: the run store's root (``QUANTMILL_RUNS_DIR``).
        cache_dir: downloads and built tools (``QUANTMILL_CACHE_DIR``).
        debug: show tracebacks in the CLI (``QUANTMILL_DEBUG=1``).
        llama_cpp_dir: a user's llama.cpp checkout (``LLAMA_CPP_DIR`` or ``QUANTMILL_LLAMA_CPP_DIR``).
        hub_timeout: seconds a Hub request may go without an answer before it fails and is
            retried (``QUANTMILL_HUB_TIMEOUT``; 0 leaves huggingface_hub's client as it is).
    """

    model_config = SettingsConfigDict(env_prefix="QUANTMILL_", extra="ignore")

    runs_dir: Path = Field(Path("runs"))
    cache_dir: Path = Field(Path.home() / ".cache" / "quantmill")
    debug: bool = False
    hub_timeout: float = Field(60.0, ge=0)
    llama_cpp_dir: Path | None = Field(None, validation_alias=AliasChoices("QUANTMILL_LLAMA_CPP_DIR", "LLAMA_CPP_DIR"))


@cache
def get_settings() -> Settings:
    return Settings()
