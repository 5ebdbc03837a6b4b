r"""Linear classifiers trained on real and generated features, and a shrinkage-LDA baseline.

:class:`LinearClassifier` is multinomial logistic regression in torch,

.. math::
    \min_{W, b}\ \frac{\sum_i \omega_i\, \ell_{\mathrm{CE}}(W x_i + b, y_i)}{\sum_i \omega_i}
    + \frac{\gamma}{2}\|W\|_F^2,

solved to convergence by full-batch L-BFGS (scipy's L-BFGS-B on a torch objective and
gradient), or by a few epochs of mini-batch SGD with momentum from a given start (the local
step of FedAvg). :class:`ShrinkageLDA` is Gaussian LDA with one pooled,
OAS-shrunk covariance; it fits from :class:`ClassStatistics` alone, so it is also the
one-shot federated baseline.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from .._backend import as_tensor, resolve_device, to_numpy
from .._errors import ConvergenceWarning, GPUAError, NotFittedError, warn_user
from .._validation import check_labels, check_matrix
from ..params import COUNT, NON_NEGATIVE, POSITIVE, DeviceName, Interval, OptionalOf, Options, ParamsMixin, check_param
from ._params import RANDOM_STATE
from ._sampling import as_rng
from ._shape import oas_shrinkage
from ._stats import ClassStatistics, check_class_labels, infer_n_classes

__all__ = ["LinearClassifier", "ShrinkageLDA", "balanced_sample_weight"]


class _Diverged(GPUAError):
    """An SGD or FedAvg fit that diverged: the learning rate is too large.

    Private: :func:`~gpua.calibrate.fedavg` turns the local fit's into its own, and
    ``gpua calibrate federated`` re-words it to name ``--lr`` (``lr`` is the value given,
    ``detail`` what happened).
    """

    def __init__(self, message: str, *, lr: float, detail: str) -> None:
        super().__init__(message)
        self.lr, self.detail = lr, detail


def smaller_lr(lr) -> float:
    """The learning rate a divergence message suggests instead of ``lr``: a tenth of it, at most 0.1."""
    return min(float(lr) / 10, 0.1)


def balanced_sample_weight(y: np.ndarray, n_classes: int) -> np.ndarray:
    r"""Class re-weighting :math:`\omega_i = n / (K\, n_{y_i})`: every class weighs the same in total.

    :math:`K` is the number of classes present in ``y`` (a class of ``n_classes`` with no sample
    gets no weight), so the weights average to 1 and each present class weighs :math:`n / K`.
    """
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = int((counts > 0).sum())
    return (y.shape[0] / (present * counts[y])).astype(np.float64)


class _LinearModel:
    """predict / predict_proba / score shared by the two classifiers (``coef_``, ``intercept_``).

    Listed before :class:`~gpua.params.ParamsMixin` in the classifiers' bases, so that its
    scikit-learn tags (a classifier) extend the mixin's defaults (no estimator type).
    """

    #: scikit-learn < 1.6 reads this; later versions read :meth:`__sklearn_tags__`.
    _estimator_type = "classifier"

    def __sklearn_tags__(self):
        """A classifier to scikit-learn: ``is_classifier`` is true, so ``cross_val_score`` and
        ``GridSearchCV`` split with ``StratifiedKFold`` (plain ``KFold`` on label-sorted rows gives
        folds missing whole classes), and labels are required."""
        from sklearn.utils import ClassifierTags

        tags = super().__sklearn_tags__()
        tags.estimator_type = "classifier"
        tags.classifier_tags = ClassifierTags()
        tags.target_tags.required = True
        return tags

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit first.")

    @property
    def classes_(self) -> np.ndarray:
        """The class labels, ``0 .. n_classes - 1`` (scikit-learn's ``cross_val_predict(method="predict_proba")``
        and ``CalibratedClassifierCV`` read it to order the probability columns)."""
        self._check_fitted()
        return np.arange(self.coef_.shape[0])

    def _class_scores(self, X) -> np.ndarray:
        """Class scores :math:`X W^\\top + b`, shape (n, K)."""
        self._check_fitted()
        X = check_matrix(X, "X", n_cols=self.coef_.shape[1], allow_zero_rows=True)
        return X.astype(self.coef_.dtype) @ self.coef_.T + self.intercept_

    def decision_function(self, X) -> np.ndarray:
        """Class scores :math:`X W^\\top + b`, shape (n, K); with two classes, as scikit-learn's
        classifiers give them, the second class's score minus the first's, shape (n,) (what
        ``roc_auc_score`` and the ``"roc_auc"`` scoring read)."""
        s = self._class_scores(X)
        return s[:, 1] - s[:, 0] if s.shape[1] == 2 else s

    def predict(self, X) -> np.ndarray:
        """Predicted class indices, shape (n,)."""
        return np.argmax(self._class_scores(X), axis=1)

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the scores, shape (n, K)."""
        s = self._class_scores(X)
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s)
        return p / p.sum(axis=1, keepdims=True)

    def score(self, X, y) -> float:
        """Top-1 accuracy."""
        self._check_fitted()
        X = check_matrix(X, "X", allow_zero_rows=True)
        K = self.coef_.shape[0]
        y = check_labels(y, X.shape[0], K, name="y", beyond=f"the model was fitted for {K} classes: fit it with "
                         "n_classes={needed} or more, or score only the classes it was fitted for")
        return float(np.mean(self.predict(X) == y))


