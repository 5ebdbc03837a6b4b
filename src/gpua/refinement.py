r"""THS refinement of the Procrustes map, with label-free early stopping: one function, no estimator state.

.. math::
    W^\star = \arg\min_W \; \mathcal L_{\mathrm{THS}}(Q W; Y, \hat l)
              \;[+\ \gamma \|W^\top W - I\|_F^2 / d]

(:func:`refine`) from :math:`W_0` by AdamW on mini-batches (cosine schedule to ``lr * 1e-3``),
Gaussian noise and dropout on the batch each with probability 1/2, and early stopping on the
THS loss of a held-out slice of the pool against its pseudo-labels :math:`\hat l`
(:func:`split_pool`): the map with the lowest held-out loss is kept. The bracketed penalty is
``orthogonality="penalty"`` (:math:`\gamma` = ``ortho_weight``, :math:`d = \min(d_q, d_t)`,
:math:`W W^\top` in place of :math:`W^\top W` when :math:`d_q < d_t`);
``orthogonality="project"`` replaces :math:`W` by its polar factor after every step instead.
Every fit driver (in memory, streamed, federated clients) calls :func:`refine` with its own
``rows(idx)`` reader, so the same arithmetic runs on arrays, shards or a client's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch

from ._errors import GPUAError
from .hubness import semantic_margins, ths_loss
from .procrustes import polar_factor

__all__ = ["RefineConfig", "split_pool", "heldout_loss", "refine", "synthetic_rows"]


@dataclass(frozen=True)
class RefineConfig:
    """The refinement settings (the :class:`gpua.GPUA` parameters of the same names).

    Build it with :meth:`from_params` from an estimator's ``get_params()``; the defaults live in
    the estimator's signature only.
    """

    n_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    k: int
    margin_scale: float
    hubness_weight: float
    orthogonality: str
    ortho_weight: float
    noise_std: float
    dropout: float
    val_fraction: float
    eval_every: int
    patience: int
    refine_tol: float
    pool_augment: int
    random_state: int | None
    # The published code's variants (:class:`gpua.reference.ReferenceGPUA`); GPUA keeps these defaults.
    #: Rows per step as a fraction of the training rows, drawn without replacement (None: ``batch_size`` rows, with replacement).
    batch_fraction: float | None = None
    #: End of the cosine schedule (None: ``lr * 1e-3``).
    lr_min: float | None = None
    #: :func:`gpua.hubness.ths_loss`'s ``distance``, ``include_positive`` and ``full_sort``.
    distance: str = "cosine"
    include_positive: bool = False
    full_sort: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "RefineConfig":
        """The fields of ``params`` that refinement reads (others are ignored; the variants may be absent)."""
        return cls(**{f.name: params[f.name] for f in fields(cls) if f.name in params})

    def __post_init__(self):
        # scikit-learn's None: another fit, other randomness. The seed is drawn once, here, so
        # every stage of one fit shares it (and a GPUA fit keeps it, history_["random_state"]).
        if self.random_state is None:
            object.__setattr__(self, "random_state", int(np.random.SeedSequence().generate_state(1)[0]))

    @property
    def seed(self) -> int:
        return int(self.random_state)

    def loss_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`gpua.hubness.ths_loss`."""
        return dict(k=self.k, hubness_weight=self.hubness_weight, distance=self.distance,
                    include_positive=self.include_positive, full_sort=self.full_sort)


def split_pool(n: int, config: RefineConfig) -> tuple[torch.Generator, torch.Tensor, torch.Tensor]:
    """The refinement's generator and its held-out / training row split of a pool of ``n`` rows.

    The held-out slice is ``round(val_fraction * n)`` rows drawn first from the generator
    seeded with ``random_state`` (none below 50 rows); the same generator then draws the batches.

    Returns
    -------
    gen : torch.Generator (CPU)
    val_idx, train_idx : int64 tensors
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(config.seed)
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(config.val_fraction * n)) if n >= 50 else 0
    return gen, perm[:n_val], perm[n_val:]


def heldout_loss(W: torch.Tensor, Q: torch.Tensor, Y: torch.Tensor, labels: torch.Tensor, config: RefineConfig) -> float:
    """THS loss of the map ``W`` on query rows ``Q`` against their pseudo-labels: early stopping's measure."""
    margins = semantic_margins(Y, config.margin_scale)
    with torch.no_grad():
        return float(ths_loss(Q @ W, Y, labels.to(Y.device), margins, **config.loss_kwargs()))


