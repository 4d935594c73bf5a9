"""Per-step log files: what the libraries print while a step runs goes to the run's ``logs/<variant>.log``.

Steps run on their own thread while the console belongs to the main thread, so capture
is per thread. Inside :func:`capture`, the capturing thread's

- writes to ``sys.stdout`` and ``sys.stderr`` (``print``, tqdm, ``logging``'s last-resort
  handler, loguru sinks added once the proxies are in place, as llm-compressor's is when a
  step first imports it): both are replaced, at the first capture, by proxies that route by thread;
- ``logging`` records that would reach a console handler made before the proxies existed
  (Prefect's on the root logger, transformers' own): a filter on those handlers diverts them;
- Python warnings (``warnings.showwarning`` routes by thread);

go to the step's file, and to the console only with ``verbose``. A warning (a Python warning
or a WARNING-or-worse record) is written the first time; repeats are counted, and the step ends
its part of the log with the counts. Progress bars keep only their last state, as a terminal shows them. Output
of subprocesses and of llama.cpp's in-process log joins the file through :func:`append`.

Other threads are untouched, and file descriptors 1 and 2 are never redirected: the
console writes there. Output written straight to the descriptors by C code in this process
(not through Python's streams) still reaches the console.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any, TextIO

_RECORD_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class StepLog:
    """Where one capture's output goes: a file (appended to), and a console stream when verbose."""

    def __init__(self, file: TextIO, echo: TextIO | None = None) -> None:
        self._file = file
        self._echo = echo
        self._partial = ""  # text after the last newline, not written yet
        self._repeats: Counter[Hashable] = Counter()
        self._first_lines: dict[Hashable, str] = {}
        self._last_record: logging.LogRecord | None = None

    def write(self, text: str) -> None:
        """Add stream text; complete lines are written, each as a terminal would show it (see :func:`_shown`)."""
        if self._echo is not None:
            self._echo.write(text)
            self._echo.flush()
        *complete, partial = (self._partial + text).split("\n")
        for line in complete:
            self._file.write(_shown(line) + "\n")
        # a progress bar rewrites its line many times: only its latest version (and a trailing \r) is kept
        self._partial = partial[partial.rfind("\r", 0, len(partial) - 1) + 1 :]

    def warning(self, key: Hashable, text: str) -> None:
        """Write a warning the first time ``key`` comes; after that, only count it."""
        if key in self._first_lines:
            self._repeats[key] += 1
            return
        self._first_lines[key] = text.strip().splitlines()[0] if text.strip() else str(key)
        self._write_lines(text)

    def record(self, record: logging.LogRecord) -> None:
        """A log record, formatted; WARNING and worse are warnings (counted when repeated)."""
        if record is self._last_record:  # the same record reaching a second console handler
            return
        self._last_record = record
        text = _RECORD_FORMAT.format(record) + "\n"
        if record.levelno >= logging.WARNING:
            self.warning((record.name, record.levelno, record.getMessage()), text)
        else:
            self._write_lines(text)

    def _write_lines(self, text: str) -> None:
        """Whole lines of their own, even when they come in the middle of a progress bar's line."""
        self.write(("\n" if self._partial else "") + text + ("" if text.endswith("\n") else "\n"))

    def close(self) -> None:
        """End a pending line and write how often each repeated warning came again."""
        if self._partial:
            self.write("\n")
        for key, count in self._repeats.items():
            self.write(f"[repeated {count} more time{'s' if count > 1 else ''}] {self._first_lines[key]}\n")


def _shown(line: str) -> str:
    """A line as a terminal shows it after carriage returns rewrote it: the text after the last one."""
    return line.rstrip("\r").rsplit("\r", 1)[-1]


_local = threading.local()


def current() -> StepLog | None:
    """The step log capturing this thread, if any."""
    return getattr(_local, "log", None)


def capturing() -> bool:
    """Whether this thread's output goes to a step log."""
    return current() is not None


