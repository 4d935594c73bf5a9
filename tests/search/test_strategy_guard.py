"""Until mixed precision (``quantmill.search.mixed``) is in the build, a ``mixed:`` entry fails with a clear error."""

from __future__ import annotations

import importlib.util

import pytest

from quantmill.errors import QuantmillError

pytestmark = pytest.mark.fast


@pytest.mark.skipif(importlib.util.find_spec("quantmill.search.mixed") is not None, reason="mixed precision is built")
def test_a_mixed_entry_without_mixed_precision_says_so():
    from quantmill.flows.search import mixed_candidates_task
    from quantmill.pipeline import StepSlot

    space = {"method": "gptq", "bits": [2, 4, 8], "group_size": 64, "types": None, "steps": 4}
    with pytest.raises(QuantmillError, match="mixed precision is not available in this build"):
        mixed_candidates_task.fn(None, space, StepSlot(None))
