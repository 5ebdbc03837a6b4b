r"""``fit_streaming``: GPUA on more rows than fit in memory, in this process or on Dask.

The three stages of :meth:`gpua.GPUA.fit`, each linear in :math:`N` with memory bounded by the
budget, after a pass for the pool means (centering) and one for the query's second moment
(whitening; :func:`pool_statistics`, a :math:`d_q \times d_q` sum):

1. UCM (:func:`gpua.stream._ucm.streamed_ucm`): Sinkhorn with only the class potential kept,
   centres and the Procrustes cross-covariance accumulated chunk by chunk; with ``plan_ridge``
   the final plan's ridge projection (:mod:`gpua.projection`) is solved from sums (the query's
   augmented second moment, one pass per fit, and the last round's :math:`P^\top Q`) and one
   more pass accumulates the projected plan's;
2. Procrustes: :math:`W_0 = \mathrm{polar}(Q^\top P Y)` (:func:`gpua.procrustes.procrustes_map`)
   from the accumulated :math:`(d_q, d_t)` matrix, completed from the pool's :math:`Q^\top X`
   (one pass per fit, when the classes leave part of the map free);
3. THS refinement (:func:`gpua.refinement.refine`) on mini-batches read from the source;

and the self-learning rounds, with the map's scores computed chunk by chunk. The sequence is
:func:`gpua.fitting.run_fit`, the same as ``GPUA.fit``'s; :class:`StreamedPool` is this driver.
On data that fits both ways the learned attributes equal those of ``GPUA.fit`` (to float
rounding: about 1e-7 on small unwhitened fits, up to about 6e-5 in a few confidences with
whitening and self-learning, where 1/eps amplifies it).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from .._atomic import check_output
from .._errors import GPUAError, warn_user
from .._validation import check_callback, check_classnames, check_prototypes
from ..fitting import (
    PARAMETERS, FitConfig, Mined, _with_prior, check_entry, check_not_one_image, consistency_sample, knn_label_consistency,
    record_prior_estimate, run_fit, set_fitted_state, unwhiten,
)
from ..prior import EM_MAX_ITER, EM_TOL, em_class_prior, em_prior_update, mean_of_class_means
from ..ot import check_marginal
from ..procrustes import procrustes_map
from ..query import build_query, whitening_from_moment, whitening_width, zero_shot_cosines
from ..refinement import RefineConfig, refine
from . import _kernels as K_
from ._budget import RESERVE_BYTES, MemoryPlan, minimum_budget, plan_memory, refine_bytes, release_freed_memory
from ._checkpoint import Checkpoint, fingerprint, ucm_params
from ._executor import connect
from ._progress import Bar
from ..features import ShardedFeatures
from ._ucm import streamed_ucm

__all__ = ["fit_streaming", "as_source", "is_streaming_source", "minimum_budget_for"]


def is_streaming_source(obj) -> bool:
    """True for what :func:`fit_streaming` reads in chunks: a :class:`ShardedFeatures`."""
    return bool(getattr(obj, "_gpua_streaming_source", False))


def as_source(source):
    """A chunk-readable source from a shard set, its folder, or a ``(vfm, vlm)`` pair of arrays."""
    if isinstance(source, (ShardedFeatures, K_.ArraySource)):
        return source
    if isinstance(source, (str, os.PathLike)):
        return ShardedFeatures(source)
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return K_.ArraySource(*source)
    raise GPUAError(
        f"source must be a ShardedFeatures, a shard folder or a (vfm_features, vlm_features) pair, not {type(source).__name__}; "
        "write features with gpua.stream.write_shards."
    )


def _widths(est, n: int, k: int, d_v: int, d_t: int) -> tuple[int, int]:
    """(query width d_q, peak bytes of the refinement) for an estimator's parameters."""
    d_q = d_v + (d_t if est.query == "fused" else 0)
    refine = refine_bytes(n, k, d_q, d_t, est.val_fraction, est.batch_size) if est.refine and est.n_steps > 0 else 0
    return d_q, refine


