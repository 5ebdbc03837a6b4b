r"""Distribution calibration: per-class covariances (own, shrunk or borrowed) and resampling.

The estimator behind the long-tail experiment and the federated server. For each class
:math:`k` with :math:`n_k` samples and sample covariance :math:`S_k`:

* a class with no donor (none has more samples) keeps its own covariance, shrunk by OAS;
* any other class mixes its own covariance with the covariance of its most similar, better
  sampled classes (the "donors" :math:`D_k`) as a conjugate (normal-inverse-Wishart) posterior
  would:

  .. math::
      \Sigma_k = \frac{n_k S_k + \nu B_k}{n_k + \nu},\qquad
      B_k = \sum_{j \in D_k} w_{kj}\, \hat\Sigma_j^{\mathrm{OAS}},\qquad
      w_{kj} \propto \max(\operatorname{sim}(k, j), 0)

  (equal weights when no donor has a positive similarity), so a one-sample class takes its
  donors' shape whole, and a head class (:math:`n_k \gg \nu`) keeps essentially its own.

Why donors are chosen by class similarity of *means* (or of text embeddings), not by shape
similarity: the premise of the method is that similar classes share a shape, but a tail
class's own shape (its leading eigenvectors from a handful of samples) is mostly noise, so
:math:`S(A, B)` cannot pick its donors. A mean is estimated to :math:`O(\sigma/\sqrt{n})`
from few samples, and a text embedding needs no samples at all.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .._errors import GPUAError, NotFittedError
from .._validation import _tensor_to_numpy, as_float64
from ..params import COUNT, NON_NEGATIVE, POSITIVE, AnyOf, OptionalOf, Options, ParamsMixin, check_param
from ._params import RANDOM_STATE
from ._sampling import as_rng, fill_to_target
from ._shape import oas_shrinkage, psd_factor
from ._stats import ClassStatistics, check_class_embeddings, check_class_labels

__all__ = ["DistributionCalibrator", "class_similarity"]


def class_similarity(vectors: np.ndarray, *, center: bool = True) -> np.ndarray:
    r"""Cosine similarity between class vectors (means or text embeddings), (K, d) -> (K, K).

    With ``center`` the mean vector over classes is removed first: foundation-model features
    share a large common component, which makes every raw cosine close to 1 and the ranking
    of neighbours noisy. Classes are averaged unweighted so head classes do not set the centre.
    """
    V = np.asarray(vectors, dtype=np.float64)
    if center:
        V = V - V.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(V, axis=1, keepdims=True)
    V = V / np.maximum(norms, 1e-12)
    return V @ V.T


def _copies_of_one(S: np.ndarray, n: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Classes of two or more samples whose covariance ``S`` (K, d, d) is zero up to rounding: every
    sample the same row. Rounding is measured against the features' own scale (the largest class
    spread or squared mean norm), since moments summed in floating point leave ~1e-16 of it."""
    traces = np.einsum("kii->k", S)
    scale = max(float(traces.max(initial=0.0)), float(np.square(means).sum(axis=1).max(initial=0.0)), np.finfo(np.float64).tiny)
    return (n >= 2) & (traces <= 1e-10 * scale)


