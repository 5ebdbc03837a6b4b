"""Model files: only what an estimator class declares is accepted, checked before use.

Each damaged or edited file gives a :class:`ModelFileError` (one line from the CLI, exit 2) that
names the file and the problem; files written by the format-1 code before checksums and
provenance existed still load.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gpua import GPUA, GPUAError, ModelFileError, load_model
from gpua._base import AlignmentEstimator, ModelSchema
from gpua.cli import main
from gpua.params import DeviceName


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["gpua"]), {k: f.get_tensor(k) for k in f.keys()}


def _rewrite(path, meta, tensors, *, keep_checksum=False):
    """Write ``meta`` and ``tensors`` back as a hand-edited file would be (no valid checksum)."""
    if not keep_checksum:
        meta = {k: v for k, v in meta.items() if k != "checksum"}
    save_file(tensors, str(path), metadata={"gpua": json.dumps(meta)})


EDITS = {
    "format_version 'abc'": (lambda m, t: m.update(format_version="abc"), "format_version 'abc'"),
    "a JSON list": (lambda m, t: None, "JSON list"),
    "no params": (lambda m, t: m.pop("params"), "no 'params'"),
    "unknown params": (lambda m, t: m["params"].update(bogus=1), "'bogus'.* not parameters of GPUA"),
    "invalid param value": (lambda m, t: m["params"].update(lam="abc"), "invalid parameters"),
    "fewer class names than classes": (lambda m, t: m.update(classnames=m["classnames"][:-1]), "class names"),
    "class names not strings": (lambda m, t: m.update(classnames=[1, 2, 3, 4]), "class names"),
    "n_classes a string": (lambda m, t: m.update(n_classes="4"), "n_classes='4'"),
    "map of the wrong shape": (lambda m, t: t.update(W_=t["W_"][:-1]), "'W_' of shape"),
    "missing map": (lambda m, t: t.pop("W_"), "lacks the tensor 'W_'"),
    "unknown tensor": (lambda m, t: t.update(evil_=torch.zeros(2)), r"tensors \['evil_'\]"),
    "unknown state key": (lambda m, t: m["state"].update(evil_=1), "state 'evil_'"),
    "state of the wrong type": (lambda m, t: m["state"].update(history_=[1]), "'history_' as a list"),
    "NaN in the map": (lambda m, t: t["W_"].__setitem__((0, 0), float("nan")), "NaN or inf in 'W_'"),
    "NaN probability scale": (lambda m, t: m["state"].update(proba_scale_=float("nan")), "'proba_scale_' = nan, not a finite positive"),
    "negative probability scale": (lambda m, t: m["state"].update(proba_scale_=-40.0), "'proba_scale_' = -40.0, not a finite positive"),
    "centred without its VFM mean": (lambda m, t: t.pop("vfm_mean_"), "lacks the tensor 'vfm_mean_', which every fit with its center=True"),
    "centred without its VLM mean": (lambda m, t: t.pop("vlm_mean_"), "lacks the tensor 'vlm_mean_', which every fit with its center_vlm=True"),
    "provenance not an object": (lambda m, t: m.update(provenance=[1, 2]), "provenance"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_malformed_metadata_and_tensors_are_named(files, tmp_path, capsys, case):
    edit, message = EDITS[case]
    meta, tensors = _read(files["model"])
    edit(meta, tensors)
    if case == "a JSON list":
        meta = [meta]
        save_file(tensors, str(tmp_path / "bad.gpua"), metadata={"gpua": json.dumps(meta)})
    else:
        _rewrite(tmp_path / "bad.gpua", meta, tensors)
    with pytest.raises(ModelFileError, match=message):
        load_model(tmp_path / "bad.gpua")
    argv = ["predict", "--model", str(tmp_path / "bad.gpua"), "--features", str(files["test"]), "--out", str(tmp_path / "p.csv")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.gpua" in err
    assert not (tmp_path / "p.csv").exists()


def test_an_uncentred_model_needs_no_means(small, tmp_path):
    train, test = small
    model = GPUA(refine=False, center=False, center_vlm=False).fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    assert model.vfm_mean_ is None and model.vlm_mean_ is None
    loaded = load_model(model.save(tmp_path / "u.gpua"))
    np.testing.assert_array_equal(loaded.predict(test.vfm_features, test.vlm_features), model.predict(test.vfm_features, test.vlm_features))


def test_any_edit_of_a_checksummed_file_is_noticed(files, tmp_path):
    meta, tensors = _read(files["model"])
    meta["params"]["lam"] = 0.5  # a valid value: only the checksum can tell
    _rewrite(tmp_path / "e.gpua", meta, tensors, keep_checksum=True)
    with pytest.raises(ModelFileError, match="does not match its checksum"):
        load_model(tmp_path / "e.gpua")
    meta, tensors = _read(files["model"])
    tensors["W_"][0, 0] += 1e-3  # a finite, plausible change of the payload
    _rewrite(tmp_path / "e.gpua", meta, tensors, keep_checksum=True)
    with pytest.raises(ModelFileError, match="does not match its checksum"):
        load_model(tmp_path / "e.gpua")


def test_header_declaring_huge_arrays_is_refused(files, tmp_path):
    raw = files["model"].read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["W_"]["shape"] = [1 << 20, 1 << 20]
    header["W_"]["data_offsets"][1] = header["W_"]["data_offsets"][0] + 4 * (1 << 40)
    body = json.dumps(header).encode()
    (tmp_path / "huge.gpua").write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(tmp_path / "huge.gpua")
    (tmp_path / "len.gpua").write_bytes(struct.pack("<Q", 1 << 62) + raw[8:])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(tmp_path / "len.gpua")


def _old_format_writer(model, path):
    """A model file laid out as gpua wrote format 1 before this change (no checksum, no provenance)."""
    tensors = {n: getattr(model, n).detach().cpu().contiguous() for n in ("W_", "W0_", "text_prototypes_", "centres_")}
    added_later = ("center_vlm", "whiten", "whiten_shrink")  # parameters added after format 1's files
    params = {k: v for k, v in model.get_params().items() if k not in added_later}
    meta = {
        "format": "gpua", "format_version": 1, "gpua_version": "0.1.0", "estimator": "GPUA",
        "params": params, "n_features_vfm": model.n_features_vfm_, "n_features_vlm": model.n_features_vlm_,
        "n_classes": model.n_classes_, "classnames": model.classnames_, "state": {"history_": model.history_},
    }
    save_file(tensors, str(path), metadata={"gpua": json.dumps(meta)})


def test_format_1_files_without_checksum_still_load(small, tmp_path):
    train, test = small
    # Fitted as format 1's gpua fitted: no centering, no whitening, probabilities at logit_scale.
    model = GPUA(refine=False, center=False, center_vlm=False, whiten=None, proba_scale=None).fit(
        train.vfm_features, train.vlm_features, train.text_prototypes, classnames=train.classnames)
    _old_format_writer(model, tmp_path / "old.gpua")
    back = load_model(tmp_path / "old.gpua")
    assert back.center_vlm is False and back.whiten is None  # a file from before a parameter was fitted without it
    np.testing.assert_array_equal(back.predict_proba(test.vfm_features, test.vlm_features),
                                  model.predict_proba(test.vfm_features, test.vlm_features))
    assert back.vfm_mean_ is None and back.proto_radius_ is None and not hasattr(back, "provenance_")


def test_provenance_round_trip_and_checks(files, tmp_path):
    model = load_model(files["model"])
    assert not hasattr(model, "provenance_")
    model.provenance_ = {"vfm": {"spec": "offline:dinov2-s"}, "templates": ["a photo of a {}."], "cache_key": "ab" * 32}
    model.save(tmp_path / "p.gpua")
    assert load_model(tmp_path / "p.gpua").provenance_ == model.provenance_
    for bad in (["not", "a", "dict"], {1: "int key"}, {"x": object()}, {"x": float("nan")}):
        model.provenance_ = bad
        with pytest.raises(GPUAError, match="provenance_"):
            model.save(tmp_path / "q.gpua")
    assert not (tmp_path / "q.gpua").exists()


def test_a_new_estimator_class_only_declares_its_schema(small, tmp_path):
    class Shifted(AlignmentEstimator):
        """A test estimator: VLM zero-shot with a learned shift (declares one extra tensor)."""

        _schema = ModelSchema(
            tensors={"text_prototypes_": ("n_classes", "n_features_vlm"), "shift_": ("n_features_vlm",)},
            state={"note_": str},
        )
        _parameter_constraints = {"device": DeviceName()}  # every estimator declares its parameters' ranges

        def __init__(self, *, device: str = "cpu"):
            self.device = device

        def fit(self, Z, X, Y, classnames=None):
            self.n_features_vfm_, self.n_features_vlm_, self.n_classes_ = Z.shape[1], X.shape[1], Y.shape[0]
            self.classnames_ = None
            self.text_prototypes_ = torch.nn.functional.normalize(torch.as_tensor(Y), dim=1)
            self.shift_ = torch.as_tensor(X.mean(0))
            self.note_ = "fitted"
            return self

        def _scores(self, Z, X):
            _, X = self._check_query_inputs(None, X, needs_vfm=False, needs_vlm=True)
            return torch.nn.functional.normalize(self._tensor(X) - self.shift_, dim=1) @ self.text_prototypes_.T

    train, test = small
    m = Shifted().fit(train.vfm_features, train.vlm_features, train.text_prototypes)
    back = load_model(m.save(tmp_path / "s.gpua"))
    assert isinstance(back, Shifted) and back.note_ == "fitted"
    np.testing.assert_array_equal(back.predict(None, test.vlm_features), m.predict(None, test.vlm_features))
    with pytest.raises(TypeError, match="sizes from"):
        ModelSchema(tensors={"bad_": ("n_pixels",)})


def test_save_refuses_a_non_finite_fit(files, tmp_path):
    model = load_model(files["model"])
    model.W_[0, 0] = float("inf")
    with pytest.raises(GPUAError, match="not saved"):
        model.save(tmp_path / "inf.gpua")
    assert not (tmp_path / "inf.gpua").exists()


@pytest.mark.parametrize("bad", [b"m.gpua", 3, None], ids=["bytes", "int", "None"])
def test_a_path_that_is_not_a_name_is_refused_by_name(files, small, tmp_path, bad):
    from gpua.features import load_features, save_features

    model = load_model(files["model"])
    train = small[0]
    calls = [lambda: model.save(bad), lambda: load_model(bad), lambda: load_features(bad),
             lambda: save_features(bad, vfm_features=train.vfm_features)]
    for call in calls:
        with pytest.raises(GPUAError, match="path must be a file name, a str or a pathlib.Path, not a"):
            call()
    with open(files["model"], "rb") as handle, pytest.raises(GPUAError, match=r"an open file: pass its name, f\.name"):
        load_model(handle)
