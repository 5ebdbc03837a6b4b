"""``gpua demo``: the whole pipeline on real weights and real photos, offline.

The 2,000 CIFAR-10 photos shipped in the package, encoded by offline real weights (cached),
GPUA and its baselines fitted on the train photos without labels and scored on the test photos;
a table, results.json and a before/after embedding plot.
"""

from __future__ import annotations

from .. import demo
from ._common import add_param_arguments, check_paths, parse_params

__all__ = ["add_subcommands"]


def _cmd_demo(args) -> int:
    check_paths(args, outputs=(("out", "folder"),))
    # 'all' stands for its list where it is given, beside any other name (which is kept, not dropped).
    vfms = [v for given in args.vfm or demo.DEMO_VFMS for v in (demo.ALL_DEMO_VFMS if given == "all" else (given,))]
    names = [m.strip() for m in (args.methods or "").split(",")]
    methods = [m for given in names for m in (demo.ALL_DEMO_METHODS if given == "all" else (given,))] if args.methods else demo.DEMO_METHODS
    demo.run_demo(args.out, vfms=vfms, methods=methods, cache_dir=args.cache_dir, plot=not args.no_plot,
             overrides=parse_params(args.param))
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on shipped CIFAR-10 photos with offline real weights",
                       description=" ".join(__doc__.replace("``", "").split()))
    p.add_argument("--out", default="results/demo", help="folder for results.json and the plot")
    p.add_argument("--vfm", action="append",
                   help=f"VFM encoder, repeatable; 'all' = {', '.join(demo.ALL_DEMO_VFMS)} (default: {', '.join(demo.DEMO_VFMS)})")
    p.add_argument("--methods", help=f"comma-separated; 'all' = the default ones and {','.join(demo.ALL_DEMO_METHODS[len(demo.DEMO_METHODS):])}; "
                                     f"default: {','.join(demo.DEMO_METHODS)}")
    p.add_argument("--cache-dir", help="feature and model cache (default $GPUA_CACHE_DIR or the user cache)")
    p.add_argument("--no-plot", action="store_true", help="skip the before/after embedding plot")
    add_param_arguments(p)
    p.set_defaults(func=_cmd_demo)
