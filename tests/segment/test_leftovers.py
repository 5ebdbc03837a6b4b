"""Rough edges of `gpua segment` / `gpua evaluate-seg` left after the audits (each test failed before its fix).

- ``--dataset custom`` read ``.jpg`` photos only, with no flag to change it (``--img-suffix``);
- an unreadable image stopped ``evaluate-seg`` with Python advice ("catch gpua.data.UnreadableImageError");
- ``--threshold`` said nothing of its scale (a probability of ``softmax(100 x cosine)``), ignored a
  model's own ``logit_scale``, and never said that it labelled no pixel;
- and paths that printed a wrong score, or kept a stale file, without a word.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from segment_helpers import write_scenes
from gpua.cli import build_parser, main
from gpua.segment.datasets import load_segmentation_dataset, read_label

# Their HEIC files are gpua without pillow-heif (with it: tests/data/test_data_heif.py).
pytestmark = pytest.mark.usefixtures("without_heif")

PLANTED = ["sky", "grass", "road", "water", "sand"]
ZERO_SHOT = ["--zero-shot", "--vlm", "planted:vlm", "--templates", "simple"]


@pytest.fixture
def scenes(tmp_path, world):
    """Three test photos (PNG) with their masks, and the class file."""
    return write_scenes(tmp_path, world, 3, (40, 48))


def _custom(scenes, suffixes=(".png", ".png", ".png"), root="custom"):
    """An mmseg custom layout (img_dir/val, ann_dir/val) of the test photos, saved with ``suffixes``."""
    img_dir, ann_dir = scenes / root / "img_dir/val", scenes / root / "ann_dir/val"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for i, suffix in enumerate(suffixes):
        photo = Image.open(scenes / "test" / f"t{i}.png").convert("RGB")
        fmt = "JPEG" if suffix.lower() in (".jpg", ".jpeg") else "PNG"
        photo.save(img_dir / f"t{i}{suffix}", format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
        (ann_dir / f"t{i}.png").write_bytes((scenes / "gt" / f"t{i}.png").read_bytes())
    return scenes / root


def _eval_custom(scenes, root, *extra):
    return ["evaluate-seg", "--pred", str(scenes / "gt_copy"), "--dataset", "custom", "--root", str(root),
            "--classnames", str(scenes / "classes.txt"), *extra]


@pytest.fixture
def gt_copy(scenes):
    """A copy of the masks, as --pred: it scores 100% against the ground truth."""
    (scenes / "gt_copy").mkdir()
    for p in (scenes / "gt").iterdir():
        (scenes / "gt_copy" / p.name).write_bytes(p.read_bytes())
    return scenes / "gt_copy"


# --------------------------------------------------------------------------- 1. --dataset custom's image suffix


@pytest.mark.parametrize("suffixes", [(".png", ".png", ".png"), (".jpeg", ".JPEG", ".png")])
def test_dataset_custom_reads_png_and_jpeg_photos(scenes, gt_copy, suffixes, capsys):
    root = _custom(scenes, suffixes)
    assert main(_eval_custom(scenes, root, "--json")) == 0  # was: "no images ending in '.jpg' under ..."
    scores = json.loads(capsys.readouterr().out)
    assert scores["n_images"] == 3 and scores["mIoU"] == pytest.approx(1.0)


def test_img_suffix_chooses_one_of_two_photos_of_a_stem(scenes, gt_copy, capsys):
    root = _custom(scenes, (".jpg", ".jpg", ".jpg"))
    Image.open(scenes / "test" / "t1.png").save(root / "img_dir/val/t0.png")  # another photo under t0's name
    assert main(_eval_custom(scenes, root)) == 2  # two photos for one mask: refused, not one picked
    err = capsys.readouterr().err
    assert "two images of one name" in err and "t0.jpg" in err and "t0.png" in err and "--img-suffix" in err
    assert main(_eval_custom(scenes, root, "--img-suffix", ".jpg", "--json")) == 0  # was: no such flag
    assert json.loads(capsys.readouterr().out)["n_images"] == 3


def test_no_image_found_names_what_was_looked_for_and_the_flag(scenes, gt_copy, capsys):
    root = _custom(scenes, (".png", ".png", ".png"))
    assert main(_eval_custom(scenes, root, "--img-suffix", ".jpg")) == 2
    err = capsys.readouterr().err.strip()
    assert "no files ending in '.jpg' (any case) under" in err and "img_dir" in err
    assert "set --img-suffix '.png'" in err and "img_suffix" not in err.replace("--img-suffix", "")
    assert len(err.splitlines()) == 1
    for p in (root / "img_dir/val").iterdir():
        p.rename(p.with_suffix(".heic"))  # photos gpua cannot decode
    assert main(_eval_custom(scenes, root)) == 2
    err = capsys.readouterr().err
    assert "no image files (.jpg, .jpeg" in err and "first: t0.heic" in err and "--img-suffix" in err


def test_a_label_map_suffix_mismatch_names_gt_suffix(scenes, gt_copy, capsys):
    root = _custom(scenes)
    assert main(_eval_custom(scenes, root, "--gt-suffix", "_mask.png")) == 2
    err = capsys.readouterr().err
    assert "t0_mask.png" in err and "label maps are <stem>_mask.png: set --gt-suffix" in err


def test_img_suffix_is_refused_with_a_preset(scenes, gt_copy, capsys):
    argv = ["evaluate-seg", "--pred", str(gt_copy), "--dataset", "voc", "--root", str(scenes), "--img-suffix", ".png"]
    assert main(argv) == 2
    assert "--img-suffix applies to --gt and --dataset custom; --dataset voc sets its own" in capsys.readouterr().err


def test_a_presets_suffix_error_gives_no_flag_it_refuses(scenes, gt_copy, capsys):
    root = scenes / "ADE"
    for d in ("images/validation", "annotations/validation"):
        (root / d).mkdir(parents=True)
    Image.open(scenes / "test" / "t0.png").save(root / "images/validation/t0.png")  # PNG photos: the preset reads .jpg
    (root / "annotations/validation/t0.png").write_bytes((scenes / "gt" / "t0.png").read_bytes())
    assert main(["evaluate-seg", "--pred", str(gt_copy), "--dataset", "ade20k", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "no files ending in '.jpg' (any case) under" in err and "most ending in '.png': check the layout." in err
    assert "img_suffix" not in err and "--img-suffix" not in err  # refused with a preset: not offered as the fix


def test_img_suffix_picks_the_images_of_gt(scenes, capsys):
    Image.open(scenes / "test" / "t1.png").convert("RGB").save(scenes / "test" / "t0.jpg", quality=95)
    argv = ["evaluate-seg", *ZERO_SHOT, "--classnames", str(scenes / "classes.txt"), "--gt", str(scenes / "gt"),
            "--images", str(scenes / "test")]
    assert main(argv) == 2
    assert "or choose one with --img-suffix" in capsys.readouterr().err
    assert main([*argv, "--img-suffix", ".PNG", "--json"]) == 0  # matched ignoring case
    assert json.loads(capsys.readouterr().out)["n_images"] == 3
    assert main([*argv, "--img-suffix", ".bmp"]) == 2
    assert "holds no image ending in '.bmp'" in capsys.readouterr().err


def test_dataset_reader_takes_any_image_suffix_and_gives_stems(tmp_path):
    for rel_img, rel_ann in (("img_dir/val/a.png", "ann_dir/val/a.png"), ("img_dir/val/x/b.c.JPEG", "ann_dir/val/x/b.c.png")):
        for rel in (rel_img, rel_ann):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / rel_img, format="PNG")
        Image.fromarray(np.zeros((2, 3), np.uint8)).save(tmp_path / rel_ann)
    ds = load_segmentation_dataset("custom", tmp_path, classnames=["bg"])  # was: only .jpg
    assert [p.name for p, _ in ds.items] == ["a.png", "b.c.JPEG"] and ds.stems == ["a", "b.c"]
    assert ds.items[1][1] == tmp_path / "ann_dir/val/x/b.c.png"
    with pytest.raises(GPUAError, match=r"no files ending in '\.jpg' \(any case\).*set img_suffix='\.png'"):
        load_segmentation_dataset("custom", tmp_path, classnames=["bg"], img_suffix=".jpg")
    # several suffixes: the longest that matches ends the stem (Cityscapes' _leftImg8bit.png, not .png)
    (tmp_path / "img_dir/val/a.png").rename(tmp_path / "img_dir/val/a_left.png")
    ds = load_segmentation_dataset("custom", tmp_path, classnames=["bg"], img_suffix=(".png", "_left.png", ".jpeg"))
    assert ds.stems == ["a", "b.c"] and ds.items[0][1] == tmp_path / "ann_dir/val/a.png"


# --------------------------------------------------------------------------- 2. unreadable images in evaluate-seg


@pytest.mark.parametrize("content", [b"not an image\n", "truncated"])
def test_evaluate_seg_names_an_unreadable_image_in_one_line(scenes, content, capsys):
    bad = scenes / "test" / "t1.png"
    bad.write_bytes(content if isinstance(content, bytes) else bad.read_bytes()[:60])
    argv = ["evaluate-seg", *ZERO_SHOT, "--classnames", str(scenes / "classes.txt"), "--gt", str(scenes / "gt"),
            "--images", str(scenes / "test")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpua evaluate-seg: error: ")
    assert str(bad) in err and "is not a readable image" in err
    assert "replace it with a readable copy, or remove it and its ground truth" in err and str(scenes / "gt" / "t1.png") in err
    assert "catch" not in err and "UnreadableImageError" not in err  # was: "Skip it (catch gpua.data.UnreadableImageError)"
    # `gpua segment` on the same folder skips it with a warning naming it, and segments the others
    assert main(["segment", *ZERO_SHOT, "--classnames", str(scenes / "classes.txt"), "--images", str(scenes / "test"),
                 "--out", str(scenes / "masks")]) == 0
    out, err = capsys.readouterr()
    assert f"skipped {str(bad)!r}, which is not a readable image" in err and "1 unreadable image(s) skipped" in out
    # and scoring those masks says why t1's is missing, with the same advice
    assert main(["evaluate-seg", "--pred", str(scenes / "masks"), "--gt", str(scenes / "gt"), "--images", str(scenes / "test"),
                 "--classnames", str(scenes / "classes.txt")]) == 2
    err = capsys.readouterr().err
    assert "--pred has no mask t1.png" in err and "which `gpua segment` skipped" in err and "replace it" in err


def test_an_unreadable_image_of_a_split_file_dataset_says_to_drop_its_line(scenes, gt_copy, capsys):
    root = scenes / "VOC"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    (scenes / "voc.txt").write_text("\n".join(f"c{k}: {PLANTED[k % 5]} v{k}" for k in range(21)) + "\n")
    for i in range(2):
        Image.open(scenes / "test" / f"t{i}.png").convert("RGB").save(root / "JPEGImages" / f"t{i}.jpg", quality=100)
        (root / "SegmentationClass" / f"t{i}.png").write_bytes((scenes / "gt" / f"t{i}.png").read_bytes())
    (root / "ImageSets/Segmentation/val.txt").write_text("t0\nt1\n")
    (root / "JPEGImages" / "t1.jpg").write_bytes((root / "JPEGImages" / "t1.jpg").read_bytes()[:200])  # a cut-off copy
    argv = ["evaluate-seg", *ZERO_SHOT, "--dataset", "voc", "--root", str(root), "--classnames", str(scenes / "voc.txt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "t1.jpg' is not a readable image" in err and "remove its line 't1' from the split file" in err
    assert "val.txt" in err and len(err.strip().splitlines()) == 1


def test_a_corrupt_mask_is_one_line_not_a_traceback(scenes, gt_copy, capsys):
    data = bytearray((scenes / "gt" / "t0.png").read_bytes())
    data[11] = 0  # the IHDR chunk's length: PIL raised ValueError("Truncated IHDR chunk"), not an OSError
    (scenes / "gt" / "t0.png").write_bytes(bytes(data))
    with pytest.raises(GPUAError, match="label map .*t0.png could not be read .*replace it"):
        read_label(scenes / "gt" / "t0.png")
    argv = ["evaluate-seg", "--pred", str(gt_copy), "--gt", str(scenes / "gt"), "--classnames", str(scenes / "classes.txt")]
    assert main(argv) == 2  # was: a ValueError traceback
    assert "could not be read" in capsys.readouterr().err


# --------------------------------------------------------------------------- 3. --threshold: its scale


class _ScaledModel:
    """A stand-in fitted model: two classes, query 'vfm', and predict_proba's logit_scale of 10."""

    query = "vfm"
    n_classes_ = 2
    logit_scale = 10.0

    def decision_function(self, Z, X=None):  # pragma: no cover - labels_from_scores is called directly
        return np.zeros((len(Z), 2))


