r"""Federated GPUA: clients keep their features; the server sees aggregated statistics only.

The streamed fit already reduces every stage to sums over rows, so the clients of a federation
play the part of chunks:

* confident centres: each client sends its top-``m`` confidences per class (no features); the
  server picks the global top ``m`` and each client returns :math:`\sum p\, Q_i` over its
  selected rows;
* Sinkhorn: per round and pass, each client returns its plan's class sums
  :math:`\sum_i P_{ik}` (a :math:`K`-vector) for the broadcast class potential :math:`g`; row
  potentials never leave the client;
* centres and Procrustes: each client returns :math:`P^\top Q` (:math:`K \times d_q`) and the
  plan change; the server forms :math:`C` and :math:`Q^\top P Y = (P^\top Q)^\top Y`;
* refinement: federated averaging. Each round every client runs ``local_steps`` of THS
  (:meth:`gpua.GPUA._refine`, on its own pseudo-labels) from the broadcast map, the server
  averages the maps weighted by client size and projects the mean back onto the
  (semi-)orthogonal maps with :func:`gpua.procrustes.polar_factor` (an average of orthogonal
  maps is not orthogonal).

Without refinement the result equals the centralised ``GPUA.fit`` on the union of the clients'
rows (the statistics are the same sums, added in another order). Pseudo-labels stay on the
clients; this in-process simulation gathers them into ``pseudo_labels_`` for inspection only.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from .._errors import GPUAError
from .._validation import check_classnames, check_prototypes
from ..ot import check_marginal
from ..procrustes import orthogonality_error, polar_factor
from . import _kernels as K_
from ._budget import plan_memory
from ._executor import LocalExecutor
from ._fit import _rows_fn
from ._ucm import streamed_ucm

__all__ = ["fit_federated", "FederatedExecutor"]


class FederatedExecutor(LocalExecutor):
    """Runs each client's chunk tasks "on the client" and hands the server per-client aggregates.

    Parameters
    ----------
    parts : list of Part
        Chunks tagged with their ``client``.

    Attributes
    ----------
    private : dict
        ``{client: {chunk index: (labels, confidence)}}``: per-row results that stay with the
        clients (never part of what :meth:`map` or :meth:`reduce` return).
    """

    def __init__(self, parts: Sequence[K_.Part]):
        self.client_of = {p.index: p.client for p in parts}
        self.private: dict[int, dict] = {}

    def _by_client(self, parts, results):
        groups: dict[int, list] = {}
        for p, r in zip(parts, results):
            groups.setdefault(p.client, []).append(r)
        return groups

    def map(self, fn: Callable, parts, *args, on_done=None) -> list:
        results = super().map(fn, parts, *args, on_done=on_done)
        groups = self._by_client(parts, results)
        if fn is K_.part_candidates:
            # A client sends its own top-m per class (confidences and row ids), not every chunk's.
            return [K_.top_rows(torch.cat([v for v, _ in rs]), torch.cat([i for _, i in rs]), args[-1]) for rs in groups.values()]
        if fn in (K_.part_mean, K_.part_build, K_.part_pass):
            return [K_.sum_tensors(rs) for rs in groups.values()]
        raise GPUAError(f"{fn.__name__} has no federated aggregate.")  # pragma: no cover - internal

    def reduce(self, fn: Callable, parts, *args, merge: Callable, on_done=None):
        aggregates = []
        for client in sorted({p.client for p in parts}):
            mine = [p for p in parts if p.client == client]
            merged = super().reduce(fn, mine, *args, merge=merge, on_done=on_done)  # on the client
            if fn is K_.part_stats:
                self.private[client] = merged["parts"]  # labels stay on the client
                merged = {**merged, "parts": {}}
            aggregates.append(merged)
        return merge(aggregates)  # on the server: one aggregate per client


def fit_federated(
    estimator,
    clients: Sequence[tuple],
    text_prototypes,
    *,
    rounds: int = 10,
    local_steps: int | None = None,
    classnames=None,
    max_memory="4GB",
    progress: bool = False,
    callback: Callable | None = None,
):
    r"""Fit a :class:`gpua.GPUA` from clients' aggregated statistics (simulated in-process).

    Parameters
    ----------
    estimator : GPUA
        Its parameters as for ``GPUA.fit``; ``refine``, ``n_steps`` and the THS settings govern
        the federated refinement.
    clients : sequence of (array, array)
        Each client's ``(vfm_features (n_c, d_vfm), vlm_features (n_c, d_vlm))``.
    text_prototypes : array of shape (n_classes, d_vlm)
        Shared by all clients.
    rounds : int
        Federated-averaging rounds of the refinement.
    local_steps : int, optional
        THS steps per client and round (default ``n_steps // rounds``, at least 1).
    classnames : sequence of str, optional
    max_memory : str or int
        Budget of each client process (chunking of its rows).
    progress : bool
    callback : callable, optional
        Called with each UCM round's history entry and each averaging round's summary.

    Returns
    -------
    estimator
        With the attributes ``GPUA.fit`` sets; ``history_["federated"]`` has the per-round
        refinement record.
    """
    est = estimator
    est._check_params()
    if est.solver != "torch":
        raise GPUAError(f"solver={est.solver!r}: federated fits run their own Sinkhorn; use solver='torch'.")
    if not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise GPUAError(f"rounds={rounds!r} must be a positive integer.")
    if not clients:
        raise GPUAError("clients is empty; pass a list of (vfm_features, vlm_features) pairs, one per client.")
    sources, offset = [], 0
    for c, pair in enumerate(clients):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise GPUAError(f"clients[{c}] must be a (vfm_features, vlm_features) pair.")
        try:
            src = K_.ArraySource(*pair, offset=offset)
        except GPUAError as exc:
            raise GPUAError(f"clients[{c}]: {exc}") from None
        if sources and src.widths != sources[0].widths:
            raise GPUAError(f"clients[{c}] has widths {src.widths} but clients[0] has {sources[0].widths}; all clients must use the same encoders.")
        sources.append(src)
        offset += src.n_samples
    n = offset
    d_v, d_t = sources[0].widths["vfm_features"], sources[0].widths["vlm_features"]
    Y = check_prototypes(text_prototypes, d_t)
    k = Y.shape[0]
    est.classnames_ = check_classnames(classnames, k)
    if est.class_prior is not None and len(np.asarray(est.class_prior)) != k:
        raise GPUAError(f"class_prior has {len(np.asarray(est.class_prior))} entries for {k} classes; give one per class.")
    if n < k:
        raise GPUAError(f"the clients hold {n} rows in all but there are {k} classes; the pool needs at least one image per class.")
    dev = est.device_
    d_q = d_v + (d_t if est.query == "fused" else 0)
    plan = plan_memory(max_memory, max(s.n_samples for s in sources), k, d_v, d_t, d_q)
    parts = []
    for c, src in enumerate(sources):
        for s in range(src.offset, src.offset + src.n_samples, plan.chunk_rows):
            e = min(src.offset + src.n_samples, s + plan.chunk_rows)
            parts.append(K_.Part(len(parts), src, s, e, cache=True, keep_previous=plan.keep_previous, client=c))
    ex = FederatedExecutor(parts)
    Yt = torch.nn.functional.normalize(torch.as_tensor(Y), dim=1)
    fit = K_.FitSpec(
        f"federated-{id(ex)}", Yt, est.query, None, float(est.lam), float(est.eps), est.similarity, float(est.temperature),
        100.0, n, str(dev), plan.tile_dtype, est.assignment,
    )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        if est.center:
            fit.vfm_mean = (K_.sum_tensors(ex.map(K_.part_mean, parts, fit)) / n).float()
        ucm = streamed_ucm(
            ex, parts, fit, fit, b=check_marginal(est.class_prior, k, "class_prior", torch.device("cpu")), rho=est.rho,
            tol=float(est.tol), sinkhorn_tol=float(est.sinkhorn_tol), sinkhorn_max_iter=int(est.sinkhorn_max_iter),
            max_outer=int(est.max_outer), n_init_per_class=int(est.n_init_per_class), callback=callback, progress=progress,
        )
    finally:
        ex.drop(fit.token)
    timings["ucm_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    W0 = polar_factor(ucm.cross_covariance).float().to(dev)
    timings["procrustes_s"] = time.perf_counter() - t1
    # Per-client pseudo-labels, from the clients' private results.
    client_labels = []
    for c in range(len(sources)):
        mine = ex.private.get(c, {})
        client_labels.append((torch.cat([mine[i][0] for i in sorted(mine)]), torch.cat([mine[i][1] for i in sorted(mine)])))
    est.n_features_vfm_, est.n_features_vlm_, est.n_classes_ = d_v, d_t, k
    est.vfm_mean_ = None if fit.vfm_mean is None else fit.vfm_mean.to(dev)
    est.W0_ = W0
    Yd = Yt.to(dev)
    t2 = time.perf_counter()
    W, fed_history = W0.clone(), []
    if est.refine and est.n_steps > 0:
        steps = int(local_steps) if local_steps is not None else max(1, int(est.n_steps) // int(rounds))
        base_seed = 0 if est.random_state is None else int(est.random_state)
        for t in range(1, int(rounds) + 1):
            total = torch.zeros_like(W, dtype=torch.float64)
            for c, src in enumerate(sources):
                local = type(est)(**est.get_params())
                local.n_steps, local.random_state, local.W0_ = steps, base_seed + 1000 * t + c, W
                rows = _rows_fn(src, est.query, est.vfm_mean_, dev, memo_above=int(est.batch_size))
                # A client's rows are global ids [offset, offset + n_c); _refine draws 0..n_c-1.
                W_c, _ = local._refine(lambda idx, r=rows, o=src.offset: r(idx + o), src.n_samples, Yd, client_labels[c][0].to(dev), None)
                total += src.n_samples * W_c.double()
            W_mean = (total / n).float()
            W = polar_factor(W_mean)
            entry = {"round": t, "mean_orthogonality_error": orthogonality_error(W_mean), "step_norm": float((W - W0).norm())}
            fed_history.append(entry)
            if callback is not None:
                callback(entry)
    timings["refine_s"] = time.perf_counter() - t2
    est.W_ = W
    est.text_prototypes_ = Yd
    labels = torch.cat([lab for lab, _ in client_labels])
    est.pseudo_labels_ = labels.numpy()
    est.pseudo_confidence_ = torch.cat([conf for _, conf in client_labels]).numpy()
    est.centres_ = ucm.centres.to(dev)
    est.proto_radius_ = None
    agree, tops, k_csls = 0, [], int(est.csls_k) if est.retrieval == "csls" else 0
    for src, (lab, _) in zip(sources, client_labels):  # each client counts its own agreements
        for s in range(src.offset, src.offset + src.n_samples, plan.chunk_rows):
            part = K_.Part(-1, src, s, min(src.offset + src.n_samples, s + plan.chunk_rows))
            pred, top = K_.part_final(part, fit, W.cpu(), k_csls)
            agree += int((pred == lab[s - src.offset : part.stop - src.offset]).sum())
            if k_csls:
                tops.append(top)  # top-k cosines per prototype: K x k numbers, no rows
    if k_csls:
        allk = torch.cat(tops, dim=1)
        est.proto_radius_ = allk.topk(min(k_csls, allk.shape[1]), dim=1).values.mean(1).to(dev)
    est.history_ = {
        "pseudo_label_agreement": agree / n,
        "ucm": ucm.history,
        "ucm_converged": ucm.converged,
        "refine": [],
        "orthogonality_error": orthogonality_error(W),
        "timings": timings,
        "federated": {"clients": [s.n_samples for s in sources], "rounds": fed_history, "chunk_rows": plan.chunk_rows},
    }
    return est
