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


def test_fit_records_the_features_path_resolved(tmp_path, monkeypatch):
    import gpua
    from gpua.cli import main
    from gpua.features import save_features
    from gpua.synthetic import make_planted

    d = make_planted(120, 4, 12, 8, 5, random_state=0)
    save_features(tmp_path / "train.npz", vfm_features=d.vfm_features, vlm_features=d.vlm_features, text_prototypes=d.text_prototypes)
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--train", "train.npz", "--out", "m.gpua", "--n-steps", "5", "--no-progress"]) == 0
    # was: "train.npz" as typed, which names nothing once the model is moved
    assert gpua.load_model(tmp_path / "m.gpua").provenance_["features"]["path"] == str((tmp_path / "train.npz").resolve())