def test_threshold_follows_the_models_logit_scale():
    from gpua.segment import DenseSegmenter

    scores = torch.tensor([0.30, 0.28]).reshape(2, 1, 1)  # cosines 0.02 apart
    # softmax(10 x scores): top 0.55, below 0.7 -> "no class"; CLIP's scale 100 gives 0.88
    seg = DenseSegmenter(object(), None, model=_ScaledModel(), score_threshold=0.7)
    assert seg.temperature == pytest.approx(0.1)
    assert float(seg.top_probability(scores)) == pytest.approx(1 / (1 + np.exp(-0.2)), abs=1e-6)
    assert seg.labels_from_scores(scores).item() == 255  # was 0: thresholded at logit scale 100, not the model's 10
    zero_shot = DenseSegmenter(None, object(), np.eye(2), score_threshold=0.7)
    assert zero_shot.temperature == 0.01 and zero_shot.labels_from_scores(scores).item() == 0  # CLIP's scale: unchanged
    assert DenseSegmenter(object(), None, model=_ScaledModel(), score_threshold=0.7, temperature=0.01).labels_from_scores(
        scores).item() == 0  # an explicit temperature wins


def test_threshold_reads_the_models_probability_scale(world):
    """Was: the threshold read logit_scale (100) even for a GPUA whose fit chose its probability scale on
    its pool of patches; the map's cosines, tenths apart, saturated (0.9 marked under 1% of a photo)."""
    from gpua import GPUA
    from gpua.segment import DenseSegmenter
    from gpua.segment.inference import fit_patch_gpua, model_probability_scale

    vfm, vlm = world.vfm, world.vlm
    images, _ = world.sample(6, (32, 32), seed=1)
    model = fit_patch_gpua(vfm, vlm, images, world.prototypes, patches_per_image=32, estimator=GPUA(query="vfm", n_steps=5))
    assert 0 < model.proba_scale_ < 100
    seg = DenseSegmenter(vfm, vlm, model=model, score_threshold=0.5)
    assert seg.temperature == pytest.approx(1 / model.proba_scale_) and model_probability_scale(model) == model.proba_scale_
    scores = torch.tensor([0.50, 0.30]).reshape(2, 1, 1)  # a map's cosines, 0.2 apart
    assert float(seg.top_probability(scores)) == pytest.approx(1 / (1 + np.exp(-0.2 * model.proba_scale_)), abs=1e-6)
    model.set_params(proba_scale=None)  # a model of before the scale: its logit_scale, as then
    assert DenseSegmenter(vfm, vlm, model=model, score_threshold=0.5).temperature == pytest.approx(0.01)
    assert model_probability_scale(object()) == 100.0


