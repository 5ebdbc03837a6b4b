"""Session 21's audit of gpua extract: each test says what happened before."""

from __future__ import annotations

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.features import load_features
from test_extract import Toy, _dataset, _run


def _flip_a_byte(path):
    b = bytearray(path.read_bytes())
    b[300 if path.suffix == ".npz" else -20] ^= 0x40  # inside vfm_features' data (the npz's first member)
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("out", ["f.safetensors", "f.npz", "shards"])
def test_a_damaged_output_is_extracted_again_not_taken_as_up_to_date(tmp_path, out):
    """Was: "up to date" on every run, and the damage failed the next reader (or extract itself)."""
    ds, vfm = _dataset(), Toy()
    path = tmp_path / out
    kw = {"format": "shards"} if out == "shards" else {}
    _run(ds, path, vfm, **kw)
    good = load_features(path) if out != "shards" else None
    assert vfm.calls == 10
    _run(ds, path, vfm, **kw)
    assert vfm.calls == 10  # whole: a cache hit
    damaged = next(path.glob("shard-*.vfm_features.npy")) if out == "shards" else path
    _flip_a_byte(damaged)
    with pytest.warns(UserWarning, match="holds these features but is damaged .*extracting them again"):
        _run(ds, path, vfm, **kw)
    assert vfm.calls == 20
    if out == "shards":
        from gpua.features import ShardedFeatures

        ShardedFeatures(path).verify_all()
    else:
        np.testing.assert_array_equal(load_features(path).vfm_features, good.vfm_features)


class _NaNOnDark(Toy):
    """A VFM that divides by the image's spread: a constant image gives NaN (as a normalising encoder can)."""

    def _embed(self, pixels):
        out = super()._embed(pixels)
        spread = pixels.reshape(pixels.shape[0], -1).std(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return out / np.where(spread > 1e-6, 1.0, 0.0)


def _with_a_constant_image():
    from gpua.data import ArrayImageDataset

    ds = _dataset()
    images = ds.array().copy()
    images[3] = 128
    return ArrayImageDataset(images, ds.labels, ds.classnames, name="toyset", split="train", image_ids=list(ds.image_ids))


def test_an_image_an_encoder_gives_non_finite_features_is_skipped_by_name(tmp_path):
    """Was: every image encoded, then "vfm_features contains NaN or inf in 1 row(s) (first: row 3)",
    naming no image, and every resume failed the same way."""
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 10: img003"):
        _run(_with_a_constant_image(), tmp_path / "f.npz", _NaNOnDark())
    fs = load_features(tmp_path / "f.npz")
    assert fs.n_samples == 9 and "img003" not in fs.image_ids and np.isfinite(fs.vfm_features).all()
    (entry,) = fs.meta["skipped"]["images"]
    assert entry["image_id"] == "img003" and "VFM encoder gave NaN or inf features" in entry["error"]
    with pytest.raises(GPUAError, match=r"image 'img003' \(index 3\) could not be encoded: the VFM encoder gave NaN or inf"):
        _run(_with_a_constant_image(), tmp_path / "g.npz", _NaNOnDark(), on_error="fail")


def test_an_output_check_names_the_out_flag(tmp_path, capsys, monkeypatch):
    """Was: "error: out '/x/notes' is an existing file ...": the command line has no out."""
    from gpua.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").write_text("mine\n")
    assert main(["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", "nothing.npz", "--out", "notes"]) == 2
    err = capsys.readouterr().err
    assert "error: --out '" in err and "notes' is an existing file" in err
    assert (tmp_path / "notes").read_text() == "mine\n"


def test_an_extraction_device_that_is_no_device_is_not_told_about_fits(tmp_path, capsys):
    """Was: "gpua fits run on 'cpu' or 'cuda' devices (float64 sums)" for `gpua extract --device meta`."""
    from gpua.cli import main

    assert main(["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", "x.npz", "--out", str(tmp_path / "f.npz"),
                 "--device", "meta"]) == 2
    err = capsys.readouterr().err
    assert "--device 'meta' is not a device gpua runs on" in err and "float64" not in err


def test_extract_messages_give_what_a_flag_can_give(tmp_path, capsys):
    """Was: "pass --classnames (a list, ...)" (no list fits a flag) and "use gpua.data.open_image"
    (a Python function) for `gpua extract --data photo.png`."""
    from PIL import Image

    from gpua.cli import main

    (tmp_path / "ph").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "ph" / "a.png")
    base = ["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--out", str(tmp_path / "f.npz")]
    assert main([*base, "--data", str(tmp_path / "ph")]) == 2
    assert "pass --classnames (a class-name file, or a dataset name" in capsys.readouterr().err
    (tmp_path / "c.txt").write_text("sky\ngrass\n")
    assert main([*base, "--data", str(tmp_path / "ph" / "a.png"), "--classnames", str(tmp_path / "c.txt")]) == 2
    err = capsys.readouterr().err
    assert "--data takes a folder of images" in err and "open_image" not in err
