"""Image loading edge cases: EXIF orientation, float TIFFs, symlink loops, Unicode folder names."""

from __future__ import annotations

import os
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from gpua.data import load_dataset, open_image, to_rgb


# ---------------------------------------------------------------- EXIF orientation


def _sideways_photo(path: Path, orientation: int = 6) -> np.ndarray:
    """Save a 4 wide x 2 high picture as a phone would: stored rotated, with an EXIF
    Orientation tag saying how to turn it upright. Returns the upright pixels."""
    upright = np.zeros((2, 4, 3), dtype=np.uint8)
    upright[:, :2] = (255, 0, 0)  # left half red
    upright[:, 2:] = (0, 0, 255)  # right half blue
    # Orientation 6: the viewer rotates the stored image 90 degrees clockwise, so the camera
    # stored it rotated 90 degrees counter-clockwise.
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif, quality=100, subsampling=0)
    return upright


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "phone.jpg"
    upright = _sideways_photo(p)
    im = open_image(p)
    assert im.mode == "RGB"
    assert im.size == (4, 2)  # (width, height) as shown, not as stored (2, 4)
    a = np.asarray(im).astype(int)
    assert a[:, :2, 0].min() > 200 and a[:, :2, 2].max() < 60  # red on the left
    assert a[:, 2:, 2].min() > 200 and a[:, 2:, 0].max() < 60  # blue on the right
    assert np.abs(a - upright).max() < 60


def test_exif_orientation_reaches_segmentation_reader(tmp_path):
    from gpua.segment.datasets import read_image

    p = tmp_path / "phone.jpg"
    _sideways_photo(p)
    assert read_image(p).shape == (2, 4, 3)


def test_image_without_orientation_is_unchanged(tmp_path):
    p = tmp_path / "plain.jpg"
    exif = Image.Exif()
    exif[0x010F] = "camera maker"  # EXIF, but no Orientation tag
    Image.new("RGB", (4, 2), (10, 200, 30)).save(p, exif=exif)
    assert open_image(p).size == (4, 2)


def test_malformed_exif_still_loads_in_stored_orientation(tmp_path):
    p = tmp_path / "broken_exif.jpg"
    Image.new("RGB", (4, 2), (10, 200, 30)).save(p, exif=b"Exif\x00\x00this is not a TIFF header")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow may warn about the corrupt block; that is fine
        im = open_image(p)
    assert im.size == (4, 2) and im.mode == "RGB"


def test_exif_transpose_failure_falls_back_to_stored_orientation(tmp_path, monkeypatch):
    from PIL import ImageOps

    def broken(*args, **kwargs):
        raise SyntaxError("malformed EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    p = tmp_path / "phone.jpg"
    _sideways_photo(p)
    im = open_image(p)
    assert im.size == (2, 4) and im.mode == "RGB"


# ---------------------------------------------------------------- float images


def test_float_tiff_in_unit_range_is_scaled_to_8_bits(tmp_path):
    a = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    p = tmp_path / "float.tif"
    Image.fromarray(a, mode="F").save(p)
    with Image.open(p) as check:
        assert check.mode == "F"
    out = np.asarray(open_image(p))
    assert out.shape == (1, 4, 3)
    assert out[..., 0].tolist() == [[0, 64, 128, 255]]
    assert (out[..., 0] == out[..., 2]).all()


def test_float_image_in_8_bit_range_keeps_its_values():
    a = np.array([[0.0, 2.0, 100.0, 255.0]], dtype=np.float32)
    out = np.asarray(to_rgb(Image.fromarray(a, mode="F")))[..., 0]
    assert out.tolist() == [[0, 2, 100, 255]]


@pytest.mark.parametrize(
    "values",
    [[-1.0, 0.0, 1.0], [0.0, 500.0, 1000.0], [-3000.0, 0.0, 3000.0], [1e6, 1.5e6, 2e6]],
)
def test_float_image_outside_8_bit_range_is_stretched(values):
    a = np.array([values], dtype=np.float32)
    out = np.asarray(to_rgb(Image.fromarray(a, mode="F")))[..., 0]
    assert out.tolist() == [[0, 128, 255]]


def test_float_image_with_nan_and_inf_does_not_break():
    a = np.array([[np.nan, 0.0, 0.5, 1.0, np.inf, -np.inf]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning either
        out = np.asarray(to_rgb(Image.fromarray(a, mode="F")))[..., 0]
    assert out.tolist() == [[0, 0, 128, 255, 255, 0]]
    all_nan = np.full((2, 2), np.nan, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.asarray(to_rgb(Image.fromarray(all_nan, mode="F"))).max() == 0


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 2, 100, 255]], dtype=np.int32), [[0, 2, 100, 255]]),
        (np.array([[0, 32896, 65535]], dtype=np.int32), [[0, 128, 255]]),
        (np.array([[0, 50000, 100000]], dtype=np.int32), [[0, 128, 255]]),
        (np.array([[0, 1, 1]], dtype=np.int32), [[0, 1, 1]]),  # integers are not treated as [0, 1]
    ],
)
def test_integer_images_unchanged(array, expected):
    out = np.asarray(to_rgb(Image.fromarray(array, mode="I")))[..., 0]
    assert out.tolist() == expected


