r"""Canonical completions of the Procrustes map when it is not unique (fewer classes than the target width).

GPUA's initial map is :math:`W_0 = U V^\top` from the thin SVD of :math:`M = Q^\top P Y`
(:func:`gpua.procrustes.procrustes_from_assignment`; :math:`Q` the whitened query,
:math:`d_{in}` wide, :math:`Y` the centred prototypes, :math:`d_{out}` wide). With :math:`K`
classes :math:`M` has rank :math:`r \le K - 1` (the centred prototypes span :math:`K-1`
directions), so when :math:`r < m = \min(d_{in}, d_{out})` every
:math:`W = U_r V_r^\top + W_c`, with :math:`W_c` any partial isometry from the orthogonal
complement of :math:`U_r` to that of :math:`V_r` (rank :math:`m - r`), maximises
:math:`\mathrm{tr}(W^\top M)` equally: the SVD's singular vectors of the zero singular values
complete the map arbitrarily (they follow the float rounding of :math:`M`, so a sum in another
order, grouping or precision can complete it otherwise).
This script fits GPUA with three completions (``ArrayPool.procrustes`` overridden; everything
else is ``gpua.fitting.fit_arrays``' own sequence, self-learning rounds included):

* ``default``: the SVD's own completion (whatever ``torch.linalg.svd`` returns): ``GPUA()``'s
  until 2026-12-01, ``GPUA(procrustes_completion="svd")`` since (the name is kept so that the
  JSON of earlier runs merges);
* ``complete_crosscov``: :math:`W_0 = U_r V_r^\top + \mathrm{polar}_{m-r}\big(\Pi_U\, Q^\top X\, \Pi_V\big)`
  with :math:`X` the pool's own (centred, normalised) VLM image rows, :math:`Q^\top X` the
  query-to-VLM cross-covariance of the pool, :math:`\Pi_U = I - U_r U_r^\top`,
  :math:`\Pi_V = I - V_r V_r^\top`, and :math:`\mathrm{polar}_{k}(A) = \sum_{j \le k} a_j b_j^\top`
  from the top :math:`k` singular triplets of :math:`A`. This is the limit
  :math:`t \to 0^+` of :math:`\mathrm{polar}(M + t\,\tfrac{\|M\|_F}{\|Q^\top X\|_F} Q^\top X)`: the
  added term decides only the null space and leaves the part of :math:`W_0` that :math:`M`
  determines exactly as it is. ``--crosscov-t T > 0`` uses that literal polar factor with
  :math:`t` = T instead (it then also tilts the determined part, by :math:`O(t)`);
* ``complete_identity``: the same with :math:`E = I_{d_{in} \times d_{out}}` (the identity's
  top-left block, ones on the diagonal of the rectangular matrix) in place of :math:`Q^\top X`.
  In the whitened coordinates input :math:`j` is the pool query's :math:`j`-th principal
  direction, so :math:`E` sends it to VLM coordinate :math:`j`: canonical, not meaningful.

``complete_crosscov`` is the prototype of today's default, ``procrustes_completion="crosscov"``
(:func:`gpua.procrustes.procrustes_map`, which fills from :math:`E` whatever :math:`Q^\top X`
leaves free: a pool of fewer rows than the query's width); the tests check that the two fit alike.

The rank :math:`r` is the number of singular values above ``--rank-rtol`` (1e-4) times the largest
(the rest are float rounding: about 1e-7 of the largest for float32 prototypes); where
:math:`r = m` the map is unique and all three rows coincide. (``planted`` has a null space too:
its 50 prototypes come from a 16-dimensional latent, so :math:`r = 17` of :math:`m = 32`.)

For each set (``benchmarks/devsets.py``; cached features, ``planted`` generated; seed 0) and
completion: ``test`` / ``dev`` / ``pl`` as ``benchmarks/accuracy.py`` (dev: the labelled dev
split, or CIFAR's transductive pool top-1; pl: pseudo-label accuracy on the pool), and **row
order**: the same fit on the pool with its rows permuted (``default_rng(--shuffle-seed)``),
predictions of the two fits compared on the pool and on the test split (and the largest entry
of :math:`|W_a - W_b|`, :math:`|W_{0,a} - W_{0,b}|`), in these modes (``--order-modes``):

* ``off``: ``refine=False`` (:math:`W = W_0` in every round; the self-learning rounds still run);
* ``off_sl0``: ``refine=False, self_learning=0``: UCM and Procrustes alone;
* ``aligned``: refinement on, the permuted fit's refinement and self-learning criterion reading
  the rows in the original order (its driver maps their row ids back through the permutation),
  so the two fits' refinement sees the same batches and held-out rows: what is left to differ is
  the order of the sums (whitening moment, UCM, :math:`Q^\top P Y`) and the completion;
* ``aligned_sl0``: ``aligned`` with ``self_learning=0`` (the rounds' re-mining can flip a few
  near-tied pseudo-labels on rounding alone, and a flipped label moves the next :math:`W_0`);
* ``raw``: refinement on, the permuted fit as a user's reordered folder would run it (its
  mini-batches and held-out rows are other rows: differences from that are expected, whatever
  the completion);
* ``perturbed_sl0``: not a permutation: the same rows in the same order, refinement on,
  ``self_learning=0``, the second fit's :math:`M` given seeded Gaussian noise of ``--perturb``
  (default 1e-6) times its RMS entry before the polar factor: what summing :math:`M` in another
  precision or grouping (chunks, clients: the streamed-versus-in-memory situation of the
  README) does. The default's completion follows its near-zero
  singular values (float rounding of the prototypes, about 1e-7 of the largest), which a
  perturbation of this size reorders; a canonical completion should not move.

    python benchmarks/procrustes_completion.py                    # all five sets
    python benchmarks/procrustes_completion.py --sets planted --order-modes off
    python benchmarks/procrustes_completion.py --sets cifar-dinov2,cifar-lite2,planted --json results/pc_cifar.json
    python benchmarks/procrustes_completion.py --sets '' --merge results/pc_cifar.json results/pc_fmnist.json --json results/pc.json

``--merge FILE...``: earlier runs' rows join this run's (a later row replaces an earlier one for
the same set and completion), and the table and mean dev are of them all. With ``--json`` the
file is rewritten after each row (``"complete": false`` until the run ends). Sets of ``--sets``
whose features are not extracted are named at the end and in ``"missing_sets"``; a run with no
row at all (none measured, none merged) writes nothing and exits 1.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _harness import OutputPath, merge_rows_by, read_results, setup, write_json
from devsets import REAL_SETS, SETS, add_set_arguments, cached_devsets, chosen_sets

from gpua.fitting import ArrayPool
from gpua.procrustes import cross_covariance, polar_factor
from gpua.refinement import refine

COMPLETIONS = ("default", "complete_crosscov", "complete_identity")
#: Row-order modes: (refinement on, self_learning=0, refinement aligned with the original order,
#: the second fit's M perturbed instead of its rows permuted).
ORDER_MODE_SETTINGS = {
    "off": (False, False, False, False),
    "off_sl0": (False, True, False, False),
    "aligned": (True, False, True, False),
    "aligned_sl0": (True, True, True, False),
    "raw": (True, False, False, False),
    "perturbed_sl0": (True, True, False, True),
}
PERTURB = 1e-6
ORDER_MODES = tuple(ORDER_MODE_SETTINGS)
RANK_RTOL = 1e-4


def top_polar(A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:math:`\\sum_{j<k} a_j b_j^\\top` from the top ``k`` singular triplets of ``A``, and all of ``A``'s singular values."""
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    return U[:, :k] @ Vh[:k], s


