"""Progress bars for long fits (tqdm), with an ETA even where the number of passes is unknown.

Sinkhorn runs until its class marginals are right, so its pass count is not known in advance;
its bar's total is re-estimated after each pass from the observed linear convergence rate
(:func:`passes_left`), which gives tqdm a usable ETA.
"""

from __future__ import annotations

import math

__all__ = ["Bar", "passes_left"]


class Bar:
    """A tqdm bar, or nothing when ``enabled`` is false.

    Parameters
    ----------
    enabled : bool
    desc : str
    total : int
    unit : str
    """

    def __init__(self, enabled: bool, desc: str, total: int, unit: str = "chunk"):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    @property
    def tick(self):
        """``update`` when the bar is shown, else None (so executors skip progress bookkeeping)."""
        return None if self._bar is None else self.update

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_total(self, total: int) -> None:
        if self._bar is not None and total != self._bar.total:
            self._bar.total = max(total, self._bar.n)
            self._bar.refresh()

    @property
    def n(self) -> int:
        return 0 if self._bar is None else int(self._bar.n)

    def postfix(self, **kw) -> None:
        if self._bar is not None:
            self._bar.set_postfix(kw, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def passes_left(errors: list[float], tol: float, cap: int) -> int:
    """Passes until ``errors`` (one per pass, decreasing linearly) fall below ``tol``, at most ``cap``."""
    if len(errors) < 2 or not (errors[-1] > tol):
        return 0 if errors and errors[-1] <= tol else min(cap, 10)
    rate = errors[-1] / errors[-2] if errors[-2] > 0 else 1.0
    if not 0.0 < rate < 1.0:
        return min(cap, 10)
    return int(min(cap, math.ceil(math.log(tol / errors[-1]) / math.log(rate))))