# ---------------------------------------------------------------- symlink loops


def _need_symlinks(tmp_path: Path) -> None:
    try:
        os.symlink(tmp_path, tmp_path / "_probe", target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("this platform cannot create symlinks")
    os.unlink(tmp_path / "_probe")


def _two_classes(root: Path, write_image) -> None:
    for cls in ("cat", "dog"):
        for j in range(6):
            write_image(root / cls / f"{j}.png", value=10 * j)


def _outside_and_dataset(tmp_path: Path, write_image, *outside_files: str) -> tuple[Path, Path]:
    """A folder ``elsewhere`` holding ``outside_files`` and a two-class dataset ``ds`` beside it (symlinks possible)."""
    _need_symlinks(tmp_path)
    outside = tmp_path / "elsewhere"
    for name in outside_files:
        write_image(outside / name)
    root = tmp_path / "ds"
    _two_classes(root, write_image)
    return outside, root


def test_symlink_loop_lists_each_image_once(tmp_path, make_image):
    write_image = make_image
    _need_symlinks(tmp_path)
    root = tmp_path / "loopy"
    _two_classes(root, write_image)
    os.symlink("..", root / "cat" / "up", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"cat/up"):
        ds = load_dataset(root)
    assert len(ds) == 12
    assert np.bincount(ds.labels).tolist() == [6, 6]
    assert len(set(map(os.path.realpath, (ds.path(i) for i in range(len(ds)))))) == 12


def test_symlink_to_an_ancestor_above_the_dataset_is_skipped(tmp_path, make_image):
    write_image = make_image
    _need_symlinks(tmp_path)
    root = tmp_path / "data" / "loopy"
    _two_classes(root, write_image)
    write_image(tmp_path / "data" / "stray.png")  # beside the dataset: not one of its images
    os.symlink(tmp_path, root / "dog" / "top", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"dog/top"):
        ds = load_dataset(root)
    assert len(ds) == 12


def test_symlink_into_another_class_is_not_listed_twice(tmp_path, make_image):
    write_image = make_image
    _need_symlinks(tmp_path)
    root = tmp_path / "pets"
    _two_classes(root, write_image)
    write_image(root / "dog" / "puppies" / "p.png")
    os.symlink(os.path.join("..", "dog", "puppies"), root / "cat" / "a_link", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"cat/a_link"):
        ds = load_dataset(root)
    assert len(ds) == 13
    assert "dog/puppies/p.png" in ds.image_ids and ds.label(ds.image_ids.index("dog/puppies/p.png")) == 1


@pytest.mark.parametrize(
    "outside_files, links, warned, n_images, listed",
    [
        # a loop outside the tree is cut where it closes
        (["sub/e.png"], [("elsewhere/sub/back", ".."), ("ds/cat/more", "elsewhere")], "cat/more/sub/back", 13,
         ["cat/more/sub/e.png"]),
        # a folder reached both as a linked class and through another link is listed once, as the class
        (["x.png", "birds/b.png"], [("ds/bird", "elsewhere/birds"), ("ds/cat/ext", "elsewhere")], "cat/ext/birds", 14,
         ["bird/b.png", "cat/ext/x.png"]),
        # two links to the same outside folder: the first is read
        (["x.png"], [("ds/cat/ext1", "elsewhere"), ("ds/cat/ext2", "elsewhere")], "cat/ext2", 13, ["cat/ext1/x.png"]),
    ],
    ids=["loop-outside", "linked-class-twice", "two-links"],
)
def test_a_folder_reached_twice_is_read_once_and_named(tmp_path, make_image, outside_files, links, warned, n_images, listed):
    _, root = _outside_and_dataset(tmp_path, make_image, *outside_files)
    for link, target in links:  # ".." stays relative; other targets are paths under tmp_path
        os.symlink(target if target == ".." else tmp_path / target, tmp_path / link, target_is_directory=True)
    with pytest.warns(UserWarning, match=warned):
        ds = load_dataset(root)
    assert len(ds) == n_images and all(i in ds.image_ids for i in listed)


def test_symlinks_to_outside_folders_and_files_still_work(tmp_path, make_image):
    write_image = make_image
    outside, root = _outside_and_dataset(tmp_path, write_image, "x.png", "deeper/y.png")
    single = write_image(tmp_path / "single.png")
    os.symlink(outside, root / "cat" / "ext", target_is_directory=True)
    os.symlink(single, root / "dog" / "linked.png")
    write_image(tmp_path / "birds" / "b.png")
    os.symlink(tmp_path / "birds", root / "bird", target_is_directory=True)  # a class folder that is a link
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(root)
    ids = ds.image_ids
    assert "cat/ext/x.png" in ids and "cat/ext/deeper/y.png" in ids
    assert "dog/linked.png" in ids and "bird/b.png" in ids
    assert len(ds) == 12 + 4


# ---------------------------------------------------------------- Unicode folder names


def test_nfd_folder_matches_nfc_classname(tmp_path, make_image):
    write_image = make_image
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    root = tmp_path / "nfd"
    write_image(root / nfd / "a.png")
    write_image(root / "tea" / "b.png")
    if nfc in os.listdir(root):
        pytest.skip("this file system normalises names to NFC")
    ds = load_dataset(root, classnames=["tea", nfc])
    assert ds.classnames == ["tea", nfc]  # the user's spelling
    assert ds.label(ds.image_ids.index(f"{nfd}/a.png")) == 1
    assert ds.path(ds.image_ids.index(f"{nfd}/a.png")).is_file()  # the path keeps the disk's spelling


def test_nfc_folder_matches_nfd_classname_file(tmp_path, make_image):
    write_image = make_image
    nfc, nfd = unicodedata.normalize("NFC", "Zoë"), unicodedata.normalize("NFD", "Zoë")
    root = tmp_path / "names"
    write_image(root / nfc / "a.png")
    write_image(root / "bob" / "b.png")
    names = tmp_path / "classnames.txt"
    names.write_text(f"{nfd}\nbob\n", encoding="utf-8")
    ds = load_dataset(root, classnames=names)
    assert ds.classnames[1] == "bob" and unicodedata.normalize("NFC", ds.classnames[0]) == nfc
    assert ds.label(ds.image_ids.index(f"{nfc}/a.png")) == 0


def test_unicode_mismatch_still_reported(tmp_path, make_image):
    write_image = make_image
    root = tmp_path / "nfd"
    write_image(root / unicodedata.normalize("NFD", "café") / "a.png")
    write_image(root / "tea" / "b.png")
    with pytest.raises(GPUAError, match="is not in classnames"):
        load_dataset(root, classnames=["tea", "cafe"])


def test_folders_differing_only_in_unicode_form_are_reported(tmp_path, make_image):
    root = tmp_path / "twins"
    make_image(root / unicodedata.normalize("NFC", "café") / "a.png")
    make_image(root / unicodedata.normalize("NFD", "café") / "b.png")
    if len(os.listdir(root)) != 2:
        pytest.skip("this file system treats the two spellings as one name")
    with pytest.raises(GPUAError, match="differ only in their Unicode form"):
        load_dataset(root, classnames=["café"])


# ---------------------------------------------------------------- TIFF layouts Pillow decodes wrongly


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "RGB"])
@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_an_uncompressed_transposed_tiff_decodes_as_its_compressed_twin(tmp_path, mode, orientation):
    """Was: raw strips with orientation 5-8 decoded to diagonal stripes, of the wrong shape, in every mode but RGB."""
    rng = np.random.default_rng(orientation)
    picture = Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)).convert(mode)
    exif = Image.Exif()
    exif[274] = orientation
    picture.save(tmp_path / "raw.tif", exif=exif)
    picture.save(tmp_path / "lzw.tif", exif=exif, compression="tiff_lzw")  # Pillow's libtiff path: right
    expected = np.asarray(open_image(tmp_path / "lzw.tif"))
    assert expected.shape == (45, 30, 3)  # turned upright
    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "raw.tif")), expected)


