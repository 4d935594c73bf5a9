"""A counter of the library calls that tasks wrap (quantmill.stages), to see what a run recomputed."""

from __future__ import annotations

import time


class Calls:
    """Counts (and timestamps) calls of ``quantize_one``, ``evaluate_variant`` and ``evaluate_baseline``."""

    def __init__(self, monkeypatch):
        from quantmill import stages

        self.log: list[tuple[str, str, float, float]] = []
        for name in ("quantize_one", "evaluate_variant", "evaluate_baseline"):
            original = getattr(stages, name)

            def counted(*args, _original=original, _name=name, **kwargs):
                start = time.monotonic()
                try:
                    return _original(*args, **kwargs)
                finally:
                    variant = next((a.id for a in args if hasattr(a, "spec")), "baseline")
                    self.log.append((_name, variant, start, time.monotonic()))

            monkeypatch.setattr(stages, name, counted)

    def count(self, name: str) -> int:
        return sum(1 for entry in self.log if entry[0] == name)

    def variants(self, name: str) -> list[str]:
        return sorted(entry[1] for entry in self.log if entry[0] == name)
