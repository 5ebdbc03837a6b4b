"""Where GPUA loses to the VLM's zero-shot on a long-tailed pool: the centring mean and the class prior.

On a folder where a few classes dominate, ``GPUA()`` scores below the VLM's own zero-shot (README,
"Imbalanced folders"). Two of its steps assume a balanced pool, and this script gives each the
answer it would need, **taken from the pool's labels** (oracles: diagnostics, never a fit's
input), one at a time and together, on long-tailed subsets of the development pools
(``devsets.long_tailed``; accuracy on the pool itself, as ``gpua classify`` reports it):

* **the centring mean**: ``center`` / ``center_vlm`` subtract the pool's mean normalised row, which
  a head class dominates, so centring removes part of the head class's own direction. The
  oracle is the **class-balanced mean** (the mean of the K class means), under which a
  long-tailed pool is centred as its balanced version would be. Shown on the zero-shot
  (``zero-shot, centred``) and in GPUA (inputs centred with it, ``center=False,
  center_vlm=False``, the prototypes centred on their own mean as GPUA does);
* **the class prior**: UCM's plan holds the class masses near uniform (``rho=0.03``). The
  oracle is ``class_prior`` = the pool's true class counts.

Beside them, ``GPUA(class_prior="estimate")`` and ``GPUA(class_prior="zero_shot")``, which
estimate both without labels (:mod:`gpua.prior`: EM class frequencies from a first fit's or from
the VLM's zero-shot probabilities, class-balanced means from them).

    python benchmarks/imbalance_diagnosis.py --sets cifar-dinov2,cifar-lite2 --ratios 1,10,50
    python benchmarks/imbalance_diagnosis.py --json results/imbalance_diagnosis.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _harness import OutputPath, float_tensor, setup, write_json
from _levers import add_base_argument, base_params, set_base_params
from devsets import REAL_SETS, add_set_arguments, cached_devsets, chosen_sets, long_tailed

from gpua.prior import balanced_mean
from gpua.query import centre_rows, pool_mean, target_prototypes

ROWS = (
    "zero-shot",
    "zero-shot, centred (pool mean)",
    "zero-shot, centred (class-balanced mean, oracle)",
    "GPUA()",
    "GPUA, true class prior (oracle)",
    "GPUA, class-balanced centring (oracle)",
    "GPUA, both oracles",
    "GPUA(class_prior=\"estimate\"), no labels",
    "GPUA(class_prior=\"zero_shot\"), no labels",
)


def label_balanced_mean(A, labels: np.ndarray) -> torch.Tensor:
    """:func:`gpua.prior.balanced_mean` with the true classes as the responsibilities (the oracle)."""
    return balanced_mean(float_tensor(A), torch.nn.functional.one_hot(torch.as_tensor(labels)).double())


def centred(A, mean: torch.Tensor) -> np.ndarray:
    """:func:`gpua.query.centre_rows` of ``A`` on ``mean``, as float32 numpy (a fit's input)."""
    return centre_rows(float_tensor(A), mean).numpy()


def diagnose(pool, seed: int = 0) -> dict[str, float]:
    """Pool top-1 (fractions) of every row of :data:`ROWS` on one (long-tailed) pool."""
    from gpua import GPUA

    y, K = pool.labels, len(pool.classnames)
    Z, X, Y = pool.vfm_features, pool.vlm_features, pool.text_prototypes
    Yc = target_prototypes(float_tensor(Y), True)  # the prototypes centred on their own mean: what center_vlm=True fits to

    def top1(rows, prototypes: torch.Tensor = Yc) -> float:
        return float(np.mean((float_tensor(rows) @ prototypes.T).argmax(1).numpy() == y))

    out = {"zero-shot": top1(centre_rows(float_tensor(X), None), target_prototypes(float_tensor(Y), False))}
    out["zero-shot, centred (pool mean)"] = top1(centred(X, pool_mean(float_tensor(X))))
    out["zero-shot, centred (class-balanced mean, oracle)"] = top1(centred(X, label_balanced_mean(X, y)))
    prior = np.bincount(y, minlength=K) / len(y)
    Zb, Xb, Yc = centred(Z, label_balanced_mean(Z, y)), centred(X, label_balanced_mean(X, y)), Yc.numpy()
    fits = {
        "GPUA()": (dict(), (Z, X, Y)),
        "GPUA, true class prior (oracle)": (dict(class_prior=prior), (Z, X, Y)),
        "GPUA, class-balanced centring (oracle)": (dict(center=False, center_vlm=False), (Zb, Xb, Yc)),
        "GPUA, both oracles": (dict(center=False, center_vlm=False, class_prior=prior), (Zb, Xb, Yc)),
        'GPUA(class_prior="estimate"), no labels': (dict(class_prior="estimate"), (Z, X, Y)),
        'GPUA(class_prior="zero_shot"), no labels': (dict(class_prior="zero_shot"), (Z, X, Y)),
    }
    for name, (params, (Zf, Xf, Yf)) in fits.items():
        model = GPUA(**base_params(seed, **params)).fit(Zf, Xf, Yf)
        out[name] = float(np.mean(model.predict(Zf, Xf) == y))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(ap, REAL_SETS)
    ap.add_argument("--ratios", default="10,50", help="comma-separated pool imbalances R >= 1 (largest class / smallest; 1: as it is)")
    ap.add_argument("--json", action=OutputPath, default=None, help="write the figures here (atomically)")
    add_base_argument(ap)
    args = ap.parse_args(argv)
    set_base_params(ap, args)
    sets = chosen_sets(ap, args, REAL_SETS)
    try:
        ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    except ValueError:
        ap.error(f"--ratios {args.ratios!r}: give numbers separated by commas, e.g. 10,50")
    if not ratios or min(ratios) < 1:
        ap.error(f"--ratios {args.ratios!r}: each ratio is at least 1 (the largest class over the smallest)")
    setup(args)
    results: dict[str, dict[str, dict[str, float]]] = {}
    achieved: dict[str, dict[str, float | None]] = {}  # the ratio each pool reached (a small pool falls short of R)
    devsets = cached_devsets(sets, args.cache_dir)
    for s, base in devsets:
        for r in ratios:
            drawn = long_tailed(base, r, 0)
            pool = drawn.pool
            achieved.setdefault(s, {})[f"{r:g}"] = drawn.pool_imbalance
            results.setdefault(s, {})[f"{r:g}"] = figures = diagnose(pool)
            reached = "" if drawn.pool_imbalance is None else f", {drawn.pool_imbalance:.3g} reached"
            print(f"\n{s}, pool imbalance {r:g} ({pool.n_samples} rows{reached}; pool top-1 %)")
            for name in ROWS:
                print(f"  {name:<50} {100 * figures[name]:6.2f}", flush=True)
    devsets.finish(bool(results), args.json)
    if args.json:
        write_json(args.json, {"sets": sets, "ratios": ratios, "base": base_params(0), "missing_sets": devsets.missing_sets,
                               "pool_imbalance_achieved": achieved, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
