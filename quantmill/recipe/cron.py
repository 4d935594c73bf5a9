"""A strict check of five-field cron expressions (what Prefect's CronSchedule accepts)."""

from __future__ import annotations

import re

_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    (
        "month",
        1,
        12,
        {
            m: i + 1
            for i, m in enumerate(
                [
                    "jan",
                    "feb",
                    "mar",
                    "apr",
                    "may",
                    "jun",
                    "jul",
                    "aug",
                    "sep",
                    "oct",
                    "nov",
                    "dec",
                ]
            )
        },
    ),
    ("day of week", 0, 7, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
)
_ALIASES = {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}
_TERM = re.compile(r"^(\*|[a-z0-9]+(-[a-z0-9]+)?)(/\d+)?$")


def check_cron(expression: str) -> None:
    """Raise ValueError naming the bad field unless ``expression`` is valid cron."""
    text = expression.strip().lower()
    if text in _ALIASES:
        return
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(f"a cron expression has 5 fields (minute hour day month weekday), got {len(parts)}")
    for part, (label, low, high, names) in zip(parts, _FIELDS, strict=True):
        for term in part.split(","):
            match = _TERM.match(term)
            if not match:
                raise ValueError(f"cron {label} field '{part}' is not valid")
            if match.group(3) and int(match.group(3)[1:]) == 0:
                raise ValueError(f"cron {label} step must be positive")
            if match.group(1) == "*":
                continue
            for value in match.group(1).split("-"):
                number = names.get(value, int(value) if value.isdigit() else None)
                if number is None or not low <= number <= high:
                    raise ValueError(f"cron {label} value '{value}' is outside {low}-{high}")