def completed_polar(M: torch.Tensor, F: torch.Tensor | None, rtol: float = RANK_RTOL, t: float = 0.0) -> tuple[torch.Tensor, dict]:
    r"""The polar factor of ``M`` with its null space filled from ``F`` (module docstring); float64.

    ``F=None``: :func:`gpua.procrustes.polar_factor` (the default). ``t > 0``: the literal
    :math:`\mathrm{polar}(M + t \|M\|_F / \|F\|_F\, F)`. Otherwise :math:`U_r V_r^\top +
    \mathrm{polar}_{m-r}(\Pi_U F \Pi_V)`, :math:`r` the singular values of ``M`` above ``rtol``
    times the largest.

    Returns
    -------
    W : tensor of shape M.shape, float64
    record : dict
        ``rank`` (r), ``width`` (m), ``smallest_kept`` (the r-th singular value over the
        largest), ``dropped_over_kept`` (the largest singular value counted as
        zero over the smallest kept, 0 when none), ``filler_cond`` (smallest over largest of the
        ``m - r`` filler singular values used; near 0 would mean ``F`` does not pin the
        completion down), ``objective`` :math:`\mathrm{tr}(W^\top M)`.
    """
    M = M.double()
    m = min(M.shape)
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    r = int((s > rtol * s[0]).sum()) if float(s[0]) > 0 else 0
    rec = {"rank": r, "width": m, "smallest_kept": float(s[r - 1] / s[0]) if r else 0.0,
           "dropped_over_kept": float(s[r] / s[r - 1]) if 0 < r < len(s) else 0.0, "filler_cond": None}
    if F is None or r >= m:
        W = U @ Vh
    elif t > 0:
        F = F.double()
        W = polar_factor(M + t * (torch.linalg.matrix_norm(M) / torch.linalg.matrix_norm(F)) * F)
    else:
        Ur, Vr = U[:, :r], Vh[:r].T
        Fp = F.double()
        Fp = Fp - Ur @ (Ur.T @ Fp)
        Fp = Fp - (Fp @ Vr) @ Vr.T
        Wc, sc = top_polar(Fp, m - r)
        rec["filler_cond"] = float(sc[m - r - 1] / sc[0]) if float(sc[0]) > 0 else 0.0
        W = Ur @ Vr.T + Wc
    rec["objective"] = float((W * M).sum())
    return W, rec


