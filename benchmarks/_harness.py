"""What every benchmark script shares: timing (warm-up, repeats, median), memory, machine load, JSON.

Each script in ``benchmarks/`` measures through this module and imports only gpua's public API
for what it measures, so a figure means the same thing in every script:

* :func:`measure`: ``warmup`` untimed calls, then ``repeats`` timed ones; the median wall time,
  every time, CPU time and the peak resident set size sampled during the timed calls;
* :class:`PeakRSS`: a thread sampling the resident set size every few milliseconds; a stage's
  peak is the largest sample in its time window (``ru_maxrss`` only ever grows);
* :func:`machine`: torch version and threads, cores, the 1/5/15-minute load averages (a busy
  machine's figures are not an idle machine's: every report carries them);
* :func:`write_json`: results plus the machine record, written atomically, as strict JSON;
* :class:`OutputPath` / :func:`check_output_path`: an output path (``--json``, a PNG) checked when
  the arguments are parsed, so that a path no file can be written to ends the script with one
  line before any work, not with a traceback once the figures are measured;
* :func:`add_arguments` / :func:`setup`: ``--threads``, ``--warmup``, ``--repeats``, ``--json``;
* :func:`gpua_params`: GPUA parameters given as a JSON object on the command line, checked.

Scripts run as ``python benchmarks/NAME.py``; Python puts ``benchmarks/`` on the path, so they
``import _harness``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "rss_bytes", "peak_rss_bytes", "PeakRSS", "Measurement", "measure", "timer", "machine", "machine_line",
    "write_json", "atomic_path", "add_arguments", "add_param_argument", "setup", "gpua_param", "gpua_params",
    "float_tensor", "read_results", "merge_rows_by", "OutputPath", "check_output_path", "strict_json",
]

GB = 1e9
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process now (Linux; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Largest resident set size of this process so far (``ru_maxrss``, KiB on Linux)."""
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


@dataclass
class Measurement:
    """What :func:`measure` and :func:`timer` report."""

    seconds: float = 0.0  # median of the timed calls
    times: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0  # total over the timed calls
    peak_rss: int = 0
    warmup: int = 0
    repeats: int = 1
    start: float = 0.0  # perf_counter at the first timed call (to window other samples)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(fn: Callable[[], Any], *, warmup: int = 0, repeats: int = 1) -> tuple[Any, Measurement]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns
    -------
    result : the last call's return value
    Measurement
        Median seconds, every time, CPU seconds and peak RSS of the timed calls.
    """
    for _ in range(max(0, warmup)):
        fn()
    times, out = [], None
    with PeakRSS() as mem:
        c0 = time.process_time()
        start = time.perf_counter()
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        cpu, end = time.process_time() - c0, time.perf_counter()
    return out, Measurement(statistics.median(times), times, cpu, mem.window(start, end), warmup, max(1, repeats), start)


@contextlib.contextmanager
def timer():
    """``with timer() as m: ...`` -> ``m.seconds``, ``m.cpu_seconds``, ``m.peak_rss`` of the block (one run)."""
    m = Measurement()
    with PeakRSS() as mem:
        c0, m.start = time.process_time(), time.perf_counter()
        yield m
        end = time.perf_counter()
    m.seconds, m.times, m.cpu_seconds, m.peak_rss = end - m.start, [end - m.start], time.process_time() - c0, mem.window(m.start, end)


def machine() -> dict[str, Any]:
    """Versions, threads, cores and load averages, recorded with every result."""
    rec: dict[str, Any] = {"python": platform.python_version(), "cores": os.cpu_count(), "load_avg": list(os.getloadavg())}
    try:
        import torch

        rec.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), cuda=torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a gpua dependency
        pass
    try:
        from gpua import __version__ as gpua_version

        rec["gpua"] = gpua_version
    except ImportError:  # pragma: no cover
        pass
    return rec


def machine_line() -> str:
    """One line for the top of a report: torch, threads, cores, load averages."""
    m = machine()
    load = "/".join(f"{x:.1f}" for x in m["load_avg"])
    return f"torch {m.get('torch', '?')}, {m.get('torch_threads', '?')} threads, {m['cores']} cores, load {load}"


def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``, renamed onto it when the block ends without error
    (:func:`gpua._atomic.atomic_path`: the file gets a plain file's mode, or the one it replaces)."""
    from gpua._atomic import atomic_path as package_atomic_path

    return package_atomic_path(path, suffix, name="output")


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float (also in numpy scalars and arrays) made None, numpy
    values made Python ones: what ``json.dumps(allow_nan=False)`` accepts. A mean over no runs is
    NaN, which ``json.dumps`` wrote as ``NaN``, a token strict JSON readers refuse."""
    import math

    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":  # numpy scalar or array
        return strict_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, result: Any) -> Path:
    """Write ``result`` (with ``"machine": machine()`` added to a dict) as strict JSON (:func:`strict_json`), atomically."""
    if isinstance(result, dict):
        result = {**result, "machine": machine()}
    text = json.dumps(strict_json(result), indent=1, default=str, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return Path(path)


def check_output_path(ap: argparse.ArgumentParser, path, name: str, kind: str = "file") -> None:
    """End the script with ``ap.error`` (one line, exit 2) when ``path`` cannot be written as ``kind``
    (:func:`gpua._atomic.check_output`: a folder where a file goes, a path under a file, an unwritable
    folder, gpua data a report would replace). None is no output."""
    if path is None:
        return
    from gpua._atomic import check_output
    from gpua._errors import GPUAError

    try:
        check_output(path, name, kind=kind)
    except GPUAError as exc:
        ap.error(str(exc))


class OutputPath(argparse.Action):
    """``action=OutputPath`` for an output argument: the value is stored as given (after its ``type``)
    once :func:`check_output_path` accepts it, right as it is parsed. ``kind="folder"`` for a folder
    that files are written into; a value equal to the argument's ``const`` (``--json`` alone: print)
    is no path."""

    def __init__(self, option_strings, dest, kind: str = "file", **kwargs):
        self.kind = kind
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if values is not None and not (self.const is not None and values == self.const):
            check_output_path(parser, values, option_string or self.metavar or self.dest, self.kind)
        setattr(namespace, self.dest, values)


def add_arguments(ap, *, threads: int | None = None, repeats: int = 1, warmup: int = 0, json_out: bool = True) -> None:
    """``--threads``, ``--warmup``, ``--repeats`` (and ``--json``) with a script's own defaults."""
    ap.add_argument("--threads", type=int, default=threads, help=f"torch intra-op threads (default {threads or 'torch’s choice'})")
    ap.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls before timing (default {warmup})")
    ap.add_argument("--repeats", type=int, default=repeats, help=f"timed calls; the median is reported (default {repeats})")
    if json_out:
        ap.add_argument("--json", type=Path, action=OutputPath, default=None, help="write the figures here (with the machine record)")


