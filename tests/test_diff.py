"""Recipe pull requests: `quantmill diff` between two commits, and the workflow's steps run locally."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quantmill.cli import main
from quantmill.diff import diff_recipes, recipes_at
from tests.conftest import REPO

pytestmark = pytest.mark.fast


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def two_commits(tmp_path):
    """A repo whose second commit adds a variant, loosens a gate and moves the publish target."""
    repo = tmp_path / "zoo-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "dev@example.com")
    git(repo, "config", "user.name", "dev")
    shutil.copytree(REPO / "recipes", repo / "recipes")
    shutil.copytree(REPO / "infra", repo / "infra")
    (repo / "quantmill").mkdir()
    shutil.copytree(
        REPO / "quantmill" / "demo", repo / "quantmill" / "demo", ignore=shutil.ignore_patterns("__pycache__")
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    demo = repo / "recipes" / "demo.yaml"
    text = demo.read_text()
    text = text.replace(
        "    - {method: rtn, bits: 2, group_size: 64}\n",
        "    - {method: rtn, bits: 2, group_size: 64}\n    - {method: awq, bits: 4, group_size: 128}\n",
    )
    text = text.replace("min_recovery: 0.97}", "min_recovery: 0.95}")
    # to the Hub, the GGUF types each in their own repo (the grouped repo is refused under untrusted)
    text = text.replace("  target: local\n", '  target: hub\n  repo_name: "{model}-{variant}"\n')
    demo.write_text(text)
    git(repo, "checkout", "-q", "-b", "change")
    git(repo, "commit", "-qam", "change")
    return repo


def test_diff_between_two_commits(two_commits):
    with recipes_at("main", repo=two_commits) as base, recipes_at("change", repo=two_commits) as head:
        changes = diff_recipes(base, head)
    assert [c.file for c in changes] == ["demo.yaml"]  # the unchanged recipes are not listed
    (demo,) = changes
    assert demo.variants_added == ["awq-w4-g128"] and demo.rerun == ["awq-w4-g128"]
    assert demo.gates == ["all variants: loosened — tiny_world_mc/acc min_recovery 0.97 → 0.95"]
    assert demo.publish == ["target: 'local' → 'hub'"]


def test_cli_markdown_and_invalid_recipe(two_commits, capsys, monkeypatch):
    monkeypatch.chdir(two_commits)
    assert main(["diff", "main", "change", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### quantmill") and "| demo.yaml | changed | +awq-w4-g128 |" in out
    (two_commits / "recipes" / "broken.yaml").write_text("model: {id: x/y}\nvariants: {methods: [{method: gtpq}]}\n")
    assert main(["diff", "main"]) == 2
    assert "broken.yaml" in capsys.readouterr().out


def test_workflow_steps_run_locally(two_commits, tmp_path):
    workflow = yaml.safe_load((REPO / "infra" / "github" / "recipes.yml").read_text())
    assert set(workflow[True]["pull_request"]["paths"]) == {"recipes/**"}  # PyYAML reads the key `on` as True
    steps = [s for s in workflow["jobs"]["check"]["steps"] if "run" in s and s.get("id") != "install"]
    assert [s["id"] for s in steps] == ["operator", "validate", "diff"]
    # A clone with the base branch as origin/main, checked out at the change, as actions/checkout leaves it.
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(two_commits), str(origin)], check=True)
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", "--branch", "change", str(origin), str(checkout)], check=True)
    env = {
        **os.environ,
        "BASE_REF": "main",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RUNNER_TEMP": str(tmp_path),
        "QUANTMILL_OPERATOR_FILE": str(tmp_path / "operator.yaml"),  # what the steps' env says
    }
    for step in steps:
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", step["run"]],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (step["name"], result.stdout, result.stderr)
    comment = (checkout / "recipe-diff.md").read_text()
    assert "+awq-w4-g128" in comment and "loosened" in comment
    assert "✓ recipes/demo.yaml" in (checkout / "validate.txt").read_text()  # the base's operator file grants it


def test_pre_commit_hook_definition():
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["entry"] == "quantmill validate" and hook["files"] == r"^recipes/.*\.ya?ml$"
