"""GPUA's in-memory fit with a fit driver of one's own: what the lever scripts share.

``mining_levers.py``, ``map_levers.py`` and ``procrustes_completion.py`` each change one step of
the fit (the mining, the refinement, the Procrustes map) by subclassing
:class:`gpua.fitting.ArrayPool`, the driver of an in-memory fit, and run the other steps exactly as
:func:`gpua.fitting.fit_arrays` does:

    prep = prepare(GPUA(random_state=0).get_params(), pool)     # checks, centring, whitening
    model = fit_with(prep, MyPool(*prep.rows()))                # UCM -> Procrustes -> THS -> rounds

With a plain :class:`~gpua.fitting.ArrayPool` the model is ``GPUA(**params).fit(...)`` to the bit
(tests/test_bench_mining_levers.py checks it), so a lever's row differs from the ``gpua`` row by
its driver alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from _harness import float_tensor

from gpua import GPUA
from gpua._backend import resolve_device
from gpua._validation import check_classnames
from gpua.fitting import (
    PARAMETERS, ArrayPool, FitConfig, FitState, _fit_prepared, _prepared_pool, check_entry, check_fit_arrays,
    check_not_one_image, run_fit, set_fitted_state, unwhiten,
)
from gpua.params import check_params
from gpua.query import build_query, pool_mean

__all__ = ["Prepared", "prepare", "fit_with", "fit_with_pool", "BASE_PARAMS", "add_base_argument", "set_base_params", "base_params"]

#: GPUA parameters every method of a lever script starts from (``--base``; empty: today's defaults).
BASE_PARAMS: dict[str, Any] = {}


def add_base_argument(ap) -> None:
    """``--base JSON``: the GPUA parameters under every method (a lever table measured against an older default)."""
    ap.add_argument("--base", default="{}", metavar="JSON",
                    help="GPUA parameters under every method, e.g. '{\"plan_ridge\": null}' for the defaults before the plan's "
                         "ridge projection (default: today's defaults)")


def set_base_params(ap, args) -> None:
    """Parse and check ``args.base`` into :data:`BASE_PARAMS` (``ap.error`` on a bad one)."""
    import json

    try:
        base = json.loads(args.base)
        if not isinstance(base, dict):
            raise ValueError("not a JSON object")
        check_params(PARAMETERS, base, "GPUA")
    except Exception as exc:  # JSON errors, GPUAError
        ap.error(f"--base {args.base!r}: {exc}")
    BASE_PARAMS.clear()
    BASE_PARAMS.update(base)


def base_params(seed: int, **overrides) -> dict[str, Any]:
    """:data:`BASE_PARAMS` with ``random_state=seed`` and ``overrides`` on top."""
    return {**BASE_PARAMS, "random_state": seed, **overrides}


@dataclass
class Prepared:
    """What :func:`gpua.fitting.fit_arrays` holds just before the fit runs (:func:`prepare`)."""

    params: dict
    config: FitConfig
    prepared: Any  # gpua.fitting._PreparedPool
    Y: torch.Tensor
    names: list[str] | None
    vfm_features: torch.Tensor  # the pool's rows as given: proba_scale="auto" is chosen on them
    vlm_features: torch.Tensor

    @property
    def pool(self) -> ArrayPool:
        return self.prepared.pool

    def rows(self) -> tuple:
        """``(Q, X, Y, V, config)``: the arguments a driver of the same pool is built from."""
        pool = self.prepared.pool
        return pool.Q, pool.X, pool.Y, pool.V, pool.config

    def query(self, fs) -> torch.Tensor:
        """The (centred, whitened) query rows of any split, as the fit built the pool's: (n, d) tensor."""
        p = self.prepared
        dev = self.config.device
        Z, X = float_tensor(fs.vfm_features).to(dev), float_tensor(fs.vlm_features).to(dev)
        return build_query(Z, X, self.config.query, p.vfm_mean, p.vlm_mean, whiten=p.whiten)

    def vfm_rows(self, fs) -> torch.Tensor:
        """The VFM rows of the self-learning criterion: normalised, centred on the pool mean when ``center``."""
        return build_query(float_tensor(fs.vfm_features).to(self.config.device), None, "vfm", self.prepared.vfm_mean)


def prepare(params: dict, pool) -> Prepared:
    """The steps of :func:`gpua.fitting.fit_arrays` up to the prepared pool.

    Parameters
    ----------
    params : dict
        A GPUA's ``get_params()``; ``class_prior="estimate"`` (two fits) is not supported.
    pool : FeatureSet
        The unlabeled pool (its labels are not read).
    """
    if isinstance(params["class_prior"], str):
        raise ValueError("the levers run the single fit of fit_arrays; class_prior='estimate' is not supported here")
    check_params(PARAMETERS, params, "GPUA")
    Z, X, Y = check_fit_arrays(pool.vfm_features, pool.vlm_features, pool.text_prototypes, resolve_device(params["device"]))
    config = check_entry(params, Z.shape[0], Y.shape[0], driver="memory")
    names = check_classnames(pool.classnames, Y.shape[0])
    mean, vlm_mean = pool_mean(Z), pool_mean(X)
    check_not_one_image(Z.shape[0], mean, vlm_mean if config.query == "fused" else None)
    return Prepared(params, config, _prepared_pool(config, Z, X, Y, mean, vlm_mean), Y, names, Z, X)


def fit_with(prep: Prepared, driver: ArrayPool,
             after: Callable[[ArrayPool, FitConfig, FitState], FitState] | None = None) -> GPUA:
    """The fit of ``prep`` with ``driver`` in place of its :class:`~gpua.fitting.ArrayPool`; a predicting GPUA.

    ``after(driver, config, state)``, when given, changes the fitted state in the whitened
    coordinates (:func:`gpua.fitting.run_fit`'s result), before :func:`gpua.fitting.unwhiten`.
    """
    p = prep.prepared
    p.pool = driver
    if after is None:
        state = _fit_prepared(prep.config, p, prep.Y, prep.names, None)
    else:
        state = run_fit(prep.config, driver, Y=torch.nn.functional.normalize(prep.Y, dim=1), vfm_mean=p.vfm_mean,
                        vlm_mean=p.vlm_mean, widths=p.widths, classnames=prep.names)
        state = unwhiten(after(driver, prep.config, state), p.whiten, p.whiten_s)
    pool = [(len(state.pseudo_labels), lambda idx: (prep.vfm_features[idx], prep.vlm_features[idx]))]
    return set_fitted_state(GPUA(**prep.params), state, pool)


def fit_with_pool(params: dict, pool, pool_class: type[ArrayPool] = ArrayPool,
                  after: Callable[[ArrayPool, FitConfig, FitState], FitState] | None = None) -> GPUA:
    """:func:`prepare` then :func:`fit_with` a ``pool_class`` driver of the same rows; ``params`` may be partial."""
    prep = prepare(GPUA(**params).get_params(), pool)
    return fit_with(prep, pool_class(*prep.rows()), after)
