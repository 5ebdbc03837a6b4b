"""Does one folder give the same predictions whichever way it is fitted? In-memory, streamed, rescaled, reordered.

The same rows should give the same predictions whether GPUA fits them in memory
(``GPUA().fit``), streamed in chunks (:func:`gpua.stream.fit_streaming`, as ``gpua fit
--max-memory`` does) or with features that differ only in their float rounding. Where the
Procrustes map is not unique (fewer classes than the VLM's width) the null space of
:math:`Q^\\top P Y` has to be completed somehow: today from the pool's :math:`Q^\\top X`
(``procrustes_completion="crosscov"``), until 2026-12-01 by whatever the SVD returned
(``"svd"``), which followed the sum's rounding, and refinement carried it into other
predictions. This script measures both on small folders, where the effect is largest.

For each development set (cached features; never extracted here), each number of photos per
class ``n`` (``--per-class``) and each draw ``r`` (``--draws``), the class-balanced subset of
the pool of ``benchmarks/small_pools.py`` (:func:`small_pools.balanced_subset`) is fitted with
each setting of ``--settings`` (:data:`SETTINGS`: ``today``, ``svd`` (today's with the SVD's
completion), and ``small_pools.SETTINGS``' earlier defaults ``relaxed``, ``whitened``,
``unwhitened``, which completed by the SVD too; ``random_state=0``) four ways:

* ``memory``: ``GPUA(**setting).fit(Z, X, Y)``, the reference of the row;
* ``streamed``: :func:`gpua.stream.fit_streaming` on ``(Z, X)`` in chunks of ``n_rows // 3 + 7``
  rows (three chunks, the last one short);
* ``rescaled``: the in-memory fit of ``1e-3 * Z`` and ``1e-3 * X`` (gpua normalises every row,
  so only the rounding of the features changes);
* ``reordered``: the in-memory fit of the rows in another order (``default_rng(1000 + r)``'s
  permutation). Its refinement draws other mini-batches from the same seed, so it also measures
  how much the seed of a small fit matters, not rounding alone.

Each is scored on the subset itself (transductive top-1, as ``gpua classify`` reports a labelled
folder) and compared with ``memory``: the number of rows whose prediction differs. Printed per
set, size and setting: the mean accuracy of ``memory`` over the draws and the differing
predictions of each other way, summed over the draws; then per setting, over every cell, the
share of predictions that differ.

    python benchmarks/fit_agreement.py                                    # every real set, 20 per class, 3 draws, today and svd
    python benchmarks/fit_agreement.py --sets cifar-dinov2 --per-class 20,50 --json results/fit_agreement.json
    python benchmarks/fit_agreement.py --sets planted --per-class 8 --draws 2 --settings today,relaxed

With ``--json`` the file is rewritten after each set (``"complete": false`` until the run ends).
Sets of ``--sets`` whose features are not extracted are named at the end and in
``"missing_sets"``; a run that measured nothing writes nothing and exits 1.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from _harness import OutputPath, setup, write_json
from devsets import REAL_SETS, SETS, add_set_arguments, cached_devsets, chosen_sets
from small_pools import SETTINGS as POOL_SETTINGS
from small_pools import add_draw_arguments, balanced_subset, checked_draws, each_set

#: GPUA parameters of each setting: today's, today's with the SVD's completion, and ``small_pools.SETTINGS``' earlier defaults.
SETTINGS = {"today": {}, "svd": {"procrustes_completion": "svd"},
            **{name: {"procrustes_completion": "svd", **params} for name, params in POOL_SETTINGS.items()
               if params is not None and name != "today"}}
#: The ways of fitting compared with the in-memory fit.
WAYS = ("streamed", "rescaled", "reordered")
RESCALE = 1e-3


def fits(params: dict, Z: np.ndarray, X: np.ndarray, Y: np.ndarray, draw: int) -> dict[str, np.ndarray]:
    """Predictions on the rows ``(Z, X)``, in their order, of the in-memory fit and of each of :data:`WAYS`."""
    from gpua import GPUA
    from gpua.stream import fit_streaming

    def model():
        return GPUA(**{"random_state": 0, **params})

    n = len(Z)
    perm = np.random.default_rng(1000 + draw).permutation(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small pool's ConvergenceWarning is the same for every way
        memory = model().fit(Z, X, Y)
        streamed = fit_streaming(model(), (Z, X), Y, chunk_rows=n // 3 + 7, progress=False)
        rescaled = model().fit(RESCALE * Z, RESCALE * X, Y)
        reordered = model().fit(Z[perm], X[perm], Y)
    return {"memory": memory.predict(Z, X), "streamed": streamed.predict(Z, X), "rescaled": rescaled.predict(Z, X),
            "reordered": reordered.predict(Z, X)}


def run_set(ds, sizes, draws: int, settings, say=print) -> list[dict]:
    """One row per (size, draw, setting): set, per_class, draw, n_rows, setting, acc (memory), acc_<way>, differ_<way>, seconds."""
    pool = ds.pool
    rows = []
    for n in sizes:
        for r in range(draws):
            idx = balanced_subset(pool.labels, n, r)
            Z, X, y = pool.vfm_features[idx], pool.vlm_features[idx], pool.labels[idx]
            for s in settings:
                t0 = time.perf_counter()
                pred = fits(SETTINGS[s], Z, X, pool.text_prototypes, r)
                row = {"set": ds.name, "per_class": int(n), "draw": int(r), "n_rows": int(len(idx)), "setting": s,
                       "acc": float(np.mean(pred["memory"] == y)), "seconds": time.perf_counter() - t0}
                for way in WAYS:
                    row[f"acc_{way}"] = float(np.mean(pred[way] == y))
                    row[f"differ_{way}"] = int((pred[way] != pred["memory"]).sum())
                rows.append(row)
                say(f"  {ds.name} {n}/class draw {r} {s:<11} {100 * row['acc']:6.2f}; differing predictions of {len(idx)}: "
                    + ", ".join(f"{w} {row[f'differ_{w}']}" for w in WAYS) + f"  ({row['seconds']:.1f} s)", flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per setting: rows fitted, predictions compared, and per way the predictions that differ (count and share)."""
    out = {}
    for s in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == s]
        total = sum(r["n_rows"] for r in mine)
        out[s] = {"fits": len(mine), "predictions": total,
                  **{way: {"differ": sum(r[f"differ_{way}"] for r in mine),
                           "share": sum(r[f"differ_{way}"] for r in mine) / total} for way in WAYS}}
    return out


