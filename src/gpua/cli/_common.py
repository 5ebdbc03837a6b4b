"""What several ``gpua`` commands share: GPUA parameters and Dask cluster addresses."""

from __future__ import annotations

import argparse
import json

from .._errors import GPUAError

__all__ = ["parse_params", "add_estimator_arguments", "estimator_overrides", "parse_cluster"]


def parse_params(pairs: list[str] | None) -> dict:
    """``["lam=0.8", "refine=false"]`` -> ``{"lam": 0.8, "refine": False}`` (values parsed as JSON)."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise GPUAError(f"--param {p!r} must look like NAME=VALUE, e.g. --param lam=0.8.")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = {"true": True, "false": False, "none": None}.get(v.lower(), v)
    return out


def add_estimator_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GPUA parameters (defaults are the library's)")
    g.add_argument("--query", choices=["vfm", "fused"], help="map VFM features alone, or [VFM, VLM]")
    g.add_argument("--lam", type=float, help="weight of the VLM term in UCM (default 0.9)")
    g.add_argument("--eps", type=float, help="entropic regularisation of the OT step")
    g.add_argument("--n-steps", type=int, help="refinement steps at most")
    g.add_argument("--no-refine", action="store_true", help="Procrustes only, no THS refinement")
    g.add_argument("--device", help="cpu or cuda")
    g.add_argument("--seed", type=int, help="random_state")
    g.add_argument("--param", action="append", metavar="NAME=VALUE", help="any other GPUA parameter (repeatable)")


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
