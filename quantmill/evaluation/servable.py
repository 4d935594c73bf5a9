"""Servable before publishable: a fresh process loads a variant from exactly its uploaded files.

A variant passes its gates only after this check. The files that publishing
would upload (``quantmill.publish.publisher.upload_files``) are hard-linked into a
temporary Hub cache as the main revision of the repo id the card names, and a new
Python process (``python -m quantmill.evaluation.serve_probe``) with
``HF_HUB_OFFLINE=1`` and that cache asks the variant's output format to:

- run the Python blocks of the card's usage snippet (``OutputFormat.usage``),
  so ``from_pretrained("org/name")`` resolves to exactly the staged files;
- greedy-generate :data:`MAX_NEW_TOKENS` tokens from each of :data:`PROMPTS`
  (through the chat template when the tokenizer has one) with what the snippet
  loaded (``OutputFormat.greedy_generate``).

Nothing of the pipeline's process helps: no loaded module, no registered class,
no other file of the artifact folder. To save the ~5 s that importing torch and
transformers takes, the probe process is forked from a clean interpreter that has
imported just those (``quantmill.evaluation.serve_zygote``), when the method needs
none of the left-out packages; otherwise it is started afresh. The probe's process leaves out the optional
packages that transformers imports whenever they are installed, unless the method
lists them (``serve_probe.OPTIONAL_PACKAGES``): seconds of every probe, for features
a served model does not use. Any failure (load, snippet, generation, a crash, a
timeout) raises :class:`~quantmill.errors.NotServableError`
(``not servable: <what failed>``), which fails the variant, so it is never published.

``greedy_agreement`` compares the tokens with the baseline's greedy tokens for
the same prompts (:func:`baseline_generations`, recorded once in the baseline's
details): per prompt, the positions where both generated the same token, over
the longer of the two generations, summed over the prompts.

This module imports no backend at import time: the probe process imports it first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from quantmill import steplog
from quantmill.errors import NotServableError
from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.evaluation.serve_zygote import Zygote, ZygoteGone, zygote_for

#: fixed prompts: short, plain English, so any tokenizer can take them
PROMPTS = (
    "Once upon a time",
    "The code of Alice is",
    "Question: What is the capital of France?\nAnswer:",
    "The quick brown fox",
)
#: tokens generated per prompt ("a few dozen")
MAX_NEW_TOKENS = 32
#: where the baseline's greedy tokens are kept in its evaluation details
BASELINE_DETAILS = "greedy"
#: where a variant's probe is described in its evaluation details
VARIANT_DETAILS = "servable"
#: what a probe may take, loading included (a large model on a CPU is slow, a hung one is not servable)
PROBE_TIMEOUT_S = 1800
_REASON_CHARS = 400


def greedy_spec() -> dict[str, Any]:
    """What determines the baseline's greedy tokens besides the model (part of the baseline's cache key)."""
    return {"prompts": list(PROMPTS), "max_new_tokens": MAX_NEW_TOKENS}


# --- generation with transformers (the baseline in the pipeline's process, variants in the probe) ---


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids: through the tokenizer's chat template when it has one, else as plain text."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def transformers_greedy(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int, device: str | None = None
) -> list[list[int]]:
    """Greedy generation from each prompt with a loaded transformers model: the new token ids, end token included.

    The model stays where it was loaded, unless ``device`` is a CUDA device and it is on the CPU
    (a card's snippet loads on the CPU; a model that cannot move, like bitsandbytes', stays there).
    """
    import torch

    here = next(model.parameters()).device
    if device and device.startswith("cuda") and here.type == "cpu":
        try:
            model.to(device)
            here = next(model.parameters()).device
        except (ValueError, RuntimeError, NotImplementedError):
            pass
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    generated = []
    for prompt in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=here)
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=eos,
            )
        generated.append([int(t) for t in out[0, ids.shape[1] :].tolist()])
    return generated


def baseline_generations(model, tokenizer) -> dict[str, Any]:
    """The baseline's greedy tokens for :data:`PROMPTS`, as its evaluation details keep them."""
    tokens = transformers_greedy(model, tokenizer, PROMPTS, MAX_NEW_TOKENS)
    return {**greedy_spec(), "chat_template": bool(getattr(tokenizer, "chat_template", None)), "tokens": tokens}


# --- in the probe process ---


