"""The ``calls`` fixture: counts the library calls that tasks make (tests.support.calls)."""

from __future__ import annotations

import pytest

from tests.support.calls import Calls


@pytest.fixture
def calls(monkeypatch):
    return Calls(monkeypatch)
