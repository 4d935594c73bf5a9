"""Running the ``quantmill`` command line as a user would: a fresh process, its exit code and output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: the command line's argv prefix (the module, so the test's interpreter and install are used)
QUANTMILL = [sys.executable, "-m", "quantmill.cli"]


def run_cli(
    *args: str, env: dict[str, str], cwd: Path = REPO, timeout: float = 600, merge_output: bool = False
) -> subprocess.CompletedProcess[str]:
    """``quantmill ARGS`` to completion, stdin closed; stderr in ``stdout`` when ``merge_output``."""
    return subprocess.run(
        [*QUANTMILL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