def run_usage_snippet(markdown: str) -> dict[str, Any]:
    """Run the Python blocks of a card's usage section, in order, in one namespace; returns the namespace.

    The text is what quantmill writes on the card (a format's ``usage``), never recipe input.
    """
    blocks = re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)
    if not blocks:
        raise NotServableError("not servable: the card's usage section has no Python snippet to run")
    namespace: dict[str, Any] = {"__name__": "__card_usage__"}
    for block in blocks:
        try:
            exec(compile(block, "<card usage snippet>", "exec"), namespace)
        except NotServableError:
            raise
        except Exception as exc:
            raise NotServableError(f"not servable: the card's usage snippet failed: {one_line(exc)}") from exc
    return namespace


@contextmanager
def complete_transformers_loads() -> Iterator[None]:
    """Fail any transformers ``from_pretrained`` inside that leaves weights missing or unused.

    transformers loads a checkpoint whose weights do not fit the model (a compressed
    checkpoint whose ``quantization_config`` is gone) with a warning and randomly
    initialized layers; a served model must not. Asks each load for its loading
    report (``output_loading_info``, public API) and checks it.
    """
    from transformers import PreTrainedModel

    original = PreTrainedModel.__dict__["from_pretrained"]

    def from_pretrained(cls, *args: Any, **kwargs: Any):
        wanted = kwargs.pop("output_loading_info", False)
        model, info = original.__func__(cls, *args, output_loading_info=True, **kwargs)
        problems = [
            f"{len(keys)} {what} ({', '.join(sorted(keys)[:3])}{', …' if len(keys) > 3 else ''})"
            for what, keys in (
                ("weights missing from the files", info["missing_keys"]),
                ("weights in the files that the model does not use", info["unexpected_keys"]),
            )
            if keys
        ]
        if problems:
            raise NotServableError(f"not servable: {cls.__name__} loads incompletely: {'; '.join(problems)}")
        return (model, info) if wanted else model

    PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    try:
        yield
    finally:
        PreTrainedModel.from_pretrained = original


def one_line(exc: BaseException) -> str:
    """An exception as one short line (what a record's reason can hold)."""
    text = " ".join(str(exc).split()) or "no message"
    if isinstance(exc, NotServableError):
        return text[:_REASON_CHARS]
    return f"{type(exc).__name__}: {text}"[:_REASON_CHARS]


# --- in the pipeline's process ---


