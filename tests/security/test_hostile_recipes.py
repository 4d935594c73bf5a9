"""Hostile recipes under the untrusted policy: each is refused, and a run of it leaks and writes nothing.

Every ``recipes/*.yaml`` is one attack (its ``# attack:`` line) and says which words the
refusal must contain (``# expect:``). The recipes run as a pull request's would: a copy
of the folder, the operator's settings in a file outside it, ``HF_TOKEN`` set to a
sentinel, ``--policy untrusted``. A recipe "escapes" if validate accepts it, or if its
run leaves the sentinel anywhere or writes anything outside the run store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from quantmill.redact import is_secret_name
from tests.conftest import REPO

pytestmark = pytest.mark.fast

HERE = Path(__file__).parent
HOSTILE = sorted((HERE / "recipes").glob("*.yaml"))
DEMO = REPO / "quantmill" / "demo"
SENTINEL = "hf_SECURITYsentinelDoNotLeak0123456789"
PWNED = Path("/tmp/quantmill-pwned")  # what the hostile task and model code would write

BENIGN = """\
name: benign
model: {id: "@DEMO@/tiny-llama", dtype: float32}
device: cpu
evaluation: {tasks: [], metrics: [size]}
variants:
  methods:
    - {method: rtn, bits: 8}
publish: {target: local, path: zoo, license: mit}
"""


def header(recipe: Path, key: str) -> str:
    for line in recipe.read_text().splitlines():
        if line.startswith(f"# {key}: "):
            return line.split(": ", 1)[1]
    raise AssertionError(f"{recipe.name} has no '# {key}:' line")


@dataclass
class World:
    """A pull request's checkout of the hostile recipes, and the worker's settings around it."""

    root: Path
    recipes: Path
    runs: Path
    env: dict[str, str]

    def quantmill(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "quantmill.cli", *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def listing(self) -> set[str]:
        """Every path under the world except the run store's."""
        return {
            str(path.relative_to(self.root))
            for path in self.root.rglob("*")
            if self.runs not in path.parents and path != self.runs
        }


@pytest.fixture
def world(tmp_path: Path) -> World:
    recipes = tmp_path / "checkout" / "recipes"
    shutil.copytree(HERE / "recipes", recipes, symlinks=True)
    (recipes / "benign.yaml.txt").write_text(BENIGN)
    for recipe in [*recipes.rglob("*.yaml"), recipes / "benign.yaml.txt"]:  # task YAMLs name demo data too
        if not recipe.is_symlink() and "@DEMO@" in (text := recipe.read_text()):  # never write through a link
            recipe.write_text(text.replace("@DEMO@", str(DEMO)))
    leaky = recipes / "leaky-model"  # the demo model through links (allowed: a data root), and one link that is not
    leaky.mkdir()
    for file in (DEMO / "tiny-llama").iterdir():
        (leaky / file.name).symlink_to(file)
    (leaky / "chat_template.jinja").symlink_to("/proc/self/environ")
    operator = tmp_path / "operator" / "operator.yaml"
    operator.parent.mkdir()
    operator.write_text(
        f"data_roots: ['{DEMO}']\nzoo_root: '{recipes / 'zoo'}'\nnamespaces: [quantmill]\nmin_perplexity_stride: 16\n"
    )
    (tmp_path / "tmpdir").mkdir()
    env = {k: v for k, v in os.environ.items() if not is_secret_name(k) and not k.startswith("QUANTMILL_")}
    env.update(
        HF_TOKEN=SENTINEL,
        PYTHONPATH=str(REPO),
        QUANTMILL_OPERATOR_FILE=str(operator),
        QUANTMILL_RUNS_DIR=str(tmp_path / "runs"),
        QUANTMILL_CACHE_DIR=str(tmp_path / "cache"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        HF_HOME=str(tmp_path / "hf-home"),
        TMPDIR=str(tmp_path / "tmpdir"),
    )
    return World(tmp_path, recipes, tmp_path / "runs", env)


def test_at_least_15_hostile_recipes_each_naming_its_attack():
    assert len(HOSTILE) >= 15
    for recipe in HOSTILE:
        assert header(recipe, "attack") and header(recipe, "expect")


def test_the_untrusted_settings_accept_a_benign_recipe(world):
    """The control: refusals below come from each recipe's attack, not from the test's settings."""
    benign = world.recipes / "benign.yaml"
    shutil.copy(world.recipes / "benign.yaml.txt", benign)
    result = world.quantmill("validate", "--policy", "untrusted", str(benign))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("recipe", HOSTILE, ids=[r.stem for r in HOSTILE])
def test_hostile_recipe_is_refused_and_its_run_leaves_no_trace(world, recipe):
    file = world.recipes / recipe.name
    expected = header(recipe, "expect")
    PWNED.unlink(missing_ok=True)

    checked = world.quantmill("validate", "--policy", "untrusted", str(file))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert expected in " ".join(checked.stderr.split()), checked.stderr
    assert "Traceback" not in checked.stderr

    before = world.listing()
    ran = world.quantmill("run", "--policy", "untrusted", str(file))
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert expected in " ".join(ran.stderr.split()), ran.stderr

    for output in (checked.stdout, checked.stderr, ran.stdout, ran.stderr):
        assert SENTINEL not in output
    for path in world.root.rglob("*"):  # run store, zoo, Prefect home, caches, logs
        if path.is_file() and not path.is_symlink():
            assert SENTINEL.encode() not in path.read_bytes(), path
    assert world.listing() == before, "the run wrote outside the run store"
    assert not any((world.root / "tmpdir").iterdir())
    assert not PWNED.exists()
