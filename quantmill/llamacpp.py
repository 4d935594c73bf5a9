"""llama.cpp's own tools: where they come from, how to build them, how to call them.

Conversion uses llama.cpp's ``convert_hf_to_gguf.py`` with the same tree's
``gguf-py`` (the PyPI ``gguf`` package can be out of step with the script).
The tree comes from, in order:

1. ``LLAMA_CPP_DIR`` (or ``QUANTMILL_LLAMA_CPP_DIR``): a user's llama.cpp checkout,
   with built tools in ``build/bin`` if any;
2. the cache: ``quantmill setup llama-cpp`` downloads the sdist of the installed
   llama-cpp-python version with pip (it vendors the full llama.cpp tree),
   unpacks it under ``QUANTMILL_CACHE_DIR`` and builds ``llama-quantize``,
   ``llama-imatrix``, ``llama-perplexity`` and ``llama-gguf-split`` with cmake
   (a build that lacks a tool added since gets just that target built).

Tools already on ``PATH`` are used when the tree has none.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quantmill import steplog
from quantmill.errors import QuantmillError
from quantmill.methods.base import package_version
from quantmill.redact import scrubbed_environ
from quantmill.settings import get_settings

log = logging.getLogger(__name__)

TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-gguf-split")
_BUILT_MARKER = ".quantmill-built"


class LlamaCppError(QuantmillError):
    """llama.cpp's tree or tools are missing or failed."""


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp tree and whichever of its tools exist.

    Attributes:
        tree: the source tree (holds ``convert_hf_to_gguf.py`` and ``gguf-py``).
        tools: tool name → executable, for the tools that were found.
        origin: ``LLAMA_CPP_DIR``, ``cache`` or ``PATH``.
    """

    tree: Path
    tools: dict[str, Path]
    origin: str

    def tool(self, name: str) -> Path | None:
        return self.tools.get(name)

    def convert(self, model_dir: Path, out_file: Path, outtype: str = "f16") -> None:
        """HF folder → GGUF with the tree's own converter and ``gguf-py``."""
        env = dict(os.environ)
        env["HF_HUB_OFFLINE"] = "1"  # the converter reads the local folder; it must fetch no code from the Hub
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.tree / "gguf-py"), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            str(self.tree / "convert_hf_to_gguf.py"),
            str(model_dir),
            "--outfile",
            str(out_file),
            "--outtype",
            outtype,
        ]
        run_tool(command, env=env, what="convert_hf_to_gguf.py")