def test_threshold_help_states_its_scale():
    sub = build_parser()._subparsers._group_actions[0].choices
    for command in ("segment", "evaluate-seg"):
        text = " ".join(sub[command].format_help().split())
        assert "a probability in [0, 1], not a cosine" in text and "softmax(100 x score)" in text, command


def test_segment_says_how_many_pixels_the_threshold_labelled(scenes, capsys):
    base = ["segment", *ZERO_SHOT, "--classnames", str(scenes / "classes.txt"), "--images", str(scenes / "test")]
    assert main([*base, "--out", str(scenes / "plain")]) == 0
    assert "threshold" not in capsys.readouterr().out  # no flag: no note, and the masks as before
    assert main([*base, "--out", str(scenes / "low"), "--threshold", "0.2"]) == 0
    out = capsys.readouterr().out
    # was: nothing said; a user who took it for a cosine (0.2) saw it "never fire"
    assert "--threshold 0.2 labelled no pixel: every top class probability was at least" in out and "not a cosine" in out
    for name in ("t0.png", "t1.png", "t2.png"):
        np.testing.assert_array_equal(read_label(scenes / "low" / name), read_label(scenes / "plain" / name))
    assert main([*base, "--out", str(scenes / "high"), "--threshold", "0.999"]) == 0
    out = capsys.readouterr().out
    assert "--threshold 0.999 labelled" in out and "as no class (255)" in out
    n = sum(int((read_label(scenes / "high" / f"t{i}.png") == 255).sum()) for i in range(3))
    assert f"labelled {n:,} of {3 * 40 * 48:,} pixels" in out and n > 0
    # was: accepted without --threshold, and nothing labelled with it
    assert main([*base, "--out", str(scenes / "label_only"), "--threshold-label", "0"]) == 2
    assert "--threshold-label 0 labels the pixels below --threshold, and no --threshold is given" in capsys.readouterr().err
    assert not (scenes / "label_only").exists()


