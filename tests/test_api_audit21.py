"""Session 21's audit of the Python API: each test says what happened before."""

from __future__ import annotations

import numpy as np
import pytest

from gpua import make_method
from gpua._errors import GPUAError
from gpua.synthetic import make_planted


@pytest.fixture(scope="module")
def planted():
    return make_planted(n_samples=200, n_classes=5, random_state=0)


@pytest.mark.parametrize("name", ["zero_shot", "reference", "lfa"])
def test_make_method_passes_logit_scale_to_methods_that_have_it(name, planted):
    """Was: dropped without a word, so probabilities came at scale 100 whatever was asked."""
    est = make_method(name, logit_scale=50.0, lam=0.5)
    assert est.logit_scale == 50.0
    if name == "reference":
        assert est.lam == 0.9 and est.random_state == 0  # the published settings stay, whatever GPUA overrides say
    d = planted
    if name == "reference":
        est.set_params(n_steps=3)
    est.fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    scores = est.decision_function(d.vfm_features[:7], d.vlm_features[:7])
    z = 50.0 * scores
    want = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(est.predict_proba(d.vfm_features[:7], d.vlm_features[:7]), want / want.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_reference_records_the_seed_it_drew(planted):
    """Was: random_state=None's draw was thrown away, so the fit could not be replayed."""
    from gpua import ReferenceGPUA

    d = planted
    a = ReferenceGPUA(n_steps=5, random_state=None).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    seed = a.history_["random_state"]
    assert isinstance(seed, int)
    b = ReferenceGPUA(n_steps=5, random_state=seed).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    np.testing.assert_array_equal(a.W_.cpu().numpy(), b.W_.cpu().numpy())
    assert ReferenceGPUA(n_steps=5).fit(d.vfm_features, d.vlm_features, d.text_prototypes).history_["random_state"] == 0


def test_hubness_skewness_of_integer_counts_is_not_rounded_to_zero():
    """Was: 0.0 for counts 1,000,000 / 1,000,000 / 1,000,010 (allclose's relative tolerance); the skew is 0.71."""
    from scipy.stats import skew

    from gpua.metrics import hubness_skewness, k_occurrence

    lab = np.repeat([0, 1, 2], [100_000, 100_000, 100_001])
    S = np.zeros((lab.size, 3), np.float32)
    S[np.arange(lab.size), lab] = 1
    counts = k_occurrence(S, 1)
    assert hubness_skewness(S, 1) == pytest.approx(skew(counts.astype(float))) and hubness_skewness(S, 1) > 0.7
    even = np.eye(3, dtype=np.float32)[np.repeat([0, 1, 2], 1000)]
    assert hubness_skewness(even, 1) == 0.0  # equal counts: 0, as before


def test_zero_shot_given_its_vlm_features_first_says_which_slot(planted):
    """Was: "vlm_features is required ... pass them", though they had been passed, in the first slot."""
    d = planted
    est = make_method("zero_shot").fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    with pytest.raises(GPUAError, match=r"as the second argument or vlm_features=.*the first argument, vfm_features, it does not use"):
        est.predict(d.vlm_features)


def test_compare_all_with_other_names_says_so(tmp_path, capsys):
    """Was: "--methods: ['all'] unknown; choose from [...] or 'all'"."""
    from gpua.cli import main

    assert main(["compare", "--train", str(tmp_path / "none.npz"), "--test", str(tmp_path / "none.npz"), "--methods", "all,gpua"]) == 2
    err = capsys.readouterr().err
    assert "'all' (every method) cannot be combined with other names" in err and "unknown" not in err


def test_a_flags_prefix_is_not_the_flag(tmp_path, capsys):
    """Was: `gpua classify --model m.gpua` (predict's input flag) was taken for --model-out, and a new
    model was written over the user's m.gpua without a word."""
    from gpua.cli import main

    model = tmp_path / "m.gpua"
    model.write_bytes(b"the user's model")
    with pytest.raises(SystemExit) as exit_:
        main(["classify", "--images", str(tmp_path), "--classnames", "x.txt", "--out", str(tmp_path / "p.csv"), "--model", str(model)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments: --model" in err and "gpua predict --model" in err
    assert model.read_bytes() == b"the user's model"
    with pytest.raises(SystemExit):  # no prefix matching anywhere
        main(["predict", "--mod", str(model), "--features", "f.npz", "--out", "p.csv"])
    assert "the following arguments are required: --model" in capsys.readouterr().err  # --mod is not --model


def test_photos_where_features_go_are_named_as_photos(tmp_path, capsys):
    """Was: "--train 'ph' is a folder; for a shard set use --shards ph", then "shard set 'ph' has no
    index.json; write one with gpua extract --out DIR", sending a new user round in circles."""
    from PIL import Image

    from gpua.cli import main

    (tmp_path / "ph" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ph" / "cat" / "a.png")
    for argv in (["fit", "--train", str(tmp_path / "ph")], ["fit", "--shards", str(tmp_path / "ph")]):
        assert main([*argv, "--out", str(tmp_path / "m.gpua")]) == 2
        err = capsys.readouterr().err
        assert "is a folder of images, not features; encode it first: gpua extract" in err and "index.json" not in err


def test_a_vision_only_vlm_is_named_by_its_flag_with_an_offline_example(tmp_path, capsys):
    """Was: "vlm='offline:dinov2-s' is vision-only; ... e.g. 'open_clip:ViT-B-16/openai'" (a hub download)."""
    from PIL import Image

    from gpua.cli import main

    (tmp_path / "ph").mkdir()
    for n in "ab":
        Image.fromarray(np.full((16, 16, 3), 9, np.uint8)).save(tmp_path / "ph" / f"{n}.png")
    (tmp_path / "c.txt").write_text("sky\ngrass\n")
    assert main(["classify", "--images", str(tmp_path / "ph"), "--classnames", str(tmp_path / "c.txt"), "--out",
                 str(tmp_path / "p.csv"), "--vfm", "planted:vfm", "--vlm", "planted:vfm", "--cache-dir", str(tmp_path / "c"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--vlm 'planted:vfm' is vision-only" in err and "offline:semantic-lite0" in err


def test_save_features_without_a_feature_matrix_is_refused(tmp_path):
    """Was: written, then refused by load_features, and a later save of features over it refused as
    someone else's array file: neither readable nor replaceable."""
    from gpua.features import load_features, save_features

    for path, kw in ((tmp_path / "lab.npz", {"labels": np.arange(3)}), (tmp_path / "n.safetensors", {"classnames": ["a", "b"]}),
                     (tmp_path / "empty.npz", {})):
        with pytest.raises(GPUAError, match="save_features got none of the feature keys"):
            save_features(path, **kw)
        assert not path.exists()
    np.savez(tmp_path / "x.npz", foo=np.ones(3))
    with pytest.raises(GPUAError, match=r"gpua\.features\.save_features"):
        load_features(tmp_path / "x.npz")
