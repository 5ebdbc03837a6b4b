r"""The memory budget of a streaming fit: chunk size, and what of the kernel to keep in RAM.

Peak memory of a streamed fit, for :math:`N` rows, :math:`K` classes, feature widths
:math:`d_v, d_t` and query width :math:`d_q`, is modelled as

.. math::
    M = M_0 + M_{\text{fixed}}(N, K, d) + n_c\, m_{\text{row}}(K, d) + M_{\text{cache}},

with :math:`M_0` the interpreter and libraries, :math:`M_{\text{fixed}}` the :math:`O(K d + N)`
state (centres, cross-covariance, pseudo-labels; with ``plan_ridge`` also the projection's
:math:`(d + 1)^2` float64 moments and solve, :func:`_projection_bytes`), :math:`n_c` rows of one chunk in flight with
their score temporaries, and :math:`M_{\text{cache}}` the Sinkhorn kernel chunks kept between
passes. A fit that whitens (``GPUA(whiten=...)``) first has a phase of its own: the query's
float64 :math:`d_q \times d_q` second moment, summed over chunks, and its eigendecomposition
(:func:`whitening_bytes`: five such matrices at once, 160 MB at :math:`d_q = 2000` and 16 GB at
:math:`d_q = 20000`), which must fit beside :math:`M_0 + M_{\text{fixed}}` too; the plan's
estimate is the larger of the two phases. The chunk size is chosen first (as large as helps, at
most :data:`MAX_CHUNK_ROWS`); whatever budget is left caches kernel chunks, so that a Sinkhorn
pass is two matrix-vector products instead of a score matrix product (hundreds of times more
work) per chunk:

* ``"float64"`` tiles and the previous round's plan: exactly the in-memory arithmetic;
* ``"float32"`` tiles (float64 accumulation in blocks), with or without the previous plan;
* ``"float16"`` tiles: the kernel is row-max normalised, so its entries lie in (0, 1] and half
  precision keeps them to a relative 5e-4 (entries under 6e-8 of their row's largest flush to
  zero; they weigh less than that in every sum); at N = 1M, K = 1000 this is the mode that
  keeps a whole Sinkhorn pass cheap under a 4 GB budget (2 GB of tiles instead of 4);
* the first chunks only (as float16), the rest recomputed every pass (``"partial"``).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

from .._errors import GPUAError

__all__ = [
    "release_freed_memory", "parse_memory", "MemoryPlan", "plan_memory", "minimum_budget", "refine_bytes", "whitening_bytes",
    "MIN_CHUNK_ROWS", "MAX_CHUNK_ROWS", "RESERVE_BYTES",
]

MIN_CHUNK_ROWS = 256
MAX_CHUNK_ROWS = 8192
# Python, numpy, torch, safetensors and gpua themselves: 0.54 GB resident after import on the
# 2-core CPU box (benchmarks/scale.py, every run), with headroom. At 1M rows a 400 MiB reserve
# let the resident peak reach 4.07 GB under max_memory="4GB".
RESERVE_BYTES = 600 * 2**20

_TILE_BYTES = {"float64": 8, "float32": 4, "float16": 2}

# Chunk results a Dask worker folds per merge task (gpua.stream._executor.DaskExecutor.fan_in).
_DASK_FAN_IN = 4

_UNITS = {
    "": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def release_freed_memory(threshold: int = 2**20) -> bool:
    """Make freed chunk buffers go back to the OS, so that resident memory tracks the budget.

    glibc serves allocations below its *dynamic* mmap threshold (which grows up to 32 MiB as large
    blocks are freed) from the heap, and a heap of long-lived cached tiles interleaved with
    per-chunk temporaries of the same size fragments: at 200k rows the resident set exceeded the
    live arrays by a quarter. Fixing the threshold at 1 MiB (``mallopt(M_MMAP_THRESHOLD)``, which
    also ends the dynamic adjustment, for the whole process) maps every large array on its own,
    and unmaps it when freed. Then ``malloc_trim`` returns what the heap already holds free.
    Does nothing off glibc.

    Returns
    -------
    bool
        Whether the setting was applied.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
        libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without these)
        return False


