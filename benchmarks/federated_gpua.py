r"""Federated GPUA against the centralised fit, on non-IID clients of real features.

For each Dirichlet concentration :math:`\alpha` the training pool is split among ``--clients``
clients with label skew (:func:`gpua.calibrate.dirichlet_split`: small :math:`\alpha` gives
clients that see one or two classes). The labels serve only to simulate that split and to
score on the test file; no fit ever receives them. Both fits see the same unlabeled rows:

* central: ``GPUA.fit`` on the whole pool (one fit per refinement setting, shared by every
  :math:`\alpha`: the pool is the same set whatever the split);
* federated: :func:`gpua.stream.fit_federated` on the clients (statistics only; refinement by
  ``--rounds`` of federated averaging, ``n_steps // rounds`` local steps per client and round).

Columns: test top-1 accuracy of each, the gap (federated - central, points), the largest entry
of :math:`|W_\mathrm{fed} - W_\mathrm{central}|`, the largest entry of
:math:`|(W_\mathrm{fed} - W_\mathrm{central}) Y^\top|`, the share of test predictions the two fits
agree on, and seconds.

Why two map differences: with :math:`K` classes the Procrustes target :math:`Q^\top P Y` has rank
at most :math:`K` (10 here) while :math:`W` is :math:`d_q \times d_t` (up to 1664 x 1280). The
polar factor is then fixed only on the span of the prototypes; its other :math:`d_t - K`
directions are an arbitrary orthonormal completion picked by the SVD, which the slightest change
in rounding (sums added client by client) turns another way. :math:`W Y^\top`, and with it every
cosine prediction, is the determined part; that is what equals the central fit to 1e-5.

Usage::

    python benchmarks/federated_gpua.py                      # DINOv2-S demo features
    python benchmarks/federated_gpua.py \
        --train ${GPUA_CACHE_DIR:-~/.cache/gpua}/demo/cifar10-mini_train__offline-efficientnet-lite2__offline-semantic-lite0.npz \
        --test ${GPUA_CACHE_DIR:-~/.cache/gpua}/demo/cifar10-mini_test__offline-efficientnet-lite2__offline-semantic-lite0.npz

Defaults keep a run of 1,000 training rows under about 5 minutes on a shared 2-core machine:
``--query vfm`` (the map :math:`Z \to` text space, 384 x 1280 for DINOv2-S; ``--query fused`` is
the estimator's default and more accurate, but each averaging round then needs a 1664 x 1280
SVD and the 10 clients' local steps cost about 4 times as much: 4 minutes for DINOv2-S against 1
with ``vfm``) and one torch thread (two threads on two busy cores ran the refinement 10 times
slower). Timing, the machine record and the JSON file come from ``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from _harness import OutputPath, add_param_argument, demo_features, load_feature_files, machine_line, measure, timer, write_json

from gpua import GPUA
from gpua.calibrate import dirichlet_split
from gpua.query import target_prototypes
from gpua.stream import fit_federated



def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=None, help="training feature file (the unlabeled pool; default: the demo's cached train features)")
    ap.add_argument("--test", type=Path, default=None, help="test feature file (scored with its labels; default: the demo's cached test features)")
    ap.add_argument("--clients", type=int, default=10, help="number of clients (default 10)")
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.1, 0.5], help="Dirichlet concentrations of the label split")
    ap.add_argument("--rounds", type=int, default=5, help="federated-averaging rounds of the refinement (default 5)")
    ap.add_argument("--local-steps", type=int, default=None, help="THS steps per client and round (default n_steps // rounds)")
    ap.add_argument("--query", choices=("vfm", "fused"), default="vfm", help="GPUA query (default vfm: see the module docstring)")
    ap.add_argument("--n-steps", type=int, default=300, help="GPUA n_steps (default 300, the estimator's)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the client split and of GPUA")
    add_param_argument(ap, "another GPUA parameter for both fits (repeatable), e.g. self_learning=0")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--json", type=Path, action=OutputPath, default=None, help="write the results here")
    args = ap.parse_args(argv)
    taken = {"refine", "query", "n_steps", "random_state"} & set(args.param)
    if taken:
        ap.error(f"--param {sorted(taken)}: set by the script itself (refine both ways) or by its own option (--query, --n-steps, --seed)")
    # The files read, resolved once: the JSON and the report name them (they said "None" for the demo's).
    args.train = args.train or demo_features("train")
    args.test = args.test or demo_features("test")
    return args


def compare(central: GPUA, fed: GPUA, test) -> dict:
    """Accuracies, map differences and prediction agreement of two fits on the test set.

    The map is determined on the span of the prototypes it was fitted to: the centred ones with
    ``center_vlm`` (:func:`gpua.query.target_prototypes`), so ``max_abs_dWYt`` is taken on those.
    """
    Y = target_prototypes(central.text_prototypes_, bool(central.center_vlm))
    acc_c = central.score(test.vfm_features, test.labels, test.vlm_features)
    acc_f = fed.score(test.vfm_features, test.labels, test.vlm_features)
    agree = float(np.mean(central.predict(test.vfm_features, test.vlm_features) == fed.predict(test.vfm_features, test.vlm_features)))
    dW = (fed.W_.cpu() - central.W_.cpu()).double()
    return {
        "acc_central": acc_c,
        "acc_federated": acc_f,
        "gap_points": 100.0 * (acc_f - acc_c),
        "max_abs_dW": float(dW.abs().max()),
        "max_abs_dWYt": float((dW @ Y.cpu().double().T).abs().max()),
        "prediction_agreement": agree,
    }


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    train, test = load_feature_files(args.train, args.test)
    Z, X, Y = train.vfm_features, train.vlm_features, train.text_prototypes
    base = dict(query=args.query, n_steps=args.n_steps, random_state=args.seed, **args.param)
    central = {}
    for refine in (False, True):
        model, m = measure(lambda: GPUA(refine=refine, **base).fit(Z, X, Y))
        central[refine] = model, m.seconds
    rows = []
    for alpha in args.alpha:
        parts = dirichlet_split(train.labels, args.clients, alpha, random_state=args.seed)  # labels: the split only
        clients = [(Z[p], X[p]) for p in parts]
        # How skewed the clients are: classes holding at least 5% of a client's rows.
        seen = [int((np.bincount(train.labels[p], minlength=Y.shape[0]) >= 0.05 * p.size).sum()) for p in parts]
        for refine in (False, True):
            fed, m = measure(lambda: fit_federated(GPUA(refine=refine, **base), clients, Y, rounds=args.rounds, local_steps=args.local_steps))
            secs = m.seconds
            c_model, c_secs = central[refine]
            rows.append({
                "alpha": alpha, "refine": refine, **compare(c_model, fed, test), "central_s": c_secs, "federated_s": secs,
                "client_sizes": [int(p.size) for p in parts], "client_classes": seen,
            })
    return {
        "train": str(args.train), "test": str(args.test), "n_train": int(Z.shape[0]), "n_test": int(test.labels.shape[0]),
        "clients": args.clients, "rounds": args.rounds, "local_steps": args.local_steps, "query": args.query,
        "n_steps": args.n_steps, "seed": args.seed, "threads": args.threads, "rows": rows,
    }


def format_rows(result: dict) -> str:
    head = f"{'alpha':>5} {'refine':>6} {'central':>8} {'federated':>9} {'gap(pt)':>8} {'max|dW|':>9} {'max|dW Y^T|':>11} {'agree':>6} {'central s':>9} {'fed s':>7}"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['alpha']:>5g} {('on' if r['refine'] else 'off'):>6} {r['acc_central']:>8.3f} {r['acc_federated']:>9.3f} "
            f"{r['gap_points']:>+8.1f} {r['max_abs_dW']:>9.2e} {r['max_abs_dWYt']:>11.2e} {r['prediction_agreement']:>6.3f} "
            f"{r['central_s']:>9.1f} {r['federated_s']:>7.1f}"
        )
    for alpha in dict.fromkeys(r["alpha"] for r in result["rows"]):
        r = next(x for x in result["rows"] if x["alpha"] == alpha)
        lines.append(f"alpha={alpha:g}: client sizes {r['client_sizes']}; classes with >=5% of a client's rows {r['client_classes']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine_line(), flush=True)
    with timer() as total:
        result = run(args)
    result["total_s"] = total.seconds
    print(
        f"Federated vs central GPUA: {Path(result['train']).name} ({result['n_train']} rows) -> test {result['n_test']} rows; "
        f"{result['clients']} clients, {result['rounds']} rounds, query={result['query']}, n_steps={result['n_steps']}, "
        f"seed {result['seed']}, {result['threads']} thread(s)"
    )
    print(format_rows(result))
    print(f"total {result['total_s']:.0f} s")
    if args.json is not None:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
