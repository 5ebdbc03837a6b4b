"""`gpua fit-seg`, `gpua segment` and `gpua evaluate-seg` end to end on the planted world."""

from __future__ import annotations

import json

import numpy as np
import pytest
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
        argv = ["evaluate-seg", *how, "--gt", str(d / "gt"), "--images", str(d / "test"), *_common(d), "--json", "--out", str(d / "s.json")]
        assert main(argv) == 0
        scores[how[0]] = json.loads(capsys.readouterr().out)["mIoU"]
    assert json.loads((d / "s.json").read_text())["mIoU"] == scores["--model"]
    assert scores["--model"] > 0.85 and scores["--model"] > scores["--zero-shot"] + 0.2


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
    with pytest.raises(GPUAError, match="'cat' stands for class 0 and class 1"):
        parse_class_prompts(["cat", "cat"])
    with pytest.raises(GPUAError, match="holds no name"):
        parse_class_prompts(["cat", " , "])
