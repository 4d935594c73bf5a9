"""The sensitivity scan's cache key: what makes a kept scan stale."""

from __future__ import annotations

import pytest

from quantmill import cachekeys
from quantmill.search.sensitivity import Level, Unit, scan_key

UNITS = [Unit("model.layers.0.mlp.up_proj", "model.layers.0.mlp.up_proj", 4096)]
LEVELS = [Level(4, 4.5, 4, 32)]


@pytest.mark.fast
@pytest.mark.parametrize("package", ["torch", "transformers"])
def test_a_new_torch_or_transformers_makes_a_new_scan_key(package, monkeypatch):
    """The scan runs the model in torch through transformers: either's version can change the numbers, as it
    can every step's (``quantmill.cachekeys.versions``)."""
    before = scan_key("rev", UNITS, LEVELS, "fingerprint", "float32")
    installed = cachekeys.package_version
    monkeypatch.setattr(cachekeys, "package_version", lambda name: "0.0.1" if name == package else installed(name))
    assert scan_key("rev", UNITS, LEVELS, "fingerprint", "float32") != before
