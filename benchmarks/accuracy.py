"""Accuracy on the development sets (issue 12): zero-shot, the published method, GPUA and its variants.

For each development set of ``benchmarks/devsets.py`` (cached features; never extracted here),
each seed and each method: fit on the unlabeled pool, then report

* ``test``: top-1 on the test split (the number we report; never used to choose anything);
* ``dev``: the criterion defaults are chosen by: top-1 on the labelled dev split (Fashion-MNIST,
  planted) or, for CIFAR-10 (no dev split), the transductive top-1 on the pool scored with the
  pool's own labels;
* ``pl``: accuracy of the fit's pseudo-labels on the pool (a diagnostic: labels never reach a
  fit; for ``zero_shot``, its own argmax on the pool).

Methods: ``zero_shot`` (:class:`gpua.VLMZeroShot`), ``reference`` (:class:`gpua.ReferenceGPUA`,
the published code's method), ``gpua`` (``GPUA()`` defaults), and any number of GPUA variants
``--variant NAME='{"param": value, ...}'`` (GPUA parameters as JSON, checked before anything
runs). Seeds: ``--seeds S`` runs seeds 0..S-1 and prints means (and standard deviations); a seed
is the estimators' ``random_state`` and, for ``planted``, also the draw of the data and its pool.

    python benchmarks/accuracy.py --sets planted                          # quick
    python benchmarks/accuracy.py --sets cifar-lite2,fmnist-lite2 --variant sl2='{"self_learning": 2}'
    python benchmarks/accuracy.py --seeds 3 --json results/accuracy.json  # every set, written atomically

Each method's difference to the ``reference`` row on the test split comes with a 95% paired
bootstrap interval over the test images (:func:`paired_difference`: both methods score the same
images, so the interval is of the difference, not of each accuracy; with several seeds, of the
per-image difference averaged over the seeds). An interval that holds 0 is a difference the
test split cannot tell from noise.

``--sets`` also takes ``cifar-dinov2-swapped`` and ``cifar-lite2-swapped`` (never by default):
CIFAR-10 with pool and test swapped, reported only. Run beside their unswapped sets they add a
two-fold summary (:func:`two_fold`), every photo scored by the model fitted on the other half:

    python benchmarks/accuracy.py --sets cifar-dinov2,cifar-dinov2-swapped --methods reference,gpua --seeds 3

``--json`` gets every row (set, seed, method; with ``--pool-imbalance``, ``pool_imbalance_achieved``,
the largest class over the smallest of the pool it fitted, which a small pool keeps below R) and the
per-(set, method) means (with ``vs_reference`` and ``vs_reference_ci95``), the two-fold entries
(``two_fold``), the sets of ``--sets`` that were not extracted (``missing_sets``), with the machine
record (``benchmarks/_harness.py``). A run that measured no set writes nothing and exits 1.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _harness import OutputPath, gpua_params, setup, write_json
from devsets import ALL_SETS, SETS, SWAPPED, add_set_arguments, cached_devset_seeds, chosen_sets, long_tailed

BASE_METHODS = ("zero_shot", "reference", "gpua")


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME={"self_learning": 2}`` -> ``("NAME", {...})``, each parameter checked against GPUA's table."""
    name, sep, body = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--variant {text!r} must look like NAME='{{\"self_learning\": 2}}'")
    return name, gpua_params(body, f"--variant {name}")


def make_estimator(method: str, seed: int, variants: dict[str, dict]):
    """A fresh estimator for a base method or a variant, seeded with ``seed``."""
    from gpua import GPUA, make_method

    if method in variants:
        return GPUA(**{"random_state": seed, **variants[method]})
    return make_method(method, random_state=seed)


def _correct(model, fs) -> np.ndarray:
    return model.predict(fs.vfm_features, fs.vlm_features) == fs.labels


def evaluate(ds, method: str, seed: int, variants: dict[str, dict]) -> tuple[dict, np.ndarray]:
    """Fit ``method`` on ``ds.pool`` (no labels) and score it: one row, and which test images it got right."""
    pool = ds.pool
    model = make_estimator(method, seed, variants)
    t0 = time.perf_counter()
    model.fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes, classnames=pool.classnames)
    seconds = time.perf_counter() - t0
    pool_acc = float(np.mean(_correct(model, pool)))
    pseudo = getattr(model, "pseudo_labels_", None)
    test_correct = _correct(model, ds.test)
    row = {
        "set": ds.name, "seed": seed, "method": method, "test": float(np.mean(test_correct)),
        "dev": float(np.mean(_correct(model, ds.dev))) if ds.dev is not None else pool_acc,
        "pl": pool_acc if pseudo is None else float(np.mean(pseudo == pool.labels)),
        "pool": pool_acc,
        "pool_imbalance_achieved": ds.pool_imbalance,  # None: the pool as it is (--pool-imbalance 1)
        "fit_seconds": seconds,
    }
    return row, test_correct


