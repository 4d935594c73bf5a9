"""Only passed (or explicitly forced) variants can reach publishing, whatever the verdicts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantmill.publish.publisher import publishable
from quantmill.record import VariantRecord, VariantStatus

pytestmark = pytest.mark.fast

ENTRIES = st.builds(VariantRecord, method=st.just("rtn"), status=st.sampled_from(list(VariantStatus)))


@given(
    st.dictionaries(st.text(min_size=1, max_size=8), ENTRIES, max_size=12),
    st.lists(st.text(min_size=1, max_size=8), max_size=4),
)
def test_only_passed_or_forced_variants_are_publishable(variants, force):
    chosen = publishable(variants, force)
    for name in chosen:
        assert variants[name].status == VariantStatus.PASSED or name in force
    for name, entry in variants.items():
        if entry.status == VariantStatus.PASSED:
            assert name in chosen
    assert not set(chosen) - set(variants)