def print_summary(rows: list[dict]) -> None:
    print("\nTransductive top-1 (%) of the in-memory fit (mean over draws); predictions that differ from it, summed over the draws")
    print(f"  {'set':<14} {'per class':>9} {'setting':<11} {'acc':>6} " + " ".join(f"{w:>10}" for w in WAYS))
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["set"], r["per_class"], r["setting"]), []).append(r)
    for (s, n, setting), rs in cells.items():
        got = " ".join(f"{sum(r[f'differ_{w}'] for r in rs):>4}/{sum(r['n_rows'] for r in rs):<5}" for w in WAYS)
        print(f"  {s:<14} {n:>9} {setting:<11} {100 * np.mean([r['acc'] for r in rs]):6.2f} {got}")
    print("\n  over every cell, the share of predictions that differ from the in-memory fit:")
    for s, v in summary(rows).items():
        print(f"    {s:<11} ({v['predictions']} predictions) " + ", ".join(f"{w} {100 * v[w]['share']:.2f}%" for w in WAYS))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(ap, SETS)
    ap.set_defaults(sets=",".join(REAL_SETS))
    add_draw_arguments(ap, tuple(SETTINGS), per_class="20", default_settings="today,svd")
    ap.add_argument("--json", action=OutputPath, default=None, help="write the rows and the summary here (atomically)")
    args = ap.parse_args(argv)
    sets = chosen_sets(ap, args, SETS)
    sizes, settings = checked_draws(ap, args, tuple(SETTINGS))
    setup(args)
    rows: list[dict] = []
    t0 = time.perf_counter()

    def record(done: bool) -> None:
        write_json(args.json, {"sets": list(dict.fromkeys(r["set"] for r in rows)), "per_class": sizes, "draws": args.draws,
                               "settings": {s: SETTINGS[s] for s in settings}, "complete": done,
                               "missing_sets": devsets.missing_sets, "wall_s": time.perf_counter() - t0, "rows": rows,
                               "summary": summary(rows)})

    devsets = cached_devsets(sets, args.cache_dir)
    each_set(ap, devsets, lambda ds: run_set(ds, sizes, args.draws, settings), rows, (lambda: record(False)) if args.json else None)
    devsets.finish(bool(rows), args.json)
    print_summary(rows)
    print(f"\nwall time of this run's fits: {time.perf_counter() - t0:.0f} s")
    if args.json:
        record(True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