def paired_difference(correct: np.ndarray, baseline: np.ndarray, *, n_resamples: int = 2000,
                      random_state: int = 0) -> tuple[float, float, float]:
    r"""Accuracy difference to a baseline on the same test images, with a 95% paired bootstrap interval.

    With :math:`c^{(s)}_i, b^{(s)}_i \in \{0, 1\}` whether the method and the baseline got
    image :math:`i` right in seed :math:`s`, the difference is the mean of the per-image
    :math:`e_i = \frac1S \sum_s (c^{(s)}_i - b^{(s)}_i)`; the interval is the BCa bootstrap
    (:func:`scipy.stats.bootstrap`) of that mean, images resampled with replacement.

    Parameters
    ----------
    correct, baseline : bool arrays of shape (n_seeds, n_test) or (n_test,)

    Returns
    -------
    (difference, low, high) : floats, fractions (not %)
    """
    from scipy.stats import bootstrap

    c, b = np.atleast_2d(correct).astype(float), np.atleast_2d(baseline).astype(float)
    if c.shape != b.shape:
        raise ValueError(f"paired_difference needs the same seeds and test images ({c.shape} vs {b.shape})")
    e = (c - b).mean(0)
    diff = float(e.mean())
    if np.all(e == e[0]):  # no spread: the bootstrap has nothing to resample (BCa would be NaN)
        return diff, diff, diff
    res = bootstrap((e,), np.mean, n_resamples=n_resamples, confidence_level=0.95, method="BCa",
                    random_state=np.random.default_rng(random_state))
    return diff, float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarise(rows: list[dict], correct: dict[tuple[str, int, str], np.ndarray] | None = None) -> list[dict]:
    """Mean and standard deviation over seeds per (set, method), in first-seen order.

    With ``correct`` (``(set, seed, method) -> `` bool array over the test images), each method
    that shares its seeds with a ``reference`` row also gets ``vs_reference`` and
    ``vs_reference_ci95`` (:func:`paired_difference`).
    """
    keys = list(dict.fromkeys((r["set"], r["method"]) for r in rows))
    out = []
    for s, m in keys:
        group = [r for r in rows if (r["set"], r["method"]) == (s, m)]
        entry = {"set": s, "method": m, "seeds": [r["seed"] for r in group]}
        for field in ("test", "dev", "pl", "pool", "fit_seconds"):
            vals = np.array([r.get(field, np.nan) for r in group], dtype=float)  # rows of older files lack "pool"
            entry[field], entry[f"{field}_std"] = float(vals.mean()), float(vals.std())
        seeds = entry["seeds"]
        if correct and m != "reference" and all((s, seed, "reference") in correct for seed in seeds):
            diff, low, high = paired_difference(np.stack([correct[s, seed, m] for seed in seeds]),
                                                np.stack([correct[s, seed, "reference"] for seed in seeds]))
            entry["vs_reference"], entry["vs_reference_ci95"] = diff, [low, high]
        out.append(entry)
    return out


def two_fold(rows: list[dict], correct: dict[tuple[str, int, str], np.ndarray]) -> list[dict]:
    """Summary entries over both folds of each CIFAR set that ran with its swapped twin (``devsets``).

    The set ``s`` scores its 1,000 test photos with a model fitted on the 1,000 train photos, its
    twin ``s-swapped`` the train photos with a model fitted on the test photos: together every
    photo is scored once, by a model that never saw it. Per method and seed the two folds'
    per-image correctness is concatenated: ``test`` is the top-1 over the 2,000 photos (mean over
    seeds, ``test_std`` across them) and ``vs_reference`` its :func:`paired_difference` to the
    reference on the same photos; ``dev``, ``pl``, ``pool`` and ``fit_seconds`` are the two folds'
    means. The entries' set is ``"<s> two-fold"``.
    """
    names = list(dict.fromkeys(r["set"] for r in rows))
    out = []
    for s in (n for n in names if n + SWAPPED in names):
        twin = s + SWAPPED
        for m in dict.fromkeys(r["method"] for r in rows if r["set"] == s):
            folds = [[r for r in rows if (r["set"], r["method"]) == (name, m)] for name in (s, twin)]
            seeds = [r["seed"] for r in folds[0]]
            if [r["seed"] for r in folds[1]] != seeds:
                continue
            both = np.stack([np.concatenate([correct[s, seed, m], correct[twin, seed, m]]) for seed in seeds])
            per_seed = both.mean(1)
            entry = {"set": f"{s} two-fold", "method": m, "seeds": seeds, "test": float(per_seed.mean()),
                     "test_std": float(per_seed.std())}
            for field in ("dev", "pl", "pool", "fit_seconds"):
                vals = np.array([[r[field] for r in fold] for fold in folds], dtype=float).mean(0)
                entry[field], entry[f"{field}_std"] = float(vals.mean()), float(vals.std())
            if m != "reference" and all((name, seed, "reference") in correct for name in (s, twin) for seed in seeds):
                ref = np.stack([np.concatenate([correct[s, seed, "reference"], correct[twin, seed, "reference"]]) for seed in seeds])
                diff, low, high = paired_difference(both, ref)
                entry["vs_reference"], entry["vs_reference_ci95"] = diff, [low, high]
            out.append(entry)
    return out


