"""Probe processes forked from a clean interpreter that has already imported torch and transformers.

A servable probe is a fresh process, and most of its time was importing torch and
transformers (~5 s of ~8 s on two cores, for a model that loads in a fraction of a
second). The zygote is started once per pipeline process (``python -m
quantmill.evaluation.serve_zygote``) with the probe's environment: ``HF_HUB_OFFLINE=1``,
its own Hub cache folder and the optional packages left out, exactly as a probe
would have them. It imports torch and transformers and nothing of the pipeline, then
forks one child per probe; the child runs :mod:`quantmill.evaluation.serve_probe` as a
fresh process would. Importing is all the zygote does before forking (no model, no
thread pool, no tokenizer), so a child starts from the state a user's interpreter
reaches on ``import transformers``.

Only probes whose method lists none of ``serve_probe.OPTIONAL_PACKAGES`` use it (the
zygote has them left out); the others, and every probe when the zygote cannot start
or dies, get a fresh ``python -m quantmill.evaluation.serve_probe`` process instead.

Protocol (one JSON line each way): the pipeline writes ``{"request", "answer", "log", "timeout_s"}``;
the zygote forks, reaps the child (killing it first when it outlives ``timeout_s``: only the
parent that has not yet reaped a pid can signal it safely) and answers ``{"exit", "timed_out"}``.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

_READY = "ready"
_START_TIMEOUT_S = 300
#: what the zygote may take beyond a probe's timeout to kill and reap its child and answer
_REPLY_GRACE_S = 60


class ZygoteGone(RuntimeError):
    """The zygote process ended or stopped answering; the probe is rerun in a fresh process."""


class Zygote:
    """One zygote process and its Hub cache folder (``hub``), where a probe's snapshot is staged."""

    def __init__(self, folder: Path, env: Mapping[str, str]) -> None:
        self.folder = folder
        self.hub = folder / "hub"
        self.hub.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()  # one probe at a time: the Hub cache folder is shared
        self._pending = b""  # bytes read after the last complete line
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quantmill.evaluation.serve_zygote"],
            cwd=self.hub,
            env={**env, "HF_HUB_CACHE": str(self.hub)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            ready = self._read(_START_TIMEOUT_S)
        except (TimeoutError, ZygoteGone):
            ready = ""
        if ready != _READY:
            self.close()
            raise ZygoteGone("the probe zygote did not start")

    def _read(self, timeout_s: float) -> str:
        """The zygote's next line. Unbuffered: a buffered reader could take two lines at once and leave
        the selector waiting for a line it already holds."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._pending:
            with selectors.DefaultSelector() as selector:
                selector.register(fd, selectors.EVENT_READ)
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError
            chunk = os.read(fd, 4096)
            if not chunk:
                raise ZygoteGone("the probe zygote ended")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode().strip()

    def run(self, request: Path, answer: Path, log: Path, timeout_s: float) -> None:
        """Run one probe in a forked child; raises TimeoutError (the zygote killed the child) or ZygoteGone."""
        assert self.process.stdin is not None
        job = {"request": str(request), "answer": str(answer), "log": str(log), "timeout_s": timeout_s}
        try:
            self.process.stdin.write(json.dumps(job).encode() + b"\n")
            self.process.stdin.flush()
            reply = json.loads(self._read(timeout_s + _REPLY_GRACE_S))
        except (OSError, TimeoutError, ValueError) as exc:
            self.close()
            raise ZygoteGone(f"the probe zygote stopped answering: {exc}") from exc
        if reply.get("timed_out"):
            raise TimeoutError

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_zygote: Zygote | None = None
_guard = threading.Lock()


def zygote_for(scratch: Path, env: Mapping[str, str]) -> Zygote | None:
    """This process's zygote, with its Hub cache on the file system of ``scratch`` (so staged files are hard links).

    One under a folder on another file system is replaced. None when one cannot start (the caller starts
    a fresh process).
    """
    global _zygote
    with _guard:
        if _zygote is not None and (  # a closed zygote's process has ended (and its folder is gone)
            _zygote.process.poll() is not None or not _same_file_system(_zygote.folder, scratch)
        ):
            _zygote.close()
            _zygote = None
        if _zygote is None:
            try:
                _zygote = Zygote(scratch / f".servable-zygote-{os.getpid()}", env)
            except (OSError, ZygoteGone, TimeoutError):
                return None
        return _zygote


def _same_file_system(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:  # a folder removed under a live zygote: start another
        return False


@atexit.register
def _stop() -> None:
    if _zygote is not None:
        _zygote.close()


# --- in the zygote process ---


def main() -> int:
    from quantmill.evaluation.serve_probe import leave_out_optional_packages

    leave_out_optional_packages([])
    import torch  # noqa: F401  # what every child would import first
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  # resolves transformers' lazy modules

    print(_READY, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(job)
        code, timed_out = _wait(pid, job["timeout_s"])
        print(json.dumps({"exit": code, "timed_out": timed_out}), flush=True)
    return 0


def _wait(pid: int, timeout_s: float) -> tuple[int, bool]:
    """Reap the child; kill it first when it outlives ``timeout_s`` (it is ours, not yet reaped: its pid is safe)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), True


def _child(job: dict) -> None:
    code = 1
    try:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdin.close()
        from quantmill.evaluation import serve_probe

        code = serve_probe.main(["serve_probe", job["request"], job["answer"]])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
