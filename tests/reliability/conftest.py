"""Fixtures of the reliability tests: small feature files and a fitted model (helpers: rel_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small():
    """A planted train/test pair small enough to fit in a fraction of a second."""
    from gpua.synthetic import make_planted

    return make_planted(n_samples=240, n_classes=4, d_vfm=12, d_vlm=8, d_latent=4, random_state=1).split(160)


@pytest.fixture
def files(small, tmp_path):
    """train.npz, test.npz (both labelled, with class names) and a fitted model m.gpua."""
    from gpua import GPUA
    from gpua.features import save_features

    train, test = small
    out = {}
    for name, part in (("train", train), ("test", test)):
        out[name] = save_features(
            tmp_path / f"{name}.npz", vfm_features=part.vfm_features, vlm_features=part.vlm_features,
            text_prototypes=part.text_prototypes, labels=part.labels, classnames=part.classnames,
        )
    model = GPUA(refine=False).fit(train.vfm_features, train.vlm_features, train.text_prototypes, classnames=train.classnames)
    out["model"] = model.save(tmp_path / "m.gpua")
    return out
