"""save_features checks what it writes first: whatever it writes loads back with the same values,
and a refused save leaves the file already at the path untouched."""

import warnings

import numpy as np
import pytest

from gpua import GPUAError
from gpua.features import FeatureSet, load_features, save_features
from gpua.synthetic import make_planted

SUFFIXES = [".npz", ".safetensors"]


@pytest.fixture(scope="module")
def planted():
    return make_planted(n_samples=40, n_classes=5, d_vfm=6, d_vlm=4, d_latent=2, random_state=0)


def _base(planted) -> dict:
    return dict(vfm_features=planted.vfm_features, vlm_features=planted.vlm_features, text_prototypes=planted.text_prototypes)


def _refused(path, match: str, **kwargs) -> None:
    """``save_features(path, **kwargs)`` raises a GPUAError matching ``match``, with no numpy
    warning on the way, and leaves the file at ``path`` (and its folder) as it was."""
    before = path.read_bytes() if path.exists() else None
    listing = sorted(p.name for p in path.parent.iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning is no refusal
        with pytest.raises(GPUAError, match=match):
            save_features(path, **kwargs)
    assert (path.read_bytes() if path.exists() else None) == before
    assert sorted(p.name for p in path.parent.iterdir()) == listing  # no temp file left behind


@pytest.fixture(params=SUFFIXES)
def good_file(request, tmp_path, planted):
    path = save_features(tmp_path / f"good{request.param}", **_base(planted), labels=planted.labels)
    load_features(path)
    return path


def test_mismatched_rows_are_refused_and_the_previous_file_is_kept(good_file, planted):
    base = _base(planted)
    _refused(good_file, "vlm_features has 10 rows but 40 were expected", **{**base, "vlm_features": base["vlm_features"][:10]})
    _refused(good_file, "labels must have shape", **base, labels=planted.labels[:5])
    _refused(good_file, "classnames has 3 entries", **base, classnames=["a", "b", "c"])
    _refused(good_file, "image_ids has 2 entries", **base, image_ids=["a", "b"])
    fs = load_features(good_file)  # the good file, whole
    np.testing.assert_array_equal(fs.labels, planted.labels)


def test_float16_overflow_is_refused(good_file, planted):
    Z = planted.vfm_features.astype(np.float64)
    Z[3] *= 1e6  # beyond float16's 65504
    _refused(good_file, r"vfm_features has 1 row\(s\) with values too large for float16 \(first: row 3.*float16=True",
             **{**_base(planted), "vfm_features": Z}, float16=True)
    # Without float16 the same values are stored as they are, and load back.
    path = save_features(good_file, **{**_base(planted), "vfm_features": Z})
    np.testing.assert_array_equal(load_features(path, validate=False).vfm_features, Z.astype(np.float32))


def test_rows_that_underflow_to_zero_in_float16_are_refused(good_file, planted):
    X = planted.vlm_features.astype(np.float64)
    X[7] *= 1e-12  # every entry below float16's smallest subnormal, 6e-8
    _refused(good_file, r"vlm_features has 1 row\(s\) that become all zeros in float16 \(first: row 7",
             **{**_base(planted), "vlm_features": X}, float16=True)


def test_rows_below_float16s_normal_range_are_refused(good_file, planted):
    X = planted.vlm_features.astype(np.float64)
    X[4] *= 1e-5 / np.abs(X[4]).max()  # every entry subnormal in float16: a few bits each
    _refused(good_file, r"vlm_features has 1 row\(s\) whose entries all fall below float16's normal range \(first: row 4",
             **{**_base(planted), "vlm_features": X}, float16=True)
    X[4] *= 10  # its largest entry normal: stored
    save_features(good_file, **{**_base(planted), "vlm_features": X}, float16=True)


def test_float64_values_beyond_float32_are_refused(good_file, planted):
    Y = planted.text_prototypes.astype(np.float64) * 1e300
    _refused(good_file, "text_prototypes .* too large for float32", **{**_base(planted), "text_prototypes": Y})
    Y = planted.text_prototypes.astype(np.float64) * 1e-300
    _refused(good_file, "text_prototypes .* all zeros in float32", **{**_base(planted), "text_prototypes": Y})


@pytest.mark.parametrize("bad", ["scalar -1", "one -1", "one NaN", "out of range"])
def test_invalid_labels_are_refused(good_file, planted, bad):
    labels = planted.labels.astype(np.float64)
    labels[4] = {"one -1": -1, "one NaN": np.nan, "out of range": 5}.get(bad, 0)
    expected = {"scalar -1": r"labels must have shape \(40,\)", "one NaN": "labels must hold integer",
                "one -1": r"negative values \(smallest: -1\); labels must be class indices >= 0"}.get(bad, r"outside \[0, 5\) \(largest: 5\)")
    _refused(good_file, expected, **_base(planted), labels=-1 if bad == "scalar -1" else labels)


def test_non_integer_labels_are_refused_not_truncated(good_file, planted):
    _refused(good_file, "labels must hold integer class indices", **_base(planted), labels=planted.labels + 0.7)
    # Integer-valued floats are class indices: stored exactly.
    path = save_features(good_file, **_base(planted), labels=planted.labels.astype(np.float64))
    np.testing.assert_array_equal(load_features(path).labels, planted.labels)


def test_bytes_class_names_are_refused_not_stored_as_their_repr(good_file, planted):
    _refused(good_file, r"classnames must hold strings but holds \['bytes'\]", **_base(planted),
             classnames=[b"cat", b"dog", b"car", b"cow", b"owl"])
    _refused(good_file, "classnames must hold strings", **_base(planted), classnames=np.array([b"a", b"b", b"c", b"d", b"e"]))


@pytest.mark.parametrize("ids", ["none", "bytes", "ints", "one string"])
def test_image_ids_that_are_not_strings_are_refused(good_file, planted, ids):
    n = len(planted.labels)
    value = {"none": [None] * n, "bytes": [b"x%d" % i for i in range(n)], "ints": list(range(n)), "one string": "img"}[ids]
    _refused(good_file, "image_ids", **_base(planted), image_ids=value)


def test_nul_in_class_names_and_image_ids_is_refused(good_file, planted):
    names = ["cat", "dog", "car", "cow", "owl\x00"]
    _refused(good_file, r"classnames entry 4 \('owl\\x00'\) holds a NUL character", **_base(planted), classnames=names)
    ids = [f"img{i}" for i in range(len(planted.labels))]
    ids[2] = "img\x002"
    _refused(good_file, "image_ids entry 2 .* NUL", **_base(planted), image_ids=ids)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_meta_with_numpy_values_is_stored_as_plain_json(tmp_path, planted, suffix):
    meta = {"a": np.float32(1.5), "n": np.int64(3), "ok": np.bool_(True), "shape": np.array([2, 3]), "nested": {"x": [np.float64(0.25)]}}
    path = save_features(tmp_path / f"f{suffix}", **_base(planted), meta=meta)
    assert load_features(path).meta == {"a": 1.5, "n": 3, "ok": True, "shape": [2, 3], "nested": {"x": [0.25]}}


def test_meta_json_cannot_store_is_refused(good_file, planted):
    _refused(good_file, "meta cannot be stored as JSON.*object", **_base(planted), meta={"encoder": object()})
    _refused(good_file, "meta cannot be stored as JSON", **_base(planted), meta={"b": b"raw"})
    _refused(good_file, "meta must be a dict", **_base(planted), meta=["not", "a", "dict"])


def test_a_folder_or_a_path_under_a_file_is_refused(tmp_path, planted):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(GPUAError, match=r"path '.*d\.npz' is an existing folder.*give a file name"):
        save_features(tmp_path / "d.npz", **_base(planted))
    assert list((tmp_path / "d.npz").iterdir()) == []
    (tmp_path / "plain").write_text("x")
    with pytest.raises(GPUAError, match=r"path '.*plain[/\\]f\.safetensors' lies under .*plain', which is a file"):
        save_features(tmp_path / "plain" / "f.safetensors", **_base(planted))
    assert (tmp_path / "plain").read_text() == "x"


def test_a_feature_set_and_keywords_together_are_refused(good_file, planted):
    fs = FeatureSet(**_base(planted))
    with pytest.raises(GPUAError, match=r"either a FeatureSet or the arrays by keyword.*\['labels'\]"):
        save_features(good_file, fs, labels=planted.labels)
    with pytest.raises(GPUAError, match="features must be a FeatureSet"):
        save_features(good_file, _base(planted))


def test_saving_does_not_change_the_callers_feature_set(tmp_path, planted):
    Z = planted.vfm_features.astype(np.float64) * 1e30  # load rescales such rows; the caller's stay as given
    fs = FeatureSet(vfm_features=Z, vlm_features=planted.vlm_features, text_prototypes=planted.text_prototypes,
                    labels=list(planted.labels), classnames=np.array(["a", "b", "c", "d", "e"]))
    save_features(tmp_path / "f.npz", fs)
    assert fs.vfm_features is Z and isinstance(fs.labels, list) and isinstance(fs.classnames, np.ndarray)
    np.testing.assert_array_equal(load_features(tmp_path / "f.npz", validate=False).vfm_features, Z.astype(np.float32))
