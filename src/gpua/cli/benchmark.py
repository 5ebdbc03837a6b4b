"""``gpua benchmark``: the paper's protocol over many datasets and models in one resumable run.

See :func:`gpua.benchmark.run_benchmark`: one JSON line per (dataset, vfm, vlm, method) in
``OUT/results.jsonl``, and an acc1 table across datasets with a mean row in ``OUT/results.md``
and ``OUT/results.csv``. A re-run with the same ``--out`` skips the rows already there with the same
settings (GPUA parameters, templates, data); the tables show the rows of the run's settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._errors import GPUAError
from ._common import (
    add_estimator_arguments, add_extraction_arguments, check_cache_dir, check_paths, estimator_overrides, int_at_least, positive_int,
    with_flags,
)

__all__ = ["add_subcommands"]


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


#: A seed of 0 or more (numpy's generators refuse negative ones).
_seed = int_at_least(0)


def add_subcommands(subparsers) -> None:
    """Add ``gpua benchmark`` to the ``gpua`` parser."""
    p = subparsers.add_parser(
        "benchmark",
        help="the paper's protocol over many datasets, encoders and methods (resumable)",
        description="For every dataset, VFM, VLM and method: extract features (cached), fit on an unlabeled pool of the "
        "train split (16 images per class, or the whole split), score on the test split. Writes OUT/results.jsonl (one "
        "line per run, with its GPUA parameters and templates; a re-run skips those present with the same settings), "
        "OUT/results.md and OUT/results.csv (acc1 by dataset, mean row, for this run's settings).",
    )
    p.add_argument("--datasets", required=True, type=_names, metavar="A,B,...",
                   help="comma-separated: cifar10-mini, other names gpua.data.load_dataset knows, image folders with train/ and "
                        "test/ folders, CoOp split files, or CoOp dataset names with --dataset-root")
    p.add_argument("--vfm", required=True, type=_names, metavar="SPEC[,SPEC]", help="VFM encoder spec(s)")
    p.add_argument("--vlm", required=True, type=_names, metavar="SPEC[,SPEC]", help="VLM encoder spec(s)")
    p.add_argument("--methods", default="zero_shot,gpua", type=_names, metavar="M,...", help="methods of gpua.list_methods()")
    p.add_argument("--pool", default="16-shot", help="fit pool from the train split: 16-shot (any N-shot) or full")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for results.jsonl, results.md and results.csv")
    p.add_argument("--dataset-root", metavar="DIR", help="CoOp's data folder (for CoOp datasets given by name); fashion-mnist reads its idx files from DIR/fashion-mnist/ when that folder exists")
    p.add_argument("--test-per-class", type=positive_int, default=None, metavar="N",
                   help="score on N test images per class (a quick run; default: the whole test split)")
    p.add_argument("--pool-seed", type=_seed, default=0, help="seed of the pool draw (and of --test-per-class), 0 or more")
    add_extraction_arguments(p)
    add_estimator_arguments(p)
    p.set_defaults(func=_cmd_benchmark, on_interrupt="finished rows are in results.jsonl; the same command skips them and goes on")


def _dataset_folders(datasets: list[str]) -> list[tuple[str, str]]:
    """``("--datasets", folder)`` for the split folders (``train/``, ``test/``) of each image folder
    of ``datasets``, or the folder itself when it has none: a new folder written directly inside
    one would be read as a class (one beside the splits is not read)."""
    from ..data._loaders import _is_split_name

    out = []
    for name in datasets:
        root = Path(name).expanduser()
        if root.is_dir():
            splits = [str(sub) for sub in sorted(root.iterdir()) if sub.is_dir() and _is_split_name(sub.name)]
            out += [("--datasets", folder) for folder in splits or [str(root)]]
    return out


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from ..benchmark import run_benchmark

    for flag, given in (("--datasets", args.datasets), ("--vfm", args.vfm), ("--vlm", args.vlm)):
        if not given:  # was "give at least one dataset, one VFM and one VLM", naming no flag
            raise GPUAError(f"{flag} names nothing; give one or more comma-separated names.")
    folders = _dataset_folders(args.datasets)
    check_paths(args, inputs=("dataset_root", "templates"), outputs=(("out", "folder"),), extra_inputs=folders)
    check_cache_dir(args, folders)
    overrides = estimator_overrides(args)
    try:
        run_benchmark(
            args.datasets, args.vfm, args.vlm, args.methods, args.out, pool=args.pool, seed=args.pool_seed,
            test_per_class=args.test_per_class, dataset_root=args.dataset_root, templates=args.templates, overrides=overrides,
            cache_dir=args.cache_dir, device=overrides.get("device", "cpu"), batch_size=args.batch_size, progress=not args.quiet,
            workers=args.workers,
        )
    except GPUAError as exc:  # said with the command's flags
        raise GPUAError(with_flags(str(exc), {"out_dir": "--out", "methods": "--methods"}, bare_names=True)) from None
    print((Path(args.out) / "results.md").read_text())
    return 0
