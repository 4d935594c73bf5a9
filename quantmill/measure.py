"""Measuring work as it happens: wall time and peak memory, never estimates."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    peak_cuda_bytes: int | None = None


class measure:
    """Time a block and sample this process's resident memory every few milliseconds.

    ``ru_maxrss`` would report the peak of the whole process lifetime; sampling
    gives the peak of this block alone. On CUDA the allocator's own peak is read too.

        with measure() as m:
            work()
        m.seconds, m.peak_rss_bytes
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.result = Measurement()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while not self._stop.is_set():
            self.result.peak_rss_bytes = max(self.result.peak_rss_bytes, process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> Measurement:
        self._cuda = _cuda_available()
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, name="quantmill-memory", daemon=True)
        self._thread.start()
        return self.result

    def __exit__(self, *exc_info) -> None:
        self.result.seconds = time.perf_counter() - self._start
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        if self._cuda:
            import torch

            self.result.peak_cuda_bytes = int(torch.cuda.max_memory_allocated())


def _cuda_available() -> bool:
    import sys

    if "torch" not in sys.modules:  # never import torch just to measure
        return False
    import torch

    return torch.cuda.is_available()
