"""A long-lived local Prefect server that ``quantmill run`` reuses (``quantmill server start|stop|status``).

Without one, every ``quantmill run`` starts Prefect's ephemeral server in its own
process and throws it away at the end: ~13 s of a run that finds everything cached.
``quantmill server start`` runs ``prefect server start`` detached, with its own
``PREFECT_HOME`` under quantmill's cache folder, and writes its pid and port to
``server.json`` there; the CLI points runs at it while it answers its health check
(:func:`running_api_url`), and falls back to the ephemeral server otherwise.

This module never imports Prefect: the server is a subprocess. The CLI imports it for
every command, so the modules that only starting or checking a server needs are
imported inside those functions.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from quantmill.errors import QuantmillError
from quantmill.settings import get_settings

DEFAULT_PORT = 4210  # not Prefect's 4200, so a user's own server keeps its port
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ServerInfo:
    """What ``server.json`` records about a started server."""

    pid: int
    port: int
    started: float  # time.time() when it answered its first health check

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class ServerStatus:
    """``running``: it answers; ``unhealthy``: its process lives but does not answer;
    ``stale``: the recorded process is gone (or is no Prefect server); ``stopped``: nothing recorded."""

    state: str
    info: ServerInfo | None
    log: Path


def server_dir() -> Path:
    """The server's folder: ``prefect-server/`` in ``QUANTMILL_CACHE_DIR`` (its home, ``server.json``, its log)."""
    return get_settings().cache_dir / "prefect-server"


def _info_file() -> Path:
    return server_dir() / "server.json"


def _log_file() -> Path:
    return server_dir() / "server.log"


def _read_info() -> ServerInfo | None:
    try:
        data = json.loads(_info_file().read_text())
        return ServerInfo(pid=int(data["pid"]), port=int(data["port"]), started=float(data["started"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return ServerInfo(pid=0, port=0, started=0.0)  # unreadable: treated as stale, cleared by start/stop


def _is_prefect_server(pid: int) -> bool:
    """The process lives and is a ``prefect server`` (a recycled pid belongs to someone else: never signal it)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (macOS): the pid alone has to do
        except OSError:
            return False
        return True
    return b"prefect" in b" ".join(cmdline) and b"server" in cmdline


def _healthy(port: int, timeout: float = 1.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def server_status() -> ServerStatus:
    info = _read_info()
    if info is None:
        return ServerStatus("stopped", None, _log_file())
    if not _is_prefect_server(info.pid):
        return ServerStatus("stale", info, _log_file())
    return ServerStatus("running" if _healthy(info.port) else "unhealthy", info, _log_file())


def running_api_url() -> str | None:
    """The API URL of the started server while it answers; None otherwise (runs then use the ephemeral server)."""
    status = server_status()
    return status.info.api_url if status.state == "running" and status.info else None


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _log_tail(lines: int = 15) -> str:
    try:
        return "\n".join(_log_file().read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_server(port: int = DEFAULT_PORT, *, ui: bool = True, timeout: float = START_TIMEOUT_S) -> ServerInfo:
    """Start the server detached and wait for its health check; a running one is returned as it is.

    Raises:
        QuantmillError: the port is taken by another program, or the server exited or did not
            answer within ``timeout`` (the message ends with its log's last lines).
    """
    status = server_status()
    if status.state == "running" and status.info:
        return status.info
    if status.state == "unhealthy" and status.info:
        raise QuantmillError(
            f"a quantmill Prefect server (pid {status.info.pid}) is up but does not answer on port "
            f"{status.info.port}; stop it with: quantmill server stop"
        )
    _info_file().unlink(missing_ok=True)  # stale: its process is gone
    if not _port_free(port):
        raise QuantmillError(f"port {port} is in use by another program; choose another with --port")
    home = server_dir() / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true" if ui else "false",
    }
    import subprocess

    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with _log_file().open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise QuantmillError(f"the Prefect server exited (code {process.returncode}):\n{_log_tail()}")
            if _healthy(port):
                info = ServerInfo(pid=process.pid, port=port, started=time.time())
                _info_file().write_text(json.dumps(asdict(info)) + "\n")
                return info
            time.sleep(0.3)
    except BaseException:  # Ctrl-C while waiting: no detached server without a record is left behind
        _terminate(process.pid)
        raise
    _terminate(process.pid)
    raise QuantmillError(f"the Prefect server did not answer within {timeout:.0f} s:\n{_log_tail()}")


def _terminate(pid: int) -> None:
    """SIGTERM the server's process group (it was started in its own session), SIGKILL after STOP_TIMEOUT_S."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _gone(pid):
                return
            time.sleep(0.2)


def _gone(pid: int) -> bool:
    """The server exited; reaped when this process started it (else a zombie would stay until this process ends)."""
    if _is_prefect_server(pid):
        return False
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not this process's child: what /proc says is all there is
        return True
    return reaped != 0  # 0: our child is still exiting (its command line already gone): wait for it


def stop_server() -> ServerStatus:
    """Stop the started server (its status before stopping is returned); a stale record is cleared."""
    status = server_status()
    if status.info and status.state in ("running", "unhealthy"):
        _terminate(status.info.pid)
    _info_file().unlink(missing_ok=True)
    return status
