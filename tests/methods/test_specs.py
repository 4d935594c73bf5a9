"""What the built-in method specs declare, checked without running a backend."""

from __future__ import annotations

import pytest

from quantmill.registry import get_method


@pytest.mark.parametrize(
    ("method", "params", "bits"),
    [
        ("gptq", {"bits": 4, "group_size": -1}, 4),
        ("rtn", {"bits": 8, "group_size": -1}, 8),
        ("awq", {"bits": 4, "group_size": -1}, 4),
        ("torchao", {"scheme": "int8-dynamic-intx", "weight_bits": 4, "group_size": -1}, 4),
    ],
)
def test_per_channel_scales_cost_next_to_nothing_per_weight(method, params, bits):
    spec = get_method(method)
    assert spec.bits_per_weight(spec.params.model_validate(params)) == bits


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("gptq", {"bits": 4, "group_size": 128}, 4 + 16 / 128),
        ("torchao", {"scheme": "int8-dynamic-intx", "weight_bits": 4, "group_size": 32}, 4 + 16 / 32),
        ("torchao", {"scheme": "int4-weight-only", "weight_bits": 8, "group_size": 64}, 4 + 16 / 64),
    ],
)
def test_grouped_scales_add_their_bits_per_weight(method, params, expected):
    spec = get_method(method)
    assert spec.bits_per_weight(spec.params.model_validate(params)) == expected
