"""What several ``gpua`` commands share: GPUA parameters and Dask cluster addresses.

``--param NAME=VALUE`` is checked against :data:`gpua.fitting.PARAMETERS` (the table every fit
checks), and ``--list-params`` prints that table with the defaults.
"""

from __future__ import annotations

import argparse

from .._errors import GPUAError

__all__ = ["parse_params", "add_param_arguments", "add_estimator_arguments", "estimator_overrides", "parse_cluster", "parameter_listing"]


def parse_params(pairs: list[str] | None) -> dict:
    """``["lam=0.8", "refine=false"]`` -> ``{"lam": 0.8, "refine": False}``, each name and value checked.

    Values are read as JSON (or the bare word: ``query=vfm``, ``random_state=none``) and checked
    against the parameter's constraint; an unknown name gets the closest valid one suggested.
    """
    from ..fitting import PARAMETERS
    from ..params import parse_params as parse_checked

    return parse_checked(pairs, PARAMETERS, "GPUA")


def parameter_listing() -> str:
    """Every GPUA parameter with its default and admissible values (``--list-params``)."""
    from ..estimator import GPUA
    from ..params import format_parameter_table

    return format_parameter_table(GPUA)


class _ListParams(argparse.Action):
    """``--list-params``: print :func:`parameter_listing` and exit, whatever else is missing."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))

    def __call__(self, parser, namespace, values, option_string=None):
        print(parameter_listing())
        parser.exit(0)


def add_param_arguments(p) -> None:
    """``--param NAME=VALUE`` (repeatable) and ``--list-params`` on a parser or argument group."""
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="any GPUA parameter (repeatable); see --list-params")
    p.add_argument("--list-params", action=_ListParams, help="list the GPUA parameters with their defaults and ranges, and exit")


def add_estimator_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GPUA parameters (defaults are the library's)")
    g.add_argument("--query", choices=["vfm", "fused"], help="map VFM features alone, or [VFM, VLM]")
    g.add_argument("--lam", type=float, help="weight of the VLM term in UCM (default 0.9)")
    g.add_argument("--eps", type=float, help="entropic regularisation of the OT step")
    g.add_argument("--n-steps", type=int, help="refinement steps at most")
    g.add_argument("--no-refine", action="store_true", help="Procrustes only, no THS refinement")
    g.add_argument("--device", help="cpu or cuda")
    g.add_argument("--seed", type=int, help="random_state")
    add_param_arguments(g)


def estimator_overrides(args) -> dict:
    kw = parse_params(args.param)
    for name, attr in (("query", "query"), ("lam", "lam"), ("eps", "eps"), ("n_steps", "n_steps"), ("device", "device"), ("random_state", "seed")):
        v = getattr(args, attr, None)
        if v is not None:
            kw[name] = v
    if getattr(args, "no_refine", False):
        kw["refine"] = False
    return kw


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
