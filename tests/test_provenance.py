"""Model files carry where they came from: encoders, templates, class names, feature cache key."""

import pytest

from gpua import GPUA, load_model
from gpua._errors import GPUAError


def test_provenance_roundtrip(planted, tmp_path):
    train, _ = planted
    m = GPUA(n_steps=5).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    m.provenance_ = {"vfm": "offline:dinov2-s", "vlm": "offline:semantic-lite0", "templates": ["a photo of a {}."]}
    path = m.save(tmp_path / "m.gpua")
    assert load_model(path).provenance_ == m.provenance_
    m.provenance_ = {"bad": object()}
    with pytest.raises(GPUAError, match="JSON"):
        m.save(tmp_path / "m2.gpua")
    del m.provenance_
    assert getattr(load_model(m.save(tmp_path / "m3.gpua")), "provenance_", None) is None  # none recorded, none invented
