"""Mutated recipes never produce a traceback: each is valid or a located error, and a broken one is refused."""

from __future__ import annotations

import random

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from quantmill.testing.fuzzing import check_one, fuzz, mutate_data, mutate_text
from tests.conftest import REPO

pytestmark = pytest.mark.fast

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

# Mutations that no recipe survives: a loader that accepts their result lets a broken recipe run.
ALWAYS_INVALID_TEXT = ["duplicate_key", "alias_bomb", "binary", "empty", "python_tag"]
ALWAYS_INVALID_DATA = ["unknown_key"]


class Forced(random.Random):
    """A seeded generator that always picks ``operation`` when the fuzzer chooses its mutation."""

    def __init__(self, operation: str, seed: int) -> None:
        super().__init__(seed)
        self.operation = operation

    def choice(self, seq):
        # Mutation names appear in no recipe and in no other list the fuzzer draws from.
        return self.operation if self.operation in seq else super().choice(seq)


def test_seeded_mutation_sample():
    counts = fuzz(RECIPES, cases=300, seed=1234)
    # Some mutations leave a recipe valid (an optional key deleted, a value wrapped where a list is
    # allowed); most break it. A loader that refused everything, or accepted everything, fails here.
    assert counts["valid"] >= 10, counts
    assert counts["error"] > 100, counts


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_mutations_that_break_every_recipe_are_refused(recipe):
    text = recipe.read_text()
    assert check_one(text, recipe.parent) == "valid"  # so each refusal below is the mutation's doing
    for seed in range(5):
        for operation in ALWAYS_INVALID_TEXT:
            mutated = mutate_text(text, Forced(operation, seed))
            assert check_one(mutated, recipe.parent) == "error", (operation, seed, mutated[-200:])
        for operation in ALWAYS_INVALID_DATA:
            mutated = yaml.safe_dump(mutate_data(yaml.safe_load(text), Forced(operation, seed)), allow_unicode=True)
            assert check_one(mutated, recipe.parent) == "error", (operation, seed, mutated)


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
    check_one(yaml.safe_dump({"model": {"id": "org/model"}, "variants": data, "evaluation": data}), REPO / "recipes")