def _exit_reason(returncode: int) -> str:
    """``exit 1``, or the signal that ended the tool (SIGKILL is usually the kernel's OOM killer)."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name} (out of memory?)" if -returncode == signal.SIGKILL else f"killed by {name}"


def run_tool(command: list[str], *, what: str, env: dict[str, str] | None = None) -> str:
    """Run a llama.cpp command; returns its combined output, raises with its tail on failure.

    Output goes to a file, not a pipe: llama.cpp logs from a background thread, and
    lines written to a pipe just before exit were seen to go missing. It is added to
    the step log when the calling thread has one. The command gets
    ``env`` (default: this process's environment) without secrets: no tool needs a token.
    """
    with tempfile.TemporaryFile(mode="w+") as log_file:
        returncode = subprocess.run(
            command, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=scrubbed_environ(env), check=False
        ).returncode
        log_file.seek(0)
        output = log_file.read()
    steplog.append_output(f"{what} ({_exit_reason(returncode)})", output)
    if returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise LlamaCppError(f"{what} failed ({_exit_reason(returncode)}):\n{tail}")
    return output


def route_llama_log() -> bool:
    """Send llama_cpp's in-process log (model loading, quantization) to the calling thread's step log.

    Threads without one keep llama_cpp's own handling. Returns the ``verbose`` to give
    ``llama_cpp.Llama``: True while a step log captures this thread, because Llama's quiet
    mode points the whole process's stdout and stderr at /dev/null while a model loads,
    which would swallow the console's lines written meanwhile by other threads.
    """
    import llama_cpp

    llama_cpp.llama_log_set(_step_log_callback(), ctypes.c_void_p(0))
    return steplog.capturing()


@functools.cache  # one callback for the process: llama.cpp keeps calling it, so it must stay referenced
def _step_log_callback():
    import llama_cpp
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def to_step_log(level, text, user_data):
        if steplog.capturing():
            steplog.append(text.decode("utf-8", errors="replace"))
        else:
            _logger.llama_log_callback(level, text, user_data)

    return to_step_log


def cache_root(version: str | None = None) -> Path:
    version = version or package_version("llama-cpp-python") or "unknown"
    return get_settings().cache_dir / "llama.cpp" / version


def _tree_in(folder: Path) -> Path | None:
    for candidate in (folder, folder / "vendor" / "llama.cpp"):
        if (candidate / "convert_hf_to_gguf.py").is_file():
            return candidate
    return None


def _tools_in(*folders: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in TOOLS:
        for folder in folders:
            if (folder / name).is_file() and os.access(folder / name, os.X_OK):
                found[name] = folder / name
                break
        else:
            on_path = shutil.which(name)
            if on_path:
                found[name] = Path(on_path)
    return found


def find_llama_cpp() -> LlamaCpp | None:
    """The llama.cpp tree to use, or None when neither the user nor the cache has one."""
    user = get_settings().llama_cpp_dir
    if user is not None:
        tree = _tree_in(user)
        if tree is None:
            raise LlamaCppError(f"LLAMA_CPP_DIR={user} does not contain convert_hf_to_gguf.py")
        return LlamaCpp(tree, _tools_in(tree / "build" / "bin", user / "build" / "bin"), "LLAMA_CPP_DIR")
    root = cache_root()
    tree = _tree_in(root / "src") if (root / "src").is_dir() else None
    if tree is None:
        return None
    return LlamaCpp(tree, _tools_in(root / "build" / "bin"), "cache")


def _download_sdist(version: str, into: Path, say: Callable[[str], None]) -> Path:
    say(f"downloading the llama-cpp-python {version} sdist (it vendors llama.cpp)")
    run_tool(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            f"llama-cpp-python=={version}",
            "-d",
            str(into),
        ],
        what="pip download",
    )
    archives = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise LlamaCppError(f"pip did not download a llama-cpp-python {version} sdist")
    return archives[0]


def _unpack(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")


def setup_llama_cpp(*, build: bool = True, cuda: bool | None = None, say: Callable[[str], None] = log.info) -> LlamaCpp:
    """Fetch and build llama.cpp's tools for the installed llama-cpp-python; a no-op when done.

    Args:
        build: also build the tools (without them, conversion works and quantization
            falls back to the in-process ``llama_model_quantize``, without imatrix).
        cuda: build with CUDA (default: when ``nvcc`` is on PATH and a GPU is visible).
        say: receives one line per step, for progress.

    Raises:
        LlamaCppError: when llama-cpp-python is not installed, or download or build fail.
    """
    existing = find_llama_cpp()
    if existing is not None and existing.origin == "LLAMA_CPP_DIR":
        say(f"using LLAMA_CPP_DIR={existing.tree}")
        return existing
    version = package_version("llama-cpp-python")
    if version is None:
        raise LlamaCppError("llama-cpp-python is not installed: pip install 'quantmill[gguf]'")
    root = cache_root(version)
    if (root / _BUILT_MARKER).is_file() and existing is not None and all(existing.tool(t) for t in TOOLS):
        say(f"llama.cpp tools already built in {root}")
        return existing
    root.mkdir(parents=True, exist_ok=True)
    if _tree_in(root / "src") is None:
        with tempfile.TemporaryDirectory(dir=root) as scratch:
            archive = _download_sdist(version, Path(scratch), say)
            say(f"unpacking {archive.name}")
            _unpack(archive, Path(scratch) / "unpacked")
            unpacked = next((Path(scratch) / "unpacked").iterdir())
            shutil.rmtree(root / "src", ignore_errors=True)
            shutil.move(str(unpacked), root / "src")
    tree = _tree_in(root / "src")
    assert tree is not None
    if not build:
        say(f"llama.cpp source ready in {tree} (tools not built)")
        found = find_llama_cpp()
        assert found is not None
        return found
    if shutil.which("cmake") is None:
        raise LlamaCppError("building llama.cpp needs cmake and a C++ compiler on PATH")
    if cuda is None:
        cuda = shutil.which("nvcc") is not None and _gpu_visible()
    build_dir = root / "build"
    say(f"configuring llama.cpp ({'CUDA' if cuda else 'CPU'}) in {build_dir}")
    run_tool(
        [
            "cmake",
            "-S",
            str(tree),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
            f"-DGGML_CUDA={'ON' if cuda else 'OFF'}",
        ],
        what="cmake configure",
    )
    say(f"building {', '.join(TOOLS)} (several minutes the first time)")
    run_tool(
        ["cmake", "--build", str(build_dir), "--target", *TOOLS, "-j", str(os.cpu_count() or 2)], what="cmake build"
    )
    (root / _BUILT_MARKER).write_text(version + "\n")
    found = find_llama_cpp()
    assert found is not None
    missing = [t for t in TOOLS if not found.tool(t)]
    if missing:
        raise LlamaCppError(f"the build finished but {', '.join(missing)} were not produced in {build_dir / 'bin'}")
    say("llama.cpp tools ready")
    return found


def _gpu_visible() -> bool:
    return (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0
    )


_FALLBACK = re.compile(
    r"warning:\s+(?P<tensor>\S+)\s+- ncols\s+(?P<cols>\d+) not divisible by\s+(?P<block>\d+) "
    r"\(required for type\s+(?P<wanted>\S+)\)\s*(?:\(WARNING: must use F16 due to unusual shape\)\s*)?"
    r"-> falling back to\s+(?P<used>\S+)"
)


def parse_fallbacks(log_text: str) -> list[dict[str, object]]:
    """Per-tensor fallbacks from llama.cpp's quantize log, e.g. q4_K → q5_0 for 172-wide rows."""
    return [
        {
            "tensor": m["tensor"],
            "columns": int(m["cols"]),
            "block": int(m["block"]),
            "wanted": m["wanted"],
            "used": m["used"],
        }
        for m in _FALLBACK.finditer(log_text)
    ]