def setup(args) -> None:
    """Apply ``--threads`` and print :func:`machine_line`."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)


def gpua_param(text: str) -> dict[str, Any]:
    """``"lam=0.9"`` -> ``{"lam": 0.9}``, checked against GPUA's table (:func:`gpua.params.parse_params`).

    The ``argparse`` ``type=`` of :func:`add_param_argument`: a bad pair raises
    ``argparse.ArgumentTypeError``, so the script exits 2 with one line.
    """
    from gpua.fitting import PARAMETERS
    from gpua.params import parse_params

    try:
        return parse_params([text], PARAMETERS)
    except ValueError as exc:  # parse_params names "--param PAIR:" itself; argparse names the option
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--param ")) from None


class _MergeParams(argparse.Action):
    """Each ``--param NAME=VALUE`` (a dict from :func:`gpua_param`) merged into one dict, later pairs winning."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, {**getattr(namespace, self.dest), **values})


def add_param_argument(ap: argparse.ArgumentParser, help: str) -> None:
    """``--param NAME=VALUE`` (repeatable), each pair checked as it is parsed; ``args.param`` is one dict."""
    ap.add_argument("--param", action=_MergeParams, type=gpua_param, default={}, metavar="NAME=VALUE", help=help)


def gpua_params(text: str, what: str = "--params") -> dict[str, Any]:
    """``'{"self_learning": 2}'`` -> a dict of GPUA parameters, each checked against GPUA's table.

    For ``argparse`` ``type=``: a bad value raises ``argparse.ArgumentTypeError`` naming ``what``.
    """
    from gpua.fitting import PARAMETERS
    from gpua.params import check_params

    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{what}: {text!r} is not JSON ({exc.msg})") from None
    if not isinstance(params, dict):
        raise argparse.ArgumentTypeError(f"{what}: give a JSON object of GPUA parameters, not {text!r}")
    try:
        check_params(PARAMETERS, params, "GPUA")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{what}: {exc}") from None
    return params


def float_tensor(A):
    """``A`` (an array, a list or a tensor) as a float32 torch tensor: how the scripts hand features to gpua's functions."""
    import numpy as np
    import torch

    return torch.as_tensor(np.asarray(A), dtype=torch.float32)


def read_results(ap: argparse.ArgumentParser, paths, script: str) -> list[dict]:
    """The ``--json`` files of earlier runs of ``script`` (its ``--merge``), parsed; each must hold a list of ``rows``.

    A file that is not one (unreadable, not JSON, no ``rows``) is a usage error (``ap.error``: exit 2).
    """
    out = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(data["rows"], list):
                raise TypeError(f"its rows are a {type(data['rows']).__name__}, not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            ap.error(f"--merge {path}: not a {script} --json file ({type(exc).__name__}: {exc})")
        out.append(data)
    return out


def merge_rows_by(groups, key: Callable[[dict], tuple]) -> list[dict]:
    """The rows of several runs, one per ``key(row)``: a later group's row replaces an earlier one's."""
    merged: dict[tuple, dict] = {}
    for group in groups:
        for row in group:
            merged[key(row)] = row
    return list(merged.values())


def demo_features(split: str) -> Path:
    """The demo's cached CIFAR-10 feature file of ``split`` (DINOv2-S + the semantic stand-in), in
    the cache `gpua demo` writes it to: ``$GPUA_CACHE_DIR`` or the user cache (was: a fixed
    ``~/.cache/gpua``, so a run after ``GPUA_CACHE_DIR=... gpua demo`` found no file)."""
    from gpua.classify import feature_cache_path

    return feature_cache_path("demo", f"cifar10-mini_{split}", "offline:dinov2-s", "offline:semantic-lite0")


def load_feature_files(*paths):
    """:func:`gpua.features.load_features` of each path; a missing or unreadable one ends the
    script with one line saying which, and how the demo's files are made."""
    from gpua._errors import GPUAError
    from gpua.features import load_features

    try:
        return [load_features(p) for p in paths]
    except GPUAError as exc:
        raise SystemExit(f"error: {exc} (the demo's files: run `gpua demo` first, with the same $GPUA_CACHE_DIR, or pass "
                         "--train and --test)") from None
