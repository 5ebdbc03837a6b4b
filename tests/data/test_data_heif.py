"""HEIC/HEIF photos (an iPhone's default format) with the optional pillow-heif package (``gpua[heif]``):
listed, decoded upright and classified as any JPEG; without it, counted and named with the install line."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("pillow_heif")
from PIL import Image  # noqa: E402

from gpua.classify import _undecoded_reason, classify_folder  # noqa: E402
from gpua.data import decoded_extensions, heif_decoder, load_dataset, open_image  # noqa: E402
from gpua.data._loaders import _is_unread_photo  # noqa: E402

PLANTED = {"vfm": "planted:vfm", "vlm": "planted:vlm", "templates": "simple", "progress": False,
           "overrides": {"n_steps": 10, "self_learning": 0}}


def _heic_copy(png, heic) -> None:
    """``png`` re-saved as HEIC (lossless enough for a flat planted colour)."""
    assert heif_decoder()
    Image.open(png).convert("RGB").save(heic, format="HEIF", quality=100)


def test_heic_photos_are_images_when_pillow_heif_is_installed(tmp_path):
    assert heif_decoder() and {".heic", ".heif", ".hif"} <= set(decoded_extensions())
    assert not _is_unread_photo("IMG_0001.HEIC")
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((24, 32, 3), 60 * i + (100 if c == "cat" else 0), np.uint8)).save(tmp_path / c / f"{i}.png")
    _heic_copy(tmp_path / "cat" / "0.png", tmp_path / "cat" / "IMG_0007.HEIC")
    ds = load_dataset(str(tmp_path))
    assert "cat/IMG_0007.HEIC" in [ds.image_id(i) for i in range(len(ds))] and len(ds) == 5
    got = np.asarray(open_image(tmp_path / "cat" / "IMG_0007.HEIC"), dtype=int)
    assert got.shape == (24, 32, 3) and np.abs(got - 100).max() <= 3


def test_a_heic_photo_is_turned_upright_as_a_jpeg_is(tmp_path):
    """A phone's photo stored sideways: pillow-heif applies the rotation, as open_image applies a JPEG's EXIF Orientation."""
    a = np.zeros((40, 100, 3), np.uint8)
    a[:, :50] = 255  # wide, its left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    for name in ("o.jpg", "o.heic"):
        Image.fromarray(a).save(tmp_path / name, exif=exif.tobytes(), quality=95)
    jpg, heic = (np.asarray(open_image(tmp_path / n), dtype=int) for n in ("o.jpg", "o.heic"))
    assert jpg.shape == heic.shape == (100, 40, 3)
    assert np.abs(jpg - heic).mean() < 8


def test_classify_predicts_heic_photos_like_their_png_originals(photos, monkeypatch):
    monkeypatch.chdir(photos)
    shutil.copytree(photos / "photos" / "test", photos / "png")
    shutil.copytree(photos / "photos" / "test", photos / "mixed")
    for png in sorted((photos / "mixed").rglob("*_0.png")):  # one photo per class as HEIC instead
        _heic_copy(png, png.with_suffix(".heic"))
        png.unlink()
    a = classify_folder("png", "classes.txt", cache_dir="cache", method="zero_shot", **{**PLANTED, "overrides": None})
    b = classify_folder("mixed", "classes.txt", cache_dir="cache", method="zero_shot", **{**PLANTED, "overrides": None})
    out = photos / "b.csv"
    b.to_csv(out)
    rows = {r["image"]: r for r in csv.DictReader(open(out, encoding="utf-8"))}
    heics = [k for k in rows if k.endswith(".heic")]
    assert len(heics) == 5 and all(rows[k]["prediction"] and not rows[k].get("error") for k in heics)
    pred_a = dict(zip(a.image_ids, (a.classnames[k] for k in a.predictions)))
    assert [pred_a[k.replace(".heic", ".png")] for k in heics] == [rows[k]["prediction"] for k in heics]


def test_without_pillow_heif_the_reason_says_how_to_install_it(without_heif):
    assert _is_unread_photo("IMG_0001.HEIC") and ".heic" not in decoded_extensions()
    why = _undecoded_reason("a/IMG_0001.HEIC")
    assert "pip install 'gpua[heif]'" in why and "not installed here" in why


def test_without_pillow_heif_the_listing_warning_says_how_to_read_them(tmp_path, without_heif):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "IMG_1.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(32))
    with pytest.warns(UserWarning, match=r"left out 1 photo.*\.heic: 1.*pip install 'gpua\[heif\]' reads them"):
        assert len(load_dataset(str(tmp_path))) == 1


@pytest.fixture
def fresh_pillow(monkeypatch):
    """Pillow as in a process that has listed no folder yet (a Dask worker, a split file's run):
    pillow-heif's opener not registered, ``heif_decoder`` not yet asked."""
    Image.init()
    monkeypatch.setattr(Image, "OPEN", {k: v for k, v in Image.OPEN.items() if k != "HEIF"})
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i != "HEIF"])
    heif_decoder.cache_clear()
    yield
    heif_decoder.cache_clear()


