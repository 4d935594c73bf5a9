"""Keep secrets out of everything quantmill writes: logs, errors, results, reports, cards.

The values of environment variables whose names end in ``_TOKEN`` (``HF_TOKEN``,
``PREFECT_API_TOKEN`` …) and ``*_API_KEY`` are replaced by ``***`` wherever text
leaves the process through quantmill.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
_SECRET_NAME = re.compile(r"(_TOKEN|_API_KEY)$")
_MIN_SECRET_LENGTH = 8  # shorter values would mask ordinary words


def secrets() -> list[str]:
    values = [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LENGTH]
    return sorted(set(values), key=len, reverse=True)


def redact(text: str) -> str:
    for secret in secrets():
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    """Mask secrets in all log output of this process (handlers present now and the root logger)."""
    redacting = RedactingFilter()
    root = logging.getLogger()
    root.addFilter(redacting)
    for handler in root.handlers:
        handler.addFilter(redacting)
