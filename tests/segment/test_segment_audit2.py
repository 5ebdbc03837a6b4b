"""Segmentation paths a second audit found silently wrong or crashing (each test failed before its fix)."""

from __future__ import annotations

import json

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from segment_helpers import write_scenes
from gpua.cli import main

PLANTED = ["sky", "grass", "road", "water", "sand"]
ENCODERS = ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple"]
_ORIENTATION = 0x0112


@pytest.fixture
def scenes(tmp_path, world):
    """Test photos (40x56, not square) with their masks, and the class file."""
    return write_scenes(tmp_path, world, 2, (40, 56))


def _stored_sideways(array: np.ndarray, path, **save) -> None:
    """Save ``array`` as a phone does: pixels turned a quarter left, EXIF Orientation 6 ("turn right to show")."""
    exif = Image.Exif()
    exif[_ORIENTATION] = 6
    Image.fromarray(array).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, **save)


# --------------------------------------------------------------------------- overlays of 16-bit masks


def test_segment_writes_overlays_of_16_bit_masks(scenes, capsys):
    # 300 classes: "no class" is 65535 and masks are 16-bit; the overlay indexed imgviz's 256-colour map
    (scenes / "c300.txt").write_text("\n".join(f"c{k}: {PLANTED[k % 5]} v{k}" for k in range(300)) + "\n")
    argv = ["segment", "--zero-shot", "--vlm", "planted:vlm", "--templates", "simple", "--classnames", str(scenes / "c300.txt"),
            "--images", str(scenes / "test"), "--out", str(scenes / "masks"), "--threshold", "0.99", "--threshold-label", "65535"]
    assert main(argv) == 0  # was: IndexError (index 65535 is out of bounds for axis 0 with size 256) after the first mask
    assert sorted(p.name for p in (scenes / "masks").iterdir()) == ["t0.png", "t0_overlay.png", "t1.png", "t1_overlay.png"]
    assert (np.asarray(Image.open(scenes / "masks" / "t0.png")) == 65535).all()
    assert "segmented 2 image(s) into 300 classes" in capsys.readouterr().out


def test_overlay_colours_follow_the_mask_palette_past_256_labels(tmp_path):
    import imgviz

    from gpua.segment.io import write_overlay_png

    image = np.full((8, 8, 3), 100, np.uint8)
    label = np.full((8, 8), 3, np.int64)
    label[:, 4:] = 299
    write_overlay_png(tmp_path / "o.png", image, label)
    rgb = np.asarray(Image.open(tmp_path / "o.png"))
    expected = np.round(0.5 * 100 + 0.5 * imgviz.label_colormap()[3].astype(float))
    np.testing.assert_array_equal(rgb[0, 0], expected)  # class 3 keeps its palette colour
    assert not (rgb[0, 7] == rgb[0, 0]).all()  # and class 299 gets another


# --------------------------------------------------------------------------- PIL images in the Python API


def test_pil_images_are_converted_as_image_files_are(world):
    from gpua.segment import DenseSegmenter

    images, _ = world.sample(1, (48, 48), seed=1)
    seg = DenseSegmenter(None, world.vlm, world.prototypes)
    grey16 = (images[0][..., 1].astype(np.uint16) * 257)
    # PIL's convert("RGB") saturated a 16-bit grey image (all white: one class everywhere)
    np.testing.assert_array_equal(seg.predict(Image.fromarray(grey16)), seg.predict(grey16))
    rgba = np.dstack([images[0], np.where(np.arange(48) < 24, 0, 255).astype(np.uint8)[:, None].repeat(48, 1)])
    on_white = np.where(rgba[..., 3:] == 0, 255, images[0]).astype(np.uint8)
    # transparent pixels go on white, as gpua.data.open_image puts them (convert("RGB") left them black)
    np.testing.assert_array_equal(seg.predict(Image.fromarray(rgba, "RGBA")), seg.predict(on_white))


# --------------------------------------------------------------------------- planted grids cover the image


def test_planted_patch_grid_covers_the_whole_image(world):
    images, _ = world.sample(1, (36, 44), seed=3)  # neither side divisible by the 8-pixel VLM patch
    im = images[0]
    changed = im.copy()
    changed[:, -3:] = 255 - changed[:, -3:]
    # was: the last 44 % 8 = 4 columns were never encoded, yet the mask was stretched over them
    assert not np.allclose(world.vlm.encode_patches(im), world.vlm.encode_patches(changed))


