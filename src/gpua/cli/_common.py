"""What several ``gpua`` commands share: GPUA parameters and Dask cluster addresses."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from .._errors import GPUAError

__all__ = ["parse_params", "add_estimator_arguments", "estimator_overrides", "parse_cluster", "check_paths"]


def _flag(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def check_paths(
    args: argparse.Namespace,
    *,
    inputs: Sequence[str] = (),
    outputs: Sequence[tuple[str, str]] = (),
    extra_inputs: Sequence[tuple[str, str | None]] = (),
    extra_outputs: Sequence[tuple[str, str | None, str]] = (),
) -> None:
    """Refuse, before any work, outputs that would destroy an input or cannot be written.

    Every handler calls it first: an output equal to an input (also through links), a file
    output that would replace a file inside an input folder, a folder output that holds an
    input, two outputs on one path, an output that is a folder where a file is written (or the
    reverse), that lies under a file or in a folder that cannot be written, all stop the command
    with one line naming both arguments (:func:`gpua._atomic.check_output`).

    Parameters
    ----------
    args : argparse.Namespace
    inputs : sequence of str
        Attributes of ``args`` holding paths the command reads (unset ones are skipped).
    outputs : sequence of (attribute, kind)
        Attributes holding paths the command writes; kind ``"file"``, ``"folder"`` (files are
        written into it) or ``"tree"`` (replaced as a whole).
    extra_inputs : sequence of (name, path)
        Paths read that no argument names directly (a model's sidecar file).
    extra_outputs : sequence of (name, path, kind)
        Paths written that no argument names directly.
    """
    from .._atomic import check_output

    ins = [(_flag(a), getattr(args, a, None)) for a in inputs] + list(extra_inputs)
    outs = [(_flag(a), getattr(args, a, None), kind) for a, kind in outputs] + list(extra_outputs)
    outs = [(n, p, k) for n, p, k in outs if p is not None and str(p) != ""]
    for i, (name, path, kind) in enumerate(outs):
        check_output(path, name, kind=kind, inputs=ins, distinct_from=[(n, p) for n, p, _ in outs[:i]])


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
