"""``gpua fit --shards DIR [--max-memory 4GB] [--cluster ADDR] [--checkpoint DIR]``.

Two pieces for ``gpua fit`` (:mod:`gpua._cli_core` wires them): :func:`add_cli_arguments` adds
the options to its parser, and :func:`run_fit` runs a streamed fit when ``--shards`` is given.
"""

from __future__ import annotations

import argparse
import time

from .._errors import GPUAError

__all__ = ["add_cli_arguments", "run_fit", "parse_cluster"]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the streaming options to ``gpua fit``'s parser."""
    g = parser.add_argument_group("streaming and distributed fits (gpua.stream)")
    g.add_argument("--shards", metavar="DIR", help="fit on a shard set (gpua extract / gpua.stream.write_shards) instead of --train")
    g.add_argument("--prototypes", metavar="FILE", help="feature file with text_prototypes (default: those stored with the shards)")
    g.add_argument("--max-memory", default="4GB", metavar="SIZE", help="memory budget per process, e.g. 4GB (default 4GB)")
    g.add_argument("--cluster", metavar="ADDRESS", help="run chunk sums on Dask: 'local', a worker count, or tcp://HOST:8786")
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="seconds to wait for --cluster (default 10)")
    g.add_argument("--checkpoint", metavar="DIR", help="save UCM state after every round; re-run with the same DIR to resume")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_cluster(value: str | None):
    """``None`` | ``"local"`` | ``"4"`` (workers) | an address -> the ``cluster=`` argument."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)
    if value == "local" or "://" in value or ":" in value:
        return value
    raise GPUAError(f"--cluster {value!r} is not understood; use 'local', a worker count, or tcp://HOST:8786.")


def run_fit(args: argparse.Namespace, model) -> int:
    """Fit ``model`` (a configured GPUA) on ``args.shards`` and save it to ``args.out``.

    Returns
    -------
    int
        Exit code 0 (errors are raised as :class:`GPUAError` for the CLI to print).
    """
    from ._fit import fit_streaming
    from ._shards import ShardedFeatures

    shards = ShardedFeatures(args.shards)
    prototypes = classnames = None
    if getattr(args, "prototypes", None):
        from ..features import load_features

        fs = load_features(args.prototypes, require=("text_prototypes",))
        prototypes, classnames = fs.text_prototypes, fs.classnames
    t0 = time.perf_counter()
    fit_streaming(
        model, shards, prototypes, classnames=classnames, max_memory=args.max_memory, cluster=parse_cluster(args.cluster),
        checkpoint=args.checkpoint, progress=not args.no_progress, connect_timeout=args.connect_timeout,
    )
    dt = time.perf_counter() - t0
    model.save(args.out)
    h = model.history_
    s = h["streaming"]
    print(
        f"fitted on {s['n_samples']} images ({shards.n_shards} shards), {model.n_classes_} classes in {dt:.1f} s "
        f"(UCM {len(h['ucm'])} rounds, {s['passes']} chunk passes, {s['n_chunks']} chunks of {s['chunk_rows']} rows, "
        f"cache {s['cache']}, {s['processes']} process(es)); pseudo-label agreement {h['pseudo_label_agreement']:.3f}; saved {args.out}"
    )
    return 0
