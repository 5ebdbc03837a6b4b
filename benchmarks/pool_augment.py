r"""Does augmenting GPUA's unlabeled pool with calibrated pseudo-class samples help?

``GPUA(pool_augment=m)`` adds ``m`` synthetic query rows per pseudo-class to the THS
refinement's training rows, drawn around the real rows along each pseudo-class's OAS-shrunk
covariance (see the ``GPUA`` docstring). This script measures test top-1 accuracy with
``m`` in ``--augment`` (default 0, 16, 64) on three pools drawn from the training file:

* ``16shot``: 16 images per class, *chosen with the labels* as the paper's few-shot protocol
  does (the labels pick the images, then are dropped: the fit never sees them);
* ``random160``: 160 images drawn class-blind (a realistic unlabeled pool of the same size,
  whose class counts are not balanced);
* ``full``: the whole training file (1,000 images for the demo), one draw.

Each small pool is drawn ``--seeds`` times (seed ``s`` draws pool ``s``; GPUA's own
``random_state`` is fixed at 0 so that the only source of variation is the pool and the
augmentation); the table gives the mean and standard deviation over draws of the accuracy and
of its paired change against ``m = 0`` on the same draw.

Why 16 and 64: in a 16-shot pool a pseudo-class has about 14 training rows once early stopping
holds out 10%, so 16 synthetic rows about double it and 64 make the synthetic rows four fifths
of the training set (calibration papers fill tail classes up to the head's count, several times
their real count); on the full pool (about 90 training rows per class) they add 18% and 71%.

Usage::

    python benchmarks/pool_augment.py                        # DINOv2-S demo features
    python benchmarks/pool_augment.py \
        --train ${GPUA_CACHE_DIR:-~/.cache/gpua}/demo/cifar10-mini_train__offline-efficientnet-lite2__offline-semantic-lite0.npz \
        --test ${GPUA_CACHE_DIR:-~/.cache/gpua}/demo/cifar10-mini_test__offline-efficientnet-lite2__offline-semantic-lite0.npz

The labels of the training file are used only to draw the 16-shot pool and to report the
pseudo-label accuracy of the pool; the test labels only to score. Timing, the machine record and
the JSON file come from ``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from _harness import OutputPath, demo_features, load_feature_files, machine_line, measure, timer, write_json

from gpua import GPUA

POOLS = ("16shot", "random160", "full")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=None, help="training feature file (pools are drawn from it; default: the demo's cached train features)")
    ap.add_argument("--test", type=Path, default=None, help="test feature file (scored with its labels; default: the demo's cached test features)")
    ap.add_argument("--pools", nargs="+", choices=POOLS, default=list(POOLS), help="pools to measure")
    ap.add_argument("--augment", type=int, nargs="+", default=[0, 16, 64],
                    help="pool_augment values, in any order (include 0 for the change column: the paired change against m=0)")
    ap.add_argument("--seeds", type=int, default=3, help="draws of each small pool (default 3)")
    ap.add_argument("--query", choices=("vfm", "fused"), default="fused", help="GPUA query (default fused, the estimator's)")
    ap.add_argument("--n-steps", type=int, default=300, help="GPUA n_steps (default 300, the estimator's)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: faster on a busy 2-core machine)")
    ap.add_argument("--json", type=Path, action=OutputPath, default=None, help="write the results here")
    args = ap.parse_args(argv)
    # The files read, resolved once: the JSON and the report name them (they said "None" for the demo's).
    args.train = args.train or demo_features("train")
    args.test = args.test or demo_features("test")
    return args


def draw_pool(kind: str, labels: np.ndarray, seed: int) -> np.ndarray:
    """Row indices of one pool; ``16shot`` reads the labels (the paper's protocol), the others do not."""
    rng = np.random.default_rng(seed)
    if kind == "16shot":
        return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), 16, replace=False) for k in np.unique(labels)]))
    if kind == "random160":
        return np.sort(rng.choice(labels.shape[0], 160, replace=False))
    return np.arange(labels.shape[0])


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    train, test = load_feature_files(args.train, args.test)
    Y = train.text_prototypes
    records = []
    for kind in args.pools:
        for seed in range(1 if kind == "full" else args.seeds):
            idx = draw_pool(kind, train.labels, seed)
            for m in args.augment:
                est = GPUA(query=args.query, n_steps=args.n_steps, pool_augment=m, random_state=0)
                model, timing = measure(lambda: est.fit(train.vfm_features[idx], train.vlm_features[idx], Y))
                secs = timing.seconds
                aug = model.history_["pool_augment"]
                rhos = [r for r in aug.get("oas_shrinkage", []) if r is not None]
                records.append({
                    "pool": kind, "seed": seed, "n_pool": int(idx.size), "pool_augment": m,
                    "acc1": model.score(test.vfm_features, test.labels, test.vlm_features),
                    "pseudo_label_acc": float(np.mean(model.pseudo_labels_ == train.labels[idx])),
                    "n_synthetic": aug["n_rows"], "mean_oas_rho": float(np.mean(rhos)) if rhos else None,
                    "refine_steps": model.history_["refine"][-1]["step"] if model.history_["refine"] else 0,
                    "seconds": secs,
                })
                print(f"  {kind:<9} draw {seed} m={m:<3} acc1 {records[-1]['acc1']:.3f} ({secs:.0f} s)", file=sys.stderr, flush=True)
    return {
        "train": str(args.train), "test": str(args.test), "query": args.query, "n_steps": args.n_steps,
        "seeds": args.seeds, "threads": args.threads, "records": records,
    }