# --------------------------------------------------------------------------- other silent paths


def test_pred_that_is_the_ground_truth_is_refused(scenes, capsys):
    argv = ["evaluate-seg", "--pred", str(scenes / "gt"), "--gt", str(scenes / "gt"), "--classnames", str(scenes / "classes.txt")]
    assert main(argv) == 2  # was: mIoU 100.00, printed as a score
    assert "is the ground truth" in capsys.readouterr().err
    root = _custom(scenes)
    argv = ["evaluate-seg", "--pred", str(root / "ann_dir/val"), "--dataset", "custom", "--root", str(root),
            "--classnames", str(scenes / "classes.txt")]
    assert main(argv) == 2
    assert "which would score 100%" in capsys.readouterr().err


def test_inference_flags_with_pred_are_warned_about(scenes, gt_copy, capsys):
    argv = ["evaluate-seg", "--pred", str(gt_copy), "--gt", str(scenes / "gt"), "--classnames", str(scenes / "classes.txt")]
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([*argv, "--threshold", "0.9", "--crop", "32"]) == 0
    # was: the score of the masks as saved, as if --threshold had been applied
    assert "--crop, --threshold are not used with --pred" in capsys.readouterr().err


def test_images_with_a_dataset_are_warned_about(scenes, gt_copy, capsys):
    root = _custom(scenes)
    assert main([*_eval_custom(scenes, root), "--images", str(scenes / "test")]) == 0
    assert "--images is not used with --dataset" in capsys.readouterr().err


