"""`quantmill setup llama-cpp`: fetch into a fresh cache; a no-op once built."""

from __future__ import annotations

import shutil

import pytest

from quantmill.cli import main
from quantmill.llamacpp import TOOLS, find_llama_cpp
from quantmill.settings import get_settings


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTMILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "cache"
    get_settings.cache_clear()


@pytest.mark.slow
def test_fetch_into_a_fresh_cache(fresh_cache, capsys):
    assert find_llama_cpp() is None
    assert main(["setup", "llama-cpp", "--no-build"]) == 0
    out = capsys.readouterr().out
    assert "downloading the llama-cpp-python" in out and "source ready" in out
    found = find_llama_cpp()
    assert found is not None and found.origin == "cache"
    assert (found.tree / "convert_hf_to_gguf.py").is_file() and (found.tree / "gguf-py").is_dir()
    assert str(found.tree).startswith(str(fresh_cache))


def test_second_setup_is_a_no_op(capsys):
    found = find_llama_cpp()
    if found is None or not all(found.tool(t) for t in TOOLS):
        if shutil.which("cmake") is None:
            pytest.skip("llama.cpp cannot be built here: no cmake")
        pytest.fail("llama.cpp tools are not built: `make test` runs `quantmill setup llama-cpp` first")
    before = {t: found.tool(t).stat().st_mtime_ns for t in TOOLS}
    assert main(["setup", "llama-cpp"]) == 0
    assert "already built" in capsys.readouterr().out
    assert {t: found.tool(t).stat().st_mtime_ns for t in TOOLS} == before  # nothing was rebuilt
