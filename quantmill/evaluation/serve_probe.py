"""The servable probe's process: ``python -m quantmill.evaluation.serve_probe REQUEST ANSWER``.

Started by :func:`quantmill.evaluation.servable.probe_servable` with ``HF_HUB_OFFLINE=1``
and a Hub cache that holds only the variant's upload. Reads the request (method,
repo id, provenance, prompts, device), lets the method's output format run the
card's snippet and greedy-generate, and writes ``{"tokens": [...], "runtime": ...}``
or ``{"error": "<one line>"}`` to ANSWER. Imports only what the format needs, and
leaves out the :data:`OPTIONAL_PACKAGES` the method does not list among its packages.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

#: optional packages (import name → distribution name) that transformers imports whenever they are
#: installed, for features a served model does not use: hqq for a quantized KV cache, scikit-learn for
#: assisted generation, torchao for its quantizer. Together they are about half of a probe's start
#: (hqq alone pulls in torch.compile). A user serving a variant installs what its card names, not these.
OPTIONAL_PACKAGES = {"hqq": "hqq", "sklearn": "scikit-learn", "torchao": "torchao"}


def leave_out_optional_packages(needed: Iterable[str]) -> list[str]:
    """Make the :data:`OPTIONAL_PACKAGES` that are not ``needed`` (distribution names) absent from this process.

    Returns their import names. An absent package is what ``importlib.util.find_spec`` (and so
    transformers' availability checks) reports for it; importing it raises ``ModuleNotFoundError``.
    One already imported stays.
    """
    needed = set(needed)
    left_out = [
        module
        for module, distribution in OPTIONAL_PACKAGES.items()
        if distribution not in needed and sys.modules.get(module) is None
    ]
    for module in left_out:
        sys.modules[module] = None  # type: ignore[assignment]  # the import system's "not installed"
    return left_out


def answer(request: dict) -> dict:
    from quantmill.errors import NotServableError
    from quantmill.registry import get_method

    spec = get_method(request["method"])
    left_out = leave_out_optional_packages(spec.packages)
    output_format = spec.output_format
    try:
        tokens = output_format.greedy_generate(
            request["repo_id"],
            request["provenance"],
            request["prompts"],
            request["max_new_tokens"],
            request["device"],
            trust_remote_code=request["trust_remote_code"],
        )
    except Exception as exc:
        missing = _left_out_import(exc, left_out)
        if missing is None:
            raise
        raise NotServableError(
            f"not servable: serving it imports {OPTIONAL_PACKAGES[missing]}, which method '{spec.name}' "
            f"does not list among its packages (the probe leaves it out)"
        ) from exc
    return {"tokens": tokens, "runtime": output_format.library_name}


def _left_out_import(exc: BaseException | None, left_out: list[str]) -> str | None:
    """The left-out package whose import failed in ``exc`` or what caused it, if any."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").partition(".")[0] in left_out:
            return (exc.name or "").partition(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str]) -> int:
    request_path, answer_path = Path(argv[1]), Path(argv[2])
    try:
        reply = answer(json.loads(request_path.read_text()))
    except BaseException as exc:  # noqa: BLE001 -- every failure is the answer: the variant is not servable
        from quantmill.evaluation.servable import one_line

        reply = {"error": one_line(exc)}
    answer_path.write_text(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