def filler(kind: str, Q: torch.Tensor, X: torch.Tensor, d_out: int) -> torch.Tensor | None:
    """The matrix that fills the null space: ``Q^T X`` (``complete_crosscov``), ``I`` (``complete_identity``), None (``default``)."""
    if kind == "default":
        return None
    if kind == "complete_crosscov":
        return Q.double().T @ X.double()
    if kind == "complete_identity":
        return torch.eye(Q.shape[1], d_out, dtype=torch.float64, device=Q.device)
    raise ValueError(f"unknown completion {kind!r}; choose from {COMPLETIONS}")


class CompletedPool(ArrayPool):
    """:class:`gpua.fitting.ArrayPool` whose Procrustes step completes the null space canonically.

    ``align`` (int64 tensor or None): for a fit on permuted rows, ``align[i]`` is the position
    of original row ``i``; refinement and the self-learning criterion then read the rows in the
    original order (``aligned`` mode). ``perturb`` > 0 adds seeded Gaussian noise of that size
    times the RMS entry of :math:`M = Q^\\top P Y` before the polar factor (``perturbed_sl0``
    mode: a sum in another precision or order). ``records`` gets one :func:`completed_polar` record per
    Procrustes call, with ``vs_default_fro``: :math:`\\|W_0 - W_0^{default}\\|_F` on the same plan.
    """

    def __init__(self, Q, X, Y, V, config, *, completion: str = "default", t: float = 0.0, rtol: float = RANK_RTOL,
                 align: torch.Tensor | None = None, perturb: float = 0.0):
        super().__init__(Q, X, Y, V, config)
        self.completion, self.t, self.rtol, self.align, self.perturb = completion, float(t), float(rtol), align, float(perturb)
        self.records: list[dict] = []

    def procrustes(self, mined):
        P = mined.payload
        if self.config.mining.assignment == "hard":
            P = torch.nn.functional.one_hot(P.argmax(1), P.shape[1]).to(self.Q.dtype)
        M = cross_covariance(self.Q, P, self.Y)
        if self.perturb:
            gen = torch.Generator().manual_seed(len(self.records))
            noise = torch.randn(M.shape, generator=gen, dtype=torch.float64).to(M.device)
            M = M + self.perturb * (torch.linalg.matrix_norm(M) / M.numel() ** 0.5) * noise
        W, rec = completed_polar(M, filler(self.completion, self.Q, self.X, self.Y.shape[1]), self.rtol, self.t)
        if self.completion != "default":
            W_def, rec_def = completed_polar(M, None, self.rtol)
            rec["vs_default_fro"] = float(torch.linalg.matrix_norm(W - W_def))
            rec["objective_default"] = rec_def["objective"]
        self.records.append(rec)
        return W.to(self.Q.dtype)

    def refine(self, W0, labels, config, callback):
        if self.align is None:
            return super().refine(W0, labels, config, callback)
        pos = self.align
        augment = {"n_rows": 0}
        W, curve = refine(W0, lambda idx: self.Q[pos.to(idx.device)[idx]], self.Q.shape[0], self.Y, labels[pos.to(labels.device)],
                          config, callback, augment)
        return W, curve, augment

    def consistency(self, labels):
        if self.align is None:
            return super().consistency(labels)
        from gpua.fitting import label_consistency

        pos = self.align
        return label_consistency(self.V[pos.to(self.V.device)], labels[pos.to(labels.device)], random_state=self.config.refinement.seed)


