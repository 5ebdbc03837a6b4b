r"""Planted GPUA data: latent classes seen by a sharp VFM and a coarse, hub-prone VLM.

Generative model (all random draws from ``random_state``):

* latent class means :math:`\mu_k \in \mathbb R^{d_\ell}` and samples
  :math:`h_i = \mu_{y_i} + \sigma_\ell \xi_i`;
* VFM: :math:`z_i = \mathrm{norm}(B h_i + \sigma_v \xi'_i)` with :math:`B` a random isometry
  :math:`\mathbb R^{d_\ell} \to \mathbb R^{d_{vfm}}` (rotation and dimension change);
* VLM text prototypes :math:`y_k = \mathrm{norm}(A \mu_k + \gamma_k u)` with :math:`A` another
  isometry into :math:`\mathbb R^{d_{vlm}}` and a shared direction :math:`u` added to the
  ``n_hubs`` hub classes (they sit close to every image);
* VLM image features :math:`x_i = \mathrm{norm}(A h_i + g + \sigma_t \xi''_i)` with a constant
  modality-gap vector :math:`g` orthogonal to :math:`A`'s range and a larger noise
  :math:`\sigma_t > \sigma_v` (the VLM sees coarsely).

The ideal map from VFM to text space is :math:`W^\star = B A^\top` (``true_map``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import GPUAError
from .._validation import check_number

__all__ = ["PlantedData", "make_planted"]


@dataclass
class PlantedData:
    """Planted features with their ground truth.

    Attributes
    ----------
    vfm_features : array of shape (n_samples, d_vfm)
    vlm_features : array of shape (n_samples, d_vlm)
    text_prototypes : array of shape (n_classes, d_vlm)
    labels : int array of shape (n_samples,)
    classnames : list of str
    true_map : array of shape (d_vfm, d_vlm)
    hub_classes : int array
    """

    vfm_features: np.ndarray
    vlm_features: np.ndarray
    text_prototypes: np.ndarray
    labels: np.ndarray
    classnames: list[str]
    true_map: np.ndarray
    hub_classes: np.ndarray

    def split(self, n_first: int) -> tuple["PlantedData", "PlantedData"]:
        """Split rows into the first ``n_first`` and the rest (same prototypes)."""
        from .._validation import check_number

        check_number(n_first, "n_first", integer=True, low=0, high=len(self.labels),
                     fix=f"a row count (split(0.5) is split({len(self.labels) // 2}) here)")

        def part(sl):
            return PlantedData(self.vfm_features[sl], self.vlm_features[sl], self.text_prototypes, self.labels[sl],
                               self.classnames, self.true_map, self.hub_classes)
        return part(slice(0, n_first)), part(slice(n_first, None))

    def feature_set(self, rows=slice(None)):
        """The rows ``rows`` (a slice, indices or a boolean mask) as a :class:`gpua.features.FeatureSet`, labelled.

        Returns
        -------
        FeatureSet
            Their VFM and VLM features, labels and class names, and all the text prototypes.
        """
        from ..features import FeatureSet  # the feature-file layer is not needed to make planted data

        return FeatureSet(vfm_features=self.vfm_features[rows], vlm_features=self.vlm_features[rows],
                          text_prototypes=self.text_prototypes, labels=self.labels[rows], classnames=list(self.classnames))


def _isometry(rng: np.random.Generator, d_out: int, d_in: int) -> np.ndarray:
    Qm, _ = np.linalg.qr(rng.standard_normal((d_out, d_in)))
    return Qm[:, :d_in]


def make_planted(
    n_samples: int = 2000,
    n_classes: int = 10,
    d_vfm: int = 64,
    d_vlm: int = 32,
    d_latent: int = 16,
    *,
    latent_noise: float = 0.6,
    vfm_noise: float = 0.3,
    vlm_noise: float = 0.8,
    modality_gap: float = 1.0,
    n_hubs: int = 2,
    hub_strength: float = 0.6,
    class_weights=None,
    dtype=np.float32,
    random_state: int | None = 0,
) -> PlantedData:
    """Draw a planted data set (see the module docstring for the model).

    Parameters
    ----------
    n_samples, n_classes, d_vfm, d_vlm, d_latent : int
        Sizes; ``d_latent`` must not exceed ``d_vfm`` or ``d_vlm - 1``.
    latent_noise, vfm_noise, vlm_noise : float
        Within-class spread and each encoder's own noise (per coordinate, scaled by the
        class-mean norm).
    modality_gap : float
        Norm of the constant offset between VLM image and text features.
    n_hubs, hub_strength : int, float
        How many prototypes are pulled toward the image mean, and how far.
    class_weights : array of shape (n_classes,), optional
        Class frequencies (default balanced): non-negative, not all zero.
    dtype : numpy floating dtype
    random_state : int >= 0, numpy.random.Generator or None

    Returns
    -------
    PlantedData
    """
    for name, value in (("n_samples", n_samples), ("n_classes", n_classes), ("d_vfm", d_vfm), ("d_vlm", d_vlm),
                        ("d_latent", d_latent)):
        check_number(value, name, integer=True, low=1)
    for name, value in (("latent_noise", latent_noise), ("vfm_noise", vfm_noise), ("vlm_noise", vlm_noise),
                        ("modality_gap", modality_gap), ("hub_strength", hub_strength)):
        check_number(value, name, low=0)
    check_number(n_hubs, "n_hubs", integer=True, low=0)
    if random_state is not None and not isinstance(random_state, np.random.Generator):
        check_number(random_state, "random_state", integer=True, low=0, fix="or a numpy Generator, or None for a fresh draw")
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise GPUAError(f"dtype={np.dtype(dtype)} is not a floating type: the features are unit vectors; use np.float32 or np.float64.")
    w = None if class_weights is None else np.asarray(class_weights, dtype=np.float64)
    if w is not None:
        if w.shape != (n_classes,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise GPUAError(f"class_weights must be {n_classes} finite non-negative numbers, not all zero (one per class); "
                            f"got {np.asarray(class_weights).tolist()!r}.")
    if d_latent > d_vfm or d_latent >= d_vlm:
        raise GPUAError(f"d_latent={d_latent} must be <= d_vfm={d_vfm} and < d_vlm={d_vlm}.")
    if n_classes < 2 or n_samples < n_classes:
        raise GPUAError("make_planted needs n_classes >= 2 and n_samples >= n_classes.")
    rng = np.random.default_rng(random_state)
    mu = rng.standard_normal((n_classes, d_latent))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    if w is None:
        labels = np.arange(n_samples) % n_classes
        rng.shuffle(labels)
    else:
        labels = rng.choice(n_classes, size=n_samples, p=w / w.sum())
    h = mu[labels] + latent_noise / np.sqrt(d_latent) * rng.standard_normal((n_samples, d_latent))
    B = _isometry(rng, d_vfm, d_latent)
    A_full = _isometry(rng, d_vlm, d_latent + 1)
    A, gap_dir = A_full[:, :d_latent], A_full[:, d_latent]
    Z = h @ B.T + vfm_noise / np.sqrt(d_vfm) * rng.standard_normal((n_samples, d_vfm)) * np.sqrt(d_latent)
    X = h @ A.T + modality_gap * gap_dir + vlm_noise / np.sqrt(d_vlm) * rng.standard_normal((n_samples, d_vlm)) * np.sqrt(d_latent)
    hubs = rng.choice(n_classes, size=min(n_hubs, n_classes), replace=False)
    Yp = mu @ A.T
    img_mean = X.mean(0)
    img_mean /= np.linalg.norm(img_mean)
    Yp[hubs] += hub_strength * img_mean
    norm = lambda M: (M / np.linalg.norm(M, axis=1, keepdims=True)).astype(dtype)  # noqa: E731
    return PlantedData(
        vfm_features=norm(Z),
        vlm_features=norm(X),
        text_prototypes=norm(Yp),
        labels=labels.astype(np.int64),
        classnames=[f"class_{k}" for k in range(n_classes)],
        true_map=(B @ A.T).astype(dtype),
        hub_classes=np.sort(hubs),
    )