def append(text: str) -> None:
    """Add ``text`` to this thread's step log as a stream would (nothing when the thread captures none)."""
    log = current()
    if log is not None:
        log.write(text)


def append_output(title: str, output: str) -> None:
    """Add another process's ``output`` under a ``--- title ---`` line: a line that came before is only counted
    (the process's repeated warnings), like this process's own warnings."""
    log = current()
    if log is None:
        return
    log.write(f"--- {title} ---\n")
    for line in output.rstrip("\n").splitlines():
        shown = _shown(line)
        log.warning(("output", title, shown), shown + "\n")


@contextlib.contextmanager
def capture(log_path: Path, *, title: str, verbose: bool = False) -> Iterator[StepLog]:
    """Send this thread's output to ``log_path`` (appended, under a ``title`` line) while inside.

    An exception leaving the block is written to the log with its traceback, then raised.
    ``verbose`` also streams everything written there to the console.
    """
    _install()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", buffering=1, encoding="utf-8", errors="replace") as file:
        log = StepLog(file, _console() if verbose else None)
        log.write(f"=== {title} · {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        outer = current()
        _local.log = log
        try:
            yield log
        except BaseException:
            log.write(traceback.format_exc())
            raise
        finally:
            _local.log = outer
            log.close()


class _ThreadRoutedStream:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: a capturing thread's writes go to its step log."""

    def __init__(self, console: TextIO) -> None:
        self.console = console

    def write(self, text: str) -> int:
        log = current()
        if log is None:
            return self.console.write(text)
        log.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if current() is None:
            self.console.flush()

    def isatty(self) -> bool:
        return current() is None and self.console.isatty()  # a captured library writes plain text, no colours

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, buffer…: the console's
        return getattr(self.console, name)


class _DivertCaptured(logging.Filter):
    """On a console handler: a capturing thread's records go to its step log instead of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        log = current()
        if log is None:
            return True
        log.record(record)
        return False


_DIVERT = _DivertCaptured()
_install_lock = threading.Lock()
_console_warning = warnings.showwarning


def _route_warning(message, category, filename, lineno, file=None, line=None) -> None:
    log = current()
    if log is None or file is not None:
        _console_warning(message, category, filename, lineno, file, line)
        return
    text = warnings.formatwarning(message, category, filename, lineno, line)
    log.warning((category, str(message), filename, lineno), text)


def _install() -> None:
    """Put the routing in place; again whenever something replaced it since (a test's capture, ``catch_warnings``)."""
    global _console_warning
    with _install_lock:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not isinstance(stream, _ThreadRoutedStream):
                setattr(sys, name, _ThreadRoutedStream(stream))
        if warnings.showwarning is not _route_warning:
            _console_warning = warnings.showwarning
            warnings.showwarning = _route_warning
        consoles = _console_streams()
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", ()):  # placeholders have none
                if isinstance(handler, logging.StreamHandler) and _is_console(handler.stream, consoles):
                    handler.addFilter(_DIVERT)  # a no-op when it is there already


def _console_streams() -> set[int]:
    """Identities of the streams that are the console: the original ones and the ones the proxies wrap."""
    streams: list[Any] = [sys.__stdout__, sys.__stderr__, sys.stdout, sys.stderr]
    streams += [s.console for s in (sys.stdout, sys.stderr) if isinstance(s, _ThreadRoutedStream)]
    return {id(s) for s in streams if s is not None}


def _is_console(stream: Any, consoles: set[int]) -> bool:
    """One of the console streams, a proxy, or any stream on file descriptor 1 or 2."""
    if id(stream) in consoles or isinstance(stream, _ThreadRoutedStream):
        return True
    try:
        return stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):  # no descriptor (a StringIO), or closed
        return False


def _console() -> TextIO:
    """Where verbose output streams: the stderr the proxy routes other threads' writes to."""
    stream = sys.stderr
    return stream.console if isinstance(stream, _ThreadRoutedStream) else stream
