"""The servable probe's process: ``python -m quantmill.evaluation.serve_probe REQUEST ANSWER``.

Started by :func:`quantmill.evaluation.servable.probe_servable` with ``HF_HUB_OFFLINE=1``
and a Hub cache that holds only the variant's upload. Reads the request (method,
repo id, provenance, prompts, device), lets the method's output format run the
card's snippet and greedy-generate, and writes ``{"tokens": [...], "runtime": ...}``
or ``{"error": "<one line>"}`` to ANSWER. Imports only what the format needs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def answer(request: dict) -> dict:
    from quantmill.registry import get_method

    output_format = get_method(request["method"]).output_format
    tokens = output_format.greedy_generate(
        request["repo_id"],
        request["provenance"],
        request["prompts"],
        request["max_new_tokens"],
        request["device"],
        trust_remote_code=request["trust_remote_code"],
    )
    return {"tokens": tokens, "runtime": output_format.library_name}


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
