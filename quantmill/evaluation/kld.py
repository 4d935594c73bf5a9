"""KL divergence of a GGUF variant's token distributions from the unquantized GGUF's.

What the GGUF community trusts for comparing quants: ``llama-perplexity`` saves
the base model's logits over a corpus once (``--kl-divergence-base``), then each
variant is scored against them (``--kl-divergence``). Needs llama.cpp's tools.
"""

from __future__ import annotations

import re
from pathlib import Path

from quantmill.evaluation.gguf import has_amx
from quantmill.evaluation.results import MetricValue
from quantmill.llamacpp import LlamaCpp, run_tool

_MEAN_KLD = re.compile(r"Mean\s+KLD:\s+(?P<value>[-\d.eE+]+)\s+±\s+(?P<stderr>[-\d.eE+]+)")


def _perplexity_command(llama: LlamaCpp, model: Path, corpus: Path, context: int) -> list[str]:
    tool = llama.tool("llama-perplexity")
    assert tool is not None
    command = [str(tool), "-m", str(model), "-f", str(corpus), "-c", str(context), "-b", str(context)]
    return command + (["--no-repack"] if has_amx() else [])  # llama.cpp's AMX kernels crash on this CPU


def kl_divergence(llama: LlamaCpp, base: Path, variant: Path, corpus: Path, context: int) -> MetricValue:
    """Mean KLD (with its stderr) of ``variant`` against ``base`` over ``corpus``; base logits are cached."""
    logits = base.with_name(f"{base.stem}-{corpus.stem}-c{context}.kld")
    if not logits.is_file():
        partial = logits.with_suffix(".partial")
        run_tool(
            _perplexity_command(llama, base, corpus, context) + ["--kl-divergence-base", str(partial)],
            what="llama-perplexity (base logits)",
        )
        partial.rename(logits)
    command = _perplexity_command(llama, variant, corpus, context) + [
        "--kl-divergence-base",
        str(logits),
        "--kl-divergence",
    ]
    # llama.cpp logs from a background thread and can lose the last lines at exit on a
    # loaded machine (seen here); the computation is deterministic, so running it again is safe.
    for _ in range(3):
        output = run_tool(command, what="llama-perplexity --kl-divergence")
        match = _MEAN_KLD.search(output)
        if match is not None:
            break
    if match is None:
        tail = "\n".join(output.strip().splitlines()[-8:])
        raise ValueError(f"llama-perplexity printed no 'Mean KLD' line; its output ended with:\n{tail}")
    return MetricValue(float(match["value"]), float(match["stderr"]))
