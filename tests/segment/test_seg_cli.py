"""`gpua fit-seg`, `gpua segment` and `gpua evaluate-seg` end to end on the planted world."""

from __future__ import annotations

import json

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua.cli import main
from gpua.segment.datasets import read_label
from gpua._errors import GPUAError
from gpua.segment.inference import parse_class_prompts



@pytest.fixture
def planted_dirs(tmp_path, world):
    """Unlabeled pool, test images with masks, and a class-name file, as files on disk."""
    pool, _ = world.sample(16, (48, 48), seed=1)
    test, labels = world.sample(4, (48, 64), seed=2)
    for i, im in enumerate(pool):
        (tmp_path / "pool").mkdir(exist_ok=True)
        Image.fromarray(im).save(tmp_path / "pool" / f"p{i:02d}.png")
    for i, (im, lab) in enumerate(zip(test, labels)):
        (tmp_path / "test").mkdir(exist_ok=True)
        (tmp_path / "gt").mkdir(exist_ok=True)
        Image.fromarray(im).save(tmp_path / "test" / f"t{i}.png")
        Image.fromarray(lab.astype(np.uint8)).save(tmp_path / "gt" / f"t{i}.png")
    (tmp_path / "classes.txt").write_text("\n".join(world.classnames) + "\n")
    return tmp_path