def table(summary: list[dict], dev_notes: dict[str, str]) -> str:
    """One Markdown table per set: test, difference to the reference [95% interval], dev, pseudo-labels, fit seconds."""
    lines = []
    for s in dict.fromkeys(e["set"] for e in summary):
        group = [e for e in summary if e["set"] == s]
        ref = next((e["test"] for e in group if e["method"] == "reference"), None)
        n = len(group[0]["seeds"])
        lines += ["", f"{s}  (dev: {dev_notes[s]}; {n} seed{'s' if n > 1 else ''}, mean" + (" ± std)" if n > 1 else ")"), "",
                  "| method | test acc1 | vs reference [95% CI] | dev | pseudo-label acc | pool (transductive) | fit s |",
                  "|---|---|---|---|---|---|---|"]

        def cell(e, f):
            return f"{100 * e[f]:.2f}" + (f" ± {100 * e[f + '_std']:.2f}" if n > 1 else "")

        for e in group:
            delta = "" if ref is None or e["method"] == "reference" else f"{100 * (e['test'] - ref):+.2f}"
            if "vs_reference_ci95" in e:
                low, high = e["vs_reference_ci95"]
                delta += f" [{100 * low:+.2f}, {100 * high:+.2f}]"
            lines.append(f"| {e['method']} | {cell(e, 'test')} | {delta} | {cell(e, 'dev')} | {cell(e, 'pl')} | {cell(e, 'pool')} | "
                         f"{e['fit_seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(ap, ALL_SETS, SETS)
    ap.add_argument("--methods", default=",".join(BASE_METHODS), help=f"comma-separated subset of {BASE_METHODS} (variants are added)")
    ap.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="NAME=JSON",
                    help="a GPUA variant: NAME='{\"self_learning\": 2}' (repeatable)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 (random_state; planted: also the data draw)")
    ap.add_argument("--pool-imbalance", type=float, default=1.0, metavar="R",
                    help="fit on a long-tailed subset of each pool, the largest class R times the smallest (devsets.long_tailed; "
                         "drawn with the seed; every class keeps at least 2 rows, so planted's 16 per class reach 8 at most: the rows "
                         "record the ratio reached); 'pool' is then the transductive accuracy on it, what `gpua classify` reports")
    ap.add_argument("--json", action=OutputPath, default=None, help="write every row and the means here (atomically)")
    args = ap.parse_args(argv)
    sets = chosen_sets(ap, args, ALL_SETS)
    methods = [m for m in args.methods.split(",") if m]
    variants = dict(args.variant)
    bad = [m for m in methods if m not in BASE_METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {BASE_METHODS}")
    clash = sorted(set(variants) & set(BASE_METHODS)) or (len(variants) < len(args.variant) and ["a repeated name"])
    if clash:
        ap.error(f"--variant names must be new and distinct ({clash})")
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    if args.pool_imbalance < 1:
        ap.error("--pool-imbalance must be at least 1 (the largest class over the smallest)")
    setup(args)
    rows, notes, correct = [], {}, {}
    devsets = cached_devset_seeds(sets, args.seeds, args.cache_dir)
    for s, seed, cached in devsets:
        ds = long_tailed(cached, args.pool_imbalance, seed)
        notes[s] = ds.dev_note
        for m in methods + list(variants):
            row, correct[s, seed, m] = evaluate(ds, m, seed, variants)
            rows.append(row)
            print(f"{s:14s} seed {seed}  {m:16s} test {100 * row['test']:.2f}  dev {100 * row['dev']:.2f}  "
                  f"pl {100 * row['pl']:.2f}  pool {100 * row['pool']:.2f}  ({row['fit_seconds']:.1f} s)", flush=True)
    devsets.finish(bool(rows), args.json)
    summary = summarise(rows, correct)
    folds = two_fold(rows, correct)
    for e in folds:
        notes[e["set"]] = "both folds' means; test: every photo scored once, by the model fitted on the other half"
    print(table(summary + folds, notes))
    if args.json:
        write_json(args.json, {"args": {"sets": sets, "methods": methods, "variants": variants, "seeds": args.seeds,
                                        "pool_imbalance": args.pool_imbalance},
                               "missing_sets": devsets.missing_sets, "rows": rows, "summary": summary, "two_fold": folds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