def minimum_budget_for(estimator, n: int, k: int, d_vfm: int, d_vlm: int, *, dtype: str = "float32") -> int:
    """The smallest ``max_memory`` (bytes) :func:`fit_streaming` accepts for this estimator and sizes.

    Parameters
    ----------
    estimator : GPUA
    n, k, d_vfm, d_vlm : int
        Rows, classes and feature widths.
    dtype : str
        Storage dtype of the features.
    """
    d_q, refine = _widths(estimator, n, k, d_vfm, d_vlm)
    params = estimator.get_params()
    return minimum_budget(n, k, d_vfm, d_vlm, d_q, itemsize=4 if dtype == "float32" else 2, refine=refine,
                          whiten=params["whiten"], plan_ridge=params["plan_ridge"])


def make_parts(source, plan: MemoryPlan, owners_fn, n: int) -> list[K_.Part]:
    """Chunks of ``plan.chunk_rows`` rows; each process caches its first ``plan.cached_chunks``."""
    bounds = [(s, min(n, s + plan.chunk_rows)) for s in range(0, n, plan.chunk_rows)]
    plain = [K_.Part(i, source, s, e) for i, (s, e) in enumerate(bounds)]
    seen: dict[int, int] = {}
    parts = []
    for p, owner in zip(plain, owners_fn(plain)):
        seen[owner] = seen.get(owner, 0) + 1
        cache = seen[owner] <= plan.cached_chunks
        parts.append(K_.Part(p.index, source, p.start, p.stop, cache, cache and plan.keep_previous, keep_rows=cache and plan.keep_rows))
    return parts


