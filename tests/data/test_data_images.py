"""Decoding images: mode conversion and bad files."""

from __future__ import annotations

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from gpua.data import UnreadableImageError, load_dataset, open_image, to_rgb


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P"])
def test_modes_are_converted_to_rgb(tmp_path, make_image, mode):
    p = make_image(tmp_path / f"x_{mode}.png", mode=mode, value=120)
    im = open_image(p)
    assert im.mode == "RGB" and im.size == (6, 5)


def test_grey_keeps_its_value(tmp_path, make_image):
    im = open_image(make_image(tmp_path / "g.png", mode="L", value=77))
    assert np.all(np.asarray(im) == 77)


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (3, 3), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((1, 1), (10, 20, 30, 255))
    a = np.asarray(to_rgb(rgba))
    assert a[0, 0].tolist() == [255, 255, 255]
    assert a[1, 1].tolist() == [10, 20, 30]


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    out = np.asarray(open_image(tmp_path / "deep.png"))[..., 0]
    assert out.tolist() == [[0, 128, 255]]


def test_truncated_file_names_the_file(tmp_path, make_image):
    p = make_image(tmp_path / "cut.jpg", size=(64, 64))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="cut.jpg") as info:
        open_image(p)
    assert isinstance(info.value, GPUAError)
    assert info.value.path == str(p)


def test_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(UnreadableImageError("image file 'x.jpg' is bad", "x.jpg")))
    assert err.path == "x.jpg" and "x.jpg" in str(err) and isinstance(err, GPUAError)


def test_not_an_image_names_the_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("not pixels")
    with pytest.raises(GPUAError, match="notes.png"):
        open_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(UnreadableImageError, match="gone.jpg.*does not exist"):
        open_image(tmp_path / "gone.jpg")


def test_dataset_load_image_reports_bad_file_and_others_still_load(tmp_path, make_image):
    root = tmp_path / "pool"
    make_image(root / "a.png")
    (root / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    make_image(root / "c.png", mode="L")
    ds = load_dataset(root)
    loaded, skipped = 0, 0
    for i in range(len(ds)):
        try:
            assert ds.load_image(i).mode == "RGB"
            loaded += 1
        except UnreadableImageError as exc:
            assert "b.png" in str(exc)
            skipped += 1
    assert (loaded, skipped) == (2, 1)