class DistributionCalibrator(ParamsMixin):
    r"""Fill every class to a target count with samples drawn along calibrated class shapes.

    Parameters
    ----------
    target : "max" or int
        Count every class is filled to, real samples included (``"max"``: the largest class
        count in the data passed to :meth:`sample`).
    n_components : int, optional
        Number of leading eigenpairs used to generate (all when omitted, as the paper does).
    shrinkage : {"oas", None}
        Shrink own covariances towards :math:`\operatorname{tr}(S)/d \cdot I` by OAS
        (:func:`~gpua.calibrate.oas_shrinkage`): a class with fewer samples than dimensions has
        a rank-deficient :math:`S` whose null directions would get no spread at all.
    borrow : {"mean", "text", None}
        How donors are found: cosine of centred class means, or of ``class_embeddings`` (text
        prototypes) given to :meth:`fit`; ``None`` keeps every class's own covariance (one-sample
        classes still borrow by mean when ``single_sample="borrow"``).
    n_donors : int
        Number of most similar better-sampled classes a class borrows from.
    borrow_strength : "auto" or float
        :math:`\nu`, the pseudo-count of the borrowed covariance (``"auto"``: the feature width
        :math:`d`, the fewest samples for which an own covariance is full rank).
    single_sample : {"borrow", "raise"}
        A class with one sample has no covariance: borrow one, or raise a :class:`GPUAError`.
    scale : float
        Spread multiplier :math:`s` of the generated samples (finite, > 0).
    psd : {"clip", "raise"}
        What to do with a covariance that is not positive semi-definite.
    random_state : None, int >= 0 or numpy.random.Generator
        Seed of the generator; an int gives the same samples on every call.

    Attributes
    ----------
    statistics_ : ClassStatistics
        Counts, means, covariances the calibration was fitted on.
    covariances_ : array of shape (n_classes, d, d)
        Calibrated covariance :math:`\Sigma_k` per class (zero for a missing class).
    factors_ : list of arrays of shape (d, d) or None
        :math:`L_k`, the symmetric square root of :math:`\Sigma_k` (of its top-``n_components``
        part when given; :func:`~gpua.calibrate.psd_factor`), computed once per class; None for a
        class with no sample.
    donors_ : list of int arrays
        Classes each class borrowed from (empty: own covariance).
    donor_weights_ : list of float arrays
        Their weights :math:`w_{kj}` (summing to 1).
    own_weight_ : array of shape (n_classes,)
        :math:`n_k / (n_k + \nu)` for borrowing classes, 1 for the others.
    similarity_ : array of shape (n_classes, n_classes) or None
        Class similarity used to pick donors.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((60, 5)), np.repeat([0, 1, 2], [30, 20, 10])
    >>> cal = DistributionCalibrator(borrow="mean", random_state=0).fit(X, y)
    >>> X_aug, y_aug = cal.fit_resample(X, y)   # real + generated, every class at the max count
    >>> np.bincount(y_aug).tolist()
    [30, 30, 30]
    """

    _parameter_constraints = {
        "target": AnyOf((Options(("max",)), COUNT)),
        "n_components": OptionalOf(COUNT),
        "shrinkage": OptionalOf(Options(("oas",))),
        "borrow": OptionalOf(Options(("mean", "text"))),
        "n_donors": COUNT,
        "borrow_strength": AnyOf((Options(("auto",)), NON_NEGATIVE)),
        "single_sample": Options(("borrow", "raise")),
        "scale": POSITIVE,
        "psd": Options(("clip", "raise")),
        "random_state": RANDOM_STATE,
    }

    def __init__(
        self,
        *,
        target: Literal["max"] | int = "max",
        n_components: int | None = None,
        shrinkage: Literal["oas"] | None = "oas",
        borrow: Literal["mean", "text"] | None = "mean",
        n_donors: int = 3,
        borrow_strength: Literal["auto"] | float = "auto",
        single_sample: Literal["borrow", "raise"] = "borrow",
        scale: float = 1.0,
        psd: Literal["clip", "raise"] = "clip",
        random_state=None,
    ) -> None:
        self.target = target
        self.n_components = n_components
        self.shrinkage = shrinkage
        self.borrow = borrow
        self.n_donors = n_donors
        self.borrow_strength = borrow_strength
        self.single_sample = single_sample
        self.scale = scale
        self.psd = psd
        self.random_state = random_state

    # -- fitting ---------------------------------------------------------------------------
    def fit(
        self,
        X,
        y,
        *,
        n_classes: int | None = None,
        class_embeddings=None,
        missing: Literal["raise", "skip"] = "raise",
    ) -> "DistributionCalibrator":
        """Fit on features ``X`` (n, d) with labels ``y`` (n,).

        ``class_embeddings`` (K, d_t): one vector per class (text prototypes), needed for
        ``borrow="text"``. ``missing``: as in :meth:`fit_statistics`, for a class of
        ``n_classes`` with no sample in ``y``.
        """
        stats = ClassStatistics(n_classes).fit(X, y)
        return self.fit_statistics(stats, class_embeddings=class_embeddings, missing=missing)

    def fit_statistics(
        self,
        statistics: ClassStatistics,
        *,
        class_embeddings=None,
        missing: Literal["raise", "skip"] = "raise",
    ) -> "DistributionCalibrator":
        """Fit on statistics alone (merged from clients, or streamed): no raw features needed.

        ``missing="skip"`` leaves classes with no sample ungenerated instead of raising.
        """
        self._validate_params()
        if not isinstance(statistics, ClassStatistics):
            raise GPUAError(f"statistics is a {type(statistics).__name__}; pass a fitted ClassStatistics.")
        statistics.check_fitted()
        check_param("missing", missing, Options(("raise", "skip")))
        n = statistics.count_
        K, d = statistics.mean_.shape
        absent = np.nonzero(n == 0)[0]
        if absent.size and missing != "skip":
            raise GPUAError(
                f"class(es) {absent.tolist()} have no samples, so no mean or covariance; give each class at "
                "least one sample, lower n_classes, or pass missing='skip' to leave them out of generation."
            )
        S = statistics.covariance_
        # Distinct samples, as far as a covariance sees them: a class of copies of one row (one
        # photo saved four times) has no spread either, and counts as a single sample (was: its
        # zero covariance, shrunk to zero, generated copies of that row without a word).
        n_eff = np.where(_copies_of_one(S, n, statistics.mean_), 1, n)
        single = np.nonzero(n_eff == 1)[0]
        if single.size and self.single_sample == "raise":
            raise GPUAError(
                f"class(es) {single.tolist()} have a single sample (or copies of one), so no covariance; pass "
                "single_sample='borrow' to borrow one from similar classes, or add samples."
            )
        own = np.empty_like(S)
        for k in range(K):
            own[k] = oas_shrinkage(S[k], int(n[k]))[0] if self.shrinkage == "oas" and n_eff[k] >= 2 else S[k]

        borrow = self.borrow
        similarity = None
        if borrow == "text":
            # check_matrix alone told None to "pass an array of shape (n, d)" and a wrong count "one row per image"
            if class_embeddings is None:
                raise GPUAError(
                    f"borrow='text' needs class_embeddings: one row per class ({K}), e.g. the text prototypes of the "
                    "class names; pass them to fit, or use borrow='mean'."
                )
            similarity = class_similarity(check_class_embeddings(class_embeddings, K))
        elif borrow == "mean" or (single.size and borrow is None):
            present = n > 0
            similarity = np.full((K, K), -np.inf)
            sub = class_similarity(statistics.mean_[present])
            similarity[np.ix_(present, present)] = sub
        nu = float(d) if self.borrow_strength == "auto" else float(self.borrow_strength)
        if nu == 0 and single.size:
            # n / (n + 0) = 1 keeps all the weight on the one sample's zero covariance: no spread at all
            raise GPUAError(
                f"borrow_strength=0 gives a borrowed covariance no weight, so class(es) {single.tolist()}, with a single "
                "sample, would get no spread; pass borrow_strength='auto' or a value > 0, or add samples."
            )

        cov = own.copy()
        donors = [np.zeros(0, np.int64) for _ in range(K)]
        weights = [np.zeros(0) for _ in range(K)]
        own_weight = np.ones(K)
        borrowers = np.arange(K) if borrow is not None else single
        for k in borrowers:
            if n[k] == 0:
                continue
            cand = np.nonzero((n_eff > n_eff[k]) & (n_eff >= 2))[0]
            if cand.size == 0:
                if n_eff[k] == 1:
                    raise GPUAError(
                        f"class {k} has a single sample (or copies of one) and no class has two or more distinct ones to "
                        "borrow a covariance from; add samples (a covariance needs at least two per class somewhere)."
                    )
                continue
            sims = similarity[k, cand]
            top = cand[np.argsort(-sims, kind="stable")[: self.n_donors]]
            w = np.maximum(similarity[k, top], 0.0)
            w = w / w.sum() if w.sum() > 0 else np.full(top.size, 1.0 / top.size)
            B = np.einsum("j,jab->ab", w, own[top])
            a = n_eff[k] / (n_eff[k] + nu)
            cov[k] = a * S[k] + (1 - a) * B  # the posterior mixes the *unshrunk* S: B is the prior
            donors[k], weights[k], own_weight[k] = top, w, a

        self.statistics_ = statistics
        self.covariances_ = cov
        self.donors_ = donors
        self.donor_weights_ = weights
        self.own_weight_ = own_weight
        self.similarity_ = similarity
        self.factors_ = [
            None if n[k] == 0 else psd_factor(cov[k], self.n_components, psd=self.psd, name=f"covariance of class {k}")
            for k in range(K)
        ]
        self.n_features_in_ = d
        self.n_classes_ = K
        return self

    # -- generating ------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "factors_"):
            raise NotFittedError("DistributionCalibrator is not fitted; call fit or fit_statistics first.")

    def sample(
        self, X, y, *, target: Literal["max"] | int | None = None, prototypes=None, random_state=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Generated samples only, around the real samples ``X`` (n, d) of each class.

        Parameters
        ----------
        X, y : arrays of shape (n, d) and (n,)
            Anchor samples (the data fitted on, or a client's local data).
        target : "max" or int, optional
            Overrides the ``target`` parameter.
        prototypes : mapping class -> (anchors (P, d), weights (P,)), optional
            Extra anchors per class (other clients' class means with their counts).
        random_state : None, int or numpy.random.Generator, optional
            Overrides the ``random_state`` parameter for this call.

        Returns
        -------
        X_new : float32 array of shape (n_new, d)
        y_new : int64 array of shape (n_new,)
        """
        self._check_fitted()
        X = as_float64(X, "X", n_cols=self.n_features_in_)
        y = check_class_labels(y, X.shape[0], self.n_classes_, name="y")
        target = self.target if target is None else target
        # The override is checked as fit checks the parameter (scale and the seed are checked where they are used).
        check_param("target", target, self._parameter_constraints["target"])
        if target == "max":
            target = int(np.bincount(y, minlength=self.n_classes_).max())
        return fill_to_target(
            X, y, self.factors_, target, prototypes=prototypes, scale=self.scale,
            random_state=as_rng(self.random_state if random_state is None else random_state),
        )

    def fit_resample(self, X, y, **fit_params) -> tuple[np.ndarray, np.ndarray]:
        """Fit, then return real and generated samples together: (n + n_new, d), (n + n_new,), float32 and int64."""
        # Converted once: np.asarray of a torch tensor that requires grad (or lives on a GPU) raised
        # RuntimeError after the fit had succeeded.
        X, y = as_float64(X, "X"), _tensor_to_numpy(y)
        self.fit(X, y, **fit_params)
        X_new, y_new = self.sample(X, y)
        y = check_class_labels(y, X.shape[0], self.n_classes_, name="y")
        return np.concatenate([X.astype(np.float32), X_new]), np.concatenate([y, y_new])
