"""Segmentation paths an audit found silently wrong, crashing or unclear (each test failed before its fix)."""

from __future__ import annotations

import json

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from gpua.cli import main
from segment_helpers import write_pool_scenes
from gpua.segment.datasets import VOC_CLASSES

PLANTED = ["sky", "grass", "road", "water", "sand"]
ENCODERS = ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple"]


@pytest.fixture
def scenes(tmp_path, world):
    """Pool photos, test photos with masks (5 planted classes) and the class file."""
    return write_pool_scenes(tmp_path, world, 3)


def _voc(root, scenes):
    """A VOC-layout folder (JPEGImages, SegmentationClass, ImageSets) of the test scenes."""
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    ids = []
    for i in range(3):
        Image.open(scenes / "test" / f"t{i}.png").convert("RGB").save(root / "JPEGImages" / f"t{i}.jpg", quality=100)
        (root / "SegmentationClass" / f"t{i}.png").write_bytes((scenes / "gt" / f"t{i}.png").read_bytes())
        ids.append(f"t{i}")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")


def _fit(scenes, class_file, out="m.gpua", extra=()):
    argv = ["fit-seg", "--images", str(scenes / "pool"), "--classnames", str(class_file), "--out", str(scenes / out),
            "--patches-per-image", "16", "--no-progress", *ENCODERS, *extra]
    assert main(argv) == 0
    return scenes / out


def test_a_model_with_the_datasets_classes_in_another_order_is_refused(scenes, capsys):
    # class k of the model names VOC class 20 - k: its masks would be scored against the wrong classes
    reversed_file = scenes / "voc_reversed.txt"
    # one prompt word a class ("sky v5"); the planted VLM reads the planted word in it
    reversed_file.write_text("\n".join(f"{c}: {PLANTED[k % 5]} v{k}" for k, c in enumerate(reversed(VOC_CLASSES))) + "\n")
    ordered_file = scenes / "voc_ordered.txt"
    ordered_file.write_text("\n".join(f"{c}: {PLANTED[k % 5]} v{k}" for k, c in enumerate(VOC_CLASSES)) + "\n")
    _voc(scenes / "VOC", scenes)
    rev, ordered = _fit(scenes, reversed_file, "rev.gpua"), _fit(scenes, ordered_file, "ok.gpua")
    capsys.readouterr()
    argv = ["evaluate-seg", "--dataset", "voc", "--root", str(scenes / "VOC"), "--templates", "simple"]
    assert main([*argv, "--model", str(rev)]) == 2
    err = capsys.readouterr().err
    assert "in another order" in err and "'tvmonitor'" in err and "class 20 of --dataset voc" in err
    assert main([*argv, "--model", str(ordered), "--json"]) == 0  # the same names in the dataset's order score
    assert json.loads(capsys.readouterr().out)["n_images"] == 3


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one_is_refused(scenes, limit, capsys):
    argv = ["evaluate-seg", "--pred", str(scenes / "gt"), "--gt", str(scenes / "gt"), "--classnames", str(scenes / "classes.txt"),
            "--limit", limit]
    assert main(argv) == 2  # was: -1 dropped the last image, 0 printed NaN scores with exit 0
    assert f"--limit {limit} must be 1 or more" in capsys.readouterr().err


