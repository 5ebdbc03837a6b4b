"""Seconds and peak resident memory of the stages of a fit (for the benchmarks).

``ru_maxrss`` only ever grows, so it cannot say which stage peaked; a thread samples the resident
set size (``/proc/self/statm``) every few milliseconds instead, and a stage's peak is the largest
sample inside its time window. Stages can be timed as they run (:meth:`PeakRSS.stage`) or, for a
monolithic call such as ``GPUA.fit``, recovered afterwards from its timings
(:meth:`PeakRSS.window`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time

__all__ = ["rss_bytes", "peak_rss_bytes", "PeakRSS"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process now (Linux; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Largest resident set size of this process so far (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Sample RSS in a background thread; report per-stage seconds and peaks.

    Attributes
    ----------
    stages : dict
        ``{name: {"seconds", "cpu_seconds", "peak_rss", "start_rss"}}`` for :meth:`stage` blocks.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.stages: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_bytes()))
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, t0: float, t1: float) -> int:
        """Peak RSS sampled in ``[t0, t1]`` (perf_counter times), or the RSS now if none."""
        inside = [r for t, r in list(self.samples) if t0 <= t <= t1]
        return max(inside) if inside else rss_bytes()

    @contextlib.contextmanager
    def stage(self, name: str):
        """Time the block and record its peak RSS under ``name``."""
        start_rss, c0, t0 = rss_bytes(), time.process_time(), time.perf_counter()
        yield
        t1 = time.perf_counter()
        self.samples.append((t1, rss_bytes()))
        self.stages[name] = {
            "seconds": t1 - t0, "cpu_seconds": time.process_time() - c0, "peak_rss": self.window(t0, t1), "start_rss": start_rss,
        }
