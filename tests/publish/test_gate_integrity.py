"""Only passed (or explicitly forced) variants can reach publishing, whatever the verdicts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantmill.publish.publisher import publishable

pytestmark = pytest.mark.fast

STATUSES = st.sampled_from(["passed", "failed", "pending", "running", None, "PASSED", "passed "])


@given(
    st.dictionaries(st.text(min_size=1, max_size=8), st.fixed_dictionaries({"status": STATUSES}), max_size=12),
    st.lists(st.text(min_size=1, max_size=8), max_size=4),
)
def test_only_passed_or_forced_variants_are_publishable(variants, force):
    chosen = publishable(variants, force)
    for name in chosen:
        assert variants[name]["status"] == "passed" or name in force
    for name, entry in variants.items():
        if entry["status"] == "passed":
            assert name in chosen
    assert not set(chosen) - set(variants)
