"""Helpers of the streaming tests: small planted sets that fit in memory both ways, and fit comparisons."""

from __future__ import annotations

import numpy as np

from gpua import GPUA
from gpua.synthetic._planted import make_planted


def planted_case(n: int = 1500, k: int = 32, d_vfm: int = 40, d_vlm: int = 20, d_latent: int = 16, seed: int = 0, *, ties: bool = False):
    """(Z, X, Y, labels) of a planted set.

    By default tie-free and well conditioned: a large modality gap and no hub classes keep
    softmax(100 X Y^T) below 1.0 (so the confident-centre selection has no ties, which
    ``torch.topk`` would break arbitrarily), and noisy prototypes give Y full rank (so the
    Procrustes map is unique). ``ties=True`` keeps make_planted's saturated, hub-prone defaults.
    """
    if ties:
        d = make_planted(n, k, d_vfm, d_vlm, d_latent, random_state=seed)
        return d.vfm_features, d.vlm_features, d.text_prototypes, d.labels
    d = make_planted(n, k, d_vfm, d_vlm, d_latent, modality_gap=6.0, n_hubs=0, random_state=seed)
    rng = np.random.default_rng(seed + 1)
    Y = (d.text_prototypes + 0.15 * rng.standard_normal(d.text_prototypes.shape) / np.sqrt(d_vlm)).astype(np.float32)
    return d.vfm_features, d.vlm_features, Y, d.labels


_REFERENCE: dict = {}


def reference_fit(data, **params) -> GPUA:
    """In-memory GPUA.fit, memoised per (data, params) for the session."""
    key = (id(data), tuple(sorted(params.items())))
    if key not in _REFERENCE:
        Z, X, Y, _ = data
        _REFERENCE[key] = GPUA(**params).fit(Z, X, Y)
    return _REFERENCE[key]


def assert_same_fit(a: GPUA, b: GPUA, atol: float = 1e-5, exact_iterations: bool = True) -> None:
    """The learned attributes of two fits agree (maps to ``atol`` relative to their largest entry
    when that exceeds 1, pseudo-labels exactly). Relative: a whitened map's entries reach 1.7 on
    the planted cases, and float32 sums in another order (another CPU) differ there by 1.05e-5."""
    import torch

    for name in ("W_", "W0_", "centres_", "text_prototypes_"):
        ref = getattr(a, name).cpu()
        diff = float((ref - getattr(b, name).cpu()).abs().max())
        assert diff < atol * max(1.0, float(ref.abs().max())), f"{name} differs by {diff}"
    np.testing.assert_array_equal(a.pseudo_labels_, b.pseudo_labels_)
    np.testing.assert_allclose(a.pseudo_confidence_, b.pseudo_confidence_, atol=atol)
    assert (a.vfm_mean_ is None) == (b.vfm_mean_ is None)
    if a.vfm_mean_ is not None:
        assert float((a.vfm_mean_ - b.vfm_mean_).abs().max()) < atol
    assert (a.proto_radius_ is None) == (b.proto_radius_ is None)
    if a.proto_radius_ is not None:
        assert torch.allclose(a.proto_radius_.cpu(), b.proto_radius_.cpu(), atol=atol)
    if exact_iterations:
        assert [h["sinkhorn_iter"] for h in a.history_["ucm"]] == [h["sinkhorn_iter"] for h in b.history_["ucm"]]
    assert a.history_["ucm_converged"] == b.history_["ucm_converged"]
    assert abs(a.history_["pseudo_label_agreement"] - b.history_["pseudo_label_agreement"]) < 1e-6
    for attr in ("n_features_vfm_", "n_features_vlm_", "n_classes_"):
        assert getattr(a, attr) == getattr(b, attr)


def random_shard_arrays(n: int, k: int, seed: int = 0):
    """(Z of shape (n, 12), X of shape (n, 8), labels in [0, k), prototypes (k, 8)): float32 Gaussian rows for shard tests."""
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, 12)).astype(np.float32),
        rng.standard_normal((n, 8)).astype(np.float32),
        rng.integers(0, k, n),
        rng.standard_normal((k, 8)).astype(np.float32),
    )
