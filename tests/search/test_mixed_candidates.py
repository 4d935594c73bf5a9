"""mixed_candidates on the demo model: a real sensitivity scan, kept on disk, turned into ordinary variants."""

from __future__ import annotations

import pytest

from quantmill.errors import QuantizationError
from quantmill.recipe.load import load_recipe_text
from quantmill.search import sensitivity
from quantmill.search.mixed import mixed_candidates
from quantmill.settings import get_settings
from tests.search.test_mixed_realisation import recipe

GGUF_SPACE = {"method": "gguf", "bits": None, "group_size": None, "types": ["q2_k", "q4_k", "q8_0"], "steps": 3}


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTMILL_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield tmp_path / "cache"
    get_settings.cache_clear()


@pytest.mark.slow
def test_candidates_lie_between_the_levels_smallest_first_and_the_scan_runs_once(tmp_path, own_cache, monkeypatch):
    loaded = load_recipe_text(recipe("    - {method: gguf, type: q4_k_m}\n"), tmp_path)
    first = mixed_candidates(loaded, GGUF_SPACE, "cpu")

    bits = [v.spec.average_bits_per_weight(v.params, loaded.shape) for v in first]
    assert first and bits == sorted(bits) and all(2.625 < b < 8.5 for b in bits)
    assert all(v.method == "gguf" and "-mix" in v.id for v in first)
    assert len(list((own_cache / "sensitivity").glob("*.json"))) == 1

    def no_second_scan(*args, **kwargs):
        raise AssertionError("scanned again")

    monkeypatch.setattr(sensitivity, "scan", no_second_scan)
    assert [v.id for v in mixed_candidates(loaded, GGUF_SPACE, "cpu")] == [v.id for v in first]


@pytest.mark.fast
def test_a_group_size_the_model_cannot_take_is_refused_before_any_scan(tmp_path, monkeypatch):
    loaded = load_recipe_text(recipe("    - {method: rtn, bits: 4}\n"), tmp_path)
    monkeypatch.setattr(sensitivity, "scan", lambda *a, **k: pytest.fail("scanned"))
    space = {"method": "gptq", "bits": [2, 4], "group_size": 48, "types": None, "steps": 2}
    with pytest.raises(QuantizationError, match="group size 48 does not divide"):
        mixed_candidates(loaded, space, "cpu")