def test_planted_segmentation_of_odd_sizes_is_flip_equivariant(world):
    from gpua.segment import DenseSegmenter

    seg = DenseSegmenter(None, world.vlm, world.prototypes)
    images, _ = world.sample(2, (36, 44), seed=3)
    for im in images:
        label = seg.predict(im)
        # was: 9-20% of the pixels changed class: the grid saw the left 40 columns and was stretched to 44
        np.testing.assert_array_equal(seg.predict(im[:, ::-1].copy())[:, ::-1], label)
        np.testing.assert_array_equal(seg.predict(im[::-1].copy())[::-1], label)


def test_planted_features_of_divisible_sizes_are_unchanged(world):
    images, _ = world.sample(1, (32, 48), seed=3)
    f = world.vfm.pixel_features(images[0])
    np.testing.assert_array_equal(world.vfm.encode_patches(images[0])[0],
                                  f.reshape(8, 4, 12, 4, -1).mean(axis=(1, 3)).astype(np.float32))


# --------------------------------------------------------------------------- EXIF orientation of masks


def test_label_maps_are_turned_by_their_exif_orientation(tmp_path):
    from gpua.segment.datasets import read_label

    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    _stored_sideways(label, tmp_path / "m.png")
    img = Image.fromarray(label, "L").convert("P")  # a palette mask, as VOC's
    exif = Image.Exif()
    exif[_ORIENTATION] = 6
    img.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "p.png", exif=exif)
    # was: read as stored (4x3), while read_image turns the photo upright (3x4)
    np.testing.assert_array_equal(read_label(tmp_path / "m.png"), label)
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), label)


def test_phone_photo_and_mask_stored_sideways_score_as_upright(scenes, capsys):
    # a square crop: a sideways mask has the photo's size, so nothing but the scores says it is turned
    photo = np.asarray(Image.open(scenes / "test" / "t0.png"))[:, :40]
    mask = np.asarray(Image.open(scenes / "gt" / "t0.png"))[:, :40]
    for d in ("upright", "upright_gt", "phone", "phone_gt"):
        (scenes / d).mkdir()
    Image.fromarray(photo).save(scenes / "upright" / "a.png")
    Image.fromarray(mask).save(scenes / "upright_gt" / "a.png")
    _stored_sideways(photo, scenes / "phone" / "a.png")
    _stored_sideways(mask, scenes / "phone_gt" / "a.png")
    classes = str(scenes / "classes.txt")
    zs = ["--zero-shot", "--vlm", "planted:vlm", "--templates", "simple", "--classnames", classes]
    assert main(["segment", *zs, "--images", str(scenes / "phone"), "--out", str(scenes / "masks")]) == 0
    assert Image.open(scenes / "masks" / "a.png").size == (40, 40)
    capsys.readouterr()
    scores = {}
    for gt in ("upright_gt", "phone_gt"):
        assert main(["evaluate-seg", "--pred", str(scenes / "masks"), "--gt", str(scenes / gt), "--classnames", classes, "--json"]) == 0
        scores[gt] = json.loads(capsys.readouterr().out)
    assert scores["phone_gt"] == scores["upright_gt"]  # was: the sideways mask was scored as stored


# --------------------------------------------------------------------------- evaluate-seg with --gt


def _zero_shot_eval(scenes, *extra):
    return ["evaluate-seg", "--zero-shot", "--vlm", "planted:vlm", "--templates", "simple", "--classnames",
            str(scenes / "classes.txt"), "--gt", str(scenes / "gt"), *extra]


def test_two_images_for_one_ground_truth_are_refused(scenes, capsys):
    # t0.jpg is another photo: which of the two t0.png's mask describes was picked silently (the last sorted)
    Image.open(scenes / "test" / "t1.png").save(scenes / "test" / "t0.jpg", quality=95)
    assert main([*_zero_shot_eval(scenes), "--images", str(scenes / "test")]) == 2
    assert "--images holds t0.jpg and t0.png, 2 images for the ground truth t0.png" in capsys.readouterr().err


def test_two_ground_truths_of_one_image_are_refused(scenes, capsys):
    # x.png and x.PNG both end in .png ignoring case: the same prediction was scored against both
    if (scenes / "gt" / "T0.PNG").exists():
        pytest.skip("a case-insensitive file system holds one of t0.png and t0.PNG")
    (scenes / "gt" / "t0.PNG").write_bytes((scenes / "gt" / "t1.png").read_bytes())
    assert main([*_zero_shot_eval(scenes), "--images", str(scenes / "test")]) == 2
    assert "two masks of one image 't0'" in capsys.readouterr().err