def test_a_heic_photo_opens_with_no_listing_run_first(tmp_path, fresh_pillow):
    """Was: UnreadableImageError "truncated, corrupt or not an image" for a good photo, in a process
    (a Dask worker of extract_features(cluster=...)) or a path (a direct open_image) that had not
    listed a folder, the only place that registered pillow-heif's opener."""
    import pillow_heif
    from PIL import UnidentifiedImageError

    pillow_heif.from_pillow(Image.fromarray(np.full((12, 16, 3), 90, np.uint8))).save(tmp_path / "IMG_1.HEIC", quality=100)
    with pytest.raises(UnidentifiedImageError):  # the fixture's setting: Pillow alone does not read it
        Image.open(tmp_path / "IMG_1.HEIC")
    got = np.asarray(open_image(tmp_path / "IMG_1.HEIC"), dtype=int)
    assert got.shape == (12, 16, 3) and np.abs(got - 90).max() <= 3


def test_a_segmentation_set_of_an_explicit_heic_suffix_reads_its_photos(tmp_path, fresh_pillow):
    """img_suffix='.heic' (evaluate-seg / fit-seg --img-suffix .heic) lists nothing through decoded_extensions."""
    import pillow_heif

    from gpua.segment.datasets import SegmentationDataset

    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    pillow_heif.from_pillow(Image.fromarray(np.full((8, 8, 3), 50, np.uint8))).save(tmp_path / "img" / "a.HEIC", quality=100)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ann" / "a.png")
    ds = SegmentationDataset(tmp_path, img_dir="img", ann_dir="ann", img_suffix=".heic", seg_map_suffix=".png", classnames=["x"])
    image, label = ds[0]
    assert image.shape == (8, 8, 3) and label.shape == (8, 8)


def test_without_pillow_heif_a_folder_of_heic_photos_only_says_how_to_install_it(tmp_path, without_heif):
    """An iPhone export (HEIC only): the error was "convert them to JPEG or PNG", no install line."""
    from gpua import GPUAError

    (tmp_path / "iphone").mkdir()
    for i in range(2):
        (tmp_path / "iphone" / f"IMG_{i}.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(32))
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(GPUAError, match=r"holds no photo gpua decodes.*pip install 'gpua\[heif\]' reads them"):
        classify_folder(tmp_path / "iphone", tmp_path / "classes.txt", cache_dir=tmp_path / "cache", **PLANTED)


def test_without_pillow_heif_the_cli_summary_says_how_to_install_it(photos, monkeypatch, capsys, without_heif):
    from gpua.cli import main

    monkeypatch.chdir(photos)
    (photos / "flat" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(32))
    assert main(["classify", "--images", "flat", "--classnames", "classes.txt", "--out", "out.csv", "--vfm", "planted:vfm",
                 "--vlm", "planted:vlm", "--templates", "simple", "--method", "zero_shot", "--cache-dir", "cache", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 photo(s) are in formats gpua does not decode" in out and "pip install 'gpua[heif]' reads them" in out