def rows_reader(source, fit: K_.FitSpec, device, memo_above: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``rows(idx)`` -> query rows for :func:`gpua.refinement.refine`, read from the source.

    The query is ``fit.query``'s, centred on ``fit.vfm_mean`` / ``fit.vlm_mean`` and whitened
    by ``fit.whiten`` where set.

    The held-out slice is requested with the same index tensor at every evaluation: it is read once
    and kept (it is in the memory plan), while training batches are read as they come.
    """
    memo: list = [None, None]
    query, mean, vlm_mean = fit.query, on_device(fit.vfm_mean, device), on_device(fit.vlm_mean, device)
    whiten = on_device(fit.whiten, device)

    def rows(idx: torch.Tensor) -> torch.Tensor:
        if memo[0] is idx:
            return memo[1]
        Z = source.take("vfm_features", idx, device=device)
        X = source.take("vlm_features", idx, device=device) if query == "fused" else None
        Q = build_query(Z, X, query, mean, vlm_mean, whiten)
        if idx.numel() > memo_above:
            memo[0], memo[1] = idx, Q
        return Q

    return rows


def check_gpua_instance(estimator, function: str, example: str) -> None:
    """A :class:`GPUAError` unless ``estimator`` is a :class:`gpua.GPUA` instance (what ``function`` fits).

    The class itself, a baseline (``make_method("zero_shot")``) or ``ReferenceGPUA`` would
    otherwise fail deep inside on a parameter GPUA has and they lack. Told by GPUA's parameter
    table (:data:`gpua.fitting.PARAMETERS`), not by importing the estimator module, which
    imports this package.
    """
    from .._base import AlignmentEstimator

    if isinstance(estimator, type) or not isinstance(estimator, AlignmentEstimator) or not set(PARAMETERS) <= set(estimator.get_params()):
        what = f"the class {estimator.__name__} itself" if isinstance(estimator, type) else f"of type {type(estimator).__name__}"
        raise GPUAError(f"estimator is {what}; {function} fits a GPUA instance only, e.g. {example}.")


def _same_prototypes(given, stored) -> bool:
    """Whether prototypes passed to a streamed fit are the ones its shard set stores (same rows, same order)."""
    if stored is None:
        return False
    try:
        a, b = torch.as_tensor(given).detach().cpu().float(), torch.as_tensor(stored).cpu().float()
    except (TypeError, ValueError, RuntimeError):  # not numbers: check_prototypes says what is wrong with them
        return False
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-6))


def fit_streaming(
    estimator,
    source,
    text_prototypes=None,
    *,
    vlm_features=None,
    classnames=None,
    max_memory="4GB",
    cluster=None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable | None = None,
    connect_timeout: float = 10.0,
    chunk_rows: int | None = None,
):
    r"""Fit a :class:`gpua.GPUA` on features read chunk by chunk, within ``max_memory``.

    Parameters
    ----------
    estimator : GPUA
        Its parameters are used as for ``GPUA.fit`` (``solver`` must be ``"torch"``); its
        learned attributes are set as ``GPUA.fit`` sets them.
    source : ShardedFeatures, str, Path or (array, array)
        A shard set (or its folder), or in-memory ``(vfm_features, vlm_features)`` (read in chunks
        all the same; useful for patch tokens already in memory).
    text_prototypes : array of shape (n_classes, d_vlm), optional
        Default: the prototypes stored with the shard set.
    vlm_features : None
        Must be None: the source holds both feature matrices (the argument exists so that
        ``GPUA.fit(shards, None, Y)`` can forward its arguments).
    classnames : sequence of str, optional
        Default: the shard set's.
    max_memory : str or int
        Budget per process (this one, and each Dask worker), e.g. ``"4GB"``; it sets the chunk
        size and how much of the Sinkhorn kernel stays in memory between passes
        (:func:`gpua.stream.plan_memory`).
    cluster : None, "local", int, str or distributed.Client
        ``None``: compute here. Otherwise chunk sums run as Dask tasks: ``"local"`` (or a worker
        count) starts a ``LocalCluster``; ``"tcp://host:8786"`` connects to a scheduler whose
        workers read the shard paths from shared storage.
    checkpoint : str or Path, optional
        Folder for the UCM state, written atomically after every outer round; a fit started
        again with the same folder resumes after the last completed round.
    progress : bool
        tqdm bars with ETA.
    callback : callable, optional
        As in ``GPUA.fit``: a dict after each UCM round and each refinement evaluation.
    connect_timeout : float
        Seconds to wait for a scheduler.
    chunk_rows : int, optional
        Rows per chunk (one task); default: chosen from ``max_memory``.

    Returns
    -------
    estimator
        Fitted; ``history_["streaming"]`` records the memory plan and pass counts.

    Raises
    ------
    GPUAError
        Missing or mismatched shards, a budget below the minimum (the message gives it), a
        cluster that does not answer, ``pool_augment > 0`` or ``class_prior="estimate"``
        (in-memory fits only; ``"zero_shot"`` is estimated here: :func:`pool_class_prior`), or
        inputs ``GPUA.fit`` would refuse.

    Notes
    -----
    Everything runs on ``estimator.device``: with ``device="cuda"`` the chunks are converted
    from their storage dtype on the GPU and the cached kernel tiles live in GPU memory, so
    ``max_memory`` should then be the GPU memory to use. Sums accumulate in float64 (float32
    for matrix products within a chunk) whatever the storage.

    On glibc this sets the process's mmap threshold to 1 MiB
    (:func:`gpua.stream.release_freed_memory`) so that freed chunk buffers leave the process.
    """
    check_gpua_instance(estimator, "fit_streaming", "fit_streaming(GPUA(), shards, text_prototypes)")
    check_callback(callback)
    est = estimator
    params = est.get_params()
    if vlm_features is not None:
        raise GPUAError("vlm_features must be None when the features come from a shard set (it holds both); pass GPUA.fit(shards, None, text_prototypes).")
    src = as_source(source)
    n = len(src)
    d_v, d_t = src.widths["vfm_features"], src.widths["vlm_features"]
    stored_names = getattr(src, "classnames", None)
    if text_prototypes is None:
        text_prototypes = src.text_prototypes()
        if text_prototypes is None:
            raise GPUAError("text_prototypes is None and the source stores none; pass text_prototypes=(K, d_vlm) array.")
    elif classnames is None and stored_names is not None and not _same_prototypes(text_prototypes, src.text_prototypes()):
        # The stored names are the stored prototypes' order: put on other prototypes they would
        # name the classes wrongly in predictions, the model file and `gpua evaluate`.
        warn_user("the shard set's class names are not used: the text_prototypes passed are not the ones it stores, so "
                  "the names could be in another order. Pass classnames= (one per prototype row) to name the classes.")
        stored_names = None
    Y = check_prototypes(text_prototypes, d_t)
    k = Y.shape[0]
    config = check_entry(params, n, k, driver="streamed")
    names = check_classnames(classnames if classnames is not None else stored_names, k)
    dev = config.device
    d_q, r_bytes = _widths(est, n, k, d_v, d_t)
    itemsize = 4 if getattr(src, "dtype", "float32") == "float32" else 2
    Yt = torch.nn.functional.normalize(torch.as_tensor(Y), dim=1)
    estimates_prior = isinstance(config.mining.class_prior, str)  # "zero_shot" (check_entry refuses "estimate")
    b = None if estimates_prior else check_marginal(config.mining.class_prior, k, "class_prior", torch.device("cpu"))
    ck = state = None
    if checkpoint is not None:
        ck = Checkpoint(checkpoint, fingerprint(ucm_params(params), src.fingerprint(), Yt))
        state = ck.load()  # another fit's state is refused now, before any cluster starts
        # Its first save comes after the pool passes and a whole UCM round: a folder that cannot be
        # written (or the shard folder itself, which the state file would make one that writers
        # refuse to replace) is refused now. A finished state is only read.
        check_output(checkpoint, "checkpoint", kind="folder", inputs=[("the shard set", getattr(src, "path", None))],
                     writable=state is None or not state["meta"]["done"])
    if isinstance(src, K_.ArraySource) and cluster is not None:
        raise GPUAError("cluster= needs features on shared storage: write them with gpua.stream.write_shards and pass the folder.")
    release_freed_memory()  # freed chunk buffers must leave the process for the budget to hold
    ex = connect(cluster, timeout=connect_timeout)
    token = uuid.uuid4().hex
    try:
        plan = plan_memory(max_memory, n, k, d_v, d_t, d_q, itemsize=itemsize, refine=r_bytes, n_processes=ex.n_processes,
                           chunk_rows=chunk_rows, whiten=config.whiten, plan_ridge=config.mining.plan_ridge)
        parts = make_parts(src, plan, ex.owners, n)
        fit = K_.FitSpec.from_config(token, Yt, config, n, plan.tile_dtype)
        pool_stats = (("vfm_mean", config.center), ("vlm_mean", config.center_vlm), ("whiten", config.whiten is not None),
                      ("class_prior", estimates_prior))
        wanted = [name for name, on in pool_stats if on]
        t_whiten, estimate = 0.0, None
        if wanted and state is not None and all(name in state for name in wanted):
            fit.vfm_mean, fit.vlm_mean, fit.whiten = state.get("vfm_mean"), state.get("vlm_mean"), state.get("whiten")
            if estimates_prior:
                estimate = {"prior": state["class_prior"].tolist(), "zero_shot_counts": state["zero_shot_counts"].long().tolist(),
                            "rows_estimated_from": int(state["prior_rows"][0])}
        else:
            if estimates_prior:
                estimate = pool_class_prior(ex, parts, src, fit, config, Yt, n, d_v, logit_scale=float(params["logit_scale"]),
                                            max_rows=prior_rows(plan.budget, k), progress=progress)
            t_whiten = pool_statistics(ex, parts, fit, config, n, k, d_v, means=estimate is None, progress=progress)
        if estimate is not None:
            config = _with_prior(config, np.asarray(estimate["prior"]))
            b = check_marginal(config.mining.class_prior, k, "class_prior", torch.device("cpu"))
        if ck is not None:
            ck.extra.update(vfm_mean=fit.vfm_mean, vlm_mean=fit.vlm_mean, whiten=fit.whiten)
            if estimate is not None:
                ck.extra.update(class_prior=torch.tensor(estimate["prior"], dtype=torch.float64),
                                zero_shot_counts=torch.tensor(estimate["zero_shot_counts"], dtype=torch.float64),
                                prior_rows=torch.tensor([estimate["rows_estimated_from"]], dtype=torch.float64))
        pool = StreamedPool(ex, parts, src, fit, b, config, checkpoint=ck, progress=progress)
        fitted = unwhiten(run_fit(config, pool, Y=Yt.to(dev), vfm_mean=fit.vfm_mean, vlm_mean=fit.vlm_mean, widths=(d_v, d_t),
                                  classnames=names, callback=callback), fit.whiten, t_whiten)
    finally:
        ex.drop(token)
        ex.close()
    if estimate is not None:
        record_prior_estimate(fitted, estimate)
    fitted.history["streaming"] = {
        "n_samples": n, "chunk_rows": plan.chunk_rows, "n_chunks": plan.n_chunks, "cache": plan.mode,
        "tile_dtype": plan.tile_dtype, "budget_bytes": plan.budget, "estimated_peak_bytes": plan.estimate,
        "passes": pool.passes, "processes": ex.n_processes, "resumed": state is not None,
    }
    return set_fitted_state(est, fitted, [(n, lambda idx: (src.take("vfm_features", idx), src.take("vlm_features", idx)))])


def pool_statistics(ex, parts, fit: K_.FitSpec, config: FitConfig, n: int, k: int, d_vfm: int, *, means: bool = True,
                    progress: bool = False) -> float:
    r"""Set ``fit``'s pool means (centering) and whitening map (``whiten``) from chunk sums, a pass over the pool each.

    ``means=False``: the means are set already (:func:`pool_class_prior`'s class-balanced ones);
    the whitening is computed around them.

    Returns the seconds spent on the whitening (its pass and eigendecomposition).

    A federated executor sums each client's chunks on the client: the server sees one
    :math:`d`-vector of means and one :math:`d_q \times d_q` second moment per client, no rows.
    """
    if means and (config.center or config.center_vlm):
        with Bar(progress, "pool means", len(parts)) as bar:
            sums = ex.map(K_.part_mean, parts, fit, on_done=bar.tick)
        K_.set_pool_means(fit, config, sums, n, d_vfm)
    t0 = time.perf_counter()
    if config.whiten is not None:
        with Bar(progress, "query second moment", len(parts)) as bar:
            gram = ex.reduce(K_.part_second_moment, parts, fit, merge=K_.sum_tensors, on_done=bar.tick)
        fit.whiten = whitening_from_moment(gram, n, whitening_width(config.whiten, n, k, gram.shape[0]), config.whiten_shrink)
    return time.perf_counter() - t0


#: Bytes per row of :func:`pool_class_prior`'s sample, per class: its float32 probabilities and
#: the float64 copies EM holds (probabilities, re-weighted rows, their normalised copy).
_PRIOR_BYTES_PER_CELL = 4 + 3 * 8


def prior_rows(budget: int, k: int) -> int:
    """How many rows :func:`pool_class_prior` estimates the prior from: as many as half the budget
    holds beyond the process itself (:data:`~gpua.stream._budget.RESERVE_BYTES`; every row of most
    pools, a seeded sample of a pool too large for it). Half of the whole budget overshot it near
    the minimum: 958 MB resident under ``max_memory="700MB"`` at K = 100."""
    return max(1024, max(int(budget) - RESERVE_BYTES, 0) // 2 // (_PRIOR_BYTES_PER_CELL * k))


def pool_class_prior(ex, parts, src, fit: K_.FitSpec, config: FitConfig, Y: torch.Tensor, n: int, d_vfm: int, *,
                     logit_scale: float, max_rows: int | None, progress: bool = False) -> dict:
    r"""``class_prior="zero_shot"`` on a pool read in chunks: the class frequencies and the class-balanced means.

    EM (:func:`gpua.prior.em_class_prior`) on the VLM's zero-shot probabilities
    :math:`\mathrm{softmax}(s \cos(x_i, y_k))` of the pool's rows, then one pass for
    :func:`gpua.prior.balanced_mean` of every row under that prior
    (:func:`gpua.stream._kernels.part_class_sums`). Sets ``fit.vfm_mean`` / ``fit.vlm_mean`` (as
    ``config.center`` / ``center_vlm`` ask).

    The EM reads the probabilities of ``max_rows`` rows into memory (a seeded sample,
    :func:`gpua.fitting.consistency_sample`, when the pool has more; with every row it is
    ``GPUA.fit``'s estimate); ``max_rows=None`` runs each EM step as a pass over the chunks
    instead (:func:`gpua.stream._kernels.part_prior_sums`: a federated fit, whose rows never
    leave their client: each client sends :math:`K` sums per step), the same estimate.

    Parameters
    ----------
    Y : tensor of shape (n_classes, d_vlm)
        The text prototypes, L2-normalised, not centred.

    Returns
    -------
    dict
        ``prior`` (list of n_classes floats), ``zero_shot_counts``, ``rows_estimated_from`` and ``seconds``.
    """
    t0 = time.perf_counter()
    Y, logit_scale = Y.cpu(), float(logit_scale)
    if max_rows is None:
        prior, used = torch.full((Y.shape[0],), 1.0 / Y.shape[0], dtype=torch.float64), n
        with Bar(progress, "zero-shot class prior (EM steps)", EM_MAX_ITER, unit="step") as bar:
            for _ in range(EM_MAX_ITER):
                sums = ex.reduce(K_.part_prior_sums, parts, fit, Y, prior, logit_scale, merge=K_.sum_tensors)
                prior, moved = em_prior_update(prior, sums, n)
                bar.update()
                if moved <= EM_TOL:
                    break
    else:
        sample = consistency_sample(n, max_rows, config.refinement.seed)
        used, step = int(sample.numel()), max(1, parts[0].stop - parts[0].start)
        Y_dev = Y.to(config.device)
        with Bar(progress, "zero-shot class prior", -(-used // step)) as bar:
            proba = []
            for lo in range(0, used, step):
                X = src.take("vlm_features", sample[lo : lo + step], device=config.device)
                proba.append(torch.softmax(logit_scale * zero_shot_cosines(X, Y_dev), dim=1))
                bar.update()
        prior, _ = em_class_prior(torch.cat(proba))
        del proba
    prior = prior.cpu()
    with Bar(progress, "class-balanced means", len(parts)) as bar:
        sums = ex.reduce(K_.part_class_sums, parts, fit, Y, prior, logit_scale, merge=K_.sum_tensors, on_done=bar.tick)
    means = mean_of_class_means(sums[:, :-2], sums[:, -2])
    check_not_one_image(n, means[:d_vfm], means[d_vfm:] if config.query == "fused" else None)
    fit.vfm_mean = means[:d_vfm] if config.center else None
    fit.vlm_mean = means[d_vfm:] if config.center_vlm else None
    return {"prior": [float(v) for v in prior], "zero_shot_counts": sums[:, -1].long().tolist(),
            "rows_estimated_from": used, "seconds": time.perf_counter() - t0}


class StreamedPool:
    """The driver of a streamed fit (:class:`gpua.fitting.FitDriver`): chunk tasks on an executor.

    Parameters
    ----------
    ex : LocalExecutor or DaskExecutor
    parts : list of Part
    source : ShardedFeatures or ArraySource
    fit : FitSpec
        The fit's spec (its ``vfm_mean`` set); self-learning rounds broadcast copies with a map.
    b : float64 tensor of shape (n_classes,)
        Class marginal.
    config : FitConfig
    checkpoint : Checkpoint, optional
        For the first UCM (self-learning rounds are not checkpointed).
    progress : bool
    """

    def __init__(self, ex, parts, source, fit: K_.FitSpec, b: torch.Tensor, config: FitConfig, *, checkpoint=None, progress: bool = False):
        self.ex, self.parts, self.source, self.fit, self.b, self.config = ex, parts, source, fit, b, config
        self.checkpoint, self.progress = checkpoint, progress
        self.fit_b = ex.broadcast(fit)
        self.dev = config.device
        self.n = fit.n_total
        self.passes = 0
        self.log_v: torch.Tensor | None = None
        self.label = ""  # the progress bars' prefix: which self-learning round mines or refines
        self._rounds = 0
        self._moments = None  # the query's sums for plan_ridge (the query is the same in every mining)
        self._cross = None  # Q^T X for the Procrustes completion (the same in every round)

    def moments(self) -> torch.Tensor | None:
        """The pool's :func:`gpua.projection.query_moments` (one pass, the first time), or None without ``plan_ridge``."""
        if self.config.mining.plan_ridge is not None and self._moments is None:
            with Bar(self.progress, "query moments (plan projection)", len(self.parts)) as bar:
                self._moments = self.ex.reduce(K_.part_query_moments, self.parts, self.fit_b, merge=K_.sum_tensors, on_done=bar.tick)
            self.passes += 1
        return self._moments

    def mine(self, score_map, callback) -> Mined:
        fit, fit_b, ck = self.fit, self.fit_b, self.checkpoint
        if score_map is not None:  # a self-learning round: new tiles, scored by the map
            self._rounds += 1
            self.label = f"self-learning {self._rounds}: "
            fit = replace(self.fit, token=uuid.uuid4().hex, score_map=score_map.detach().float().cpu())
            fit_b, ck = self.ex.broadcast(fit), None
        m = self.config.mining
        try:
            ucm = streamed_ucm(
                self.ex, self.parts, fit, fit_b, b=self.b, rho=m.rho, tol=float(m.tol), sinkhorn_tol=float(m.sinkhorn_tol),
                sinkhorn_max_iter=int(m.sinkhorn_max_iter), max_outer=int(m.max_outer), n_init_per_class=int(m.n_init_per_class),
                checkpoint=ck, callback=callback, progress=self.progress, init_log_v=self.log_v, label=self.label,
                plan_ridge=m.plan_ridge, moments=self.moments,
            )
            self.log_v = ucm.log_v  # the next mining (a self-learning round) starts from this class potential
        finally:
            self.ex.drop(fit.token)  # the Sinkhorn tiles are done with: free them before refinement
            release_freed_memory()
        self.passes += ucm.passes
        return Mined(ucm.labels, ucm.confidence, ucm.centres.to(self.dev), ucm.history, ucm.converged, payload=ucm.cross_covariance)

    def cross(self) -> torch.Tensor:
        """The pool's :func:`gpua.procrustes.query_vlm_cross` (one pass, the first time it is needed)."""
        if self._cross is None:
            try:
                with Bar(self.progress, "query-VLM cross-covariance (Procrustes completion)", len(self.parts)) as bar:
                    self._cross = self.ex.reduce(K_.part_query_vlm_cross, self.parts, self.fit_b, merge=K_.sum_tensors,
                                                 on_done=bar.tick)
            finally:  # the pass read the chunks again (rows kept where the plan has room): free them before refinement
                self.ex.drop(self.fit.token)
                release_freed_memory()
            self.passes += 1
        return self._cross

    def procrustes(self, mined: Mined) -> torch.Tensor:
        return procrustes_map(mined.payload, self.config.mining.procrustes_completion, self.cross).float().to(self.dev)

    def refine(self, W0, labels, config: RefineConfig, callback):
        rows = rows_reader(self.source, self.fit, self.dev, memo_above=int(config.batch_size))
        with Bar(self.progress, f"{self.label}THS refinement", int(config.n_steps), unit="step") as bar:
            def on_eval(entry):
                bar.update(int(entry["step"]) - bar.n)
                bar.postfix(val=f"{entry['val_loss']:.4f}")
                if callback is not None:
                    callback(entry)

            W, curve = refine(W0, rows, self.n, self.fit.Y.to(self.dev), labels, config, on_eval)
        return W, curve, {"n_rows": 0}  # augmenting is refused by check_entry

    def consistency(self, labels: torch.Tensor) -> float:
        idx = consistency_sample(self.n, random_state=self.config.refinement.seed)
        sample = build_query(self.source.take("vfm_features", idx, device=self.dev), None, "vfm", on_device(self.fit.vfm_mean, self.dev))
        chunks = ((p.start, K_.part_vfm_rows(p, self.fit), labels[p.start : p.stop]) for p in self.parts)
        return knn_label_consistency(sample, labels[idx], idx, chunks)

    def finish(self, W, labels):
        k_csls = self.config.csls_k_used
        with Bar(self.progress, "final pass", len(self.parts)) as bar:
            res = self.ex.map(K_.part_final, self.parts, self.fit_b, W.detach().cpu(), k_csls, on_done=bar.tick)
        pool_pred = torch.cat([p for p, _ in res])
        radius = None
        if k_csls:
            tops = torch.cat([t for _, t in res], dim=1)
            radius = tops.topk(min(k_csls, tops.shape[1]), dim=1).values.mean(1)
        return float((pool_pred == labels).double().mean()), radius


def on_device(t: torch.Tensor | None, dev) -> torch.Tensor | None:
    """``t`` on ``dev`` (None stays None)."""
    return None if t is None else t.to(dev)
