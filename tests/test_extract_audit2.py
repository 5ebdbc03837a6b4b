"""Second audit of feature extraction and dataset loading: photo collections and standard layouts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import unicodedata
from pathlib import Path

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from gpua.data import ArrayImageDataset, UnreadableImageError, load_dataset, open_image
from gpua.extract import extract_features
from gpua.features import load_features
from test_extract import Toy  # the extraction tests' toy encoder (per-channel means; ``calls`` counts images)

# Their HEIC files are gpua without pillow-heif (with it: tests/data/test_data_heif.py).
pytestmark = pytest.mark.usefixtures("without_heif")


def _run(ds, out, **kw):
    vfm, vlm = Toy(), Toy("toy:vlm", vlm=True)
    kw.setdefault("progress", False)
    kw.setdefault("templates", ["a photo of a {}."])
    path = extract_features(vfm, vlm, ds, out=out, **kw)
    return path, vfm.calls


def _photos(root: Path, classes=("cat", "dog"), n=3, ext=".png") -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / c / f"{j}{ext}")
    return root


# ---------------------------------------------------------------- outputs inside the image folder


def test_a_shard_set_written_inside_the_image_folder_is_not_a_class(tmp_path):
    photos = _photos(tmp_path / "photos")
    out = photos / "feats"  # --out photos/feats
    _, calls = _run(photos, out)
    assert calls == 6
    ds = load_dataset(photos)
    assert ds.classnames == ["cat", "dog"] and len(ds) == 6
    _, calls = _run(photos, out)  # the same inputs: up to date, not a new class "feats"
    assert calls == 0


def test_an_interrupted_runs_parts_folder_inside_the_image_folder_is_not_a_class(tmp_path, interrupt):
    photos = _photos(tmp_path / "photos")
    out = photos / "features.npz"  # its parts folder photos/features.npz.parts stays after a kill
    interrupt(lambda **kw: _run(photos, out, **kw), stop=lambda i, done: True, shard_size=2)
    assert (photos / "features.npz.parts").is_dir()
    assert load_dataset(photos).classnames == ["cat", "dog"]
    _, calls = _run(photos, out, shard_size=2)
    assert calls == 4  # resumed: the first part was kept
    fs = load_features(out)
    assert fs.classnames == ["cat", "dog"] and fs.n_samples == 6


# ---------------------------------------------------------------- cache keys


def test_a_photo_edited_keeping_its_size_and_mtime_is_re_extracted(tmp_path):
    # exiftool -P (and cp -p, rsync -t) keep the modification time; an EXIF rotation keeps the size.
    photos = _photos(tmp_path / "photos", ext=".bmp")  # same pixel count: same file size
    out = tmp_path / "f.npz"
    _run(photos, out)
    before = load_features(out).vfm_features.copy()
    victim = photos / "cat" / "0.bmp"
    st = victim.stat()
    Image.new("RGB", (16, 12), (255, 0, 0)).save(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    _, calls = _run(photos, out)
    assert calls > 0
    after = load_features(out).vfm_features
    assert not np.allclose(before[0], after[0])


def test_the_same_pixel_bytes_in_another_image_shape_are_not_a_cache_hit(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 8, 16, 3), dtype=np.uint8)
    ids = [f"i{j}" for j in range(4)]
    out = tmp_path / "f.npz"
    _run(ArrayImageDataset(a, [0, 1, 0, 1], ["cat", "dog"], "arr", image_ids=ids), out)
    _, calls = _run(ArrayImageDataset(a.reshape(4, 16, 8, 3), [0, 1, 0, 1], ["cat", "dog"], "arr", image_ids=ids), out)
    assert calls == 4


# ---------------------------------------------------------------- class folders made on macOS


def test_decomposed_folder_names_give_the_labels_and_names_of_composed_ones(tmp_path):
    # "école" composed (U+00E9) sorts after "zoo"; decomposed ("e" + U+0301), as macOS writes it, before.
    names = ["\u00e9cole", "zoo"]
    made = {}
    for form in ("NFC", "NFD"):
        root = _photos(tmp_path / form, classes=[unicodedata.normalize(form, c) for c in names])
        if not {unicodedata.normalize(form, c) for c in names} <= set(os.listdir(root)):
            pytest.skip("this file system normalises file names")
        made[form] = load_dataset(root)
    nfc, nfd = made["NFC"], made["NFD"]
    assert nfd.classnames == nfc.classnames
    assert nfd.labels.tolist() == nfc.labels.tolist()
    assert [nfd.classnames[y] for y in nfd.labels] == [unicodedata.normalize("NFC", i.split("/")[0]) for i in nfd.image_ids]


# ---------------------------------------------------------------- photo formats


def test_avif_photos_are_listed_and_read(tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow cannot write AVIF")
    photos = _photos(tmp_path / "photos")
    Image.new("RGB", (16, 12), (200, 30, 30)).save(photos / "cat" / "phone.avif")
    ds = load_dataset(photos)
    assert "cat/phone.avif" in ds.image_ids
    assert ds.load_image(ds.image_ids.index("cat/phone.avif")).size == (16, 12)


def test_photos_in_unread_formats_are_named_not_silently_dropped(tmp_path):
    photos = _photos(tmp_path / "photos")
    (photos / "cat" / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (photos / "dog" / "raw.dng").write_bytes(b"II*\0")
    with pytest.warns(UserWarning, match=r"left out 2 photo\(s\).*\.dng: 1, \.heic: 1.*IMG_0001\.HEIC"):
        ds = load_dataset(photos)
    assert len(ds) == 6
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    (flat / "b.heic").write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"left out 1 photo") as record:
        load_dataset(flat)
    assert record[0].filename == __file__  # points at the caller


def test_a_photo_over_pillows_pixel_guard_is_not_called_corrupt(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: as a 200 MP photo is to the default
    with pytest.raises(UnreadableImageError, match="MAX_IMAGE_PIXELS") as info:
        open_image(p)
    assert "corrupt" not in str(info.value)


def test_a_dark_16_bit_photo_stays_dark(tmp_path):
    # 16-bit by the file's account: 255 / 65535 of full scale is black, as 256 / 65535 is.
    for top in (255, 256):
        a = np.array([[0, top // 2, top]], dtype=np.uint16)
        Image.fromarray(a).save(tmp_path / f"dark{top}.png")
        assert Image.open(tmp_path / f"dark{top}.png").mode.startswith("I;16")
        out = np.asarray(open_image(tmp_path / f"dark{top}.png"))[..., 0]
        assert out.tolist() == [[0, 0, 1]]


# ---------------------------------------------------------------- Fashion-MNIST and split files from the command line


@pytest.fixture
def toy_specs():
    from gpua.encoders import register_encoder

    register_encoder("toy-audit2:vfm", lambda device="cpu", cache_dir=None: Toy("toy-audit2:vfm"), overwrite=True)
    register_encoder("toy-audit2:vlm", lambda device="cpu", cache_dir=None: Toy("toy-audit2:vlm", vlm=True), overwrite=True)
    return "toy-audit2:vfm", "toy-audit2:vlm"


def test_cli_reads_fashion_mnist_idx_files_from_a_folder(tmp_path, idx_files, toy_specs, capsys):
    from gpua.cli import main

    made = idx_files.make_folder(tmp_path / "fm")
    base = ["extract", "--vfm", toy_specs[0], "--vlm", toy_specs[1], "--templates", "simple", "--quiet"]
    # The folder itself, with a split: the error says how to read it (it said "no split folder 'train'").
    assert main(base + ["--data", str(tmp_path / "fm"), "--split", "train", "--out", str(tmp_path / "a.npz")]) == 2
    err = capsys.readouterr().err
    assert "idx files" in err and "--image-root" in err and "no split folder" not in err
    out = tmp_path / "fm.npz"
    assert main(base + ["--data", "fashion-mnist", "--split", "test", "--image-root", str(tmp_path / "fm"), "--out", str(out)]) == 0
    fs = load_features(out)
    assert fs.n_samples == 4 and fs.labels.tolist() == made["test"][1].tolist() and len(fs.classnames) == 10


def test_cli_image_root_for_a_split_file_whose_images_lie_elsewhere(tmp_path, toy_specs):
    import json

    from gpua.cli import main

    photos = _photos(tmp_path / "elsewhere")
    split = {"test": [[f"{c}/{j}.png", k, c] for k, c in enumerate(["cat", "dog"]) for j in range(3)]}
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "split_zhou_Mine.json").write_text(json.dumps(split))
    out = tmp_path / "f.npz"
    argv = ["extract", "--vfm", toy_specs[0], "--vlm", toy_specs[1], "--data", str(tmp_path / "splits" / "split_zhou_Mine.json"),
            "--split", "test", "--templates", "simple", "--quiet", "--out", str(out)]
    assert main(argv) == 2  # not beside the split file
    assert main(argv + ["--image-root", str(photos)]) == 0
    assert load_features(out).n_samples == 6
    with pytest.raises(GPUAError, match="image_root"):
        extract_features(Toy(), Toy("toy:vlm", vlm=True), load_dataset(photos), out=tmp_path / "g.npz", image_root=photos,
                         progress=False)



@pytest.mark.parametrize("kind", ["file", "shards"])
def test_a_feature_file_saved_again_is_not_taken_for_up_to_date(tmp_path, kind):
    """Was: a file loaded, trimmed, then saved with its meta kept extract's cache key, and
    `extract` into that path said "up to date" and kept the trimmed features."""
    from gpua.features import save_features, write_shards

    from gpua.features import ShardedFeatures

    def read(path):
        if kind == "file":
            return load_features(path)
        return ShardedFeatures(path)

    photos = _photos(tmp_path / "photos")
    out = tmp_path / ("f.npz" if kind == "file" else "f")
    _run(photos, out)
    full = load_features(out) if kind == "file" else None
    if kind == "shards":
        _run(photos, tmp_path / "g.npz")
        full = load_features(tmp_path / "g.npz")
    assert isinstance(read(out).meta.get("cache_key"), str)
    _, calls = _run(photos, out)
    assert calls == 0  # unchanged: up to date
    if kind == "file":
        save_features(out, vfm_features=full.vfm_features[:2], vlm_features=full.vlm_features[:2], labels=full.labels[:2],
                      text_prototypes=full.text_prototypes, classnames=full.classnames, image_ids=full.image_ids[:2], meta=full.meta)
    else:
        write_shards(out, full.vfm_features[:2], full.vlm_features[:2], full.labels[:2], image_ids=full.image_ids[:2],
                     text_prototypes=full.text_prototypes, classnames=full.classnames, meta=full.meta, overwrite=True)
    assert "cache_key" not in read(out).meta
    _, calls = _run(photos, out)
    rows = read(out).vfm_features.shape[0] if kind == "file" else read(out).n_samples
    assert calls == 6 and rows == 6 and "cache_key" in read(out).meta