def fit_completed(params: dict, Z, X, Y, completion: str = "default", *, t: float = 0.0, rtol: float = RANK_RTOL,
                  align: np.ndarray | None = None, perturb: float = 0.0):
    """``GPUA(**params).fit(Z, X, Y)`` with :class:`CompletedPool`'s Procrustes; (fitted GPUA, Procrustes records).

    The steps of :func:`gpua.fitting.fit_arrays` (uniform or given ``class_prior`` only), through
    ``benchmarks/_levers.py``.
    """
    from types import SimpleNamespace

    from _levers import fit_with, prepare

    from gpua import GPUA

    prep = prepare(GPUA(**params).get_params(), SimpleNamespace(vfm_features=Z, vlm_features=X, text_prototypes=Y, classnames=None))
    pool = CompletedPool(*prep.rows(), completion=completion, t=t, rtol=rtol,
                         align=None if align is None else torch.as_tensor(np.asarray(align), dtype=torch.long), perturb=perturb)
    return fit_with(prep, pool), pool.records


def _quiet_fit(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fit_completed(*args, **kwargs)
    return out, sorted({type(w.message).__name__ for w in caught})


def order_check(ds, completion: str, mode: str, *, seed: int, shuffle_seed: int, t: float, rtol: float, base=None,
                perturb: float = PERTURB) -> dict:
    """Fit on the pool and on its permuted rows (``mode``: a key of :data:`ORDER_MODE_SETTINGS`); how far the two fits' predictions part.

    ``base``: the fit on the pool in its order with the defaults (``seed``), reused by ``aligned`` and ``raw``.
    """
    pool = ds.pool
    Z, X, Y = pool.vfm_features, pool.vlm_features, pool.text_prototypes
    perm = np.random.default_rng(shuffle_seed).permutation(pool.n_samples)
    pos = np.argsort(perm)  # original row i sits at pos[i] of the permuted pool
    refine_on, sl0, aligned, perturbed = ORDER_MODE_SETTINGS[mode]
    params = {"random_state": seed, **({} if refine_on else {"refine": False}), **({"self_learning": 0} if sl0 else {})}
    if base is None or not refine_on or sl0:
        (base, _), _ = _quiet_fit(params, Z, X, Y, completion, t=t, rtol=rtol)
    if perturbed:
        (other, _), _ = _quiet_fit(params, Z, X, Y, completion, t=t, rtol=rtol, perturb=perturb)
    else:
        (other, _), _ = _quiet_fit(params, Z[perm], X[perm], Y, completion, t=t, rtol=rtol, align=pos if aligned else None)
    out = {"W_max_abs_diff": float((base.W_ - other.W_).abs().max()), "W0_max_abs_diff": float((base.W0_ - other.W0_).abs().max())}
    for part, fs in (("pool", pool), ("test", ds.test)):
        a, b = base.predict(fs.vfm_features, fs.vlm_features), other.predict(fs.vfm_features, fs.vlm_features)
        out[f"{part}_differ"] = int((a != b).sum())
        out[f"{part}_n"] = int(len(a))
        out[f"{part}_acc_pair"] = [float(np.mean(a == fs.labels)), float(np.mean(b == fs.labels))]
    return out


def evaluate(ds, completion: str, *, seed: int = 0, t: float = 0.0, rtol: float = RANK_RTOL, order_modes=ORDER_MODES,
             shuffle_seed: int = 1, perturb: float = PERTURB) -> dict:
    """One row: test / dev / pl of the completion's fit on ``ds.pool`` (seed ``seed``), its Procrustes records and its row-order checks."""
    pool = ds.pool
    t0 = time.perf_counter()
    (model, records), caught = _quiet_fit({"random_state": seed}, pool.vfm_features, pool.vlm_features, pool.text_prototypes,
                                          completion, t=t, rtol=rtol)
    seconds = time.perf_counter() - t0

    def acc(fs) -> float:
        return float(np.mean(model.predict(fs.vfm_features, fs.vlm_features) == fs.labels))

    row = {"set": ds.name, "completion": completion, "seed": seed, "test": acc(ds.test), "dev": acc(ds.dev) if ds.dev is not None else acc(pool),
           "pl": float(np.mean(model.pseudo_labels_ == pool.labels)), "seconds": seconds, "warnings": caught, "procrustes": records,
           "order": {}}
    t1 = time.perf_counter()
    for mode in order_modes:
        row["order"][mode] = order_check(ds, completion, mode, seed=seed, shuffle_seed=shuffle_seed, t=t, rtol=rtol, base=model,
                                         perturb=perturb)
    row["order_seconds"] = time.perf_counter() - t1
    return row


def merge_rows(*groups) -> list[dict]:
    """One row per (set, completion); a later group's row replaces an earlier one's."""
    return merge_rows_by(groups, lambda row: (row["set"], row["completion"]))


def mean_dev(rows: list[dict]) -> dict[str, dict]:
    """Per completion: the mean dev over the four real sets, when it has all four (else None), and the sets counted."""
    out = {}
    for c in dict.fromkeys(r["completion"] for r in rows):
        devs = {r["set"]: r["dev"] for r in rows if r["completion"] == c and r["set"] in REAL_SETS}
        out[c] = {"mean_dev_real": float(np.mean(list(devs.values()))) if len(devs) == len(REAL_SETS) else None,
                  "mean_dev_sets": sorted(devs), "mean_dev_available": float(np.mean(list(devs.values()))) if devs else None}
    return out


def print_table(rows: list[dict], modes) -> None:
    head = "".join(f" {m:>12}" for m in modes)
    print("\nSeed 0; test / dev / pl top-1 (%); rank r of Q^T P Y of width m (first Procrustes call); "
          "then, per mode, the predictions that differ between the fit and the fit on permuted rows (perturbed_sl0: on a perturbed M), pool / test")
    print(f"  {'set':<14} {'completion':<18} {'test':>6} {'dev':>6} {'pl':>6} {'r/m':>8}{head}")
    for r in rows:
        rec = r["procrustes"][0] if r["procrustes"] else {}
        rank = f"{rec.get('rank', '?')}/{rec.get('width', '?')}"
        cells = [f"{r['order'][m]['pool_differ']}/{r['order'][m]['test_differ']}" if m in r["order"] else "-" for m in modes]
        order = "".join(f" {c:>12}" for c in cells)
        print(f"  {r['set']:<14} {r['completion']:<18} {100 * r['test']:6.2f} {100 * r['dev']:6.2f} {100 * r['pl']:6.2f} {rank:>8}{order}")
    print("\n  mean dev, 4 real sets:")
    for c, v in mean_dev(rows).items():
        got = f"{100 * v['mean_dev_real']:.2f}" if v["mean_dev_real"] is not None else f"- (only {', '.join(v['mean_dev_sets']) or 'no real set'})"
        print(f"    {c:<18} {got}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(ap, SETS)
    ap.add_argument("--completions", default=",".join(COMPLETIONS), help=f"comma-separated subset of {COMPLETIONS}")
    ap.add_argument("--order-modes", default=",".join(ORDER_MODES),
                    help=f"comma-separated subset of {ORDER_MODES} ('' for no row-order check)")
    ap.add_argument("--seed", type=int, default=0, help="the fits' random_state (default 0)")
    ap.add_argument("--shuffle-seed", type=int, default=1, help="seed of the row permutation (default 1)")
    ap.add_argument("--crosscov-t", type=float, default=0.0,
                    help="0 (default): fill only the null space (the t -> 0 limit); T > 0: polar(M + T |M|/|F| F) literally")
    ap.add_argument("--perturb", type=float, default=PERTURB, help=f"perturbed_sl0's noise, times M's RMS entry (default {PERTURB:g})")
    ap.add_argument("--rank-rtol", type=float, default=RANK_RTOL, help=f"singular values below this times the largest count as zero (default {RANK_RTOL:g})")
    ap.add_argument("--merge", nargs="+", type=Path, default=[], metavar="JSON", help="earlier runs' --json files whose rows join this run's")
    ap.add_argument("--json", action=OutputPath, default=None, help="write the rows and mean dev here (atomically)")
    args = ap.parse_args(argv)
    sets = chosen_sets(ap, args, SETS)
    completions = [c for c in args.completions.split(",") if c]
    if not completions or any(c not in COMPLETIONS for c in completions):
        ap.error(f"--completions {args.completions!r}: choose from {COMPLETIONS}")
    modes = [m for m in args.order_modes.split(",") if m]
    if any(m not in ORDER_MODES for m in modes):
        ap.error(f"--order-modes {args.order_modes!r}: choose from {ORDER_MODES}")
    if args.crosscov_t < 0 or args.perturb <= 0 or not 0 < args.rank_rtol < 1:
        ap.error("--crosscov-t must be >= 0, --perturb > 0 and --rank-rtol in (0, 1)")
    earlier = [data["rows"] for data in read_results(ap, args.merge, "procrustes_completion.py")]
    setup(args)
    rows, t0 = [], time.perf_counter()

    def record(done: bool) -> None:
        all_rows = merge_rows(*earlier, rows)
        write_json(args.json, {"sets": list(dict.fromkeys(r["set"] for r in all_rows)), "completions": completions, "order_modes": modes,
                               "seed": args.seed, "shuffle_seed": args.shuffle_seed, "crosscov_t": args.crosscov_t,
                               "rank_rtol": args.rank_rtol, "perturb": args.perturb, "merged": [str(p) for p in args.merge],
                               "complete": done, "missing_sets": devsets.missing_sets, "wall_s": time.perf_counter() - t0,
                               "rows": all_rows, "mean_dev": mean_dev(all_rows)})

    devsets = cached_devsets(sets, args.cache_dir)
    for name, ds in devsets:
        for c in completions:
            row = evaluate(ds, c, seed=args.seed, t=args.crosscov_t, rtol=args.rank_rtol, order_modes=modes, shuffle_seed=args.shuffle_seed,
                           perturb=args.perturb)
            rows.append(row)
            order = ", ".join(f"{m} {o['pool_differ']}/{o['test_differ']}" for m, o in row["order"].items())
            print(f"  {name} {c:<18} test {100 * row['test']:.2f} dev {100 * row['dev']:.2f} pl {100 * row['pl']:.2f} "
                  f"({row['seconds']:.0f} s; row order {order or '-'}, {row['order_seconds']:.0f} s)", flush=True)
            if args.json:
                record(False)  # each finished row is on disk, should the run be stopped
    devsets.finish(bool(rows) or any(earlier), args.json)
    wall = time.perf_counter() - t0
    all_rows = merge_rows(*earlier, rows)
    print_table(all_rows, modes or list(ORDER_MODES))
    print(f"\nwall time of this run's fits: {wall:.0f} s")
    if args.json:
        record(True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