def parse_memory(value) -> int:
    """``"4GB"``, ``"512 MiB"``, ``4e9`` or ``4_000_000_000`` -> bytes (decimal and binary units).

    A string is a number (``"0.5"``, ``".5"``, ``"2e9"``) and an optional unit, case-insensitive,
    with or without a space between them and around them: ``"4GB"``, ``"4gb"``, ``"4 GB "``,
    ``"4G"`` (10**9), ``"4 GiB"`` (2**30), ``"0.5GB"``; ``B``, ``k``/``kB``, ``M``/``MB``, ``G``/``GB``,
    ``T``/``TB`` and ``KiB``, ``MiB``, ``GiB``, ``TiB``. A number is bytes.

    Raises
    ------
    GPUAError
        For anything that is not a positive, finite size of at least one byte (``"-1GB"``,
        ``"0"``, ``float("inf")``, ``"4 XB"``, ``"4,000"``).
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        n = int(value)  # exact, however large
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        m = re.fullmatch(r"\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise GPUAError(f"max_memory={value!r} is not a size; write it like '4GB', '512MiB' or a number of bytes.")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not n >= 1:  # negative, zero, NaN, or under one byte ("0.1")
        raise GPUAError(f"max_memory={value!r} must be positive (e.g. '4GB').")
    if isinstance(n, float) and not math.isfinite(n):
        raise GPUAError(f"max_memory={value!r} is not a finite size; give a number of bytes or a size like '4GB'.")
    return int(n)


def _fmt(n: float) -> str:
    """Bytes as GB/MB, rounded up (a minimum printed rounded down would not be enough); under 0.1 MB,
    the bytes themselves (``max_memory=10`` read "0.1 MB")."""
    if n < 1e5:
        return f"{math.ceil(n)} bytes"
    return f"{math.ceil(n / 1e6) / 1e3:.3f} GB" if n >= 1e9 else f"{math.ceil(n / 1e5) / 10:.1f} MB"


@dataclass
class MemoryPlan:
    """How a streamed fit uses its budget.

    Attributes
    ----------
    budget : int
        Bytes allowed (per process: the driver and each worker).
    chunk_rows : int
        Rows per chunk (one task).
    n_chunks : int
    tile_dtype : {"float64", "float32", "float16"}
        Storage of cached kernel chunks.
    cached_chunks : int
        How many chunks (per process, the first ones) keep their kernel between passes.
    keep_previous : bool
        Whether cached chunks also keep the previous round's plan (else it is recomputed once a
        round to measure the plan change).
    estimate : int
        Modelled peak bytes.
    keep_rows : bool
        Whether cached chunks also keep their decoded rows and built query between passes of a
        mining (else each pass reads, normalises, centres and whitens them again): only when
        every tile is cached and the rows fit in what is left.
    """

    budget: int
    chunk_rows: int
    n_chunks: int
    tile_dtype: str
    cached_chunks: int
    keep_previous: bool
    estimate: int
    keep_rows: bool = False

    @property
    def mode(self) -> str:
        """``"float64"``, ``"float32"``, ``"float16"``, ``"partial"`` or ``"recompute"``."""
        if self.cached_chunks == 0:
            return "recompute"
        return self.tile_dtype if self.cached_chunks >= self.n_chunks else "partial"


def _row_bytes(k: int, d_v: int, d_t: int, d_q: int, itemsize: int) -> int:
    # One chunk in flight: score, log-kernel and kernel (float32 + 2 float64), plan (float32) and
    # the previous plan; raw and float32 features, the query and its normalised copy.
    return k * (4 + 8 + 8 + 4 + 4) + (d_v + d_t) * (itemsize + 4) + 2 * d_q * 4


def _fixed_bytes(n: int, k: int, d_t: int, d_q: int) -> int:
    # Centres (current, previous, next, sums in float64), prototypes, the cross-covariance, and
    # per-row pseudo-labels and confidences (int64 + float32, twice while they are gathered).
    return 8 * k * d_q * 4 + 8 * k * d_t + 16 * d_q * d_t + 2 * n * (8 + 4)


def _map_bytes(whiten, n: int, k: int, d_q: int) -> int:
    # The whitening map M (float32, d_q x d), held from the moment pass to the end of the fit.
    if whiten is None:
        return 0
    from ..query import whitening_width

    return 4 * d_q * whitening_width(whiten, n, k, d_q)


def _projection_bytes(plan_ridge, whiten, n: int, k: int, d_q: int) -> int:
    # plan_ridge: the query's float64 (d + 1)^2 moments, held for the whole fit, and the solve of
    # gpua.projection.ridge_projection (its covariance, scaled copy and LU: three more such
    # matrices; the d x K right-hand side, solution and coefficients), d the whitened width.
    if plan_ridge is None:
        return 0
    from ..query import whitening_width

    d = d_q if whiten is None else whitening_width(whiten, n, k, d_q)
    return 8 * (4 * (d + 1) ** 2 + 3 * d * k)


def _held_bytes(n: int, k: int, d_t: int, d_q: int, whiten, plan_ridge) -> int:
    # What a streamed fit holds whatever its chunk size: the process, the O(K d + N) state, the
    # whitening map and the projection's moments (the fixed part of minimum_budget and plan_memory).
    return RESERVE_BYTES + _fixed_bytes(n, k, d_t, d_q) + _map_bytes(whiten, n, k, d_q) + _projection_bytes(plan_ridge, whiten, n, k, d_q)


def _moment_row_bytes(d_v: int, d_t: int, d_q: int, itemsize: int) -> int:
    # One chunk in the second-moment pass: raw and float32 features, the query and its
    # normalised copy, and its float64 copy (gpua.query.second_moment_sum).
    return (d_v + d_t) * (itemsize + 4) + 2 * d_q * 4 + 8 * d_q


def whitening_bytes(d_q: int, chunk_bytes: int = 0, n_processes: int = 1) -> int:
    r"""Peak bytes of the whitening's float64 :math:`d_q \times d_q` matrices, with a chunk's ``chunk_bytes`` beside them.

    The pass that sums the second moment holds the running sum and the chunk's own (a chunk in
    flight beside them), then their merged copy: three matrices; on Dask a worker folds
    :data:`_DASK_FAN_IN` chunk sums into its running sum at once, and the driver the
    ``n_processes`` workers' sums. The eigendecomposition
    (:func:`gpua.query.whitening_from_moment`) holds the moment, its scaled copy, the
    eigenvectors and LAPACK ``syevd``'s :math:`2 d_q^2` workspace: five (measured: 5.04 matrices
    of resident growth at :math:`d_q = 4000`).
    """
    g = 8 * int(d_q) ** 2
    held = 5 if n_processes <= 1 else max(5, _DASK_FAN_IN + 2, n_processes + 1)
    return int(max(held * g, 2 * g + chunk_bytes))


def refine_bytes(n: int, k: int, d_q: int, d_t: int, val_fraction: float, batch_size: int) -> int:
    """Peak of THS refinement: the held-out slice and a batch, with their (rows, K) temporaries."""
    rows = int(round(val_fraction * n)) + min(batch_size, n)
    return rows * (2 * d_q * 4 + d_t * 4 + 5 * k * 4)


def rows_per_process(n: int, chunk: int, n_processes: int = 1) -> int:
    """Rows of the chunks the busiest process owns, chunk ``i`` going to process ``i mod n_processes``.

    That is how the executors pin chunks (:meth:`gpua.stream._executor.DaskExecutor.owners`), so
    with 3 chunks on 2 workers one worker holds two: more than ``n / n_processes`` rows, which
    the tiles it caches must fit. ``n`` for one process.
    """
    n_chunks = -(-n // chunk)
    p = max(1, min(int(n_processes), n_chunks))
    return max(sum(min(chunk, n - i * chunk) for i in range(w, n_chunks, p)) for w in range(p))


def minimum_budget(
    n: int, k: int, d_v: int, d_t: int, d_q: int, *, itemsize: int = 4, refine: int = 0, whiten=None, n_processes: int = 1,
    plan_ridge=None,
) -> int:
    """The smallest ``max_memory`` (bytes) :func:`plan_memory` accepts for these sizes (and ``whiten``, ``plan_ridge``: the estimator's)."""
    fixed = _held_bytes(n, k, d_t, d_q, whiten, plan_ridge)
    min_rows = min(n, MIN_CHUNK_ROWS)
    need = max(fixed + min_rows * _row_bytes(k, d_v, d_t, d_q, itemsize), fixed + refine)
    if whiten is not None:
        need = max(need, fixed + whitening_bytes(d_q, min_rows * _moment_row_bytes(d_v, d_t, d_q, itemsize), n_processes))
    return int(need)


def plan_memory(
    budget,
    n: int,
    k: int,
    d_v: int,
    d_t: int,
    d_q: int,
    *,
    itemsize: int = 4,
    refine: int = 0,
    n_processes: int = 1,
    chunk_rows: int | None = None,
    whiten=None,
    plan_ridge=None,
) -> MemoryPlan:
    """Choose the chunk size and the kernel cache for a budget.

    Parameters
    ----------
    budget : str or int
        ``max_memory`` (per process).
    n, k, d_v, d_t, d_q : int
        Rows, classes, VFM, VLM and query widths.
    itemsize : int
        Bytes per stored feature value (2 for float16/bfloat16 shards).
    refine : int
        Peak bytes of the refinement (:func:`refine_bytes`), which must fit too.
    n_processes : int
        Processes that share the chunks (Dask workers); each caches only its own.
    chunk_rows : int, optional
        Force the chunk size (rows per task) instead of choosing it from the budget.
    whiten : "auto", int or None
        The estimator's ``whiten``: when not None the whitening's d_q x d_q float64
        second moment and eigendecomposition (:func:`whitening_bytes`) must fit too, with the
        map it leaves; the chunk is made smaller where its pass would not fit otherwise.
    plan_ridge : float or None
        The estimator's ``plan_ridge``: when not None the projection's float64 moments (held for
        the whole fit) and its solve must fit too.

    Returns
    -------
    MemoryPlan

    Raises
    ------
    GPUAError
        When not even one chunk of :data:`MIN_CHUNK_ROWS` rows fits (or, when whitening, the
        whitening's matrices); the message gives the minimum budget.
    """
    total = parse_memory(budget)
    fixed = _held_bytes(n, k, d_t, d_q, whiten, plan_ridge)
    per_row = _row_bytes(k, d_v, d_t, d_q, itemsize)
    min_rows = min(n, MIN_CHUNK_ROWS)
    moment_row = _moment_row_bytes(d_v, d_t, d_q, itemsize)

    def whitening_peak(rows: int) -> int:  # the moment pass and eigendecomposition, chunks of `rows`
        return fixed + whitening_bytes(d_q, rows * moment_row, n_processes) if whiten is not None else 0

    need = minimum_budget(n, k, d_v, d_t, d_q, itemsize=itemsize, refine=refine, whiten=whiten, n_processes=n_processes,
                          plan_ridge=plan_ridge)
    if need > total:
        # The process itself (RESERVE_BYTES) is most of a small fit's need: a component is named,
        # with its own fix, only where it is a real share of what the budget lacks.
        parts = {"whitening": whitening_peak(min_rows) - fixed if whiten is not None else 0,
                 "refinement": refine, "chunk": min_rows * per_row}
        biggest = max(parts, key=parts.get)
        what = {"whitening": f"the whitening's second moment and eigendecomposition (float64 {d_q} x {d_q} matrices, query width {d_q})",
                "refinement": "THS refinement's held-out slice", "chunk": f"one chunk of {min_rows} rows"}[biggest]
        named = parts[biggest] >= 0.25 * (need - RESERVE_BYTES) and parts[biggest] >= 0.1 * need
        raise GPUAError(
            f"max_memory={budget!r} ({_fmt(total)}) is too small: this fit (N={n}, K={k}, widths {d_v}/{d_t}) needs at "
            f"least {_fmt(need)} ({need} bytes): {_fmt(RESERVE_BYTES)} for the process itself, the rest mostly for "
            + (what if named else "its fixed arrays (class potentials, centres, the map)")
            + f"; raise max_memory (--max-memory) to {_fmt(need)} or more"
            + (", or lower val_fraction" if named and biggest == "refinement" else "")
            + (", or fit without whitening (whiten=None)" if named and biggest == "whitening" else "")
            + "."
        )
    chunk = max(min_rows, min(MAX_CHUNK_ROWS, n, (total - fixed) // (2 * per_row)))
    if whiten is not None and whitening_peak(chunk) > total:
        # The second-moment pass holds two d_q x d_q sums beside its chunk: a smaller chunk
        # (at least min_rows, which minimum_budget let fit).
        chunk = max(min_rows, min(chunk, (total - fixed - 2 * 8 * d_q * d_q) // moment_row))
    if chunk_rows is not None:
        if isinstance(chunk_rows, bool) or not (isinstance(chunk_rows, numbers.Integral) and chunk_rows >= 1):
            raise GPUAError(f"chunk_rows={chunk_rows!r} must be a positive integer.")
        chunk = min(n, int(chunk_rows))
        need_chunk = max(fixed + chunk * per_row, whitening_peak(chunk))
        if need_chunk > total:
            raise GPUAError(f"chunk_rows={chunk_rows} needs {_fmt(need_chunk)} but max_memory={budget!r} is {_fmt(total)}; lower chunk_rows or raise max_memory.")
    n_chunks = -(-n // chunk)
    left = total - fixed - chunk * per_row
    rows_here = rows_per_process(n, chunk, n_processes)
    tile_dtype, keep_prev, cached = "float16", False, 0
    for dtype, prev in (("float64", True), ("float32", True), ("float32", False), ("float16", False)):
        per = k * (_TILE_BYTES[dtype] + (4 if prev else 0))
        if rows_here * per <= left:
            tile_dtype, keep_prev, cached = dtype, prev, n_chunks
            break
    else:
        cached = int(max(0, left) // (chunk * k * _TILE_BYTES["float16"]))
    # Per process: the tiles of its own chunks (all of them, or its first `cached`).
    cache = min(rows_here, min(cached, n_chunks) * chunk) * k * (_TILE_BYTES[tile_dtype] + (4 if keep_prev else 0))
    # The rows a pass reads (raw VFM, centred VLM, the query): float32, kept when all else is cached.
    rows = rows_here * (d_v + d_t + d_q) * 4
    # (Kept rows are built by the whitening's pass already, and held through its eigendecomposition.)
    keep_rows = cached >= n_chunks and cache + rows <= left and whitening_peak(chunk) + rows <= total
    cache += rows if keep_rows else 0
    estimate = max(fixed + chunk * per_row + cache, fixed + refine, whitening_peak(chunk) + (rows if keep_rows else 0))
    return MemoryPlan(total, int(chunk), int(n_chunks), tile_dtype, int(min(cached, n_chunks)), keep_prev, int(estimate), keep_rows)
