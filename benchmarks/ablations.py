"""Design choices measured: query mode, orthogonality handling, refinement, lambda.

On planted data (several seeds) and, when given, on real feature files (e.g. the demo's cached
CIFAR-10 features; ``--train`` and ``--test`` go together, both read before any fit). Labels of
the train file are never used; test labels only score.

    python benchmarks/ablations.py                                  # planted only
    python benchmarks/ablations.py --train T.npz --test S.npz       # plus real features

Fits are timed by ``benchmarks/_harness.py``; ``--param`` is checked against gpua's parameter table.
"""

from __future__ import annotations

import argparse

import numpy as np
from _harness import add_arguments, add_param_argument, measure, setup, write_json

from gpua import GPUA, VLMZeroShot
from gpua._errors import GPUAError
from gpua.features import load_features
from gpua.synthetic import make_planted

VARIANTS = {
    "zero_shot": None,
    "fused, free W (default)": dict(query="fused", orthogonality="none"),
    "fused, penalty": dict(query="fused", orthogonality="penalty"),
    "fused, procrustes only": dict(query="fused", refine=False),
    "vfm, free W": dict(query="vfm", orthogonality="none"),
    "vfm, penalty": dict(query="vfm", orthogonality="penalty"),
    "vfm, project": dict(query="vfm", orthogonality="project"),
    "vfm, procrustes only": dict(query="vfm", refine=False),
    "vfm, lambda 0.5": dict(query="vfm", lam=0.5),
    "vfm, lambda 1": dict(query="vfm", lam=1.0),
}


def run(train, test, base: dict, repeats: int = 1) -> dict[str, tuple[float, float]]:
    out = {}
    for name, kw in VARIANTS.items():
        est = (lambda: VLMZeroShot()) if kw is None else (lambda kw=kw: GPUA(**{**base, **kw}))
        m, timing = measure(lambda: est().fit(train.vfm_features, train.vlm_features, train.text_prototypes), repeats=repeats)
        out[name] = (m.score(test.vfm_features, test.labels, test.vlm_features), timing.seconds)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="planted seeds 0..S-1 (default 3)")
    ap.add_argument("--train", help="a feature file to fit on (its labels unused); with --test")
    ap.add_argument("--test", help="a labelled feature file to score on; with --train")
    add_param_argument(ap, "a GPUA parameter under every variant (repeatable)")
    add_arguments(ap)
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: at least 1 (the planted table is a mean over seeds 0..S-1)")
    if (args.train is None) != (args.test is None):
        ap.error("--train and --test go together: a real-feature table fits on --train and scores on --test; give both, or neither")
    real = None
    if args.train:  # read before the planted seeds run, so that a wrong path costs nothing
        try:
            real = load_features(args.train), load_features(args.test, require=("labels",))
        except GPUAError as exc:
            ap.error(f"--train/--test: {exc}")
    setup(args)
    base = args.param
    tables = {}
    planted = [run(*make_planted(n_samples=4000, n_classes=20, d_vfm=96, d_vlm=48, d_latent=24, random_state=s).split(2000), base, args.repeats)
               for s in range(args.seeds)]
    tables[f"planted (20 classes, {args.seeds} seeds, mean)"] = {k: (float(np.mean([p[k][0] for p in planted])), float(np.mean([p[k][1] for p in planted]))) for k in VARIANTS}
    if real is not None:
        tables[args.train.split("/")[-1]] = run(*real, base, args.repeats)
    for title, rows in tables.items():
        print(f"\n{title}")
        print(f"  {'variant':<26} {'acc1':>7} {'fit s':>7}")
        for k, (acc, sec) in rows.items():
            print(f"  {k:<26} {100 * acc:7.2f} {sec:7.1f}")
    if args.json:
        write_json(args.json, {"params": base, "tables": {t: {k: {"acc1": a, "fit_seconds": s} for k, (a, s) in r.items()} for t, r in tables.items()}})


if __name__ == "__main__":
    main()
