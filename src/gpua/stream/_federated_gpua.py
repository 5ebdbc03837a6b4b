r"""Federated GPUA: clients keep their features; the server sees aggregated statistics only.

The streamed fit already reduces every stage to sums over rows, so the clients of a federation
play the part of chunks:

* centering and whitening (once, before mining): each client sends the sums of its normalised
  VFM and VLM rows, then its query's second moment :math:`Q^\top Q` (:math:`d_q \times d_q`);
  the server forms the pool means and the whitening map and broadcasts them;
* confident centres: each client sends its top-``m`` confidences per class (no features); the
  server picks the global top ``m`` and each client returns :math:`\sum p\, Q_i` over its
  selected rows;
* Sinkhorn: per round and pass, each client returns its plan's class sums
  :math:`\sum_i P_{ik}` (a :math:`K`-vector) for the broadcast class potential :math:`g`; row
  potentials never leave the client;
* centres and Procrustes: each client returns :math:`P^\top Q` (:math:`K \times d_q`) and the
  plan change; the server forms :math:`C` and :math:`Q^\top P Y = (P^\top Q)^\top Y`; where
  the classes leave part of the map free, each client sends its :math:`Q^\top X` (a
  :math:`d_q \times d_{vlm}` matrix) once, whose sum completes it
  (:func:`gpua.procrustes.procrustes_map`);
* the plan's ridge projection (``plan_ridge``): each client sends its query's augmented second
  moment once (:func:`gpua.projection.query_moments`); the server solves the projection from it
  and the last round's :math:`P^\top Q` and broadcasts it, and each client returns its projected
  plan's :math:`\tilde P^\top Q` and class sums (the centres and Procrustes above, again);
* refinement: federated averaging. Each round every client runs ``local_steps`` of THS
  (:func:`gpua.refinement.refine`, on its own pseudo-labels) from the broadcast map, the server
  averages the maps weighted by client size and projects the mean back onto the
  (semi-)orthogonal maps with :func:`gpua.procrustes.polar_factor` (an average of orthogonal
  maps is not orthogonal).

* self-learning rounds: the server broadcasts the map, each client scores its own rows with it,
  and UCM runs as above; each client measures its pseudo-labels' neighbourhood consistency
  among its own rows and sends the number.

The sequence is :func:`gpua.fitting.run_fit`, as for ``GPUA.fit``; :class:`FederatedPool` is this
driver. Without refinement the result equals the centralised ``GPUA.fit`` on the union of the
clients' rows (the statistics are the same sums, added in another order). Pseudo-labels stay on the
clients; this in-process simulation gathers them into ``pseudo_labels_`` for inspection only.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch

from .._errors import GPUAError
from .._validation import check_callback, check_classnames, check_prototypes
from ..fitting import FitConfig, Mined, _with_prior, check_entry, record_prior_estimate, consistency_sample, knn_label_consistency, run_fit, set_fitted_state, unwhiten
from ..ot import check_marginal
from ..procrustes import orthogonality_error, polar_factor, procrustes_map
from ..query import build_query
from ..refinement import RefineConfig, refine
from ..ucm import top_rows
from . import _kernels as K_
from ._budget import plan_memory
from ._executor import LocalExecutor
from ._fit import check_gpua_instance, on_device, pool_class_prior, pool_statistics, rows_reader
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
        self.parts = list(parts)
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
            return [top_rows(torch.cat([v for v, _ in rs]), torch.cat([i for _, i in rs]), args[-1]) for rs in groups.values()]
        if fn in (K_.part_mean, K_.part_build, K_.part_pass):
            return [K_.sum_tensors(rs) for rs in groups.values()]
        raise GPUAError(f"{fn.__name__} has no federated aggregate.")  # pragma: no cover - internal

    def reduce(self, fn: Callable, parts, *args, merge: Callable, on_done=None):
        total = None
        for client in sorted({p.client for p in parts}):
            mine = [p for p in parts if p.client == client]
            merged = super().reduce(fn, mine, *args, merge=merge, on_done=on_done)  # on the client
            if fn in (K_.part_stats, K_.part_projected_stats):
                self.private[client] = merged["parts"]  # labels stay on the client
                merged = {**merged, "parts": {}}
            # On the server, each client's aggregate is folded in as it arrives (in client order,
            # the order a merge of the list would sum them): one d_q x d_q second moment is held
            # at a time, not one per client, as the memory plan assumes.
            total = merged if total is None else merge([total, merged])
        return total


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
        Each client's ``(vfm_features (n_c, d_vfm), vlm_features (n_c, d_vlm))``: numpy arrays or
        torch tensors, of any float dtype (read as float32, as ``GPUA.fit`` reads them). A client
        with no rows (``n_c = 0``, the widths of the others) takes part and changes nothing; at
        least one client must have rows.
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
        With the attributes ``GPUA.fit`` sets; ``history_["federated"]`` has the clients' sizes
        (``"clients"``, in the order given) and the per-round refinement record (``"rounds"``).
        The clients' arrays are not modified, and nothing of a fit stays in the process after it
        returns: the same estimator and clients can be fitted again.

    Notes
    -----
    Self-learning rounds (``self_learning``, on by default) run federated too, but each re-mines
    with a map refined by federated averaging, and a round's rollback criterion is the kNN label
    consistency within each client (rows never leave one), so the fit can keep another round
    than the central fit would. On non-IID clients this costs accuracy (README, "Federated
    GPUA": -4.4 to -5.0 points from the central fit on the demo's features, -1.3 to -2.6 with
    ``self_learning=0``): pass ``GPUA(self_learning=0)`` for federated fits.

    With ``center`` / ``center_vlm`` and ``whiten`` (the defaults) each client also sends, once,
    the sums of its normalised rows and its query's second moment :math:`Q^\top Q`
    (:func:`gpua.stream._fit.pool_statistics`): aggregates of its features, no row. With
    ``class_prior="zero_shot"`` it sends, per EM step, its :math:`K` sums of zero-shot
    responsibilities, then once its class-weighted row sums (:func:`gpua.stream._fit.pool_class_prior`);
    ``class_prior="estimate"`` is refused (it needs a first whole fit's scores of every row).
    With ``plan_ridge`` (the default) it sends, once, its whitened query's augmented second
    moment :math:`[Q, 1]^\top [Q, 1]` (:func:`gpua.projection.query_moments`; with
    ``whiten=None``, that of the whole query), and per mining its projected plan's
    :math:`\tilde P^\top Q` and class sums; its projected pseudo-labels stay with it.
    """
    check_gpua_instance(estimator, "fit_federated", "fit_federated(GPUA(self_learning=0), clients, text_prototypes)")
    check_callback(callback)
    est = estimator
    if not isinstance(rounds, (int, np.integer)) or isinstance(rounds, bool) or rounds < 1:
        raise GPUAError(f"rounds={rounds!r} must be a positive integer.")
    if local_steps is not None and (not isinstance(local_steps, (int, np.integer)) or isinstance(local_steps, bool) or local_steps < 1):
        raise GPUAError(f"local_steps={local_steps!r} must be a positive integer or None.")
    clients = _client_list(clients)
    sources, sizes, empty, offset, first = [], [], [], 0, 0
    for c, pair in enumerate(clients):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise GPUAError(f"clients[{c}] must be a (vfm_features, vlm_features) pair.")
        if any(hasattr(part, "read") and hasattr(part, "n_shards") for part in pair):
            raise GPUAError(f"clients[{c}] holds a shard set; a client is a pair of arrays or tensors (read a client's "
                            "rows with ShardedFeatures.read), or fit one shard set with GPUA().fit(shards) instead.")
        shapes = [_shape(part) for part in pair]
        if all(len(sh) == 2 for sh in shapes) and min(shapes[0][0], shapes[1][0]) == 0 < max(shapes[0][0], shapes[1][0]):
            raise GPUAError(f"clients[{c}]: vfm_features has {shapes[0][0]} rows but vlm_features has {shapes[1][0]}; "
                            "give both one row per image, in the same order.")
        if all(len(sh) == 2 and sh[0] == 0 for sh in shapes):
            # A client without rows sends zero sums: it takes part, and changes nothing.
            empty.append((c, {"vfm_features": shapes[0][1], "vlm_features": shapes[1][1]}))
            sizes.append(0)
            continue
        try:
            src = K_.ArraySource(*pair, offset=offset)
        except GPUAError as exc:
            raise GPUAError(f"clients[{c}]: {exc}") from None
        if sources and src.widths != sources[0].widths:
            raise GPUAError(f"clients[{c}] has widths {src.widths} but clients[{first}] has {sources[0].widths}; all clients "
                            "must use the same encoders.")
        if not sources:
            first = c
        sources.append(src)
        sizes.append(src.n_samples)
        offset += src.n_samples
    if not sources:
        raise GPUAError(f"all {len(clients)} clients are empty (no rows); a fit needs at least one client with features.")
    for c, widths in empty:
        if widths != sources[0].widths:
            raise GPUAError(f"clients[{c}] (no rows) has widths {widths} but clients[{first}] has {sources[0].widths}; "
                            "all clients must use the same encoders.")
    n = offset
    d_v, d_t = sources[0].widths["vfm_features"], sources[0].widths["vlm_features"]
    Y = check_prototypes(text_prototypes, d_t)
    k = Y.shape[0]
    config = check_entry(est.get_params(), n, k, driver="federated")
    names = check_classnames(classnames, k)
    d_q = d_v + (d_t if config.query == "fused" else 0)
    n_max = max(s.n_samples for s in sources)
    try:
        plan = plan_memory(max_memory, n_max, k, d_v, d_t, d_q, whiten=config.whiten, plan_ridge=config.mining.plan_ridge)
    except GPUAError as exc:  # the plan is of one client: say so, or "N=" reads as the whole federation's
        raise GPUAError(f"max_memory is the budget of each client (the largest holds {n_max} rows): {exc}") from None
    parts = []
    for c, src in enumerate(sources):
        for s in range(src.offset, src.offset + src.n_samples, plan.chunk_rows):
            e = min(src.offset + src.n_samples, s + plan.chunk_rows)
            parts.append(K_.Part(len(parts), src, s, e, cache=True, keep_previous=plan.keep_previous, client=c, keep_rows=plan.keep_rows))
    ex = FederatedExecutor(parts)
    Yt = torch.nn.functional.normalize(torch.as_tensor(Y), dim=1)
    # A fresh name for this fit's per-chunk state in the process-wide store (tiles, kept rows, the
    # whitened rows' norms), freed when the fit ends: a name another fit could hold (id() of an
    # object freed since) would hand this fit that fit's rows.
    token = f"federated-{uuid.uuid4().hex}"  # a self-learning mining's is this one and its number
    try:
        fit = K_.FitSpec.from_config(token, Yt, config, n, plan.tile_dtype)
        estimate = None
        if isinstance(config.mining.class_prior, str):  # "zero_shot": EM steps summed client by client
            estimate = pool_class_prior(ex, parts, None, fit, config, Yt, n, d_v, logit_scale=float(est.logit_scale),
                                        max_rows=None, progress=progress)
            config = _with_prior(config, np.asarray(estimate["prior"]))
        t_whiten = pool_statistics(ex, parts, fit, config, n, k, d_v, means=estimate is None)
        b = check_marginal(config.mining.class_prior, k, "class_prior", torch.device("cpu"))
        pool = FederatedPool(ex, sources, fit, b, config, rounds=int(rounds), local_steps=local_steps, progress=progress)
        fitted = unwhiten(run_fit(config, pool, Y=Yt.to(config.device), vfm_mean=fit.vfm_mean, vlm_mean=fit.vlm_mean,
                                  widths=(d_v, d_t), classnames=names, callback=callback), fit.whiten, t_whiten)
    finally:
        ex.drop(token)  # a mining frees its own tiles; what the refinement and the last scores kept is freed here
    if estimate is not None:
        record_prior_estimate(fitted, estimate)
    fitted.history["federated"] = {"clients": sizes, "rounds": fitted.history["refine"], "chunk_rows": plan.chunk_rows}

    def rows_of(src):  # a client's own rows, scored where they are: only the sums of confidence_sums leave it
        return lambda idx: (src.take("vfm_features", idx + src.offset), src.take("vlm_features", idx + src.offset))

    return set_fitted_state(est, fitted, [(src.n_samples, rows_of(src)) for src in sources])


