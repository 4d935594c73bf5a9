"""Recipe mutations for the fuzzer (shared by tests/recipe/test_fuzz.py and bench/reliability.py)."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import yaml

from quantmill.errors import RecipeError
from quantmill.recipe import load_recipe_text

WEIRD_VALUES: list[Any] = [
    None,
    True,
    -4,
    0,
    2**70,
    -1e308,
    float("inf"),
    3.5,
    "",
    "x" * 20_000,
    "ünïcødé ☃ 🦙",
    "../../etc/passwd",
    "{variant.__class__}",
    [],
    [1, "a", None],
    {},
    {"nested": {"deeper": [1, 2]}},
    "gptq",
    "q4_k_m",
    "0 2 * * *",
]
TEXT_MUTATIONS = ["duplicate_key", "alias_bomb", "binary", "empty", "truncate", "python_tag", "tab_indent"]


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out += _paths(value, prefix + (index,))
    return out


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def mutate_data(data: dict, rng: random.Random) -> dict:
    data = copy.deepcopy(data)
    path = rng.choice(_paths(data)[1:])
    parent, key = _get(data, path[:-1]), path[-1]
    operation = rng.choice(["delete", "replace", "unknown_key", "wrap", "deep"])
    if operation == "delete":
        del parent[key]
    elif operation == "replace":
        parent[key] = rng.choice(WEIRD_VALUES)
    elif operation == "unknown_key":
        target = parent if isinstance(parent, dict) else data
        target[rng.choice(["modle", "bitz", "extra", "méthode", "x" * 300])] = rng.choice(WEIRD_VALUES)
    elif operation == "wrap":
        parent[key] = [parent[key]]
    else:
        value: Any = "leaf"
        for _ in range(rng.randint(5, 60)):
            value = {"k": value}
        parent[key] = value
    return data


def mutate_text(text: str, rng: random.Random) -> str | bytes:
    operation = rng.choice(TEXT_MUTATIONS)
    lines = text.splitlines()
    if operation == "duplicate_key":
        top = [line for line in lines if line and not line.startswith((" ", "#", "-"))]
        return text + "\n" + rng.choice(top) + "\n"
    if operation == "alias_bomb":
        bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(7)
        )
        return bomb + text
    if operation == "binary":
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
    if operation == "empty":
        return ""
    if operation == "truncate":
        return text[: rng.randint(0, len(text))]
    if operation == "python_tag":
        return text + "\nexploit: !!python/object/apply:os.system ['echo pwned']\n"
    return text.replace("  ", "\t", 1)


def check_one(source: str | bytes, base_dir: Path, file: str = "fuzz.yaml") -> str:
    """``valid`` or ``error``; raises AssertionError on a traceback or an unlocated problem."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            return "error"  # load_yaml_file reports undecodable bytes; load_yaml_text takes text
    try:
        load_recipe_text(source, base_dir, file)
        return "valid"
    except RecipeError as exc:
        assert exc.problems, "a RecipeError with no problems"
        for problem in exc.problems:
            assert problem.file == file and problem.message
            assert problem.line is not None or problem.path, problem
        return "error"


def fuzz(recipes: list[Path], cases: int, seed: int) -> dict[str, int]:
    """Run ``cases`` mutations; returns counts of valid and error outcomes (tracebacks raise)."""
    rng = random.Random(seed)
    texts = {path: path.read_text() for path in recipes}
    counts = {"valid": 0, "error": 0}
    for _ in range(cases):
        path = rng.choice(recipes)
        if rng.random() < 0.7:
            mutated: str | bytes = yaml.safe_dump(mutate_data(yaml.safe_load(texts[path]), rng), allow_unicode=True)
        else:
            mutated = mutate_text(texts[path], rng)
        counts[check_one(mutated, path.parent)] += 1
    return counts
