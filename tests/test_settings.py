"""Runtime defaults live in quantmill.settings; infra/prefect.yaml, which cannot import them, repeats them exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quantmill.errors import QuantmillError
from quantmill.settings import Settings, get_settings

pytestmark = pytest.mark.fast

PREFECT_YAML = Path(__file__).resolve().parents[1] / "infra" / "prefect.yaml"


def default(name: str):
    return Settings.model_fields[name].default


def test_prefect_yaml_uses_the_settings_defaults():
    deployments = {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}
    for name in ("nightly-zoo", "nightly-zoo-gpu"):
        assert [s["cron"] for s in deployments[name]["schedules"]] == [default("nightly_cron")], name
    for name in ("nightly-zoo", "demo"):  # the process pool; the GPU one is the Kubernetes pool
        assert deployments[name]["work_pool"]["name"] == default("work_pool"), name


def test_environment_overrides_a_default_and_a_bad_value_is_a_clear_error(monkeypatch):
    get_settings.cache_clear()
    try:
        monkeypatch.setenv("QUANTMILL_WORKERS", "2")
        assert get_settings().workers == 2
        get_settings.cache_clear()
        monkeypatch.setenv("QUANTMILL_WORKERS", "0")
        with pytest.raises(QuantmillError, match="invalid environment setting: QUANTMILL_WORKERS"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_a_runs_dir_url_is_a_shared_store_worked_on_in_a_local_mirror(monkeypatch, tmp_path):
    get_settings.cache_clear()
    try:
        monkeypatch.setenv("QUANTMILL_CACHE_DIR", str(tmp_path))
        monkeypatch.setenv("QUANTMILL_SHARED_STORE", "s3://chosen-elsewhere")  # only QUANTMILL_RUNS_DIR says
        monkeypatch.setenv("QUANTMILL_RUNS_DIR", "s3://bucket/prefix/")
        settings = get_settings()
        assert settings.shared_store == "s3://bucket/prefix"
        assert settings.runs_dir.parent == tmp_path / "stores"  # one mirror per store URL
        get_settings.cache_clear()
        monkeypatch.setenv("QUANTMILL_RUNS_DIR", str(tmp_path / "runs"))
        assert get_settings().shared_store is None and get_settings().runs_dir == tmp_path / "runs"
    finally:
        get_settings.cache_clear()