def test_class_255_of_300_is_scored_not_ignored(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    gt = np.full((4, 4), 299, np.uint16)
    gt[:2] = 255  # half the pixels are class 255, a real class among 300
    Image.fromarray(gt).save(tmp_path / "gt" / "a.png")
    Image.fromarray(np.full((4, 4), 299, np.uint16)).save(tmp_path / "pred" / "a.png")
    (tmp_path / "classes.txt").write_text("\n".join(f"class{k}" for k in range(300)) + "\n")
    argv = ["evaluate-seg", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--classnames", str(tmp_path / "classes.txt")]
    assert main([*argv, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["aAcc"] == pytest.approx(0.5)  # was 1.0: the class-255 pixels were dropped as "no class"
    assert main([*argv, "--ignore-index", "255"]) == 2
    assert "--ignore-index=255 is also the index of class 255 of the 300" in capsys.readouterr().err


def test_ignore_index_that_is_a_class_is_refused_in_python():
    from gpua.segment.metrics import SegmentationMetric, confusion_matrix

    with pytest.raises(GPUAError, match="ignore_index=255 is also the index of class 255"):
        SegmentationMetric(300)
    with pytest.raises(GPUAError, match="ignore_index=3 is also the index of class 3"):
        confusion_matrix([[0]], [[0]], 5, ignore_index=3)
    assert SegmentationMetric(300, ignore_index=65535).ignore_index == 65535


def test_no_class_is_65535_with_more_than_255_classes():
    from gpua.segment import DenseSegmenter

    Y = np.eye(300, 8, dtype=np.float32) + 0.01
    with pytest.raises(GPUAError, match="threshold_label=255 is class 255's index here"):
        DenseSegmenter(None, object(), Y, score_threshold=0.5)
    assert DenseSegmenter(None, object(), Y, score_threshold=0.5, threshold_label=65535).threshold_label == 65535
    with pytest.raises(GPUAError, match=r"use a class index in \[0, 5\) or 255"):
        DenseSegmenter(None, object(), Y[:5], threshold_label=65535)


def test_16_bit_and_float_arrays_are_scaled_as_image_files_are(world):
    from gpua.segment import DenseSegmenter

    images, _ = world.sample(1, (48, 48), seed=1)
    seg = DenseSegmenter(None, world.vlm, world.prototypes)
    as_uint8 = seg.predict(images[0])
    np.testing.assert_array_equal(seg.predict(images[0].astype(np.uint16) * 257), as_uint8)  # was all white: one class
    np.testing.assert_array_equal(seg.predict(images[0].astype(np.float32) / 255), as_uint8)
    with pytest.raises(GPUAError, match="has dtype complex"):
        seg.predict(images[0].astype(np.complex64))


def test_an_image_smaller_than_a_patch_is_skipped_by_name(scenes, capsys):
    model = _fit(scenes, scenes / "classes.txt")
    photos = scenes / "photos"
    photos.mkdir()
    for name in ("a.png", "c.png"):
        (photos / name).write_bytes((scenes / "test" / "t0.png").read_bytes())
    Image.fromarray(np.zeros((1, 64, 3), np.uint8)).save(photos / "b.png")
    capsys.readouterr()
    assert main(["segment", "--model", str(model), "--images", str(photos), "--out", str(scenes / "masks")]) == 0
    out, err = capsys.readouterr()
    assert "b.png" in err and "1x64 pixels is smaller than one" in err  # was: aborted after a.png, naming images[0]
    assert sorted(p.name for p in (scenes / "masks").iterdir()) == ["a.png", "a_overlay.png", "c.png", "c_overlay.png"]
    assert "1 image(s) smaller than one encoder patch skipped" in out


def test_patch_sampling_names_the_small_image_by_its_index(world):
    from gpua.segment.inference import sample_patch_features

    images, _ = world.sample(3, (48, 48), seed=1)
    with pytest.raises(GPUAError, match=r"images\[2\] is 1x48 pixels"):  # was images[0]: counted within a batch
        sample_patch_features(world.vfm, world.vlm, [images[0], images[1], images[2][:1]])


@pytest.mark.parametrize("flag, value, message", [
    ("--seed", "-1", "--seed=-1 must be"),
    ("--patches-per-image", "0", "--patches-per-image=0 must be"),
])
def test_fit_seg_checks_its_numbers_before_loading_anything(scenes, flag, value, message, monkeypatch, capsys):
    monkeypatch.setattr("gpua.cli.segment.make_encoder", lambda *a, **k: pytest.fail("an encoder was loaded first"))
    argv = ["fit-seg", "--images", str(scenes / "pool"), "--classnames", str(scenes / "classes.txt"), "--out", str(scenes / "m.gpua"),
            *ENCODERS, flag, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_ground_truth_folders_leave_hidden_files_out_and_match_suffixes_ignoring_case(scenes, capsys):
    import shutil

    gt = scenes / "gt2"
    shutil.copytree(scenes / "gt", gt)
    (gt / "._t0.png").write_bytes(b"Mac OS X  ")  # macOS metadata beside a mask
    (gt / "t2.png").rename(gt / "t2.PNG")
    argv = ["evaluate-seg", "--pred", str(scenes / "gt"), "--gt", str(gt), "--classnames", str(scenes / "classes.txt"), "--json"]
    assert main(argv) == 0  # was: the ._t0.png file stopped the run, t2.PNG was left out
    assert json.loads(capsys.readouterr().out)["n_images"] == 3
    assert main([*argv[:-1], "--gt-suffix", ""]) == 2
    assert "--gt-suffix is empty" in capsys.readouterr().err


def test_dataset_custom_reads_its_classes_from_classnames(scenes, capsys):
    for split_dir, suffix in (("img_dir/val", ".jpg"), ("ann_dir/val", ".png")):
        (scenes / "custom" / split_dir).mkdir(parents=True)
    for i in range(3):
        Image.open(scenes / "test" / f"t{i}.png").convert("RGB").save(scenes / "custom/img_dir/val" / f"t{i}.jpg", quality=100)
        (scenes / "custom/ann_dir/val" / f"t{i}.png").write_bytes((scenes / "gt" / f"t{i}.png").read_bytes())
    argv = ["evaluate-seg", "--pred", str(scenes / "gt"), "--dataset", "custom", "--root", str(scenes / "custom")]
    assert main(argv) == 2
    assert "--dataset custom needs --classnames" in capsys.readouterr().err
    assert main([*argv, "--classnames", str(scenes / "classes.txt"), "--json"]) == 0  # was: no way to name them
    scores = json.loads(capsys.readouterr().out)
    assert scores["n_images"] == 3 and scores["mIoU"] == pytest.approx(1.0) and set(scores["per_class"]) == set(PLANTED)


@pytest.mark.parametrize("flags", [["--reduce-zero-label"], ["--gt-suffix", ".jpg"]])
def test_gt_only_flags_are_refused_with_a_preset(scenes, flags, capsys):
    _voc(scenes / "VOC", scenes)
    argv = ["evaluate-seg", "--pred", str(scenes / "gt"), "--dataset", "voc", "--root", str(scenes / "VOC"), *flags]
    assert main(argv) == 2  # was: ignored without a word
    err = capsys.readouterr().err.replace(" and --reduce-zero-label", "")
    assert f"{flags[0]} apply to --gt and --dataset custom" in err or f"{flags[0]} applies to --gt and --dataset custom" in err


def test_class_prior_takes_one_weight_per_class_with_synonyms(scenes, capsys):
    syn = scenes / "syn.txt"
    syn.write_text("sky: sky, blue sky\ngrass\nroad\nwater\nsand\n")  # 5 classes, 6 prompt words
    model = _fit(scenes, syn, extra=["--param", "class_prior=[2,1,1,1,1]"])  # was: "5 entries for 6 classes"
    from gpua import load_model

    prior = load_model(str(model)).class_prior
    np.testing.assert_allclose(prior, [1, 1, 1, 1, 1, 1])  # sky's 2 spread over its two words
    argv = ["fit-seg", "--images", str(scenes / "pool"), "--classnames", str(syn), "--out", str(scenes / "x.gpua"), *ENCODERS,
            "--param", "class_prior=[1,1,1]"]
    assert main(argv) == 2
    assert "give one per class (5) or one per prompt word (6" in capsys.readouterr().err


def test_fit_seg_lists_its_own_query_default(capsys):
    with pytest.raises(SystemExit):
        main(["fit-seg", "--list-params"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("query"))
    assert "default='vfm'" in line and "(this command's)" in line  # was 'fused', the library's


def test_zero_shot_warns_that_the_vfm_is_unused_without_affinity(scenes, capsys):
    argv = ["segment", "--zero-shot", "--images", str(scenes / "test"), "--out", str(scenes / "zs"), "--classnames",
            str(scenes / "classes.txt"), *ENCODERS]
    assert main(argv) == 0
    assert "--vfm is not used by --zero-shot without --refine affinity" in capsys.readouterr().err


def test_segmenter_errors_name_the_command_flags(scenes, capsys):
    argv = ["segment", "--zero-shot", "--images", str(scenes / "test"), "--out", str(scenes / "zs"), "--classnames",
            str(scenes / "classes.txt"), "--vlm", "planted:vlm", "--templates", "simple", "--stride", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--stride" in err and "--crop" in err and "crop_size" not in err


def test_a_crop_smaller_than_a_patch_names_the_crop(scenes, capsys):
    argv = ["segment", "--zero-shot", "--images", str(scenes / "test"), "--out", str(scenes / "zs"), "--classnames",
            str(scenes / "classes.txt"), "--vlm", "planted:vlm", "--templates", "simple", "--crop", "3"]
    assert main(argv) == 2  # was: "images are 3x3 pixels ...; use larger images", after the first image
    err = capsys.readouterr().err
    assert "--crop 3 is smaller than one" in err and "use a crop of at least" in err
    assert not (scenes / "zs").exists()


def test_fit_seg_out_over_a_file_that_is_not_a_model_is_refused_before_the_fit(scenes, capsys, monkeypatch):
    """It was refused by the model's save, after the patch encoding, UCM, refinement and self-learning."""
    import gpua.segment.inference as inference

    (scenes / "notes.txt").write_text("mine")
    monkeypatch.setattr(inference, "fit_patch_gpua", lambda *a, **k: pytest.fail("the fit ran"))
    argv = ["fit-seg", "--images", str(scenes / "pool"), "--classnames", str(scenes / "classes.txt"), "--out",
            str(scenes / "notes.txt"), "--patches-per-image", "16", "--no-progress", *ENCODERS]
    assert main(argv) == 2
    assert "is not a model gpua saved, which this command would replace with a model" in capsys.readouterr().err
    assert (scenes / "notes.txt").read_text() == "mine"