def _shape(a) -> tuple:
    """The shape of a client's array (numpy, torch or nested lists), without copying it."""
    shape = getattr(a, "shape", None)
    if shape is not None:
        return tuple(shape)
    try:
        return np.shape(a)
    except ValueError:  # ragged lists: ArraySource names what is wrong with them
        return ()


def _client_list(clients) -> list:
    """``clients`` as a list of pairs, refusing the shapes a caller may pass by mistake."""
    if isinstance(clients, (np.ndarray, torch.Tensor, str, bytes)) or hasattr(clients, "n_shards"):
        raise GPUAError(f"clients is of type {type(clients).__name__}; pass a list of (vfm_features, vlm_features) "
                        "pairs, one per client.")
    if isinstance(clients, dict):  # iterating it would give the names: clients[0] 'a' is not a pair
        raise GPUAError("clients is a dict; pass its pairs as a list, list(clients.values()), one (vfm_features, "
                        "vlm_features) pair per client (the fit numbers clients by their place in the list).")
    try:
        clients = list(clients)
    except TypeError:
        raise GPUAError(f"clients is of type {type(clients).__name__}; pass a list of (vfm_features, vlm_features) "
                        "pairs, one per client.") from None
    if not clients:
        raise GPUAError("clients is empty; pass a list of (vfm_features, vlm_features) pairs, one per client.")
    if len(clients) == 2 and all(hasattr(a, "shape") and len(a.shape) == 2 for a in clients):
        raise GPUAError("clients is one (vfm_features, vlm_features) pair of arrays; pass a list of such pairs, one per "
                        "client: [(vfm_features, vlm_features)] for a single client.")
    return clients


