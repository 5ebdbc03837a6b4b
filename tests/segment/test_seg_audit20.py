"""Segmentation findings of the session-20 user audit (each "Was:" is what the code did before)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from gpua.cli import main
from segment_helpers import write_pool_scenes
from gpua.segment.inference import DenseSegmenter, fit_patch_gpua, parse_class_prompts, sample_patch_features
from gpua.segment.io import write_label_png

ENCODERS = ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple"]
ZERO_SHOT = ["--zero-shot", "--vlm", "planted:vlm", "--templates", "simple"]


@pytest.fixture
def scenes(tmp_path, world):
    """Pool photos, test photos with masks (5 planted classes) and the class file."""
    return write_pool_scenes(tmp_path, world, 2)


def _fit(scenes, out="m.gpua"):
    argv = ["fit-seg", "--images", str(scenes / "pool"), "--classnames", str(scenes / "classes.txt"), "--out", str(scenes / out),
            "--patches-per-image", "16", "--no-progress", *ENCODERS]
    assert main(argv) == 0
    return scenes / out


def test_pred_with_two_images_for_one_ground_truth_is_refused_and_img_suffix_chooses(scenes, capsys):
    """Was: `evaluate-seg --pred` scored the first of `segment`'s t0_jpg.png / t0_png.png (the
    other photo's mask) against t0.png's ground truth without a word; without --pred it refused."""
    pics = scenes / "pics"
    pics.mkdir()
    Image.open(scenes / "test" / "t0.png").save(pics / "t0.png")
    Image.open(scenes / "test" / "t1.png").convert("RGB").save(pics / "t0.jpg", quality=95)  # another photo, one stem
    gt = scenes / "gt0"
    gt.mkdir()
    (gt / "t0.png").write_bytes((scenes / "gt" / "t0.png").read_bytes())
    classes = str(scenes / "classes.txt")
    assert main(["segment", *ZERO_SHOT, "--classnames", classes, "--images", str(pics), "--out", str(scenes / "masks")]) == 0
    assert {"t0_jpg.png", "t0_png.png"} <= set(os.listdir(scenes / "masks"))
    capsys.readouterr()
    scored = ["evaluate-seg", "--pred", str(scenes / "masks"), "--gt", str(gt), "--classnames", classes, "--json", "-"]
    assert main([*scored, "--images", str(pics)]) == 2
    assert "--images holds t0.jpg and t0.png, 2 images for the ground truth t0.png" in capsys.readouterr().err
    assert main([*scored, "--images", str(pics), "--img-suffix", ".png"]) == 0
    chosen = json.loads(capsys.readouterr().out)
    # the same as t0.png's mask scored alone (segment's own name for it, copied as t0.png)
    alone = scenes / "alone"
    alone.mkdir()
    (alone / "t0.png").write_bytes((scenes / "masks" / "t0_png.png").read_bytes())
    assert main(["evaluate-seg", "--pred", str(alone), "--gt", str(gt), "--classnames", classes, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["mIoU"] == chosen["mIoU"]
    # Without --images the masks are there under segment's names: the message says to pass it.
    assert main(scored) == 2
    err = capsys.readouterr().err
    assert "holds t0_jpg.png, t0_png.png" in err and "pass their folder as --images" in err


def test_overwrite_does_not_write_through_a_link_to_a_file_outside_out(scenes, capsys):
    """Was: `segment --overwrite` replaced the file a link in --out pointed to (a photo elsewhere
    became a label mask); a link to an input image was refused, any other target not."""
    precious = scenes / "precious.jpg"
    Image.open(scenes / "test" / "t1.png").convert("RGB").save(precious)
    before = precious.read_bytes()
    out = scenes / "masks"
    out.mkdir()
    (out / "t0.png").symlink_to(precious)
    argv = ["segment", *ZERO_SHOT, "--classnames", str(scenes / "classes.txt"), "--images", str(scenes / "test"), "--out", str(out)]
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds t0.png, a link to" in err and "outside --out" in err
    assert precious.read_bytes() == before and not (out / "t1.png").exists()  # refused before any work
    (out / "t0.png").unlink()
    (out / "old.png").write_bytes(b"old")
    (out / "t0.png").symlink_to("old.png")  # a link within --out, to a file no segment run wrote: refused
    assert main([*argv, "--overwrite"]) == 2
    assert "t0.png: a photo, a ground-truth mask" in capsys.readouterr().err and (out / "old.png").read_bytes() == b"old"
    write_label_png(out / "old.png", np.zeros((4, 4), np.uint8))  # an earlier run's mask, through the link: replaced as before
    assert main([*argv, "--overwrite"]) == 0
    assert Image.open(out / "old.png").size == (48, 48)


def test_an_iterator_of_images_is_read_batch_by_batch_with_the_same_result(world):
    """Was: `fit-seg` read every pool image whole before encoding (about 14 MB of memory per
    2-megapixel photo); `sample_patch_features` took a list only."""
    images, _ = world.sample(7, (32, 32), seed=1)
    read = []

    def stream():
        for im in images:
            read.append(1)
            yield im

    class Watch:
        """The VFM, noting how many images had been read at each encoder call."""

        def __init__(self, enc):
            self.enc, self.seen = enc, []

        def __getattr__(self, name):
            return getattr(self.enc, name)

        def encode_patches(self, batch, *a, **k):
            self.seen.append(len(read))
            return self.enc.encode_patches(batch, *a, **k)

    watch = Watch(world.vfm)
    Z1, X1 = sample_patch_features(world.vfm, world.vlm, images, patches_per_image=5, batch_size=3)
    Z2, X2 = sample_patch_features(watch, world.vlm, stream(), patches_per_image=5, batch_size=3)
    np.testing.assert_array_equal(Z1, Z2)
    np.testing.assert_array_equal(X1, X2)
    assert watch.seen and watch.seen[0] <= 4  # the first batch encoded after 3 (+1 peeked) images, not all 7
    small = iter([images[0], images[1][:2, :2]])
    with pytest.raises(GPUAError, match=r"images\[1\] is 2x2 pixels"):
        sample_patch_features(world.vfm, world.vlm, small)
    with pytest.raises(GPUAError, match="images is empty"):
        sample_patch_features(world.vfm, world.vlm, iter([]))


def test_fit_seg_reports_the_images_it_fitted_on(scenes, capsys):
    (scenes / "pool" / "bad.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(scenes / "pool" / "tiny.png")
    model = _fit(scenes)
    out = capsys.readouterr().out
    assert "fitted patch-level GPUA on 8 images" in out and "1 unreadable image(s) skipped" in out
    from gpua import GPUA

    assert GPUA.load(model).provenance_["n_images"] == 8


def test_templates_with_a_model_recording_none_are_warned_about(scenes, world, capsys):
    """Was: said only when the model recorded its templates (`fit-seg`'s); a model saved from
    Python recorded none, and --templates changed nothing without a word."""
    pool, _ = world.sample(4, (48, 48), seed=1)
    model = fit_patch_gpua(world.vfm, world.vlm, pool, world.prototypes, classnames=world.classnames, patches_per_image=16)
    model.save(scenes / "py.gpua")
    argv = ["segment", "--model", str(scenes / "py.gpua"), "--classnames", str(scenes / "classes.txt"), "--vfm", "planted:vfm",
            "--images", str(scenes / "test"), "--out", str(scenes / "masks"), "--templates", "simple"]
    assert main(argv) == 0
    assert "--templates is not used with --model" in capsys.readouterr().err


def test_prototypes_other_than_the_models_are_warned_about(world):
    """Was: DenseSegmenter(vfm, vlm, other_prototypes, model=m) scored the model's own classes
    and used the prototypes for their row count alone, without a word."""
    pool, _ = world.sample(4, (48, 48), seed=1)
    model = fit_patch_gpua(world.vfm, world.vlm, pool, world.prototypes, patches_per_image=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DenseSegmenter(world.vfm, world.vlm, world.prototypes, model=model)  # its own: no warning
    with pytest.warns(UserWarning, match="prototypes is not used with a model"):
        DenseSegmenter(world.vfm, world.vlm, world.prototypes[::-1].copy(), model=model)


def test_fit_patch_gpua_records_the_class_of_each_prompt(world, tmp_path):
    """Was: only the CLI recorded which class each prompt row stands for; a model fitted in
    Python with a background of three prompts labelled pixels by row (7 "classes" for 5)."""
    entries = [f"{world.classnames[0]}, {world.classnames[0]} a, {world.classnames[0]} b", *world.classnames[1:]]
    names, prompts, owner = parse_class_prompts(entries)
    rng = np.random.default_rng(0)
    Y = np.concatenate([world.prototypes[:1] + 0.05 * rng.standard_normal((3, world.prototypes.shape[1])), world.prototypes[1:]])
    pool, _ = world.sample(4, (48, 48), seed=1)
    model = fit_patch_gpua(world.vfm, world.vlm, pool, Y, classnames=prompts, class_of_prototype=owner, patches_per_image=16)
    assert model.provenance_["class_of_prototype"] == owner.tolist() == [0, 0, 0, 1, 2, 3, 4]
    model.save(tmp_path / "m.gpua")
    from gpua import GPUA

    loaded = GPUA.load(tmp_path / "m.gpua")
    seg = DenseSegmenter(world.vfm, world.vlm, None, model=loaded)
    assert seg.n_classes == 5
    test, _ = world.sample(1, (48, 48), seed=2)
    assert seg.predict(test[0]).max() <= 4
    with pytest.raises(GPUAError, match="one non-negative class index per prototype row"):
        fit_patch_gpua(world.vfm, world.vlm, pool, Y, class_of_prototype=[0, 1], patches_per_image=16)


def test_masks_of_more_than_255_classes_are_16_bit_whatever_their_values(tmp_path):
    """Was: the format followed the values: a 300-class mask whose labels stayed at or below
    255 was an 8-bit palette PNG, where other tools read 255 as "ignore"."""
    label = np.array([[0, 255], [3, 4]])
    write_label_png(tmp_path / "few.png", label)
    write_label_png(tmp_path / "many.png", label, n_classes=300)
    assert Image.open(tmp_path / "few.png").mode == "P"
    many = Image.open(tmp_path / "many.png")
    assert many.mode.startswith("I") and np.array_equal(np.asarray(many), label)


def test_a_model_of_other_classes_than_the_dataset_names_the_fix(scenes, capsys):
    """Was: "pass --classnames with one line per ground-truth class", which the class check then
    refused (a model's classes are its own)."""
    model = _fit(scenes)
    root = scenes / "VOC"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    Image.open(scenes / "test" / "t0.png").convert("RGB").save(root / "JPEGImages" / "t0.jpg", quality=100)
    (root / "SegmentationClass" / "t0.png").write_bytes((scenes / "gt" / "t0.png").read_bytes())
    (root / "ImageSets/Segmentation/val.txt").write_text("t0\n")
    capsys.readouterr()
    assert main(["evaluate-seg", "--model", str(model), "--dataset", "voc", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "the model segments into 5 classes but --dataset voc has 21" in err
    assert "fit a model with --dataset voc's classes" in err and "pass --classnames" not in err


def test_fit_seg_says_an_unreadable_folder_before_loading_encoders(tmp_path, monkeypatch, capsys):
    """Was (with the streamed pool): "none of the images could be read" came after both encoders
    had loaded and the text prototypes were built."""
    import gpua.cli.segment as cli_segment

    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "a.png").write_bytes(b"not an image")
    (tmp_path / "classes.txt").write_text("sky\ngrass\n")

    def no_encoders(*a, **k):
        raise AssertionError("an encoder was loaded")

    monkeypatch.setattr(cli_segment, "make_encoder", no_encoders)
    argv = ["fit-seg", "--images", str(tmp_path / "pool"), "--classnames", str(tmp_path / "classes.txt"), "--out",
            str(tmp_path / "m.gpua"), "--no-progress", *ENCODERS]
    assert main(argv) == 2
    assert "could be read" in capsys.readouterr().err


def test_the_missing_mask_hint_names_only_segments_renamed_masks(scenes, capsys):
    """pic_2.png is another photo's mask, not a renamed mask of pic.png."""
    from gpua.cli.segment import _no_prediction

    pred = scenes / "pred"
    pred.mkdir()
    for name in ("pic_2.png", "pic_jpg.png", "pic_overlay.png"):
        (pred / name).write_bytes(b"x")
    message = _no_prediction(pred / "pic.png", None, "pic", scenes / "gt" / "pic.png", lambda *a: "")
    assert "holds pic_jpg.png:" in message and "pic_2.png" not in message


def test_class_of_prototype_with_a_gap_is_refused_before_any_image_is_encoded(world):
    """Was: [0, 1, 2, 3, 9] was encoded, fitted and stored, then refused by DenseSegmenter."""
    def no_images():
        raise AssertionError("an image was read")
        yield

    with pytest.raises(GPUAError, match=r"class\(es\) \[4, 5, 6, 7, 8\] have no prototype row"):
        fit_patch_gpua(world.vfm, world.vlm, no_images(), world.prototypes, class_of_prototype=[0, 1, 2, 3, 9])
