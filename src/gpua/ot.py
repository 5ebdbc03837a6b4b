r"""Entropic optimal transport on an (N, K) score matrix, with log-stabilised Sinkhorn iterations.

UCM's soft assignment of N images to K classes is

.. math::
    P^\star = \arg\max_{P \in \Pi(a, b)} \langle P, S \rangle + \varepsilon H(P),
    \qquad \Pi(a, b) = \{P \ge 0 : P \mathbf 1_K = a,\ P^\top \mathbf 1_N = b\},

with :math:`H(P) = -\sum_{ik} P_{ik} (\log P_{ik} - 1)`. Its solution is
:math:`\log P_{ik} = S_{ik}/\varepsilon + u_i + v_k` for potentials :math:`u, v` found by
Sinkhorn's alternating projections. The potentials are kept in the log domain and absorbed into
the kernel whenever the exp-domain scalings grow large (Schmitzer, 2019;
:func:`_sinkhorn_torch`), so that small :math:`\varepsilon` never under- or overflows.

Semi-relaxed variant (unknown or imbalanced class priors): the *class* marginal (columns)
becomes a KL penalty while the image marginal (rows) stays exact,

.. math::
    \max_{P \ge 0,\ P \mathbf 1_K = a} \langle P, S \rangle + \varepsilon H(P)
    - \rho\, \mathrm{KL}(P^\top \mathbf 1_N \,\|\, b),

whose class-potential update is the balanced one damped by :math:`\rho / (\rho + \varepsilon)`
(Chizat et al., 2018; POT's ``sinkhorn_unbalanced`` with ``reg_m = (inf, rho)``).

Stopping rule (balanced): the *relative* class-marginal error
:math:`\max_k |(P^\top \mathbf 1)_k - b_k| / b_k` (rows are exact after each row update). An
absolute tolerance on a matrix summing to one, as in the published code, stops after two
iterations at N = 50k, K = 1000 with class marginals off by more than 100%. The semi-relaxed
problem does not hold the class marginal to :math:`b`, so it stops on the largest change of the
class potential instead, :math:`\max_k |\Delta v_k|`.

Two solvers: ``"torch"`` (our kernel, CPU or GPU: scores and potentials in float32, the
kernel and its products in float64, memory ``O(N K)`` for the score, the kernel and one
temporary) and ``"pot"`` (POT in float64 on the CPU: ``ot.sinkhorn(..., method="sinkhorn_log")``
when balanced, ``ot.unbalanced.sinkhorn_unbalanced(..., method="sinkhorn_stabilized")`` when
semi-relaxed). ``benchmarks/sinkhorn_speed.py`` compares them; the torch kernel is the default
because it is several times faster there at equal accuracy.

A third, ``"swav"``, reproduces the published GPUA code (SwAV's ``distributed_sinkhorn``, Caron
et al., 2020) for :class:`gpua.reference.ReferenceGPUA`: exponential domain, float32, rows
shifted by their maximum, and the *absolute* stopping rule
:math:`\max_{ik} |P^{(t)}_{ik} - P^{(t-1)}_{ik}| < \mathrm{tol}` on a plan summing to one
(which ends it early with class marginals far off on large problems; a yardstick only).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ._backend import as_tensor
from ._errors import GPUAError
from ._validation import check_number

__all__ = ["SinkhornResult", "sinkhorn", "marginal_error", "check_marginal"]


@dataclass
class SinkhornResult:
    r"""Output of :func:`sinkhorn`.

    Attributes
    ----------
    plan : float32 tensor of shape (n_samples, n_classes)
        The transport plan :math:`P`; rows sum to ``a`` (the whole plan to one).
    log_u : tensor of shape (n_samples,)
    log_v : tensor of shape (n_classes,)
        Log-domain potentials, :math:`\log P_{ik} \approx S_{ik}/\varepsilon + u_i + v_k` for the
        scores as given (``log_v`` warm-starts the next solve).
    n_iter : int
    marginal_error : float
        Final relative class-marginal error (balanced, and ``"swav"``) or the last change of
        the class potential :math:`\max_k |\Delta v_k|` (semi-relaxed; with ``solver="pot"``,
        POT's own measure, the relative change of the row scaling).
    converged : bool
    history : list of float
        The stopping measure per iteration (``"torch"`` and ``"swav"``; empty for ``"pot"``).
    """

    plan: torch.Tensor
    log_u: torch.Tensor
    log_v: torch.Tensor
    n_iter: int
    marginal_error: float
    converged: bool
    history: list[float] = field(default_factory=list)


def check_marginal(m, n: int, name: str, device: torch.device) -> torch.Tensor:
    """A probability vector of length ``n`` (``None`` -> uniform), as float64 on ``device``."""
    if m is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    m = np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
    if m.ndim != 1 or m.shape[0] != n:
        raise GPUAError(f"{name} must have shape ({n},) but has shape {m.shape}; give one weight per {'class' if 'class' in name else 'row'}.")
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        raise GPUAError(f"{name} must hold positive finite weights; give every class a prior above zero.")
    return torch.as_tensor(m / m.sum(), dtype=torch.float64, device=device)


def marginal_error(plan: torch.Tensor, b: torch.Tensor) -> float:
    r"""Relative class-marginal error :math:`\max_k |(P^\top 1)_k - b_k| / b_k`."""
    col = plan.sum(0, dtype=torch.float64)
    return float(((col - b).abs() / b).max())


def sinkhorn(
    scores,
    eps: float,
    a=None,
    b=None,
    *,
    rho: float | None = None,
    tol: float = 1e-6,
    max_iter: int = 2000,
    init_log_v: torch.Tensor | None = None,
    solver: str = "torch",
) -> SinkhornResult:
    r"""Entropic OT plan: UCM's assignment step, balanced or semi-relaxed.

    .. math::
        P^\star = \arg\max_{P \in \Pi(a, b)} \langle P, S \rangle + \varepsilon H(P)
        \quad (\rho = \text{None}),\qquad
        P^\star = \arg\max_{P \ge 0,\ P \mathbf 1_K = a} \langle P, S \rangle + \varepsilon H(P)
        - \rho\, \mathrm{KL}(P^\top \mathbf 1_N \,\|\, b),

    with :math:`H(P) = -\sum_{ik} P_{ik}(\log P_{ik} - 1)`. The image marginal :math:`a` is
    always exact; only the class marginal :math:`b` is relaxed. With the ``"torch"`` solver
    each iteration sets :math:`u` so the rows are exact, then
    :math:`v \leftarrow \delta\,(\log b - \log \sum_i e^{S_{ik}/\varepsilon + u_i})`,
    :math:`\delta = \rho / (\rho + \varepsilon)` (1 when balanced), in the log-stabilised form
    of :func:`_sinkhorn_torch`. Scores far from zero (``max |S| / eps`` above 4096, or float64
    scores) are shifted by each row's maximum first; the plan does not change and ``log_u``
    takes the shift back.

    Parameters
    ----------
    scores : array or tensor of shape (n_samples, n_classes)
        The score :math:`S` to maximise (higher = better match).
    eps : float
        Entropic regularisation :math:`\varepsilon` in the units of ``scores``.
    a : array of shape (n_samples,), optional
        Row marginal (default uniform, :math:`1/N`); user-given weights are normalised.
    b : array of shape (n_classes,), optional
        Class marginal (default uniform, :math:`1/K`); user-given priors are normalised.
    rho : float, optional
        Semi-relaxed class marginal: KL weight :math:`\rho`; ``None`` = balanced (exact).
    tol : float
        Stop when the relative class-marginal error (balanced) or the largest change of the
        class potential, :math:`\max_k |\Delta v_k|` (semi-relaxed; ``solver="pot"``: POT's
        relative change of the row scaling), falls below ``tol``.
    max_iter : int
    init_log_v : tensor of shape (n_classes,), optional
        Warm start for the class potential (``solver="torch"`` only; ``"pot"`` and ``"swav"``
        start cold).
    solver : {"torch", "pot", "swav"}
        ``"swav"`` (the published code's exponential-domain iteration, see the module docstring)
        stops when the largest change of a plan entry falls below ``tol`` (absolute, the plan
        summing to one), ignores ``init_log_v`` and refuses ``rho``.

    Returns
    -------
    SinkhornResult
        ``plan`` sums to one (rows to ``a``); :func:`gpua.ucm.mine_correspondences` multiplies
        it by :math:`N` so that each row sums to one.
    """
    # numpy scalars (np.float32(0.05), a value read from an array) are numbers too; booleans are not.
    if isinstance(eps, (bool, np.bool_)) or not (isinstance(eps, (int, float, np.integer, np.floating)) and eps > 0 and math.isfinite(eps)):
        raise GPUAError(f"eps={eps!r} must be a positive number (try 0.05).")
    if rho is not None:
        # rho = inf is the balanced problem, but its damping inf / (inf + eps) is NaN: say so.
        check_number(rho, "rho", low=0.0, low_open=True, fix="a finite KL weight such as 0.03, or None for exact class marginals")
    check_number(tol, "tol", low=0.0, fix="a small positive number such as 1e-6 (0 runs all max_iter iterations)")
    max_iter = check_number(max_iter, "max_iter", integer=True, low=1, fix="e.g. 2000")
    if not isinstance(scores, torch.Tensor):
        scores = np.asarray(scores)
    # float64 scores stay float64 until their rows are shifted below (float32 would round them first).
    S = scores if isinstance(scores, torch.Tensor) else as_tensor(scores, torch.device("cpu"), torch.float64 if scores.dtype == np.float64 else torch.float32)
    if S.ndim != 2 or S.shape[0] == 0 or S.shape[1] == 0:
        raise GPUAError(f"scores must be a non-empty 2-D (n_samples, n_classes) matrix, got shape {tuple(S.shape)}.")
    if not torch.isfinite(S).all():
        raise GPUAError("scores contain NaN or inf; check the input features.")
    n, k = S.shape
    a64 = check_marginal(a, n, "sample_weight", S.device)
    b64 = check_marginal(b, k, "class_prior", S.device)
    if init_log_v is not None:
        init_log_v = torch.as_tensor(init_log_v.detach() if isinstance(init_log_v, torch.Tensor) else np.asarray(init_log_v, dtype=np.float64))
        if init_log_v.shape != (k,) or not torch.isfinite(init_log_v).all():
            raise GPUAError(
                f"init_log_v must be a finite vector of shape ({k},) (one potential per class, the log_v of an earlier "
                f"solve on the same classes) but has shape {tuple(init_log_v.shape)}; pass None to start cold."
            )
    if solver not in ("torch", "pot", "swav"):
        raise GPUAError(f"solver={solver!r} is unknown; use 'torch', 'pot' or 'swav'.")
    if solver == "swav" and rho is not None:
        raise GPUAError("solver='swav' solves the balanced problem only; pass rho=None or use solver='torch'.")
    eps = float(eps)
    shift = None
    if S.dtype == torch.float64 or float(S.abs().max()) > _SHIFT_ABOVE * eps:
        # The plan does not change when a row's scores move by a constant. Taking each row's
        # maximum out, in the scores' own precision, keeps the differences that float32 S / eps
        # rounds away when the scores sit far from zero (1e4 + N(0, 0.3) at eps = 0.05 put
        # plan entries 0.4% off, 1e5 + ... 3%); the row potentials take the shift back.
        shift = S.amax(dim=1, keepdim=True)
        S = S - shift
    if solver == "torch":
        res = _sinkhorn_torch(S, eps, a64, b64, rho, tol, max_iter, init_log_v)
    elif solver == "pot":
        res = _sinkhorn_pot(S, eps, a64, b64, rho, tol, max_iter)
    else:
        res = _sinkhorn_swav(S, eps, a64, b64, tol, max_iter)
    if shift is not None:
        res.log_u = res.log_u - shift[:, 0].to(res.log_u.device, torch.float64) / eps
    return res


#: :func:`sinkhorn` shifts each row of the scores by its maximum when ``max |S| / eps`` exceeds this
#: (float32 then resolves ``S / eps`` to 5e-4 or coarser) or when the scores are float64; GPUA's
#: cosine scores stay far below it (``|S| / eps <= 20`` at the default ``eps``).
_SHIFT_ABOVE = 4096.0


def _sinkhorn_torch(S, eps, a64, b64, rho, tol, max_iter, init_log_v, absorb_at: float = 30.0) -> SinkhornResult:
    r"""Stabilised Sinkhorn: log-domain potentials absorbed into an exp-domain kernel.

    Each plain iteration is two matrix-vector products on the (N, K) kernel
    :math:`K = \exp(S/\varepsilon + f \oplus g)`; a log-domain pass costs an ``exp`` over
    the whole matrix, about ten times more. The scalings :math:`u, v` stay near one because the
    potentials :math:`f, g` are re-absorbed into the kernel whenever
    :math:`\max |\log u|, |\log v|` exceeds ``absorb_at`` (checked every 10 iterations;
    Schmitzer, 2019), so nothing overflows; entries that underflow are below 1e-38 of their
    row's mass. :math:`S/\varepsilon` and the potentials are float32 in the exponent, the kernel
    and its products float64; the returned plan is float32, its rows made exact by a last row
    update.

    The class update, with :math:`\delta = \rho/(\rho + \varepsilon)` (1 when balanced), is
    :math:`\log v \leftarrow \delta(\log b - \log K^\top u) + (\delta - 1)\, g`, i.e. the
    total class potential :math:`g + \log v` becomes :math:`\delta(\log b - \log \sum_i
    e^{S_{ik}/\varepsilon + f_i + \log u_i})`.
    """
    # Scores and potentials in float32; the kernel and its products in float64, since float32
    # rounding alone leaves class marginals ~1e-5 off at N = 5000 and worse beyond.
    dtype = torch.float64
    L = S.float() / eps
    a = a64
    b = b64
    log_a, log_b = a.log(), b.log()
    damp = 1.0 if rho is None else rho / (rho + eps)
    g = torch.zeros(L.shape[1], dtype=dtype, device=L.device) if init_log_v is None else init_log_v.to(L.device, dtype)
    del dtype
    # One log-domain sweep sets f and g to the right scale, so no column of the kernel is all 0.
    f = log_a - torch.logsumexp(L + g.float(), dim=1).double()
    g = damp * (log_b - torch.logsumexp(L + f[:, None].float(), dim=0).double())
    history: list[float] = []
    err = float("inf")
    it = 0
    kernel = None
    while it < max_iter:
        kernel = torch.exp((L + f[:, None].float() + g.float()).double())
        u = torch.ones_like(f)
        v = torch.ones_like(g)
        while it < max_iter:
            it += 1
            u = a / (kernel @ v)
            col = kernel.T @ u  # column sums of the plan divided by v
            log_v_new = damp * (log_b - col.log()) + (damp - 1.0) * g
            if rho is None:
                # Class marginal before the update is v * col: relative error vs b.
                err = float(((v * col - b).abs() / b).max())
            else:
                err = float((log_v_new - v.log()).abs().max())
            v = log_v_new.exp()
            history.append(err)
            if err < tol or not torch.isfinite(v).all():
                break
            if it % 10 == 0 and (float(u.log().abs().max()) > absorb_at or float(log_v_new.abs().max()) > absorb_at):
                break
        f = f + u.log()
        g = g + v.log()
        if err < tol or not torch.isfinite(g).all():
            break
    if not (torch.isfinite(f).all() and torch.isfinite(g).all()):
        raise GPUAError(
            f"Sinkhorn diverged at eps={eps}: the scores span too wide a range for this eps; raise eps."
        )
    # The plan is the absorbed kernel with the last scalings; a final row update makes the
    # rows exact (the class marginal carries the reported error).
    plan = kernel.mul_(u[:, None]).mul_(v)
    row_fix = a / plan.sum(1)
    plan = plan.mul_(row_fix[:, None]).float()
    f = f + row_fix.log()
    del L
    if rho is None:
        err = marginal_error(plan, b64)
    return SinkhornResult(plan, f, g, it, err, err < tol, history)


def _sinkhorn_pot(S, eps, a64, b64, rho, tol, max_iter) -> SinkhornResult:
    import ot  # POT

    M = -S.detach().cpu().double().numpy()
    a = a64.cpu().numpy()
    b = b64.cpu().numpy()
    if rho is None:
        # POT stops on the L2 norm of the absolute class-marginal error; scaling the threshold
        # by min(b) bounds the relative error by tol.
        plan, log = ot.sinkhorn(
            a, b, M, eps, method="sinkhorn_log", numItermax=max_iter, stopThr=tol * float(b.min()), log=True, warn=False
        )
        n_iter = int(log.get("niter", max_iter))
        log_u = torch.as_tensor(log["log_u"])
        log_v = torch.as_tensor(log["log_v"])
    else:
        # reg_type="entropy": the module's H(P). POT >= 0.9.5 defaults to "kl", KL(P | a b^T), another
        # problem once b is not uniform (class marginals ~1e-2 off the torch solver's at a skewed prior).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="If reg_type = entropy", category=UserWarning)
            warnings.filterwarnings("ignore", message="Stabilized Unbalanced Sinkhorn did not converge", category=UserWarning)
            kwargs = dict(reg_m=(float("inf"), rho), method="sinkhorn_stabilized", numItermax=max_iter, stopThr=tol, log=True)
            try:
                plan, log = ot.unbalanced.sinkhorn_unbalanced(a, b, M, eps, reg_type="entropy", **kwargs)
            except TypeError:  # a POT without reg_type: its only regulariser is the entropy
                plan, log = ot.unbalanced.sinkhorn_unbalanced(a, b, M, eps, **kwargs)
        # POT records its stopping measure (relative change of u) at iterations 0, 10, 20... and
        # stops after the first record below stopThr: that record's iteration + 1, or max_iter.
        errs = [float(e) for e in log.get("err", [])]
        solved = bool(errs) and errs[-1] <= tol
        n_iter = 10 * (len(errs) - 1) + 1 if solved else max_iter
        # log P = S / eps + log_u + log_v, as the other solvers report them.
        log_u = torch.as_tensor(np.asarray(log["logu"], dtype=np.float64))
        log_v = torch.as_tensor(np.asarray(log["logv"], dtype=np.float64))
    P = torch.as_tensor(plan, dtype=torch.float32, device=S.device)
    err = marginal_error(P, b64.to(S.device)) if rho is None else (errs[-1] if errs else float("inf"))
    converged = err < tol if rho is None else solved
    return SinkhornResult(P, log_u, log_v, n_iter, err, bool(converged), [])


def _sinkhorn_swav(S, eps, a64, b64, tol, max_iter) -> SinkhornResult:
    r"""The published code's Sinkhorn (SwAV style), kept for :class:`gpua.reference.ReferenceGPUA`.

    .. math::
        P^{(0)} \propto \exp\big((S_{ik} - \max_j S_{ij}) / \varepsilon\big),\quad
        \textstyle\sum_{ik} P^{(0)}_{ik} = 1;

    then, per iteration, scale each class column to :math:`b_k` and each sample row to
    :math:`a_i`; stop once :math:`\max_{ik} |P^{(t)}_{ik} - P^{(t-1)}_{ik}| <` ``tol`` or after
    ``max_iter`` iterations. Float32 like the original (entries below float32's range are 0).
    The scalings are accumulated in the log domain so that the potentials
    (:math:`\log P = S/\varepsilon + \log u \oplus \log v`) are reported like the other
    solvers'; ``marginal_error`` is the relative class-marginal error, ``history`` the absolute
    changes, ``converged`` whether the absolute rule stopped it.
    """
    S32 = S.float()
    shift = S32.max(dim=1, keepdim=True).values
    P = torch.exp((S32 - shift) / eps)
    total = P.sum()
    P /= total
    a = a64.to(P.device, torch.float32)
    b = b64.to(P.device, torch.float32)
    log_u = (-shift[:, 0] / eps - total.log()).double()
    log_v = torch.zeros(P.shape[1], dtype=torch.float64, device=P.device)
    change, it, history = float("inf"), 0, []
    for it in range(1, max_iter + 1):
        prev = P.clone()
        col = b / P.sum(0)  # class columns to b_k
        P *= col
        row = a / P.sum(1)  # sample rows to a_i
        P *= row[:, None]
        log_v += col.double().log()
        log_u += row.double().log()
        change = float((P - prev).abs().max())
        history.append(change)
        if change < tol:
            break
    return SinkhornResult(P, log_u, log_v, it, marginal_error(P, b64.to(P.device)), change < tol, history)