class FederatedPool:
    """The driver of a federated fit (:class:`gpua.fitting.FitDriver`): each client's rows stay with it.

    UCM runs on the clients' aggregates (:class:`FederatedExecutor`); refinement is federated
    averaging of the clients' local :func:`gpua.refinement.refine` runs, projected back onto
    the (semi-)orthogonal maps; the self-learning criterion is each client's own
    :func:`gpua.fitting.knn_label_consistency` (its rows against its rows), averaged by size.

    Parameters
    ----------
    ex : FederatedExecutor
    sources : list of ArraySource
        One per client.
    fit : FitSpec
    b : float64 tensor of shape (n_classes,)
    config : FitConfig
    rounds : int
        Averaging rounds of the refinement.
    local_steps : int or None
        THS steps per client and round (None: ``n_steps // rounds``, at least 1).
    progress : bool
    """

    def __init__(self, ex: FederatedExecutor, sources, fit: K_.FitSpec, b: torch.Tensor, config: FitConfig, *,
                 rounds: int, local_steps: int | None, progress: bool = False):
        self.ex, self.sources, self.fit, self.b, self.config = ex, sources, fit, b, config
        self.rounds, self.local_steps, self.progress = rounds, local_steps, progress
        self.parts = [p for p in ex.parts]
        self.dev = config.device
        self.n = fit.n_total
        self.n_mined = 0
        self.log_v: torch.Tensor | None = None
        self._moments = None  # the query's sums for plan_ridge: each client sends its (d_q + 1)^2 matrix once
        self._cross = None  # Q^T X for the Procrustes completion: each client sends its d_q x d_vlm matrix once

    def moments(self) -> torch.Tensor | None:
        """The pooled :func:`gpua.projection.query_moments` (summed over clients), or None without ``plan_ridge``."""
        if self.config.mining.plan_ridge is not None and self._moments is None:
            self._moments = self.ex.reduce(K_.part_query_moments, self.parts, self.fit, merge=K_.sum_tensors)
        return self._moments

    def _client_parts(self, c: int) -> list[K_.Part]:
        return [p for p in self.parts if p.client == c]

    def mine(self, score_map, callback) -> Mined:
        fit = self.fit
        if score_map is not None:  # a self-learning round: the broadcast map scores each client's rows
            self.n_mined += 1
            fit = replace(self.fit, token=f"{self.fit.token}-{self.n_mined}", score_map=score_map.detach().float().cpu())
        m = self.config.mining
        try:
            ucm = streamed_ucm(
                self.ex, self.parts, fit, fit, b=self.b, rho=m.rho, tol=float(m.tol), sinkhorn_tol=float(m.sinkhorn_tol),
                sinkhorn_max_iter=int(m.sinkhorn_max_iter), max_outer=int(m.max_outer),
                n_init_per_class=int(m.n_init_per_class), callback=callback, progress=self.progress, init_log_v=self.log_v,
                label=f"self-learning {self.n_mined}: " if score_map is not None else "",
                plan_ridge=m.plan_ridge, moments=self.moments,
            )
            self.log_v = ucm.log_v  # the next mining (a self-learning round) starts from this class potential
        finally:
            self.ex.drop(fit.token)
        # Per-client pseudo-labels, from the clients' private results (gathered for inspection only).
        labels, conf = [], []
        for c in range(len(self.sources)):
            mine = self.ex.private.get(c, {})
            labels.append(torch.cat([mine[i][0] for i in sorted(mine)]))
            conf.append(torch.cat([mine[i][1] for i in sorted(mine)]))
        return Mined(torch.cat(labels), torch.cat(conf), ucm.centres.to(self.dev), ucm.history, ucm.converged, payload=ucm.cross_covariance)

    def cross(self) -> torch.Tensor:
        """The pooled :func:`gpua.procrustes.query_vlm_cross` (summed over clients, the first time it is needed)."""
        if self._cross is None:
            try:
                self._cross = self.ex.reduce(K_.part_query_vlm_cross, self.parts, self.fit, merge=K_.sum_tensors)
            finally:  # the clients read their rows again: free what they kept before refinement
                self.ex.drop(self.fit.token)
        return self._cross

    def procrustes(self, mined: Mined) -> torch.Tensor:
        return procrustes_map(mined.payload, self.config.mining.procrustes_completion, self.cross).float().to(self.dev)

    def _client_rows(self, src):
        rows = rows_reader(src, self.fit, self.dev, memo_above=int(self.config.refinement.batch_size))
        return lambda idx: rows(idx + src.offset)  # a client's rows are global ids [offset, offset + n_c)

    def refine(self, W0, labels, config: RefineConfig, callback):
        steps = int(self.local_steps) if self.local_steps is not None else max(1, int(config.n_steps) // self.rounds)
        Yd = self.fit.Y.to(self.dev)
        W, history, augment = W0.clone(), [], {"n_rows": 0}
        for t in range(1, self.rounds + 1):
            total = torch.zeros_like(W, dtype=torch.float64)
            augment = {"n_rows": 0}
            for c, src in enumerate(self.sources):
                local = replace(config, n_steps=steps, random_state=config.seed + 1000 * t + c)
                record: dict = {}
                mine = labels[src.offset : src.offset + src.n_samples]
                W_c, _ = refine(W, self._client_rows(src), src.n_samples, Yd, mine, local, None, record)
                augment["n_rows"] += int(record.get("n_rows", 0))
                total += src.n_samples * W_c.double()
            W_mean = (total / self.n).float()
            W = polar_factor(W_mean)
            entry = {"round": t, "mean_orthogonality_error": orthogonality_error(W_mean), "step_norm": float((W - W0).norm())}
            history.append(entry)
            if callback is not None:
                callback(entry)
        return W, history, augment

    def consistency(self, labels: torch.Tensor) -> float:
        total = 0.0
        for c, src in enumerate(self.sources):  # each client scores its own rows; only the number leaves it
            idx = consistency_sample(src.n_samples, random_state=self.config.refinement.seed) + src.offset
            mean = on_device(self.fit.vfm_mean, self.dev)
            sample = build_query(src.take("vfm_features", idx, device=self.dev), None, "vfm", mean)
            chunks = ((p.start, K_.part_vfm_rows(p, self.fit), labels[p.start : p.stop]) for p in self._client_parts(c))
            total += src.n_samples * knn_label_consistency(sample, labels[idx], idx, chunks)
        return total / self.n

    def finish(self, W, labels):
        agree, tops, k_csls = 0, [], self.config.csls_k_used
        for p in self.parts:  # each client counts its own agreements
            pred, top = K_.part_final(p, self.fit, W.cpu(), k_csls)
            agree += int((pred == labels[p.start : p.stop]).sum())
            if k_csls:
                tops.append(top)  # top-k cosines per prototype: K x k numbers, no rows
        radius = None
        if k_csls:
            allk = torch.cat(tops, dim=1)
            radius = allk.topk(min(k_csls, allk.shape[1]), dim=1).values.mean(1)
        return agree / self.n, radius
