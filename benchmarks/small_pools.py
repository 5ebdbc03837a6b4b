"""Small folders of photos: does the whitened query still help when the pool is a few hundred rows?

A user's folder holds tens of photos per class, and the whitening (``GPUA(whiten="auto")``) is
estimated on that pool alone. For each development set (cached features; never extracted here),
each number of photos per class ``n`` (``--per-class``) and each draw ``r`` (``--draws``: draws
0..R-1), a class-balanced subset of the **pool** is drawn: ``numpy.random.default_rng(r)``, then
for each class in order ``n`` of its pool rows without replacement (the labels choose the rows
only, as a user's folder happens to hold ``n`` photos of each class; no fit sees them). Each
setting is fitted on the subset and scored on the same subset with its labels (transductive
top-1, ``model.predict`` on the rows it was fitted on: what ``gpua classify`` reports on a
user's folder). Settings (``--settings``):

* ``zero_shot``: :class:`gpua.VLMZeroShot`, the floor;
* ``today``: ``GPUA()``, today's defaults;
* ``relaxed``: ``GPUA(plan_ridge=None)``, the relaxed defaults (before the plan's ridge
  projection; the ``today`` of runs before it);
* ``whitened``: ``GPUA(plan_ridge=None, rho=None, max_outer=10)``, the whitened defaults (exact
  class marginal);
* ``unwhitened``: ``GPUA(plan_ridge=None, rho=None, max_outer=10, whiten=None, center=False)``,
  the defaults before the whitening.

Every GPUA fit has ``random_state=0``; the draw is the only thing that changes between draws.
Printed per set and size: each setting's mean over the draws and its standard deviation
(``ddof=1``; 0 with one draw), then over the cells (set x size) how often ``today`` and
``whitened`` beat ``unwhitened`` on the cell mean (strictly; ties counted apart), the mean
difference in points, the same paired by draw (the two settings fitted on the same rows), and
all of it restricted to the two README statements' cells (20 and 50 per class on every set; 10,
20 and 50 per class on the CIFAR sets).

    python benchmarks/small_pools.py                                    # every real set, 10,20,50 per class, 3 draws
    python benchmarks/small_pools.py --sets cifar-dinov2,cifar-lite2 --json results/small_pools_cifar.json
    python benchmarks/small_pools.py --sets planted --per-class 4,8 --draws 2 --settings zero_shot,today
    python benchmarks/small_pools.py --merge results/small_pools_cifar.json results/small_pools_fmnist.json --json results/small_pools.json

``--merge FILE...`` reads the rows of earlier runs' JSON (a later file's row replaces an earlier
one's for the same set, size, draw and setting), adds this run's rows (none when ``--sets`` is
empty: ``--sets ''``) and prints and writes the summary of them all, so a long grid can run as
several shorter processes. With ``--json`` the file is rewritten after each set (``"complete":
false`` until the run ends), so the sets finished before a stopped run are kept. Sets of
``--sets`` whose features are not extracted are named at the end and in ``"missing_sets"``; a run
with no row at all (none measured, none merged) writes nothing and exits 1.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _harness import OutputPath, merge_rows_by, read_results, setup, write_json
from devsets import REAL_SETS, SETS, add_set_arguments, cached_devsets, chosen_sets

#: GPUA parameters of each setting (None: the zero-shot floor, not a GPUA fit).
SETTINGS: dict[str, dict | None] = {
    "zero_shot": None,
    "today": {},
    "relaxed": {"plan_ridge": None},
    "whitened": {"plan_ridge": None, "rho": None, "max_outer": 10},
    "unwhitened": {"plan_ridge": None, "rho": None, "max_outer": 10, "whiten": None, "center": False},
}
#: The comparisons summarised: (setting, baseline).
VERSUS = (("today", "unwhitened"), ("whitened", "unwhitened"), ("today", "whitened"), ("today", "relaxed"),
          ("relaxed", "unwhitened"), ("relaxed", "whitened"))
#: The cells of the README's two statements: {name: (sets or None for every set, sizes)}.
CLAIMS = {
    "20 and 50 per class, every set": (None, (20, 50)),
    "10, 20 and 50 per class, CIFAR sets": (("cifar-dinov2", "cifar-lite2"), (10, 20, 50)),
}


class TooFewRows(ValueError):
    """A class of the pool holds fewer rows than ``--per-class`` (:func:`balanced_subset`)."""


def balanced_subset(labels: np.ndarray, per_class: int, draw: int) -> np.ndarray:
    """Sorted row ids of ``per_class`` rows of each class, drawn with ``numpy.random.default_rng(draw)``.

    Classes are visited in increasing order; each draws ``per_class`` of its rows without
    replacement. Raises :class:`TooFewRows` (a ValueError) when a class has fewer rows.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(draw)
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < per_class:
            raise TooFewRows(f"class {c} has {len(rows)} pool rows, fewer than --per-class {per_class}")
        picked.append(rng.choice(rows, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def make_model(setting: str, seed: int = 0):
    """A fresh estimator for ``setting`` (:data:`SETTINGS`)."""
    from gpua import GPUA, VLMZeroShot

    params = SETTINGS[setting]
    return VLMZeroShot() if params is None else GPUA(**{"random_state": seed, **params})


def fit_and_score(setting: str, Z, X, Y, labels, seed: int = 0) -> dict:
    """Fit ``setting`` on ``(Z, X, Y)`` (no labels) and score its predictions on the same rows with ``labels``."""
    import warnings

    model = make_model(setting, seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(Z, X, Y)
        pred = model.predict(Z, X)
    seconds = time.perf_counter() - t0
    return {"acc": float(np.mean(pred == labels)), "seconds": seconds,
            "warnings": sorted({type(w.message).__name__ for w in caught})}


def run_set(ds, sizes, draws: int, settings, seed: int = 0, say=print) -> list[dict]:
    """One row per (size, draw, setting) on ``ds``'s pool: fields set, per_class, draw, n_rows, setting, acc, seconds."""
    pool = ds.pool
    rows = []
    for n in sizes:
        for r in range(draws):
            idx = balanced_subset(pool.labels, n, r)
            Z, X, y = pool.vfm_features[idx], pool.vlm_features[idx], pool.labels[idx]
            for s in settings:
                out = fit_and_score(s, Z, X, pool.text_prototypes, y, seed)
                rows.append({"set": ds.name, "per_class": int(n), "draw": int(r), "n_rows": int(len(idx)), "setting": s, **out})
                say(f"  {ds.name} {n}/class draw {r} {s:<11} {100 * out['acc']:6.2f}  ({out['seconds']:.1f} s)", flush=True)
    return rows


def _key(row: dict) -> tuple:
    return (row["set"], int(row["per_class"]), int(row["draw"]), row["setting"])


def merge_rows(*groups) -> list[dict]:
    """Rows of several runs, one per (set, per_class, draw, setting): a later group's row replaces an earlier one's."""
    return merge_rows_by(groups, _key)


def cell_table(rows: list[dict]) -> dict:
    """``{set: {per_class: {setting: {"mean", "std", "n_draws", "accs"}}}}`` (fractions; std with ddof=1, 0 for one draw)."""
    table: dict = {}
    for row in rows:
        table.setdefault(row["set"], {}).setdefault(int(row["per_class"]), {}).setdefault(row["setting"], []).append(
            (int(row["draw"]), float(row["acc"])))
    out: dict = {}
    for s, by_size in table.items():
        for n, by_setting in by_size.items():
            for setting, pairs in by_setting.items():
                accs = [a for _, a in sorted(pairs)]
                out.setdefault(s, {}).setdefault(n, {})[setting] = {
                    "mean": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                    "n_draws": len(accs), "accs": accs}
    return out


def compare(cells: dict, a: str, b: str, sets=None, sizes=None) -> dict | None:
    """``a`` against ``b`` over the cells holding both (restricted to ``sets`` / ``sizes`` when given).

    Returns ``{"cells", "wins", "ties", "losses", "mean_diff_points", "diffs"}`` (``a`` minus ``b``
    on the cell means, in points) and, paired by draw (the same rows), ``draws``, ``draw_wins``,
    ``draw_losses`` and ``draw_diff_sd_points`` (the standard deviation of the per-draw
    differences); None when no cell holds both.
    """
    diffs, paired = [], []
    for s, by_size in cells.items():
        if sets is not None and s not in sets:
            continue
        for n, by_setting in sorted(by_size.items()):
            if sizes is not None and n not in sizes:
                continue
            if a in by_setting and b in by_setting:
                diffs.append((s, n, 100 * (by_setting[a]["mean"] - by_setting[b]["mean"])))
                pa, pb = by_setting[a]["accs"], by_setting[b]["accs"]
                if len(pa) == len(pb):
                    paired += [100 * (x - y) for x, y in zip(pa, pb)]
    if not diffs:
        return None
    d = np.array([x for _, _, x in diffs])
    # A difference below 1e-9 points is a tie (two settings giving the same predictions).
    return {"cells": len(d), "wins": int((d > 1e-9).sum()), "ties": int((np.abs(d) <= 1e-9).sum()), "losses": int((d < -1e-9).sum()),
            "mean_diff_points": float(d.mean()), "diffs": [{"set": s, "per_class": n, "points": x} for s, n, x in diffs],
            "draws": len(paired), "draw_wins": int(sum(x > 1e-9 for x in paired)), "draw_losses": int(sum(x < -1e-9 for x in paired)),
            "draw_diff_sd_points": float(np.std(paired, ddof=1)) if len(paired) > 1 else 0.0}


def summary(rows: list[dict]) -> dict:
    """The cell table, every :data:`VERSUS` comparison, and each :data:`CLAIMS` restriction of it."""
    cells = cell_table(rows)
    out = {"cells": cells, "versus": {}, "claims": {}}
    for a, b in VERSUS:
        out["versus"][f"{a} - {b}"] = compare(cells, a, b)
        for claim, (sets, sizes) in CLAIMS.items():
            got = compare(cells, a, b, sets, sizes)
            if got is not None:
                out["claims"].setdefault(claim, {})[f"{a} - {b}"] = got
    return out


def print_summary(summ: dict, settings) -> None:
    cells = summ["cells"]
    present = [s for s in SETTINGS if s in settings or any(s in c for by in cells.values() for c in by.values())]
    print("\nTransductive top-1 (%) on class-balanced subsets of the pool: mean over draws (std)")
    print(f"  {'set':<14} {'per class':>9} {'draws':>5}  " + "  ".join(f"{s:>14}" for s in present))
    for s, by_size in cells.items():
        for n, by_setting in sorted(by_size.items()):
            draws = max(v["n_draws"] for v in by_setting.values())
            vals = [f"{100 * by_setting[x]['mean']:6.2f} ({100 * by_setting[x]['std']:4.2f})" if x in by_setting else f"{'-':>14}"
                    for x in present]
            print(f"  {s:<14} {n:>9} {draws:>5}  " + "  ".join(vals))
    for title, block in [("all cells", summ["versus"])] + [(k, v) for k, v in summ["claims"].items()]:
        lines = [f"    {name:<24} ahead in {c['wins']} of {c['cells']} cells ({c['ties']} level), mean difference {c['mean_diff_points']:+.2f} points; "
                 f"paired by draw: ahead in {c['draw_wins']} of {c['draws']} (behind in {c['draw_losses']}), sd {c['draw_diff_sd_points']:.2f}"
                 for name, c in block.items() if c is not None]
        if lines:
            print(f"\n  {title} (on the cell means):")
            print("\n".join(lines))


def add_draw_arguments(ap: argparse.ArgumentParser, settings: tuple[str, ...], *, per_class: str, default_settings: str) -> None:
    """``--per-class``, ``--draws`` and ``--settings`` (a comma-separated subset of ``settings``): the class-balanced draws of a small-pool script."""
    ap.add_argument("--per-class", default=per_class, help=f"comma-separated photos per class (default {per_class})")
    ap.add_argument("--draws", type=int, default=3, help="random subsets per size: draws 0..N-1 (default 3)")
    ap.add_argument("--settings", default=default_settings, help=f"comma-separated subset of {settings} (default {default_settings})")


def checked_draws(ap: argparse.ArgumentParser, args: argparse.Namespace, settings: tuple[str, ...]) -> tuple[list[int], list[str]]:
    """The sizes of ``--per-class`` and the names of ``--settings``, checked (a usage error, exit 2, otherwise)."""
    sizes = _int_list(args.per_class, "--per-class", ap)
    if args.draws < 1:
        ap.error(f"--draws {args.draws}: at least 1")
    chosen = [s for s in args.settings.split(",") if s]
    if not chosen or any(s not in settings for s in chosen):
        ap.error(f"--settings {args.settings!r}: choose from {settings}")
    return sizes, chosen


def each_set(ap: argparse.ArgumentParser, devsets, run, rows: list[dict], after_set=None) -> list[dict]:
    """``rows`` extended by ``run(ds)`` for each cached set of ``devsets``, ``after_set()`` after each
    (a partial results file); a set with fewer pool rows than ``--per-class`` is a usage error."""
    for name, ds in devsets:
        try:
            rows += run(ds)
        except TooFewRows as exc:  # --per-class above a class's pool rows; any other error is a bug, shown as one
            ap.error(f"{name}: {exc}")
        if after_set is not None:
            after_set()  # each finished set is on disk, should a later one be stopped
    return rows


def _int_list(text: str, what: str, ap) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        ap.error(f"{what} {text!r}: give whole numbers separated by commas, e.g. 10,20,50")
    if not vals or min(vals) < 1:
        ap.error(f"{what} {text!r}: give at least one number, each at least 1")
    return vals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(ap, SETS)
    ap.set_defaults(sets=",".join(REAL_SETS))
    add_draw_arguments(ap, tuple(SETTINGS), per_class="10,20,50", default_settings=",".join(SETTINGS))
    ap.add_argument("--seed", type=int, default=0, help="the GPUA fits' random_state (default 0)")
    ap.add_argument("--merge", nargs="+", type=Path, default=[], metavar="JSON", help="earlier runs' --json files whose rows join this run's")
    ap.add_argument("--json", action=OutputPath, default=None, help="write the rows and the summary here (atomically)")
    args = ap.parse_args(argv)
    sets = chosen_sets(ap, args, SETS)
    sizes, settings = checked_draws(ap, args, tuple(SETTINGS))
    earlier = [data["rows"] for data in read_results(ap, args.merge, "small_pools.py")]
    setup(args)
    rows: list[dict] = []
    t0 = time.perf_counter()

    def record(done: bool) -> None:
        all_rows = merge_rows(*earlier, rows)
        write_json(args.json, {"sets": list(dict.fromkeys(r["set"] for r in all_rows)), "per_class": sizes, "draws": args.draws,
                               "settings": {s: SETTINGS[s] for s in settings}, "seed": args.seed, "merged": [str(p) for p in args.merge],
                               "complete": done, "missing_sets": devsets.missing_sets, "wall_s": time.perf_counter() - t0,
                               "rows": all_rows, "summary": summary(all_rows)})

    devsets = cached_devsets(sets, args.cache_dir)
    each_set(ap, devsets, lambda ds: run_set(ds, sizes, args.draws, settings, args.seed), rows,
             (lambda: record(False)) if args.json else None)
    devsets.finish(bool(rows) or any(earlier), args.json)
    wall = time.perf_counter() - t0
    print_summary(summary(merge_rows(*earlier, rows)), settings)
    print(f"\nwall time of this run's fits: {wall:.0f} s")
    if args.json:
        record(True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