def stage_snapshot(files: dict[str, Path], repo_id: str, hub_cache: Path) -> Path:
    """A Hub cache in ``hub_cache`` whose ``repo_id`` main revision is exactly ``files`` (hard links, else copies).

    Returns the snapshot folder. The revision's name is a hash of the file names and sizes.
    """
    revision = hashlib.sha1(
        json.dumps({name: path.stat().st_size for name, path in sorted(files.items())}).encode()
    ).hexdigest()
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    for name, source in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(source, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def greedy_agreement(baseline: Sequence[Sequence[int]], variant: Sequence[Sequence[int]]) -> float:
    """Fraction of identical generated tokens: same position, same token, over the longer generation per prompt."""
    if len(baseline) != len(variant):
        raise ValueError(f"{len(variant)} generations for {len(baseline)} baseline prompts")
    same = sum(
        sum(a == b for a, b in zip(base, mine, strict=False)) for base, mine in zip(baseline, variant, strict=True)
    )
    total = sum(max(len(base), len(mine)) for base, mine in zip(baseline, variant, strict=True))
    return same / total if total else 1.0


def probe_servable(
    method: str,
    files: dict[str, Path],
    repo_id: str,
    provenance: dict[str, Any],
    baseline: EvaluationResult | None,
    device: str,
    *,
    trust_remote_code: bool = False,
    scratch: Path | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> EvaluationResult:
    """Load and run ``files`` as ``repo_id`` in a fresh process, in the runtime of ``method``'s output format.

    Args:
        method: the variant's method (its output format loads and generates).
        files: the variant's upload, path in the repo → file.
        repo_id: the repo the card's snippet names.
        provenance: the variant's ``quantmill.json`` (the card's snippet is written from it).
        baseline: the baseline's evaluation; with its greedy tokens, ``greedy_agreement`` is measured.
        device: where the run evaluates (the snippet loads where it says; a CUDA run moves what it can there).
        trust_remote_code: for the probe's own tokenizer loads (the snippet passes what the card says).
        scratch: a folder for the temporary Hub cache (default: the system's temporary folder); best on the
            artifact's file system, where the files are hard-linked instead of copied.
        timeout_s: what the probe may take.

    Returns:
        ``greedy_agreement`` (when the baseline has greedy tokens) and details under ``"servable"``.

    Raises:
        NotServableError: ``not servable: <what failed>``.
    """
    greedy = (baseline.details.get(BASELINE_DETAILS) if baseline else None) or None
    spec = {k: greedy[k] for k in greedy_spec()} if greedy else greedy_spec()
    work = Path(tempfile.mkdtemp(prefix=".servable-", dir=scratch))
    zygote = _zygote_for(method, work.parent)
    try:
        request = work / "request.json"
        answer = work / "answer.json"
        request.write_text(
            json.dumps(
                {
                    "method": method,
                    "repo_id": repo_id,
                    "provenance": provenance,
                    "device": device,
                    "trust_remote_code": trust_remote_code,
                    **spec,
                }
            )
        )
        start = time.perf_counter()
        stderr = None
        if zygote:
            with zygote.lock:
                staged = stage_snapshot(files, repo_id, zygote.hub)
                try:
                    stderr = _run_forked(zygote, request, answer, work / "probe.log", timeout_s)
                finally:
                    shutil.rmtree(staged.parents[1], ignore_errors=True)
        process = "forked" if stderr is not None else "fresh"
        if stderr is None:
            stage_snapshot(files, repo_id, work / "hub")
            stderr = _run_probe(request, answer, work / "hub", timeout_s)
        seconds = time.perf_counter() - start
        steplog.append_output(f"servable probe ({process} process)", stderr)
        if not answer.is_file():
            raise NotServableError(f"not servable: the probe process ended without an answer: {_last_line(stderr)}")
        reply = json.loads(answer.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "error" in reply:
        reason = reply["error"]
        raise NotServableError(reason if reason.startswith("not servable:") else f"not servable: {reason}")
    tokens = reply["tokens"]
    details: dict[str, Any] = {
        "repo_id": repo_id,
        "files": sorted(files),
        "runtime": reply.get("runtime"),
        "seconds": round(seconds, 2),
        "prompts": spec["prompts"],
        "max_new_tokens": spec["max_new_tokens"],
        "tokens": tokens,
    }
    result = EvaluationResult(details={VARIANT_DETAILS: details})
    if greedy:
        result.metrics["greedy_agreement"] = MetricValue(round(greedy_agreement(greedy["tokens"], tokens), 4))
    else:
        details["greedy_agreement"] = "not measured: the baseline has no greedy tokens"
    return result


def _probe_env(hub: Path) -> dict[str, str]:
    """The probe's environment: offline, with ``hub`` as its only Hub cache."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # the same importable packages as this process (quantmill itself, plug-in methods)
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    env.pop("HF_HUB_DOWNLOAD_TIMEOUT", None)
    return env


def _zygote_for(method: str, scratch: Path) -> Zygote | None:
    """The process's probe zygote, for a method that needs none of the packages the zygote leaves out."""
    from quantmill.evaluation.serve_probe import OPTIONAL_PACKAGES
    from quantmill.registry import get_method

    if set(get_method(method).packages) & set(OPTIONAL_PACKAGES.values()):
        return None
    return zygote_for(scratch, _probe_env(scratch / "hub"))  # its Hub cache folder is set by the zygote


def _run_forked(zygote: Zygote, request: Path, answer: Path, log: Path, timeout_s: float) -> str | None:
    """Run the probe in a child of ``zygote``; returns its output, or None when the zygote is gone
    (the caller runs a fresh process instead)."""
    try:
        zygote.run(request, answer, log, timeout_s)
    except TimeoutError as exc:
        raise NotServableError(f"not servable: the probe did not finish within {timeout_s:g} s") from exc
    except ZygoteGone:
        return None
    return log.read_text(errors="replace") if log.is_file() else ""


def _run_probe(request: Path, answer: Path, hub: Path, timeout_s: float) -> str:
    """Start a fresh probe process on ``request``; returns its stderr."""
    env = _probe_env(hub)
    command = [sys.executable, "-m", "quantmill.evaluation.serve_probe", str(request), str(answer)]
    try:
        # the Hub cache is the working folder: hqq resolves a repo id against it (its cache_dir="")
        done = subprocess.run(command, cwd=hub, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise NotServableError(f"not servable: the probe did not finish within {timeout_s:g} s") from exc
    return done.stderr or ""


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:_REASON_CHARS]