def refine(
    W0: torch.Tensor,
    rows: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    Y: torch.Tensor,
    labels: torch.Tensor,
    config: RefineConfig,
    callback: Callable[[dict], Any] | None = None,
    augment: dict | None = None,
    *,
    sample_weight: torch.Tensor | None = None,
    rows_kept: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    r"""THS fine-tuning of ``W0`` with label-free early stopping.

    Each step draws a batch :math:`\mathcal B` of training rows (``batch_size`` with
    replacement, or ``batch_fraction`` without), perturbs it, with probability 1/2 each,
    by Gaussian noise :math:`q \leftarrow q + \sigma \xi` (:math:`\sigma` = ``noise_std``) and by
    inverted dropout :math:`q \leftarrow q \odot m / (1 - p)`,
    :math:`m_j \sim \mathrm{Bernoulli}(1 - p)` (:math:`p` = ``dropout``), and takes one AdamW
    step on

    .. math::
        \mathcal L_{\mathrm{THS}}(Q_{\mathcal B} W; Y, \hat l_{\mathcal B})
        \;[+\ \gamma\, \|W^\top W - I\|_F^2 / d]

    (:func:`gpua.hubness.ths_loss`; the penalty only with ``orthogonality="penalty"``,
    :math:`d = \min(d_q, d_t)`, :math:`W W^\top` when :math:`d_q < d_t`; with ``"project"``
    :math:`W \leftarrow \mathrm{polar}(W)` after the step), the learning rate following a cosine
    schedule from ``lr`` to ``lr_min`` (default ``lr * 1e-3``) over ``n_steps``. Every
    ``eval_every`` steps the THS loss of the held-out rows (:func:`split_pool`) is taken; the map
    with the lowest is kept, and the run stops after ``patience`` evaluations in a row that each
    improve on the best by less than :math:`\max(\mathrm{refine\_tol} \cdot |\text{best}|, 10^{-6})`.

    Parameters
    ----------
    W0 : tensor of shape (d_q, d_vlm)
        Start (the Procrustes map); not modified.
    rows : callable
        ``rows(idx)`` returns the query rows ``idx`` (an int64 index tensor) on ``Y``'s device,
        L2-normalised: from memory, from shards, or from a federated client's rows.
    n : int
        Pool size (indices ``0..n-1``).
    Y : tensor of shape (n_classes, d_vlm)
        Text prototypes, rows L2-normalised.
    labels : int tensor of shape (n,)
        Pseudo-labels of the pool.
    config : RefineConfig
    callback : callable, optional
        Called with each held-out evaluation ``{"step", "train_loss", "val_loss"}``.
    augment : dict, optional
        Updated with the record of ``pool_augment`` (:func:`synthetic_rows`) when it is on.
    sample_weight : tensor of shape (n,), optional
        Positive per-row weights :math:`w` of the THS loss, in training and in the held-out
        loss early stopping reads (:func:`gpua.hubness.ths_loss`'s ``sample_weight``): weighted
        pseudo-labels. Not with ``pool_augment``.
    rows_kept : bool tensor of shape (n,), optional
        Train and hold out only these rows (the split of the whole pool, then filtered, so the
        kept rows fall as they would without it): a subset of confident pseudo-labels. Not with
        ``pool_augment``.

    Returns
    -------
    W : tensor of shape (d_q, d_vlm)
        The map with the lowest held-out loss (the last one when no rows are held out).
    curve : list of dict
        The held-out evaluations, step 0 (``W0``) first.

    Raises
    ------
    GPUAError
        When no rows are held out and the map became NaN or inf (``lr`` too large).

    Examples
    --------
    >>> import torch
    >>> Q = torch.nn.functional.normalize(torch.randn(60, 4), dim=1)
    >>> Y = torch.eye(3, 4)
    >>> cfg = RefineConfig(n_steps=5, batch_size=16, lr=1e-3, weight_decay=0.0, k=1, margin_scale=2.0,
    ...                    hubness_weight=0.0, orthogonality="none", ortho_weight=1.0, noise_std=0.0,
    ...                    dropout=0.0, val_fraction=0.1, eval_every=5, patience=5, refine_tol=0.0,
    ...                    pool_augment=0, random_state=0)
    >>> W, curve = refine(torch.eye(4), Q.__getitem__, 60, Y, Q[:, :3].argmax(1), cfg)
    >>> tuple(W.shape), [c["step"] for c in curve]
    ((4, 4), [0, 5])
    """
    if (sample_weight is not None or rows_kept is not None) and config.pool_augment:
        raise GPUAError("sample_weight and rows_kept weigh and pick the pool's own rows; they do not apply to "
                        "pool_augment's synthetic rows: pass pool_augment=0 with them.")
    gen, val_idx, train_idx = split_pool(n, config)
    if rows_kept is not None:
        kept = rows_kept.cpu()
        if kept.dtype != torch.bool or kept.shape != (n,):
            raise GPUAError(f"rows_kept must be a boolean mask of the {n} pool rows, got {kept.dtype} of shape {tuple(kept.shape)}.")
        val_idx, train_idx = val_idx[kept[val_idx]], train_idx[kept[train_idx]]
        if not train_idx.numel():
            raise GPUAError("rows_kept keeps no training row; keep at least one row outside the held-out split.")
    n_val = val_idx.numel()
    dev = Y.device
    weight = None if sample_weight is None else sample_weight.detach().to(dtype=Y.dtype).cpu()
    # positive, not merely non-negative: a batch of zero-weight rows would make the loss 0/0 (rows_kept drops rows)
    if weight is not None and (weight.shape != (n,) or not bool((torch.isfinite(weight) & (weight > 0)).all())):
        raise GPUAError(f"sample_weight must be {n} finite positive weights, one per pool row (got shape "
                        f"{tuple(weight.shape)}); to leave rows out, pass rows_kept.")

    def row_weight(idx):
        return None if weight is None else weight[idx].to(dev)

    margins = semantic_margins(Y, config.margin_scale)
    W = torch.nn.Parameter(W0.clone())
    opt = torch.optim.AdamW([W], lr=config.lr, weight_decay=config.weight_decay)
    eta_min = config.lr * 1e-3 if config.lr_min is None else config.lr_min
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.n_steps), eta_min=eta_min)
    eye = torch.eye(min(W.shape), dtype=W.dtype, device=W.device)
    gram = (lambda M: M.T @ M) if W.shape[0] >= W.shape[1] else (lambda M: M @ M.T)
    labels = labels.cpu()
    train_rows, train_labels = rows, labels
    if config.pool_augment:
        # From the training rows only: the held-out rows that decide early stopping must
        # neither anchor nor shape the synthetic rows.
        real = rows(train_idx)
        Q_syn, y_syn, record = synthetic_rows(real, labels[train_idx], Y.shape[0], config.pool_augment, config.seed)
        bank = torch.cat([real, Q_syn.to(device=real.device, dtype=real.dtype)])
        train_labels = torch.cat([labels[train_idx], y_syn])
        train_rows, train_idx = bank.__getitem__, torch.arange(bank.shape[0])
        if augment is not None:
            augment.update(record)
    if config.batch_fraction is None:
        bs = min(int(config.batch_size), train_idx.numel())
    else:
        bs = max(1, int(config.batch_fraction * train_idx.numel()))
    dropout = float(config.dropout)

    def loss_on(idx, Wm):
        return ths_loss(rows(idx) @ Wm, Y, labels[idx].to(dev), margins, sample_weight=row_weight(idx), **config.loss_kwargs())

    best_W, best_val, bad, curve, step = W.detach().clone(), float("inf"), 0, [], 0
    if n_val:
        with torch.no_grad():
            best_val = float(loss_on(val_idx, W))
        curve.append({"step": 0, "val_loss": best_val})
    for step in range(1, config.n_steps + 1):
        if config.batch_fraction is None:
            pick = train_idx[torch.randint(train_idx.numel(), (bs,), generator=gen)]
        else:
            pick = train_idx[torch.randperm(train_idx.numel(), generator=gen)[:bs]]
        q = train_rows(pick)
        if config.noise_std and torch.rand((), generator=gen) < 0.5:
            q = q + config.noise_std * torch.randn(q.shape, generator=gen).to(q.device)
        if dropout and torch.rand((), generator=gen) < 0.5:
            drop = (torch.rand(q.shape, generator=gen) < dropout).to(q.device)
            q = q.masked_fill(drop, 0.0).mul_(1.0 / (1.0 - dropout))  # half the time of q * keep / (1 - p)
        loss = ths_loss(q @ W, Y, train_labels[pick].to(dev), margins, sample_weight=row_weight(pick), **config.loss_kwargs())
        if config.orthogonality == "penalty":
            loss = loss + config.ortho_weight * ((gram(W) - eye) ** 2).sum() / eye.shape[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if config.orthogonality == "project":
            with torch.no_grad():
                W.copy_(polar_factor(W))
        if n_val and (step % config.eval_every == 0 or step == config.n_steps):
            with torch.no_grad():
                val = float(loss_on(val_idx, W))
            entry = {"step": step, "train_loss": float(loss.detach()), "val_loss": val}
            curve.append(entry)
            if callback is not None:
                callback(entry)
            # As scikit-learn's early stopping: any decrease updates the kept map, but only a
            # decrease of more than refine_tol (relative) resets the patience counter.
            bad = 0 if val < best_val - max(1e-6, config.refine_tol * abs(best_val)) else bad + 1
            if val < best_val:
                best_val, best_W = val, W.detach().clone()
            if bad >= config.patience:
                break
    if not n_val:
        best_W = W.detach().clone()
    if not bool(torch.isfinite(best_W).all()):
        # Only a run without held-out rows gets here (early stopping keeps a finite map): a NaN
        # map would otherwise be fitted silently, or fail later as "scores contain NaN".
        raise GPUAError(
            f"THS refinement diverged: the map holds NaN or inf after {step} step(s) at lr={config.lr:g}, and no rows "
            "were held out for early stopping to fall back on (val_fraction=0 or rounding to no row, or a pool under 50 rows); lower lr "
            "(the default is 5e-4), or set refine=False."
        )
    return best_W, curve


def synthetic_rows(
    Q: torch.Tensor, labels: torch.Tensor, n_classes: int, m: int, random_state: int = 0
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    r"""``m`` calibrated rows per pseudo-class around the rows ``Q`` (``pool_augment``).

    Each pseudo-class :math:`k` with at least two rows gets
    :math:`\tilde q = q_a + L_k \varepsilon`, :math:`\varepsilon \sim N(0, I)`, anchored on its
    rows in turn, with :math:`L_k L_k^\top` the OAS-shrunk covariance of its rows
    (:func:`gpua.calibrate.oas_factor`), then L2-normalised.

    Parameters
    ----------
    Q : tensor of shape (n, d_q)
        The refinement's training rows.
    labels : int tensor of shape (n,)
        Their hard pseudo-labels.
    n_classes, m : int
    random_state : int
        Seed of its own numpy stream (refinement's torch generator is not touched).

    Returns
    -------
    Q_syn : float32 tensor of shape (n_syn, d_q)
        Rows L2-normalised.
    y_syn : int64 tensor of shape (n_syn,)
    record : dict
        ``n_rows`` (n_syn), ``per_class`` (rows per class), ``oas_shrinkage`` (:math:`\rho_k`,
        None for a class with fewer than two rows).
    """
    from .calibrate import oas_factor, sample_around  # heavy-ish; only when augmenting

    rng = np.random.default_rng(random_state)
    X = Q.detach().cpu().double().numpy()
    y = labels.cpu().numpy()
    m = int(m)
    out, per_class, rhos = [], [], []
    for k in range(n_classes):
        Xk = X[y == k]
        if Xk.shape[0] < 2:  # no covariance to calibrate from
            per_class.append(0)
            rhos.append(None)
            continue
        L, rho = oas_factor(Xk)
        out.append(sample_around(Xk, L, m, random_state=rng))
        per_class.append(m)
        rhos.append(rho)
    d = X.shape[1]
    Q_syn = torch.from_numpy(np.concatenate(out) if out else np.zeros((0, d), np.float32))
    y_syn = torch.repeat_interleave(torch.arange(n_classes), torch.tensor(per_class))
    record = {"n_rows": int(sum(per_class)), "per_class": per_class, "oas_shrinkage": rhos}
    return torch.nn.functional.normalize(Q_syn, dim=1), y_syn, record
