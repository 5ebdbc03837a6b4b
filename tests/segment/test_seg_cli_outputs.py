"""`gpua segment` / `gpua fit-seg`: output names that cannot clash, no file replaced unasked, and
unreadable or hidden files skipped (planted encoders: seconds)."""

from __future__ import annotations

import os

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua.cli import main
from gpua.segment.datasets import read_label


def _save(world, path, size, seed):
    im, _ = world.sample(1, size, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(im[0]).save(path)


@pytest.fixture
def classes(tmp_path, world):
    (tmp_path / "classes.txt").write_text("\n".join(world.classnames) + "\n")
    return tmp_path / "classes.txt"


def _zs(images, out, classes, *extra):
    return ["segment", "--zero-shot", "--images", str(images), "--out", str(out), "--classnames", str(classes),
            "--vlm", "planted:vlm", "--templates", "simple", *extra]


def _fit(images, out, classes, *extra):
    return ["fit-seg", "--images", str(images), "--out", str(out), "--classnames", str(classes), "--vfm", "planted:vfm",
            "--vlm", "planted:vlm", "--templates", "simple", "--patches-per-image", "8", "--no-progress", *extra]


# -- bug 1a: two images, one mask ------------------------------------------------------------------
def test_clashing_stems_get_their_own_masks(tmp_path, world, classes, capsys):
    """pic.jpg, pic.png and pic_overlay.jpg all wrote pic.png / pic_overlay.png over each other."""
    scenes = tmp_path / "scenes"
    sizes = {"pic.jpg": (48, 64), "pic.png": (40, 56), "pic_overlay.jpg": (32, 32), "other.png": (24, 40)}
    for k, (name, size) in enumerate(sizes.items()):
        _save(world, scenes / name, size, seed=k)
    assert main(_zs(scenes, tmp_path / "masks", classes)) == 0
    out = capsys.readouterr().out
    assert "pic.jpg -> pic_jpg.png" in out and "segmented 4 image(s)" in out
    masks = tmp_path / "masks"
    expected = {"pic_jpg": sizes["pic.jpg"], "pic_png": sizes["pic.png"], "pic_overlay_jpg": sizes["pic_overlay.jpg"],
                "other": sizes["other.png"]}
    assert sorted(p.name for p in masks.iterdir()) == sorted([f"{b}.png" for b in expected] + [f"{b}_overlay.png" for b in expected])
    for base, (h, w) in expected.items():  # each mask and overlay is its own image's (the sizes differ)
        assert read_label(masks / f"{base}.png").shape == (h, w)
        assert Image.open(masks / f"{base}_overlay.png").size == (w, h)


def test_names_that_still_clash_are_refused_before_any_work(tmp_path, world, classes, capsys, monkeypatch):
    """Two names differing only in case clash on case-insensitive disks (macOS, Windows): refused, listing both."""
    import gpua.cli.segment as seg_cli

    scenes = tmp_path / "scenes"
    _save(world, scenes / "Pic.png", (32, 32), 0)
    _save(world, scenes / "pic.png", (32, 32), 1)
    monkeypatch.setattr(seg_cli, "make_encoder", lambda *a, **k: pytest.fail("an encoder was loaded before the refusal"))
    assert main(_zs(scenes, tmp_path / "masks", classes)) == 2
    err = capsys.readouterr().err
    assert "Pic.png" in err and "pic.png" in err and "rename" in err
    assert err.count("Pic.png and pic.png") == 1  # was listed twice (the mask's name and the overlay's)
    assert not (tmp_path / "masks").exists()


# -- bug 1b: files in --out replaced unasked -------------------------------------------------------
def test_out_never_replaces_a_users_file_or_an_input(tmp_path, world, classes, capsys):
    scenes = tmp_path / "scenes"
    _save(world, scenes / "pic.png", (32, 32), 0)  # the user's own photo
    _save(world, scenes / "sub" / "pic.jpg", (32, 32), 1)
    photo = (scenes / "pic.png").read_bytes()
    # `--images scenes/sub --out scenes` would replace scenes/pic.png with a mask: refused before any work
    assert main(_zs(scenes / "sub", scenes, classes)) == 2
    err = capsys.readouterr().err
    assert "pic.png" in err and "--overwrite" in err
    assert (scenes / "pic.png").read_bytes() == photo and not (scenes / "pic_overlay.png").exists()
    # an output that is an input image (here through a hard link) is refused even with --overwrite
    out = tmp_path / "out"
    out.mkdir()
    os.link(scenes / "sub" / "pic.jpg", out / "pic.png")
    before = (scenes / "sub" / "pic.jpg").read_bytes()
    assert main(_zs(scenes / "sub", out, classes, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "--images" in err and "pic.jpg" in err
    assert (scenes / "sub" / "pic.jpg").read_bytes() == before and not (out / "pic_overlay.png").exists()
    # a re-run over its own masks: refused without --overwrite, replaced with it
    (out / "pic.png").unlink()
    assert main(_zs(scenes / "sub", out, classes)) == 0
    assert main(_zs(scenes / "sub", out, classes)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(_zs(scenes / "sub", out, classes, "--overwrite")) == 0
    # --overwrite replaces a segment run's masks only, never the user's photo of a mask's name (was: replaced)
    assert main(_zs(scenes / "sub", scenes, classes, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "pic.png: a photo, a ground-truth mask" in err and "never replaced, --overwrite included" in err
    assert (scenes / "pic.png").read_bytes() == photo and not (scenes / "pic_overlay.png").exists()


# -- bug 2: unreadable and hidden files ------------------------------------------------------------
@pytest.fixture
def mixed(tmp_path, world):
    """Two good images, a macOS AppleDouble file, a corrupt .jpg and a sub-folder."""
    d = tmp_path / "imgs"
    _save(world, d / "a.png", (32, 32), 0)
    _save(world, d / "b.png", (32, 48), 1)
    (d / "._a.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (d / "zz_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _save(world, d / "sub" / "c.png", (32, 32), 2)
    return d


def test_segment_skips_hidden_and_unreadable_images(mixed, tmp_path, classes, capsys):
    assert main(_zs(mixed, tmp_path / "m", classes)) == 0
    cap = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    assert "zz_bad.jpg" in cap.err and "warning" in cap.err and "._a.png" not in cap.err
    assert "segmented 2 image(s)" in cap.out and "1 unreadable image(s) skipped" in cap.out
    assert "1 sub-folder" in cap.out and "sub" in cap.out  # not searched, and said so


def test_fit_seg_skips_hidden_and_unreadable_images(mixed, tmp_path, classes, capsys):
    from gpua import load_model

    model = tmp_path / "seg.gpua"
    assert main(_fit(mixed, model, classes)) == 0
    cap = capsys.readouterr()
    assert load_model(model).provenance_["n_images"] == 2
    assert "zz_bad.jpg" in cap.err and "1 unreadable image(s) skipped" in cap.out and "1 sub-folder" in cap.out
    # --max-images counts readable images
    assert main(_fit(mixed, tmp_path / "one.gpua", classes, "--max-images", "1")) == 0
    assert load_model(tmp_path / "one.gpua").provenance_["n_images"] == 1


def test_fit_seg_max_images_counts_images_it_can_encode(tmp_path, world, classes, capsys):
    """Was: --max-images counted readable images, so with a too-small image first, --max-images 1
    fitted on no image ("every readable image ... is smaller than one encoder patch") though a
    usable one came next."""
    from gpua import load_model

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(d / "a_tiny.png")  # below one 8x8 VLM patch
    _save(world, d / "b.png", (32, 32), 0)
    _save(world, d / "c.png", (32, 32), 1)
    (d / "b_broken.png").write_bytes(b"not a png")  # right after b.png, the one image used
    assert main(_fit(d, tmp_path / "one.gpua", classes, "--max-images", "1")) == 0
    cap = capsys.readouterr()
    assert load_model(tmp_path / "one.gpua").provenance_["n_images"] == 1
    assert "1 image(s) smaller than one encoder patch skipped" in cap.out
    assert "b_broken" not in cap.err + cap.out  # not read at all: the one image was found before it


def test_no_readable_image_is_a_clear_error(tmp_path, classes, capsys):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "._x.jpg").write_bytes(b"\x00\x05\x16\x07")
    (d / "x.jpg").write_bytes(b"not an image")
    (d / "y.png").write_bytes(b"")
    assert main(_zs(d, tmp_path / "m", classes)) == 2
    err = capsys.readouterr().err
    assert "none of the 2 image(s)" in err and "x.jpg" in err and not any((tmp_path / "m").glob("*.png"))
    assert main(_fit(d, tmp_path / "seg.gpua", classes)) == 2
    assert "none of the 2 image(s)" in capsys.readouterr().err and not (tmp_path / "seg.gpua").exists()
    # only hidden files, or images only in sub-folders: said so
    (d / "x.jpg").unlink()
    (d / "y.png").unlink()
    (d / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "sub" / "z.png")
    assert main(_zs(d, tmp_path / "m", classes)) == 2
    err = capsys.readouterr().err
    assert "holds no image files" in err and "sub" in err


def test_no_overlay_over_an_earlier_run_says_its_overlays_are_stale(tmp_path, world, classes, capsys):
    scenes = tmp_path / "scenes"
    _save(world, scenes / "a.png", (32, 32), seed=0)
    assert main(_zs(scenes, tmp_path / "masks", classes)) == 0
    capsys.readouterr()
    assert main(_zs(scenes, tmp_path / "masks", classes, "--overwrite", "--no-overlay")) == 0
    # was: a_overlay.png of the first run stayed beside the new mask without a word
    assert "1 overlay(s) from an earlier run stay" in capsys.readouterr().out


def test_segmenter_errors_name_each_flag_once(tmp_path, world, classes, capsys):
    scenes = tmp_path / "scenes"
    _save(world, scenes / "a.png", (32, 32), seed=0)
    assert main(_zs(scenes, tmp_path / "masks", classes, "--stride", "10")) == 2
    err = capsys.readouterr().err
    assert "--stride 10 is given without --crop" in err and "----" not in err  # was: "----stride 10"


def test_a_fit_seg_model_loaded_in_python_segments_into_its_classes_not_its_prompts(tmp_path, world):
    """Synonyms give more prompt rows than classes: the API labelled rows, shifting every class after a synonym."""
    import gpua
    from gpua.segment import DenseSegmenter
    from gpua.segment.io import make_encoder

    scenes = tmp_path / "scenes"
    for k in range(4):
        _save(world, scenes / f"s{k}.png", (48, 48), seed=k)
    words = {name: [name] for name in world.classnames}
    words[world.classnames[0]] = [world.classnames[0], f"bright {world.classnames[0]}"]  # one synonym: one more row
    syn = tmp_path / "syn.txt"
    syn.write_text("".join(f"{name}: {', '.join(ws)}\n" for name, ws in words.items()))
    assert main(_fit(scenes, tmp_path / "m.gpua", syn)) == 0
    model = gpua.load_model(tmp_path / "m.gpua")
    assert model.n_classes_ == len(world.classnames) + 1  # prompt rows
    seg = DenseSegmenter(make_encoder("planted:vfm"), make_encoder("planted:vlm"), model=model)
    image = np.asarray(Image.open(scenes / "s0.png").convert("RGB"))
    labels = seg.predict(image)
    assert labels.max() < len(world.classnames)  # classes, not rows
    assert main(["segment", "--model", str(tmp_path / "m.gpua"), "--images", str(scenes), "--out", str(tmp_path / "masks"),
                 "--no-overlay"]) == 0
    np.testing.assert_array_equal(labels, read_label(tmp_path / "masks" / "s0.png"))  # as the command line segments it
    # with the prototypes passed too (benchmarks/segment_voc.py's call): the model scores its own rows, so its
    # recorded classes still apply (they were read only without prototypes: every class after the synonym shifted)
    with_y = DenseSegmenter(make_encoder("planted:vfm"), None, model.text_prototypes_.cpu().numpy(), model=model)
    np.testing.assert_array_equal(with_y.predict(image), labels)