def test_ignore_index_leaves_the_predictions_no_class_a_miss(scenes, capsys):
    argv = [*_zero_shot_eval(scenes), "--images", str(scenes / "test"), "--threshold", "0.999", "--json"]
    assert main(argv) == 0
    default = json.loads(capsys.readouterr().out)
    # --ignore-index names the ground truth's unscored value; a prediction's "no class" (255) stopped the run
    assert main([*argv, "--ignore-index", "254"]) == 0
    assert json.loads(capsys.readouterr().out) == default


def test_an_image_smaller_than_a_patch_is_named_by_evaluate_seg(scenes, capsys):
    Image.fromarray(np.zeros((3, 60, 3), np.uint8)).save(scenes / "test" / "t1.png")
    Image.fromarray(np.zeros((3, 60), np.uint8)).save(scenes / "gt" / "t1.png")
    assert main([*_zero_shot_eval(scenes), "--images", str(scenes / "test")]) == 2
    err = capsys.readouterr().err
    assert "t1.png" in err and "3x60 pixels" in err  # was: "image[0] is 3x60 pixels", no file named


def test_binary_masks_of_0_and_255_are_warned_about(tmp_path, capsys):
    for d in ("gt", "pred"):
        (tmp_path / d).mkdir()
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255  # foreground 255, as many tools export binary masks
    Image.fromarray(mask).save(tmp_path / "gt" / "a.png")
    Image.fromarray(mask // 255).save(tmp_path / "pred" / "a.png")
    (tmp_path / "c.txt").write_text("background\nforeground\n")
    argv = ["evaluate-seg", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--classnames", str(tmp_path / "c.txt")]
    assert main(argv) == 0
    # was: mIoU 100 without a word, the foreground left out as the ignore index
    assert "32 pixel(s) hold the ignore index 255" in capsys.readouterr().err
    Image.fromarray(mask // 255).save(tmp_path / "gt" / "a.png")
    assert main(argv) == 0
    assert "ignore index" not in capsys.readouterr().err


def test_evaluate_seg_with_a_model_reads_its_classes_for_gt(scenes, world, capsys):
    pool, _ = world.sample(4, (48, 48), seed=1)
    (scenes / "pool").mkdir()
    for i, im in enumerate(pool):
        Image.fromarray(im).save(scenes / "pool" / f"p{i}.png")
    model = scenes / "m.gpua"
    assert main(["fit-seg", "--images", str(scenes / "pool"), "--classnames", str(scenes / "classes.txt"), "--out", str(model),
                 "--patches-per-image", "16", "--no-progress", *ENCODERS]) == 0
    capsys.readouterr()
    argv = ["evaluate-seg", "--model", str(model), "--images", str(scenes / "test"), "--gt", str(scenes / "gt"), "--json"]
    assert main(argv) == 0  # was: "--gt needs --classnames", though the model records them (README: read from it)
    scores = json.loads(capsys.readouterr().out)
    assert scores["n_images"] == 2 and set(scores["per_class"]) == set(PLANTED)
    assert main([*argv, "--classnames", str(scenes / "classes.txt")]) == 0
    assert json.loads(capsys.readouterr().out) == scores


def test_dataset_folders_leave_hidden_files_out(scenes, capsys):
    for d in ("img_dir/val", "ann_dir/val"):
        (scenes / "custom" / d).mkdir(parents=True)
    for i in range(2):
        Image.open(scenes / "test" / f"t{i}.png").save(scenes / "custom/img_dir/val" / f"t{i}.jpg", quality=100)
        (scenes / "custom/ann_dir/val" / f"t{i}.png").write_bytes((scenes / "gt" / f"t{i}.png").read_bytes())
    (scenes / "custom/img_dir/val/._t0.jpg").write_bytes(b"Mac OS X  ")  # macOS metadata, as a copy to a USB disk leaves
    argv = ["evaluate-seg", "--pred", str(scenes / "gt"), "--dataset", "custom", "--root", str(scenes / "custom"),
            "--classnames", str(scenes / "classes.txt"), "--json"]
    assert main(argv) == 0  # was: "1 image/label file(s) are missing (first: .../ann_dir/val/._t0.png)"
    assert json.loads(capsys.readouterr().out)["n_images"] == 2


def test_dataset_image_suffixes_match_ignoring_case(scenes, capsys):
    for d in ("img_dir/val", "ann_dir/val"):
        (scenes / "custom" / d).mkdir(parents=True)
    for i in range(2):  # a phone's IMG_0001.JPG; --dataset custom has no flag for the image suffix
        Image.open(scenes / "test" / f"t{i}.png").save(scenes / "custom/img_dir/val" / f"t{i}.JPG", format="JPEG", quality=100)
        (scenes / "custom/ann_dir/val" / f"t{i}.png").write_bytes((scenes / "gt" / f"t{i}.png").read_bytes())
    argv = ["evaluate-seg", "--pred", str(scenes / "gt"), "--dataset", "custom", "--root", str(scenes / "custom"),
            "--classnames", str(scenes / "classes.txt"), "--json"]
    assert main(argv) == 0  # was: "no images ending in '.jpg'", with no flag to change it
    assert json.loads(capsys.readouterr().out)["n_images"] == 2
    if not (scenes / "custom/img_dir/val/T0.jpg").exists():  # a case-sensitive disk can hold both
        Image.open(scenes / "test" / "t1.png").save(scenes / "custom/img_dir/val/t0.jpg", quality=100)
        assert main(argv) == 2
        assert "are two images of one name" in capsys.readouterr().err


def test_reduce_zero_label_uses_the_ignore_index_in_effect(tmp_path, capsys):
    """With 300 classes 255 is a class: --reduce-zero-label turned unlabelled 0 into 255 and scored it as that class."""
    import json

    from PIL import Image

    from gpua.cli import main

    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    g = np.zeros((20, 20), np.uint16)
    g[:10] = 256  # raw 256 = class 255 after the shift; the bottom half is 0 = unlabelled
    Image.fromarray(g).save(tmp_path / "gt" / "a.png")
    p = np.full((20, 20), 255, np.uint16)
    Image.fromarray(p).save(tmp_path / "pred" / "a.png")
    (tmp_path / "c.txt").write_text("\n".join(f"c{i}" for i in range(300)) + "\n")
    out = tmp_path / "s.json"
    assert main(["evaluate-seg", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--classnames",
                 str(tmp_path / "c.txt"), "--reduce-zero-label", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_pixels"] == 200  # the unlabelled half is not scored (was: 400, as class 255)



def test_overlay_of_a_float_or_16_bit_image_shows_the_photo(tmp_path):
    from PIL import Image

    from gpua._errors import GPUAError
    from gpua.segment.io import write_overlay_png

    label = np.zeros((16, 16), np.uint8)
    ref = np.full((16, 16, 3), 200, np.uint8)
    write_overlay_png(tmp_path / "u8.png", ref, label)
    for name, image in (("f.png", ref / 255.0), ("u16.png", (ref.astype(np.uint16) * 257))):
        write_overlay_png(tmp_path / name, image, label)
        # was: the float photo cast to 0 (black), the 16-bit one saturated to white
        np.testing.assert_allclose(np.asarray(Image.open(tmp_path / name), float), np.asarray(Image.open(tmp_path / "u8.png"), float), atol=2)
    with pytest.raises(GPUAError, match="label has shape"):
        write_overlay_png(tmp_path / "x.png", ref, np.zeros((8, 8), np.uint8))


def test_a_prediction_turned_90_degrees_from_its_mask_is_not_told_to_resize():
    from gpua._errors import GPUAError
    from gpua.segment.metrics import check_label_map

    with pytest.raises(GPUAError, match="turned 90 degrees, not resized"):  # was: "resize with nearest-neighbour"
        check_label_map(np.zeros((30, 40), np.uint8), 3, "pred", shape=(40, 30))
    with pytest.raises(GPUAError, match="resize with nearest-neighbour"):
        check_label_map(np.zeros((30, 40), np.uint8), 3, "pred", shape=(60, 80))


def test_segment_threshold_computes_each_images_softmax_once(scenes, monkeypatch):
    from gpua.segment.inference import DenseSegmenter

    calls = []
    original = DenseSegmenter.top_probability
    monkeypatch.setattr(DenseSegmenter, "top_probability", lambda self, scores: calls.append(1) or original(self, scores))
    argv = ["segment", "--zero-shot", *ENCODERS[2:], "--classnames", str(scenes / "classes.txt"),
            "--images", str(scenes / "test"), "--out", str(scenes / "masks"), "--threshold", "0.5"]
    assert main(argv) == 0
    assert len(calls) == 2  # was: 4, the softmax over every pixel's classes twice per image