def test_segment_notes_an_earlier_runs_mask_of_an_image_skipped_now(scenes, capsys):
    argv = ["segment", *ZERO_SHOT, "--classnames", str(scenes / "classes.txt"), "--images", str(scenes / "test"),
            "--out", str(scenes / "masks")]
    assert main(argv) == 0
    (scenes / "test" / "t1.png").write_bytes(b"damaged since")
    assert main([*argv, "--overwrite"]) == 0
    out = capsys.readouterr().out
    # was: t1.png from the first run stayed without a word, and `evaluate-seg --pred` scored it as this run's
    assert "note: 2 file(s) from an earlier run stay in" in out and "(first: t1.png)" in out
    assert (scenes / "masks" / "t1.png").is_file()  # kept: never deleted


def test_jpeg_ground_truth_is_warned_about(scenes, gt_copy, capsys):
    (scenes / "gtj").mkdir()
    for i in range(3):
        Image.open(scenes / "gt" / f"t{i}.png").save(scenes / "gtj" / f"t{i}.jpg", quality=90)  # class indices 0-4, lossy
    (scenes / "c21.txt").write_text("\n".join(f"c{k}" for k in range(21)) + "\n")  # a VOC-size class list
    argv = ["evaluate-seg", "--pred", str(gt_copy), "--gt", str(scenes / "gtj"), "--gt-suffix", ".jpg", "--classnames",
            str(scenes / "c21.txt"), "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["mIoU"] < 1.0  # the same masks, scored below 100% by JPEG's changes alone
    assert "3 ground-truth mask(s) are JPEG files (first: t0.jpg)" in err and "export the masks as PNG" in err  # was: nothing said


def test_segment_commands_share_the_cli_conventions(scenes, capsys):
    """--quiet on fit-seg, --device and --seed checked before any work, a folder as --model named,
    and evaluate-seg --json -: the JSON alone on stdout (before: the table was dropped, the JSON
    not strict, and fit-seg refused --quiet)."""
    classes = str(scenes / "classes.txt")
    fit = ["fit-seg", "--images", str(scenes / "test"), "--classnames", classes, "--vfm", "planted:vfm", "--vlm", "planted:vlm",
           "--templates", "simple"]
    assert build_parser().parse_args([*fit, "--out", "m.gpua", "--quiet"]).no_progress
    capsys.readouterr()
    assert main([*fit, "--out", str(scenes / "m.gpua"), "--seed", "-1"]) == 2
    assert "--seed=-1 must be an integer, 0 or more" in capsys.readouterr().err
    assert main([*fit, "--out", str(scenes / "m.gpua"), "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err and not (scenes / "m.gpua").exists()
    assert main(["segment", *ZERO_SHOT, "--classnames", classes, "--images", str(scenes / "test"), "--out", str(scenes / "o"),
                 "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err and not (scenes / "o").exists()
    assert main(["segment", "--model", str(scenes / "gt"), "--images", str(scenes / "test"), "--out", str(scenes / "o")]) == 2
    assert "is a folder, not a model file" in capsys.readouterr().err
    assert main(["segment", *ZERO_SHOT, "--classnames", classes, "--images", str(scenes / "test"), "--out", str(scenes / "o")]) == 0
    capsys.readouterr()
    assert main(["evaluate-seg", "--pred", str(scenes / "o"), "--gt", str(scenes / "gt"), "--classnames", classes, "--json", "-"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)  # stdout holds the JSON alone
    assert result["n_images"] == 3 and "mIoU" in err


def test_evaluate_seg_finds_the_masks_segment_renamed_for_a_shared_stem(scenes, capsys):
    """segment writes a_png.png and a_jpg.png for a.png and a.jpg; evaluate-seg --pred looked for
    a.png only and said "segment every image first"."""
    pics, gt = scenes / "pics", scenes / "gt2"
    pics.mkdir()
    gt.mkdir()
    shutil.copy(scenes / "test" / "t0.png", pics / "a.png")
    Image.open(scenes / "test" / "t1.png").convert("RGB").save(pics / "a.jpg", format="JPEG")
    shutil.copy(scenes / "gt" / "t0.png", gt / "a.png")
    assert main(["segment", *ZERO_SHOT, "--classnames", str(scenes / "classes.txt"), "--images", str(pics),
                 "--out", str(scenes / "masks2")]) == 0
    assert {"a_jpg.png", "a_png.png"} <= {p.name for p in (scenes / "masks2").iterdir()}
    capsys.readouterr()
    # --img-suffix says which of the two the ground truth describes (without it: refused,
    # tests/segment/test_seg_audit20.py)
    assert main(["evaluate-seg", "--pred", str(scenes / "masks2"), "--gt", str(gt), "--images", str(pics), "--img-suffix", ".png",
                 "--classnames", str(scenes / "classes.txt")]) == 0, capsys.readouterr().err
    assert "1 image(s)" in capsys.readouterr().out
