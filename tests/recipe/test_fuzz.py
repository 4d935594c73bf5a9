"""Mutated recipes never produce a traceback: each is valid or a located error."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quantmill.testing.fuzzing import check_one, fuzz
from tests.conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_seeded_mutation_sample():
    counts = fuzz(RECIPES, cases=300, seed=1234)
    assert counts["error"] > 100 and sum(counts.values()) == 300


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text(text):
    check_one(text, REPO / "recipes")


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=30,
    )
)
def test_arbitrary_yaml_structures(data):
    import yaml

    check_one(yaml.safe_dump({"model": {"id": "org/model"}, "variants": data, "evaluation": data}), REPO / "recipes")