def summarise(records: list[dict]) -> list[dict]:
    """Mean and std over draws per (pool, m), with the paired change against m = 0 on each draw."""
    base = {(r["pool"], r["seed"]): r["acc1"] for r in records if r["pool_augment"] == 0}
    rows = []
    for key in dict.fromkeys((r["pool"], r["pool_augment"]) for r in records):
        rs = [r for r in records if (r["pool"], r["pool_augment"]) == key]
        acc = np.array([r["acc1"] for r in rs])
        delta = np.array([r["acc1"] - base[(r["pool"], r["seed"])] for r in rs if (r["pool"], r["seed"]) in base])
        rhos = [r["mean_oas_rho"] for r in rs if r["mean_oas_rho"] is not None]
        rows.append({
            "pool": key[0], "pool_augment": key[1], "n_pool": rs[0]["n_pool"], "draws": len(rs),
            "acc1_mean": float(acc.mean()), "acc1_std": float(acc.std()),
            "delta_mean": float(delta.mean()) if delta.size else None, "delta_std": float(delta.std()) if delta.size else None,
            "pseudo_label_acc": float(np.mean([r["pseudo_label_acc"] for r in rs])),
            "n_synthetic": float(np.mean([r["n_synthetic"] for r in rs])),
            "mean_oas_rho": float(np.mean(rhos)) if rhos else None,
            "refine_steps": float(np.mean([r["refine_steps"] for r in rs])),
            "seconds": float(np.mean([r["seconds"] for r in rs])),
        })
    return rows


def format_rows(rows: list[dict]) -> str:
    head = (f"{'pool':<9} {'n':>5} {'m':>3} {'draws':>5} {'acc1':>13} {'change (pt)':>12} {'pseudo-acc':>10} "
            f"{'synthetic':>9} {'OAS rho':>7} {'steps':>5} {'s/fit':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        delta = "-" if r["delta_mean"] is None else f"{100 * r['delta_mean']:+.1f} +- {100 * r['delta_std']:.1f}"
        rho = "-" if r["mean_oas_rho"] is None else f"{r['mean_oas_rho']:.2f}"
        lines.append(
            f"{r['pool']:<9} {r['n_pool']:>5} {r['pool_augment']:>3} {r['draws']:>5} "
            f"{r['acc1_mean']:>6.3f} +- {r['acc1_std']:.3f} {delta:>12} {r['pseudo_label_acc']:>10.3f} "
            f"{r['n_synthetic']:>9.0f} {rho:>7} {r['refine_steps']:>5.0f} {r['seconds']:>6.1f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine_line(), flush=True)
    with timer() as total:
        result = run(args)
    result["summary"] = summarise(result["records"])
    result["total_s"] = total.seconds
    print(
        f"GPUA pool_augment: {Path(result['train']).name} -> test; query={result['query']}, n_steps={result['n_steps']}, "
        f"GPUA random_state 0, {result['threads']} thread(s); change = paired acc1 difference against m=0 on the same draw"
    )
    print(format_rows(result["summary"]))
    print(f"total {result['total_s']:.0f} s")
    if args.json is not None:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
