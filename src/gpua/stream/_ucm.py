r"""Streamed UCM: :func:`gpua.ucm.mine_correspondences` from per-chunk sums.

The driver holds only :math:`O(K d + N)` state: the centres :math:`C`, the class potential
:math:`g` and the pseudo-labels. One Sinkhorn iteration is one pass over the chunks, each
returning the column sums of its row-exact plan,

.. math::
    \mathrm{col}_k = \sum_i P_{ik}(g), \qquad
    g \leftarrow \delta\,\big(\log b - \log \mathrm{col} + g\big),\quad
    \delta = \frac{\rho}{\rho + \varepsilon}\ (1 \text{ when balanced}),

which is exactly the log-domain update of :func:`gpua.ot.sinkhorn` (row potentials
:math:`f_i = \log a_i - \mathrm{LSE}_k(S_{ik}/\varepsilon + g_k)` are recomputed inside each
chunk), with the same stopping rule (relative class-marginal error before the update, or the
largest potential change when semi-relaxed) and the same warm start across rounds. A last pass
per round sums what the round needs: :math:`P^\top Q` (the centres; and, since
:math:`Q^\top P Y = (P^\top Q)^\top Y`, the Procrustes cross-covariance for free), the plan
change against the previous round, and each row's argmax and confidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .._errors import GPUAError
from ..projection import PlanProjection, ridge_projection
from ..ucm import top_rows
from . import _kernels as K_
from ._checkpoint import Checkpoint
from ._progress import Bar, passes_left

__all__ = ["StreamedUCM", "streamed_ucm"]


@dataclass
class StreamedUCM:
    """Output of :func:`streamed_ucm` (what :class:`gpua.ucm.UCMResult` holds, without the plan).

    Attributes
    ----------
    centres : tensor of shape (n_classes, d_q), float32
    labels : int64 tensor of shape (n_samples,) or None
        Argmax of the final plan (None when the rows' results stay with federated clients).
    confidence : float32 tensor of shape (n_samples,) or None
        Max of the final plan's rows (rows sum to one).
    cross_covariance : float64 tensor of shape (d_q, d_vlm)
        :math:`Q^\top P Y` (soft) or with the one-hot plan (``assignment="hard"``).
    n_outer : int
    converged : bool
    history : list of dict
    log_v : float64 tensor of shape (n_classes,)
    passes : int
        Chunk passes over the data (for the record).
    """

    centres: torch.Tensor
    labels: torch.Tensor | None
    confidence: torch.Tensor | None
    cross_covariance: torch.Tensor
    n_outer: int
    converged: bool
    history: list[dict] = field(default_factory=list)
    log_v: torch.Tensor | None = None
    passes: int = 0


def confident_centres_streamed(ex, parts, fit_b, n_classes: int, n_samples: int, m: int, bar: Bar) -> torch.Tensor:
    r""":func:`gpua.ucm.confident_centres` in two passes: per-chunk top-``m`` candidates, then sums.

    Pass 1 returns each chunk's ``m`` most confident rows per class; their union holds the global
    top ``m``, selected here. Pass 2 returns, per chunk, :math:`\sum p_{ik} Q_i` over its selected
    rows (only sums leave a chunk, so this also serves federated clients).

    Returns
    -------
    C : tensor of shape (n_classes, d_q), rows L2-normalised
    """
    res = ex.map(K_.part_candidates, parts, fit_b, m, on_done=bar.tick)
    vals = torch.cat([v for v, _ in res])
    rows = torch.cat([r for _, r in res])
    top_p, top_i = top_rows(vals, rows, m)  # (m, K)
    classes = torch.arange(n_classes).expand_as(top_i)
    sel = (top_i.reshape(-1), classes.reshape(-1), top_p.reshape(-1))
    sums = ex.reduce(K_.part_init_sums, parts, fit_b, *sel, merge=K_.sum_tensors, on_done=bar.tick)
    return torch.nn.functional.normalize(sums.float(), dim=1)


def streamed_ucm(
    ex,
    parts,
    fit: K_.FitSpec,
    fit_b,
    *,
    b: torch.Tensor,
    rho: float | None,
    tol: float,
    sinkhorn_tol: float,
    sinkhorn_max_iter: int,
    max_outer: int,
    n_init_per_class: int,
    checkpoint: Checkpoint | None = None,
    callback=None,
    progress: bool = False,
    init_log_v: torch.Tensor | None = None,
    label: str = "",
    plan_ridge: float | None = None,
    moments: Callable[[], torch.Tensor] | None = None,
) -> StreamedUCM:
    r"""Alternate streamed Sinkhorn and closed-form centres until the plan settles.

    Parameters
    ----------
    ex : LocalExecutor or DaskExecutor
    parts : list of Part
        The chunks, in row order.
    fit : FitSpec
        (``fit_b`` is its broadcast handle on ``ex``.)
    b : float64 tensor of shape (n_classes,)
        Class marginal, summing to one.
    rho, tol, sinkhorn_tol, sinkhorn_max_iter, max_outer, n_init_per_class
        As in :func:`gpua.ucm.mine_correspondences`.
    checkpoint : Checkpoint, optional
        Resume from its state and save after every round.
    callback : callable, optional
        Called with each round's history entry (after the checkpoint is written).
    init_log_v : float64 tensor of shape (n_classes,), optional
        Class potential the first Sinkhorn pass starts from (as in :func:`gpua.ucm.mine_correspondences`).
    label : str
        Put before the progress bars' names (``"self-learning 1: "``): which mining they belong to.
    plan_ridge : float > 0, optional
        Replace the final plan by its ridge projection (:mod:`gpua.projection`): one more pass
        sums the projected plan's labels, centres and cross-covariance.
    moments : callable, optional
        Returns :func:`gpua.projection.query_moments` of the whole pool, float64 of shape
        (d_q + 1, d_q + 1) (needed with ``plan_ridge``; called only when a projection is solved,
        so a finished checkpoint costs no pass over the data).

    Returns
    -------
    StreamedUCM
    """
    n, k = fit.n_total, fit.Y.shape[0]
    eps, lam = float(fit.eps), float(fit.lam)
    damp = 1.0 if rho is None else rho / (rho + eps)
    log_b = b.log()
    n_chunks = len(parts)
    history: list[dict] = []
    passes = 0
    state = checkpoint.load() if checkpoint is not None else None
    C_prev = g_prev = None
    g = torch.zeros(k, dtype=torch.float64) if init_log_v is None else init_log_v.detach().double().cpu().clone()
    r0 = 1
    if state is not None:
        meta = state["meta"]
        history, passes = meta["history"], int(meta["passes"])
        if meta["done"]:
            result = StreamedUCM(
                state["centres_final"], state["labels"], state["confidence"], state["cross_covariance"],
                int(meta["round"]), bool(meta["converged"]), history, state["g"], passes,
            )
            if plan_ridge is None or meta.get("projected"):
                return result
            # Interrupted between UCM's last round and the projection's pass: that pass alone is left.
            projection = ridge_projection(moments(), state["plan_query"], state["plan_mass"], plan_ridge)
            saved = {key: v for key, v in state.items() if key != "meta"}
            return _projected(ex, parts, fit, fit_b, projection, result, checkpoint, meta, saved, progress, label)
        C_prev, g_prev, g = state["centres"], state["g"], state["g"].clone()
        C, r0 = state["centres_next"], int(meta["round"]) + 1
    else:
        with Bar(progress, f"{label}UCM init (confident centres)", 2 * n_chunks) as bar:
            C = confident_centres_streamed(ex, parts, fit_b, k, n, n_init_per_class, bar)
        passes += 2
    result = None
    for r in range(r0, max_outer + 1):
        rnd_b = ex.broadcast(K_.RoundSpec(r, C, C_prev, g_prev))
        with Bar(progress, f"{label}UCM round {r}/{max_outer}", n_chunks * 4) as bar:
            # The first pass builds the tiles and is the log-domain sweep of gpua.ot.sinkhorn.
            col = K_.sum_tensors(ex.map(K_.part_build, parts, fit_b, rnd_b, g, on_done=bar.tick))
            g = damp * (log_b - col.log() + g)
            errors: list[float] = []
            it = 0
            while it < sinkhorn_max_iter:
                it += 1
                col = K_.sum_tensors(ex.map(K_.part_pass, parts, fit_b, rnd_b, g, on_done=bar.tick))
                g_new = damp * (log_b - col.log() + g)
                err = float(((col - b).abs() / b).max()) if rho is None else float((g_new - g).abs().max())
                g = g_new
                errors.append(err)
                bar.postfix(err=f"{err:.1e}")
                bar.set_total(n_chunks * (it + 3 + passes_left(errors, sinkhorn_tol, sinkhorn_max_iter - it)))
                if err < sinkhorn_tol or not torch.isfinite(g).all():
                    break
            if not torch.isfinite(g).all():
                raise GPUAError(f"Sinkhorn diverged at eps={eps}: the scores span too wide a range for this eps; raise eps.")
            bar.set_total(bar.n + n_chunks)
            stats = ex.map_stats(parts, fit_b, rnd_b, g, on_done=bar.tick)
        passes += it + 2
        change = float("inf") if stats["change"] is None else 0.5 * stats["change"] / n
        marginal = float(((stats["col"] - b).abs() / b).max()) if rho is None else err
        history.append({"round": r, "plan_change": change, "sinkhorn_iter": it, "marginal_error": marginal})
        converged = change < tol or lam == 1.0  # with lam = 1 the centres cannot change the score
        centres, cross_covariance, labels, conf = _plan_results(stats, fit)
        C_next = None if converged else centres
        result = StreamedUCM(C if converged else C_next, labels, conf, cross_covariance, r, converged, history, g.clone(), passes)
        done = converged or r == max_outer
        meta = {"round": r, "converged": converged, "done": done, "history": history, "passes": passes}
        projecting = done and plan_ridge is not None
        if projecting:
            meta["projected"] = False
            plan_mass = stats["col"] * n
            projection = ridge_projection(moments(), stats["centre_sums"], plan_mass, plan_ridge)
        saved = dict(centres=C, centres_next=C_next, centres_final=result.centres, g=g, labels=labels, confidence=conf,
                     cross_covariance=result.cross_covariance,
                     **({"plan_query": stats["centre_sums"], "plan_mass": plan_mass} if projecting else {}))
        if checkpoint is not None:
            checkpoint.save(meta, **saved)
        if callback is not None:
            callback(history[-1])
        if projecting:
            return _projected(ex, parts, fit, fit_b, projection, result, checkpoint, meta, saved, progress, label)
        if converged:
            break
        C_prev, g_prev, C = C, g.clone(), C_next
    if result is None:  # max_outer < the resumed round: nothing left to run
        raise GPUAError(f"max_outer={max_outer} is below the checkpoint's round; use the same max_outer or a new checkpoint folder.")
    return result


def _plan_results(stats: dict, fit: K_.FitSpec):
    r"""(centres, :math:`Q^\top P Y`, labels, confidences) of a plan from its merged chunk sums
    (:func:`gpua.stream._kernels.merge_stats`); the per-row results, in row order, are None when
    they stay with federated clients."""
    counts = (stats["col"] * fit.n_total).clamp_min(torch.finfo(torch.float32).tiny)
    centres = torch.nn.functional.normalize((stats["centre_sums"] / counts[:, None]).float(), dim=1)
    sums = stats["hard_sums"] if fit.assignment == "hard" else stats["centre_sums"]
    order = sorted(stats["parts"])
    labels = torch.cat([stats["parts"][i][0] for i in order]) if order else None
    conf = torch.cat([stats["parts"][i][1] for i in order]) if order else None
    return centres, sums.T @ fit.Y.double(), labels, conf


def _projected(ex, parts, fit: K_.FitSpec, fit_b, projection: PlanProjection, result: StreamedUCM, checkpoint: Checkpoint | None,
               meta: dict, saved: dict, progress: bool, label: str) -> StreamedUCM:
    r"""``result`` with the projected plan's labels, confidences, centres and cross-covariance (one pass; ``plan_ridge``).

    ``saved`` holds the tensors of the checkpoint state written before this pass; the state
    after it is those with the projected plan's results in place."""
    projection_b = ex.broadcast(projection)  # d_q x K coefficients: sent once, not with every chunk's task
    with Bar(progress, f"{label}plan projection", len(parts)) as bar:
        stats = ex.reduce(K_.part_projected_stats, parts, fit_b, projection_b, merge=K_.merge_stats, on_done=bar.tick)
    centres, cross_covariance, labels, conf = _plan_results(stats, fit)
    passes = result.passes + 1
    out = replace(result, centres=centres, labels=labels, confidence=conf, cross_covariance=cross_covariance, passes=passes)
    if checkpoint is not None:
        checkpoint.save({**meta, "projected": True, "passes": passes},
                        **{**saved, "centres_final": out.centres, "labels": labels, "confidence": conf,
                           "cross_covariance": out.cross_covariance})
    return out
