"""Keep secrets out of everything quantmill writes: logs, errors, results, reports, cards.

A secret is the value of an environment variable named ``HF_TOKEN``,
``PREFECT_API_KEY`` or ending in ``_TOKEN``, ``_KEY`` or ``_SECRET``, a secret-looking
option (``secret``, ``key``, ``token``, ``password``) in ``QUANTMILL_STORE_OPTIONS``, the
secret keys in the AWS shared credentials file, or the token huggingface_hub reads from
its token file. Such values are replaced by ``***``
wherever text leaves the process through quantmill; every log record of the process
(Prefect's included, whatever handlers it installs) is masked when it is created;
subprocesses get an environment without them; and :func:`secret_names_in` lets
publishing refuse a card that contains one.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
from functools import cache

MASK = "***"
_SECRET_NAME = re.compile(r"(^HF_TOKEN|_TOKEN|_KEY|_SECRET|_API_KEY)$")
_MIN_SECRET_LENGTH = 8  # shorter values would mask ordinary words
HUB_TOKEN_FILE = "huggingface_hub token file"


@cache
def _hub_file_token() -> str | None:
    """The token huggingface_hub would use from its token file (read once per process)."""
    try:
        from huggingface_hub.constants import HF_TOKEN_PATH
    except ImportError:
        return None
    try:
        with open(HF_TOKEN_PATH) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


#: environment variables holding JSON options (fsspec's ``key``/``secret`` among them)
OPTION_VARIABLES = ("QUANTMILL_STORE_OPTIONS",)
_SECRET_OPTION = re.compile(r"(key|secret|token|password)$", re.IGNORECASE)
AWS_CREDENTIALS_FILE = "AWS shared credentials file"


def _option_secrets() -> dict[str, str]:
    """String values under secret-looking keys (``secret``, ``aws_secret_access_key``…) of JSON option variables."""
    found: dict[str, str] = {}

    def walk(where: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if isinstance(inner, str) and _SECRET_OPTION.search(str(key)):
                    found[f"{where}.{key}"] = inner
                else:
                    walk(f"{where}.{key}", inner)

    for variable in OPTION_VARIABLES:
        try:
            walk(variable, json.loads(os.environ.get(variable) or "{}"))
        except ValueError:
            continue
    return found


@cache
def _aws_file_secrets() -> tuple[str, ...]:
    """Secret keys and session tokens in the AWS shared credentials file (the shared store's credentials)."""
    path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except (OSError, configparser.Error):
        return ()
    return tuple(
        value
        for section in parser.sections()
        for key, value in parser.items(section)
        if key in ("aws_secret_access_key", "aws_session_token") and value
    )


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def named_secrets() -> dict[str, str]:
    """Where each known secret comes from → its value (values too short to mask are left out)."""
    found = {k: v for k, v in os.environ.items() if is_secret_name(k)}
    found |= _option_secrets()
    found |= {f"{AWS_CREDENTIALS_FILE} ({n})": v for n, v in enumerate(_aws_file_secrets(), 1)}
    file_token = _hub_file_token()
    if file_token:
        found[HUB_TOKEN_FILE] = file_token
    return {name: value for name, value in found.items() if len(value) >= _MIN_SECRET_LENGTH}


def secrets() -> list[str]:
    return sorted(set(named_secrets().values()), key=len, reverse=True)


def redact(text: str) -> str:
    for secret in secrets():
        text = text.replace(secret, MASK)
    return text


def secret_names_in(text: str) -> list[str]:
    """The names of the known secrets whose values appear in ``text`` (for refusing to publish it)."""
    return sorted(name for name, value in named_secrets().items() if value in text)


def scrubbed_environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without secrets, for a subprocess."""
    values = secrets()
    return {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not is_secret_name(k) and not any(secret in v for secret in values)  # options JSON holding one too
    }


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    RedactingFilter().filter(record)
    if record.exc_info and not record.exc_text:  # handlers reuse exc_text, so mask the traceback now
        text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact(text)
        if cleaned != text:
            record.exc_text = cleaned
    return record


_installed = False


def install_log_redaction() -> None:
    """Mask secrets in all log output of this process, whichever logger or handler emits it.

    Records are masked when they are created (a log record factory), so handlers that
    Prefect or anyone else installs later get masked records too; the root logger's
    handlers also get a filter. Safe to call more than once.
    """
    global _installed
    redacting = RedactingFilter()
    root = logging.getLogger()
    if not any(isinstance(f, RedactingFilter) for f in root.filters):
        root.addFilter(redacting)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redacting)
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def masked_record(*args, **kwargs) -> logging.LogRecord:
        return _redact_record(make_record(*args, **kwargs))

    logging.setLogRecordFactory(masked_record)
    _installed = True
