"""``gpua demo``: the whole pipeline on real weights and real photos, offline.

The 2,000 CIFAR-10 photos shipped in the package, encoded by offline real weights (cached),
GPUA and its baselines fitted on the train photos without labels and scored on the test photos;
a table, results.json and a before/after embedding plot.
"""

from __future__ import annotations

from .. import demo
from ._common import add_param_arguments, add_quiet_argument, check_cache_dir, check_paths, parse_params, refuse_idle_settings

__all__ = ["add_subcommands"]


def _names(values) -> list[str]:
    """Repeated and comma-separated values as one list (``--vfm a --vfm b`` = ``--vfm a,b``, as benchmark's ``--vfm a,b``)."""
    return [v.strip() for given in values for v in given.split(",") if v.strip()]


def _check_encoders(specs: list[str]) -> None:
    """Refuse an unknown encoder before the first one encodes the photos (minutes), naming ``--vfm``."""
    from .._errors import GPUAError
    from ..encoders import list_encoders, parse_spec, registry_entries

    for spec in specs:
        try:
            parse_spec(spec)
        except GPUAError as exc:
            raise GPUAError(f"--vfm: {exc}") from None
        if not registry_entries([spec]):
            raise GPUAError(f"--vfm {spec!r} is not a known encoder; pass one of {list_encoders()} (back ends end in ':' and "
                            "take a model name, e.g. 'timm:vit_small_patch14_dinov2.lvd142m'), or 'all'.")


def _cmd_demo(args) -> int:
    from .._errors import GPUAError
    from ..baselines import override_notes
    from ..classify import check_methods

    check_paths(args, outputs=(("out", "folder"),))
    check_cache_dir(args)
    # 'all' stands for its list where it is given, beside any other name (which is kept, not dropped).
    if args.vfm is not None and not _names(args.vfm):  # --vfm "" ran nothing and replaced results.json with no runs
        raise GPUAError(f"--vfm names no encoder; pass e.g. {','.join(demo.DEMO_VFMS)} or 'all' (or leave --vfm out).")
    vfms = [v for given in (_names(args.vfm) if args.vfm else demo.DEMO_VFMS)
            for v in (demo.ALL_DEMO_VFMS if given == "all" else (given,))]
    names = [m.strip() for m in (args.methods or "").split(",")]
    if args.methods is not None and not any(names):  # --methods "" once ran the default five without a word
        raise GPUAError(f"--methods names no method; pass e.g. {','.join(demo.DEMO_METHODS)} or 'all' (or leave --methods out).")
    methods = [m for given in names for m in (demo.ALL_DEMO_METHODS if given == "all" else (given,))] if args.methods else demo.DEMO_METHODS
    check_methods(list(methods), "--methods")  # the library names its argument, methods
    overrides = parse_params(args.param)
    refuse_idle_settings(overrides)
    notes = override_notes(list(methods), overrides, "--methods")  # refused when no method applies one, as compare does
    _check_encoders(vfms)
    # The fixed file names in --out and the feature cache, named by their flag or $GPUA_CACHE_DIR.
    demo.check_demo_paths(args.out, args.cache_dir, plot=not args.no_plot, out_name="--out", cache_name="--cache-dir",
                          no_plot_name="--no-plot")
    for note in notes:
        print(note)
    demo.run_demo(args.out, vfms=vfms, methods=methods, cache_dir=args.cache_dir, plot=not args.no_plot,
                  overrides=overrides, progress=not args.quiet)
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on shipped CIFAR-10 photos with offline real weights",
                       description=" ".join(__doc__.replace("``", "").split()))
    p.add_argument("--out", default="results/demo", help="folder for results.json and the plot")
    p.add_argument("--vfm", action="append",
                   help=f"VFM encoder, repeatable or comma-separated; 'all' = {', '.join(demo.ALL_DEMO_VFMS)} "
                        f"(default: {', '.join(demo.DEMO_VFMS)})")
    p.add_argument("--methods", help=f"comma-separated; 'all' = the default ones and {','.join(demo.ALL_DEMO_METHODS[len(demo.DEMO_METHODS):])}; "
                                     f"default: {','.join(demo.DEMO_METHODS)}")
    p.add_argument("--cache-dir", help="feature and model cache (default $GPUA_CACHE_DIR or the user cache)")
    p.add_argument("--no-plot", action="store_true", help="skip the before/after embedding plot")
    add_quiet_argument(p)
    add_param_arguments(p)
    p.set_defaults(func=_cmd_demo)