class LinearClassifier(_LinearModel, ParamsMixin):
    r"""Multinomial logistic regression (torch), optionally class re-weighted.

    Parameters
    ----------
    weight_decay : float
        :math:`\gamma`, L2 penalty on :math:`W` (not on :math:`b`).
    solver : {"lbfgs", "sgd"}
        Full-batch L-BFGS to convergence, or ``epochs`` of mini-batch SGD with momentum
        (FedAvg's local update, warm-started from the global model).
    max_iter : int
        L-BFGS iterations.
    epochs, lr, batch_size, momentum
        SGD settings.
    class_weight : {None, "balanced"}
        ``"balanced"`` weighs each sample by :math:`n / (K n_{y_i})`, :math:`K` the classes present
        (the re-weighting baseline, :func:`balanced_sample_weight`).
    device : str or None
        Torch device ("cpu", "cuda", "cuda:N"); None: cuda when available.
    random_state : None, int >= 0 or numpy.random.Generator
        Seeds the SGD batch order.

    Attributes
    ----------
    coef_ : float32 array of shape (n_classes, n_features)
    intercept_ : float32 array of shape (n_classes,)
    n_classes_ : int
    n_features_in_ : int
    """

    _parameter_constraints = {
        "weight_decay": NON_NEGATIVE,
        "solver": Options(("lbfgs", "sgd")),
        "max_iter": COUNT,
        "epochs": COUNT,
        "lr": POSITIVE,
        "batch_size": COUNT,
        "momentum": Interval(float, 0, 0.999),
        "class_weight": OptionalOf(Options(("balanced",))),
        "device": OptionalOf(DeviceName()),
        "random_state": RANDOM_STATE,
    }

    def __init__(
        self,
        *,
        weight_decay: float = 1e-4,
        solver: Literal["lbfgs", "sgd"] = "lbfgs",
        max_iter: int = 300,
        epochs: int = 1,
        lr: float = 0.1,
        batch_size: int = 64,
        momentum: float = 0.9,
        class_weight: Literal["balanced"] | None = None,
        device: str | None = "cpu",
        random_state=None,
    ) -> None:
        self.weight_decay = weight_decay
        self.solver = solver
        self.max_iter = max_iter
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.momentum = momentum
        self.class_weight = class_weight
        self.device = device
        self.random_state = random_state

    def fit(
        self,
        X,
        y,
        *,
        n_classes: int | None = None,
        sample_weight=None,
        coef_init=None,
        intercept_init=None,
    ) -> "LinearClassifier":
        """Fit on ``X`` (n, d), ``y`` (n,); ``coef_init`` (K, d) / ``intercept_init`` (K,) warm-start."""
        self._validate_params()
        check_param("n_classes", n_classes, OptionalOf(COUNT))
        dev = resolve_device(self.device)  # an unknown or absent device is refused before any work
        X = check_matrix(X, "X", allow_zero_rows=True)
        K = int(n_classes) if n_classes is not None else infer_n_classes(y)
        if K < 2:
            raise GPUAError(f"n_classes={K}; a classifier needs at least 2 classes: give labels of two classes or more, or pass fit(..., n_classes=K).")
        y = check_class_labels(y, X.shape[0], K, name="y")
        n, d = X.shape
        w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise GPUAError("sample_weight must be n finite non-negative weights, not all zero.")
        if self.class_weight == "balanced":
            w = w * balanced_sample_weight(y, K)
        W0 = np.zeros((K, d)) if coef_init is None else np.array(coef_init, dtype=np.float64)
        b0 = np.zeros(K) if intercept_init is None else np.array(intercept_init, dtype=np.float64)
        if W0.shape != (K, d) or b0.shape != (K,):
            raise GPUAError(f"coef_init / intercept_init must have shapes ({K}, {d}) / ({K},); they do not.")
        gamma = float(self.weight_decay)
        yt = torch.as_tensor(y, device=dev)
        # torch.optim is not used: its first import pulls in torch._dynamo (seconds of start-up
        # for every CLI call and test run), and both solvers here are a few lines.
        if self.solver == "lbfgs":
            # float64 so the line search sees a smooth objective; scipy's L-BFGS-B drives it.
            Xt = as_tensor(X, dev, torch.float64)
            wt = as_tensor(w / w.sum(), dev, torch.float64)

            def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
                t = torch.as_tensor(theta, dtype=torch.float64, device=dev).requires_grad_(True)
                Wt, bt = t[: K * d].view(K, d), t[K * d :]
                ce = torch.nn.functional.cross_entropy(Xt @ Wt.T + bt, yt, reduction="none")
                loss = (wt * ce).sum() + 0.5 * gamma * (Wt * Wt).sum()
                loss.backward()
                return float(loss.detach()), to_numpy(t.grad)

            from scipy import optimize  # lazily: scipy.optimize pulls scipy.stats (0.6 s at CLI start)

            res = optimize.minimize(
                value_and_grad, np.concatenate([W0.ravel(), b0]), jac=True, method="L-BFGS-B",
                options={"maxiter": int(self.max_iter), "gtol": 1e-5, "ftol": 1e-10, "maxcor": 20},
            )
            theta = res.x
            W_out, b_out = theta[: K * d].reshape(K, d), theta[K * d :]
            self.n_iter_ = int(res.nit)
            if self.n_iter_ >= int(self.max_iter):  # scikit-learn's LogisticRegression says so too
                warn_user(f"LinearClassifier stopped at max_iter={self.max_iter} L-BFGS iterations before converging "
                          f"(gradient norm {float(np.abs(res.jac).max()):.2g} > 1e-5); raise max_iter, or scale the features.",
                          ConvergenceWarning)
        else:
            Xt = as_tensor(X, dev)
            wt = as_tensor(w / w.mean(), dev)
            W = as_tensor(W0, dev).requires_grad_(True)
            b = as_tensor(b0, dev).requires_grad_(True)
            bufs = [torch.zeros_like(W), torch.zeros_like(b)]
            lr, mom = float(self.lr), float(self.momentum)
            rng = as_rng(self.random_state)
            bs = max(1, int(self.batch_size))
            for _ in range(int(self.epochs)):
                perm = torch.as_tensor(rng.permutation(n), device=dev)
                for start in range(0, n, bs):
                    idx = perm[start : start + bs]
                    wb = wt[idx]
                    ce = torch.nn.functional.cross_entropy(Xt[idx] @ W.T + b, yt[idx], reduction="none")
                    # A batch of zero-weight samples adds only the penalty (0 / 0 would be NaN).
                    loss = (wb * ce).sum() / wb.sum().clamp_min(1e-30) + 0.5 * gamma * (W * W).sum()
                    gW, gb = torch.autograd.grad(loss, (W, b))
                    with torch.no_grad():  # heavy-ball momentum, as torch.optim.SGD (dampening 0)
                        for p_, buf, g in zip((W, b), bufs, (gW, gb)):
                            buf.mul_(mom).add_(g)
                            p_.sub_(lr * buf)
            W_out, b_out = to_numpy(W), to_numpy(b)
            self.n_iter_ = int(self.epochs) * (-(-n // bs))
        if not (np.all(np.isfinite(W_out)) and np.all(np.isfinite(b_out))):
            # A diverged fit would otherwise predict class 0 everywhere and NaN probabilities.
            if self.solver == "sgd":
                raise _Diverged(
                    f"the SGD fit diverged (its weights became NaN or inf) with lr={self.lr!r}; use a smaller lr "
                    f"(try lr={smaller_lr(self.lr):g}), or standardise the features.",
                    lr=float(self.lr), detail="(its weights became NaN or inf)",
                )
            raise GPUAError(
                "the L-BFGS fit produced NaN or inf weights; standardise the features and check that "
                "coef_init / intercept_init are finite and of a sensible scale."
            )
        self.coef_ = np.asarray(W_out, dtype=np.float32)
        self.intercept_ = np.asarray(b_out, dtype=np.float32)
        self.n_classes_ = K
        self.n_features_in_ = d
        return self


class ShrinkageLDA(_LinearModel, ParamsMixin):
    r"""Linear discriminant analysis with an OAS-shrunk pooled covariance.

    .. math::
        \Sigma_w = \frac{1}{n}\sum_k n_k \Sigma_k,\qquad
        \hat\Sigma_w = \mathrm{OAS}(\Sigma_w),\qquad
        f_k(x) = x^\top \hat\Sigma_w^{-1}\mu_k - \tfrac12 \mu_k^\top \hat\Sigma_w^{-1}\mu_k + \log \pi_k

    Parameters
    ----------
    priors : {"empirical", "uniform"}
        Class priors :math:`\pi_k`: training frequencies, or equal (for a balanced test set).
    shrinkage : {"oas", None}
        Shrink the pooled covariance (OAS, with :math:`n - K` as its sample count).

    Attributes
    ----------
    coef_ : float64 array of shape (n_classes, n_features)
    intercept_ : float64 array of shape (n_classes,)
    covariance_ : array of shape (n_features, n_features)
        The shrunk pooled covariance.
    """

    _parameter_constraints = {
        "priors": Options(("empirical", "uniform")),
        "shrinkage": OptionalOf(Options(("oas",))),
    }

    def __init__(self, *, priors: Literal["empirical", "uniform"] = "empirical", shrinkage: Literal["oas"] | None = "oas") -> None:
        self.priors = priors
        self.shrinkage = shrinkage

    def fit(self, X, y, *, n_classes: int | None = None) -> "ShrinkageLDA":
        """Fit on features ``X`` (n, d) and labels ``y`` (n,)."""
        return self.fit_statistics(ClassStatistics(n_classes).fit(X, y))

    def fit_statistics(self, statistics: ClassStatistics) -> "ShrinkageLDA":
        """Fit from per-class statistics (e.g. merged from federated clients)."""
        self._validate_params()
        if not isinstance(statistics, ClassStatistics):
            raise GPUAError(f"statistics is a {type(statistics).__name__}; pass a fitted ClassStatistics.")
        statistics.check_fitted()
        n = statistics.count_
        present = n > 0
        if present.sum() < 2:
            raise GPUAError("ShrinkageLDA needs samples of at least 2 classes.")
        total = int(n.sum())
        pooled = statistics.scatter_.sum(axis=0) / total
        if not np.trace(pooled) > 0:
            # Its inverse would be inf: NaN coef_, class 0 predicted everywhere, NaN probabilities.
            raise GPUAError(
                "the pooled within-class covariance is zero: every class has a single sample or identical "
                "rows, so LDA has no spread to whiten by; add samples of the classes (two distinct rows of "
                "one class suffice), or use LinearClassifier."
            )
        if self.shrinkage == "oas":
            pooled = oas_shrinkage(pooled, max(total - int(present.sum()), 1))[0]
        lam, V = np.linalg.eigh(pooled)
        lam = np.maximum(lam, 1e-10 * max(lam.max(), 1e-300))  # pseudo-inverse for a singular unshrunk case
        mu = statistics.mean_
        coef = ((mu @ V) / lam) @ V.T
        prior = n / total if self.priors == "empirical" else present / present.sum()
        with np.errstate(divide="ignore"):
            intercept = -0.5 * np.einsum("kd,kd->k", coef, mu) + np.log(prior)
        self.coef_ = coef
        self.intercept_ = np.where(present, intercept, -np.inf)
        self.covariance_ = pooled
        self.n_classes_ = int(n.shape[0])
        self.n_features_in_ = int(mu.shape[1])
        return self