def test_tiff_layouts_pillow_misreads_are_refused_by_name(tmp_path):
    """Was: a 16-bit per-channel (planar) TIFF read as a striped crop, a 16-bit min-is-white one as its negative."""
    tifffile = pytest.importorskip("tifffile")
    from gpua.data import UnreadableImageError

    rgb = np.random.default_rng(0).integers(0, 65535, (3, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "white.tif", rgb[0], photometric="miniswhite")
    for name, layout in (("planar.tif", "16-bit samples stored as separate planes"), ("white.tif", "16-bit min-is-white grey")):
        with pytest.raises(UnreadableImageError, match=rf"is a TIFF whose layout \({layout}.*\) Pillow decodes wrongly; re-save"):
            open_image(tmp_path / name)
    tifffile.imwrite(tmp_path / "interleaved.tif", np.moveaxis(rgb, 0, -1), photometric="rgb")  # the layout the message asks for
    assert np.asarray(open_image(tmp_path / "interleaved.tif")).shape == (20, 30, 3)


def test_a_heic_photo_under_a_jpeg_name_is_named_as_heic_without_pillow_heif(tmp_path, without_heif):
    """Was: "could not be read (UnidentifiedImageError ...); it is truncated, corrupt or not an image"."""
    from gpua.data import UnreadableImageError

    fake = tmp_path / "IMG_1234.jpg"  # an ISO media header of brand heic; the rest is not decoded
    fake.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    with pytest.raises(UnreadableImageError, match=r"is a HEIC/HEIF photo \(whatever its name says\).*pip install 'gpua\[heif\]'"):
        open_image(fake)
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(UnreadableImageError, match="truncated, corrupt or not an image"):
        open_image(tmp_path / "junk.jpg")


def test_a_16_bit_grey_pngs_transparent_value_is_put_on_white_as_an_8_bit_ones(tmp_path):
    """Was: black in the 16-bit file, white in the 8-bit one (the tRNS key was dropped for mode I;16)."""
    g = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    Image.fromarray(g).save(tmp_path / "g16.png", transparency=0)
    Image.fromarray((g // 257).astype(np.uint8)).save(tmp_path / "g8.png", transparency=0)
    sixteen, eight = np.asarray(open_image(tmp_path / "g16.png")), np.asarray(open_image(tmp_path / "g8.png"))
    assert (sixteen[:, 0] == 255).all() and (eight[:, 0] == 255).all()
    assert np.abs(sixteen.astype(int) - eight).max() <= 1  # 65535 -> 255 rounding