def _common(d):
    return ["--classnames", str(d / "classes.txt"), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple"]


def test_zero_shot_segment_then_evaluate(planted_dirs, capsys):
    d = planted_dirs
    assert main(["segment", "--zero-shot", "--images", str(d / "test"), "--out", str(d / "zs"), *_common(d)]) == 0
    mask = read_label(d / "zs" / "t0.png")
    assert mask.shape == (48, 64) and mask.max() < 5
    assert Image.open(d / "zs" / "t0.png").mode == "P"  # palette PNG: indices plus VOC colours
    assert Image.open(d / "zs" / "t0_overlay.png").size == (64, 48)
    assert not list((d / "zs").glob(".*tmp*"))  # atomic writes leave no temp files
    capsys.readouterr()
    args = ["evaluate-seg", "--pred", str(d / "zs"), "--gt", str(d / "gt"), "--classnames", str(d / "classes.txt"), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 4 and 0 <= out["mIoU"] <= 1 and set(out["per_class"]) == {"sky", "grass", "road", "water", "sand"}
    assert main(args[:-1]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_fit_segment_evaluate_with_gpua(planted_dirs, capsys):
    d = planted_dirs
    model = d / "seg.gpua"
    fit = ["fit-seg", "--images", str(d / "pool"), "--out", str(model), "--patches-per-image", "32", *_common(d)]
    assert main(fit) == 0 and model.is_file()
    assert main(["segment", "--model", str(model), "--images", str(d / "test"), "--out", str(d / "g"), "--crop", "32", *_common(d)]) == 0
    assert read_label(d / "g" / "t1.png").shape == (48, 64)
    capsys.readouterr()
    scores = {}
    for how in (["--zero-shot"], ["--model", str(model)]):
        argv = ["evaluate-seg", *how, "--gt", str(d / "gt"), "--images", str(d / "test"), *_common(d), "--json"]
        assert main(argv) == 0
        scores[how[0]] = json.loads(capsys.readouterr().out)["mIoU"]
    assert scores["--model"] > 0.85 and scores["--model"] > scores["--zero-shot"] + 0.2
    # --json FILE writes the file (as gpua evaluate --json does); the model supplies its encoders and classes
    argv = ["evaluate-seg", "--model", str(model), "--gt", str(d / "gt"), "--images", str(d / "test"),
            "--classnames", str(d / "classes.txt"), "--json", str(d / "s.json")]
    assert main(argv) == 0
    assert json.loads((d / "s.json").read_text())["mIoU"] == scores["--model"]
    assert "mIoU" in capsys.readouterr().out  # the table is printed too


def test_fit_seg_takes_gpua_parameters(planted_dirs, capsys):
    """`gpua fit-seg --param NAME=VALUE` reaches the patch fit; a bad one is refused before any encoder loads."""
    from gpua import load_model

    d = planted_dirs
    model = d / "seg_p.gpua"
    base = ["fit-seg", "--images", str(d / "pool"), "--out", str(model), "--patches-per-image", "16", "--no-progress", *_common(d)]
    assert main([*base, "--param", "lam=0.9", "--param", "eps=0.05", "--param", "self_learning=0"]) == 0
    fitted = load_model(model)
    assert (fitted.query, fitted.lam, fitted.eps, fitted.self_learning) == ("vfm", 0.9, 0.05, 0)
    capsys.readouterr()
    model.unlink()
    assert main([*base, "--param", "eps=-1"]) == 2
    assert "eps=-1" in capsys.readouterr().err and not model.exists()


def test_segment_reads_encoders_templates_and_classes_from_the_model(planted_dirs, capsys):
    """The README's `gpua segment --model seg.gpua --images DIR --classnames classes.txt --out masks/` demanded --vfm/--vlm."""
    from gpua import load_model

    d = planted_dirs
    model = d / "seg.gpua"
    assert main(["fit-seg", "--images", str(d / "pool"), "--out", str(model), "--patches-per-image", "16", *_common(d)]) == 0
    err = capsys.readouterr().err
    assert "patch features" in err and "UCM rounds" in err  # progress, as the streamed fit shows
    prov = load_model(model).provenance_
    assert (prov["vfm"], prov["vlm"], prov["templates"], prov["classnames"]) == ("planted:vfm", "planted:vlm", ["a photo of a {}."], ["sky", "grass", "road", "water", "sand"])
    assert main(["segment", "--model", str(model), "--images", str(d / "test"), "--classnames", str(d / "classes.txt"), "--out", str(d / "m1")]) == 0
    assert main(["segment", "--model", str(model), "--images", str(d / "test"), "--out", str(d / "m2")]) == 0
    for f in ("t0.png", "t3.png"):
        assert (d / "m1" / f).read_bytes() == (d / "m2" / f).read_bytes()
    capsys.readouterr()
    # an override is said (here a 16-d encoder for the model's 24-d one: then refused)
    assert main(["segment", "--model", str(model), "--images", str(d / "test"), "--out", str(d / "m3"), "--vfm", "planted:vlm"]) == 2
    err = capsys.readouterr().err
    assert "--vfm 'planted:vlm' overrides 'planted:vfm'" in err
    # the refusal names the encoder and the way back (was the library's "vfm_features has width 16 but 24 was expected")
    assert "the VFM encoder 'planted:vlm' gives patch features 16 wide but the model was fitted on 24-wide ones" in err
    assert "when --vfm is left out" in err and "vfm_features" not in err
    capsys.readouterr()
    assert main(["segment", "--model", str(model), "--images", str(d / "test"), "--out", str(d / "m4"), "--templates", "openai_imagenet",
                 "--vlm", "planted:vlm"]) == 0
    err = capsys.readouterr().err
    assert "--templates is not used" in err and "--vlm is not used" in err
    # zero-shot needs the VLM only (it demanded --vfm too)
    assert main(["segment", "--zero-shot", "--images", str(d / "test"), "--classnames", str(d / "classes.txt"), "--vlm", "planted:vlm",
                 "--templates", "simple", "--out", str(d / "zs")]) == 0
    assert main(["segment", "--zero-shot", "--images", str(d / "test"), "--out", str(d / "zs")]) == 2
    assert "--classnames" in capsys.readouterr().err


def test_cli_errors_name_the_argument(planted_dirs, capsys):
    d = planted_dirs
    assert main(["segment", "--zero-shot", "--images", str(d / "nope"), "--out", str(d / "o"), *_common(d)]) == 2
    assert "--images" in capsys.readouterr().err
    (d / "bad.txt").write_text("sky\ncat\n")
    argv = ["segment", "--zero-shot", "--images", str(d / "test"), "--out", str(d / "o"), *_common(d)]
    argv[argv.index(str(d / "classes.txt"))] = str(d / "bad.txt")
    assert main(argv) == 2
    assert "cat" in capsys.readouterr().err
    assert main(["evaluate-seg", "--pred", str(d / "test"), "--gt", str(d / "gt")]) == 2
    assert "--classnames" in capsys.readouterr().err
    assert main(["evaluate-seg", "--pred", str(d / "gt"), "--dataset", "voc"]) == 2
    assert "--root" in capsys.readouterr().err


def test_class_prompt_files_with_synonyms():
    names, prompts, owner = parse_class_prompts(["background, sky, wall", "cat", "dog, puppy, dog"])
    assert names == ["background", "cat", "dog"]
    assert prompts == ["background", "sky", "wall", "cat", "dog", "puppy"]
    assert owner.tolist() == [0, 0, 0, 1, 2, 2]
    with pytest.raises(GPUAError, match="duplicate name 'cat'"):
        parse_class_prompts(["cat", "cat"])
    with pytest.raises(GPUAError, match="'sky' stands for class 0 and class 1"):
        parse_class_prompts(["background, sky", "sky"])
    with pytest.raises(GPUAError, match="holds no class name"):
        parse_class_prompts(["cat", " , "])
    assert parse_class_prompts(["automobile: car, automobile"])[1] == ["car", "automobile"]


def test_segment_takes_one_image_file(planted_dirs, capsys):
    """Was: `segment --images photo.png` was refused as "not a folder"; one photo is the common first try."""
    d = planted_dirs
    assert main(["segment", "--zero-shot", "--images", str(d / "test"), "--out", str(d / "all"), *_common(d)]) == 0
    capsys.readouterr()
    assert main(["segment", "--zero-shot", "--images", str(d / "test" / "t1.png"), "--out", str(d / "one"), *_common(d)]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (d / "one").iterdir()) == ["t1.png", "t1_overlay.png"]
    assert "segmented 1 image(s)" in out and "not searched" not in out  # the folder beside it was not meant
    np.testing.assert_array_equal(read_label(d / "one" / "t1.png"), read_label(d / "all" / "t1.png"))
    # the masks may go beside the photo, which is never replaced (a PNG's mask would have its name: refused)
    Image.open(d / "test" / "t2.png").save(d / "test" / "street.jpg", quality=95)
    assert main(["segment", "--zero-shot", "--images", str(d / "test" / "street.jpg"), "--out", str(d / "test"), *_common(d)]) == 0
    assert (d / "test" / "street.png").is_file() and (d / "test" / "street_overlay.png").is_file()
    before = (d / "test" / "t2.png").read_bytes()
    assert main(["segment", "--zero-shot", "--images", str(d / "test" / "t2.png"), "--out", str(d / "test"), *_common(d)]) == 2
    assert "would destroy the input" in capsys.readouterr().err and (d / "test" / "t2.png").read_bytes() == before
    (d / "notes.txt").write_text("a sky\n")
    assert main(["segment", "--zero-shot", "--images", str(d / "notes.txt"), "--out", str(d / "x"), *_common(d)]) == 2
    assert "is a file but not an image" in capsys.readouterr().err and not (d / "x").exists()
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["segment", "--zero-shot", "--images", str(d / "broken.png"), "--out", str(d / "x"), *_common(d)]) == 2
    assert "--images" in (err := capsys.readouterr().err) and "could not be read; it is truncated, corrupt or not an image" in err
    # fit-seg's pool stays a folder
    assert main(["fit-seg", "--images", str(d / "test" / "t1.png"), "--out", str(d / "m.gpua"), *_common(d)]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_fit_seg_defaults_to_the_offline_encoders(tmp_path, capsys):
    """Was: fit-seg required --vfm and --vlm, where classify defaults to the offline encoders."""
    pytest.importorskip("onnxruntime")
    skimage_data = pytest.importorskip("skimage.data")
    from gpua import load_model
    from gpua.classify import DEFAULT_VFM, DEFAULT_VLM
    from gpua.cli import build_parser

    pool = tmp_path / "pool"
    pool.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        Image.fromarray(getattr(skimage_data, name)()).resize((112, 112)).save(pool / f"{name}.png")
    (tmp_path / "classes.txt").write_text("cat\ncup\nperson\n")
    argv = ["fit-seg", "--images", str(pool), "--classnames", str(tmp_path / "classes.txt"), "--out", str(tmp_path / "seg.gpua"),
            "--patches-per-image", "16", "--quiet", "--param", "n_steps=5"]
    args = build_parser().parse_args(argv)
    assert (args.vfm, args.vlm) == (DEFAULT_VFM, DEFAULT_VLM)  # the library's defaults, spelled once for the parser
    assert main(argv) == 0
    prov = load_model(tmp_path / "seg.gpua").provenance_
    assert (prov["vfm"], prov["vlm"]) == ("offline:dinov2-s", "offline:semantic-lite0")


def test_overwrite_never_replaces_a_photo_named_like_a_mask(planted_dirs, capsys):
    """Was: `segment --images f/pic.jpg --out f --overwrite` replaced the user's own f/pic.png with a mask
    (the refusal without --overwrite invited the flag)."""
    from gpua.segment.io import write_label_png, write_overlay_png, written_by_segment

    d = planted_dirs
    f = d / "f"
    f.mkdir()
    Image.open(d / "test" / "t1.png").convert("RGB").save(f / "pic.jpg", quality=95)
    Image.open(d / "test" / "t2.png").save(f / "pic.png")  # the user's photo, of the mask's name
    photo = (f / "pic.png").read_bytes()
    argv = ["segment", "--zero-shot", "--images", str(f / "pic.jpg"), "--out", str(f), *_common(d)]
    for extra in ([], ["--overwrite"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert "pic.png: a photo, a ground-truth mask" in err and "--overwrite included" in err
        assert (f / "pic.png").read_bytes() == photo and not (f / "pic_overlay.png").exists()
    # the masks and overlays a run writes are marked, and a later run replaces them
    (f / "pic.png").rename(d / "photo_moved.png")
    assert main(argv) == 0 and written_by_segment(f / "pic.png") and written_by_segment(f / "pic_overlay.png")
    assert main(argv) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    # a VOC-palette PNG without the mark is a data set's ground truth as well as an earlier release's mask: never replaced
    write_label_png(d / "m.png", np.zeros((4, 4), np.uint8))
    write_overlay_png(d / "o.png", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    assert written_by_segment(d / "m.png") and written_by_segment(d / "o.png")
    Image.open(d / "m.png").save(f / "pic.png")  # re-saved by Pillow: the palette kept, the text mark dropped
    assert Image.open(f / "pic.png").getpalette()[:6] == [0, 0, 0, 128, 0, 0] and not written_by_segment(f / "pic.png")
    assert main([*argv, "--overwrite"]) == 2
    assert "a ground-truth mask" in capsys.readouterr().err
    (d / "junk.png").write_bytes(b"not a png")
    assert not written_by_segment(d / "photo_moved.png") and not written_by_segment(d / "junk.png")
    assert not written_by_segment(d / "nothing_here.png")


def test_each_kind_of_model_is_refused_by_the_other_tasks_commands(planted_dirs, tmp_path, capsys):
    """Was: `predict` with a fit-seg model named its prompt words as classes (`background: wall, floor`
    gave wall and floor), and `segment` with a `gpua fit` model said it "records no class list"."""
    from gpua import load_model
    from gpua.features import save_features
    from gpua.report import model_task
    from gpua.synthetic import make_planted

    d = planted_dirs
    seg = d / "seg.gpua"
    assert main(["fit-seg", "--images", str(d / "pool"), "--out", str(seg), "--patches-per-image", "16", *_common(d),
                 "--param", "refine=false", "--no-progress"]) == 0
    m = load_model(seg)
    assert model_task(m) == "segmentation"
    fs = make_planted(n_samples=60, n_classes=5, d_vfm=m.n_features_vfm_, d_vlm=m.n_features_vlm_, d_latent=4,
                      random_state=0).feature_set()
    feats = save_features(tmp_path / "f.npz", vfm_features=fs.vfm_features, vlm_features=fs.vlm_features,
                          text_prototypes=fs.text_prototypes, labels=fs.labels, classnames=list(m.classnames_))
    capsys.readouterr()
    for argv in (["predict", "--model", str(seg), "--features", str(feats), "--out", str(tmp_path / "p.csv")],
                 ["evaluate", "--model", str(seg), "--test", str(feats)]):
        assert main(argv) == 2
        assert "is a patch-level model from `gpua fit-seg`" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()
    image_model = tmp_path / "image.gpua"
    assert main(["fit", "--train", str(feats), "--out", str(image_model), "--param", "refine=false", "--quiet"]) == 0
    assert model_task(load_model(image_model)) == "classification"
    capsys.readouterr()
    for argv in (["segment", "--model", str(image_model), "--images", str(d / "test"), "--out", str(tmp_path / "masks")],
                 ["evaluate-seg", "--model", str(image_model), "--gt", str(d / "gt"), "--images", str(d / "test")]):
        assert main([*argv, *_common(d)]) == 2
        assert "was fitted on whole-image features" in capsys.readouterr().err and not (tmp_path / "masks").exists()
    # a model fitted in Python on arrays records neither task: taken as given, as before
    from gpua import GPUA

    plain = GPUA(n_steps=5).fit(fs.vfm_features, fs.vlm_features, fs.text_prototypes)
    assert model_task(plain) is None


def test_segment_inputs_are_named_when_they_cannot_be_segmented(planted_dirs, tmp_path, monkeypatch, capsys):
    """Was: a missing file was "not a folder", a hidden .jpg "not an image", `--images ''` read the working
    folder, and a folder of images all too small gave "segmented 0 image(s)" with exit status 0."""
    d = planted_dirs
    seg = ["segment", "--zero-shot", "--classnames", str(d / "classes.txt"), "--vlm", "planted:vlm", "--templates", "simple"]
    assert main([*seg, "--images", str(d / "test" / "nope.png"), "--out", str(tmp_path / "o")]) == 2
    assert "'" + str(d / "test" / "nope.png") + "' does not exist" in capsys.readouterr().err
    (d / "test" / "t1.png").rename(d / ".hidden.png")
    assert main([*seg, "--images", str(d / ".hidden.png"), "--out", str(tmp_path / "o")]) == 2
    assert "is a hidden file, which gpua never reads as an image" in capsys.readouterr().err
    monkeypatch.chdir(d / "test")  # images here: an empty name must not read them
    for command in (seg, ["fit-seg", "--classnames", str(d / "classes.txt"), "--vfm", "planted:vfm", "--vlm", "planted:vlm"],
                    ["classify", "--classnames", str(d / "classes.txt")]):
        assert main([*command, "--images", "", "--out", str(tmp_path / "o.csv" if command[0] == "classify" else tmp_path / "o")]) == 2
        assert "--images '': an empty name (an unset shell variable?)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.csv").exists()
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.new("RGB", (3, 3)).save(tiny / "dot.png")
    assert main([*seg, "--images", str(tiny), "--out", str(tmp_path / "o")]) == 2
    assert "every readable image in --images" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_zero_shot_segment_defaults_to_the_offline_vlm(planted_dirs, tmp_path, monkeypatch, capsys):
    """Was: `segment --zero-shot` without --vlm stopped ("--vlm is required"), where fit-seg and classify
    default to the offline encoders."""
    import gpua.cli.segment as cli_segment

    made = []
    real = cli_segment.make_encoder
    monkeypatch.setattr(cli_segment, "make_encoder", lambda spec, device=None: made.append(spec) or real(
        {"offline:semantic-lite0": "planted:vlm", "offline:dinov2-s": "planted:vfm"}.get(spec, spec), device))
    d = planted_dirs
    argv = ["segment", "--zero-shot", "--classnames", str(d / "classes.txt"), "--templates", "simple", "--images", str(d / "test")]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0 and made == ["offline:semantic-lite0"]
    assert main([*argv, "--out", str(tmp_path / "b"), "--refine", "affinity"]) == 0
    assert made[1:] == ["offline:semantic-lite0", "offline:dinov2-s"]
    assert "warning" not in capsys.readouterr().err
