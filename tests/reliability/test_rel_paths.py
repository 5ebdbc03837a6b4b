"""No command destroys its own input: an output on an input's path is refused before any work.

Each case runs the real command line (``gpua.cli.main``) with an output path equal to one of its
inputs, and checks: exit status 2, one line on stderr naming both arguments, and the input
byte-for-byte unchanged. Links (symbolic and hard) count as the same path; outputs that are
folders, that lie under a file or in an unwritable folder are refused before the work starts.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua.cli import main
from rel_helpers import tree_bytes


def _refused(argv: list[str], capsys, protected: Path, *names: str) -> str:
    before = tree_bytes(protected)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"gpua {argv[0]}: error: "), err
    for name in names:
        assert name in err, (name, err)
    assert tree_bytes(protected) == before  # not one byte of the input changed
    return err


@pytest.mark.parametrize(
    "case",
    [
        "fit --out = --train",
        "predict --out = --features",
        "predict --out = --model",
        "evaluate --json = --test",
        "evaluate --json = --model",
        "compare --json = --train",
        "compare --json = --test",
        "calibrate longtail --json = --features",
        "calibrate federated --json = --test",
    ],
)
def test_feature_commands_refuse_to_overwrite_an_input(files, capsys, case):
    tr, te, m = str(files["train"]), str(files["test"]), str(files["model"])
    argv, protected, names = {
        "fit --out = --train": (["fit", "--train", tr, "--out", tr], tr, ("--out", "--train")),
        "predict --out = --features": (["predict", "--model", m, "--features", te, "--out", te], te, ("--out", "--features")),
        "predict --out = --model": (["predict", "--model", m, "--features", te, "--out", m], m, ("--out", "--model")),
        "evaluate --json = --test": (["evaluate", "--model", m, "--test", te, "--json", te], te, ("--json", "--test")),
        "evaluate --json = --model": (["evaluate", "--model", m, "--test", te, "--json", m], m, ("--json", "--model")),
        "compare --json = --train": (["compare", "--train", tr, "--test", te, "--methods", "zero_shot", "--json", tr], tr, ("--json", "--train")),
        "compare --json = --test": (["compare", "--train", tr, "--test", te, "--methods", "zero_shot", "--json", te], te, ("--json", "--test")),
        "calibrate longtail --json = --features": (
            ["calibrate", "longtail", "--features", tr, "--test", te, "--imbalance", "2", "--methods", "plain", "--json", tr], tr,
            ("--json", "--features"),
        ),
        "calibrate federated --json = --test": (
            ["calibrate", "federated", "--features", tr, "--test", te, "--clients", "2", "--rounds", "1", "--methods", "fedavg",
             "--json", te], te, ("--json", "--test"),
        ),
    }[case]
    _refused(argv, capsys, Path(protected), *names)


def test_links_to_an_input_are_the_input(files, tmp_path, capsys):
    tr, te, m = str(files["train"]), str(files["test"]), str(files["model"])
    sym = tmp_path / "sub" / "link.csv"
    sym.parent.mkdir()
    sym.symlink_to(files["test"])
    _refused(["predict", "--model", m, "--features", te, "--out", str(sym)], capsys, files["test"], "--out", "--features")
    # A path that reaches the input through a linked folder, and a hard link.
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    _refused(["fit", "--train", tr, "--out", str(tmp_path / "alias" / "train.npz")], capsys, files["train"], "--train")
    hard = tmp_path / "hard.npz"
    os.link(files["train"], hard)
    _refused(["fit", "--train", tr, "--out", str(hard)], capsys, files["train"], "--train")


def test_bad_outputs_are_refused_before_the_fit(files, tmp_path, capsys, monkeypatch):
    from gpua import GPUA

    def no_fit(*a, **k):  # the checks must come first: a 10-minute fit must not run for nothing
        raise AssertionError("fit ran before the output path was checked")

    monkeypatch.setattr(GPUA, "fit", no_fit)
    tr = str(files["train"])
    (tmp_path / "folder").mkdir()
    err = _refused(["fit", "--train", tr, "--out", str(tmp_path / "folder")], capsys, files["train"], "--out")
    assert "is an existing folder" in err
    err = _refused(["fit", "--train", tr, "--out", str(files["test"] / Path("x") / "m.gpua")], capsys, files["train"], "--out")
    assert "which is a file" in err
    if sys.platform.startswith("linux") and os.path.isdir("/sys/kernel"):
        unwritable = "/sys/kernel/gpua-test-model.gpua"  # not writable even by root
    elif os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        unwritable = str(ro / "m.gpua")
    else:  # pragma: no cover
        pytest.skip("no unwritable folder available")
    err = _refused(["fit", "--train", tr, "--out", unwritable], capsys, files["train"], "--out")
    assert "cannot be written" in err
    # Two outputs on one path.
    err = _refused(["fit", "--train", tr, "--out", str(tmp_path / "x"), "--checkpoint", str(tmp_path / "x")], capsys, files["train"])
    assert "--checkpoint" in err and "--out" in err


# -- segmentation -------------------------------------------------------------------------------
@pytest.fixture
def seg_dirs(tmp_path):
    from gpua.segment.planted import make_planted_world

    world = make_planted_world(3, seed=0)
    images, labels = world.sample(2, (32, 32), seed=2)
    for sub in ("imgs", "gt", "pred"):
        (tmp_path / sub).mkdir()
    for i, (im, lab) in enumerate(zip(images, labels)):
        Image.fromarray(im).save(tmp_path / "imgs" / f"t{i}.png")
        Image.fromarray(lab.astype(np.uint8)).save(tmp_path / "gt" / f"t{i}.png")
        Image.fromarray(lab.astype(np.uint8)).save(tmp_path / "pred" / f"t{i}.png")
    (tmp_path / "classes.txt").write_text("\n".join(world.classnames) + "\n")
    return tmp_path


def test_segment_refuses_to_write_masks_over_the_images(seg_dirs, capsys):
    d = seg_dirs
    argv = ["segment", "--zero-shot", "--images", str(d / "imgs"), "--out", str(d / "imgs"), "--classnames",
            str(d / "classes.txt"), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple"]
    _refused(argv, capsys, d / "imgs", "--out", "--images")


def test_evaluate_seg_refuses_to_write_over_a_ground_truth_file(seg_dirs, capsys):
    d = seg_dirs
    argv = ["evaluate-seg", "--pred", str(d / "pred"), "--gt", str(d / "gt"), "--classnames", str(d / "classes.txt"),
            "--json", str(d / "gt" / "t0.png")]
    _refused(argv, capsys, d / "gt", "--json", "--gt")
    # A new file beside the ground truth is fine: only existing input files are protected.
    assert main(argv[:-1] + [str(d / "gt" / "scores.json")]) == 0


def test_fit_seg_refuses_an_output_over_the_class_file(seg_dirs, capsys):
    d = seg_dirs
    argv = ["fit-seg", "--images", str(d / "imgs"), "--classnames", str(d / "classes.txt"), "--vfm", "planted:vfm",
            "--vlm", "planted:vlm", "--templates", "simple", "--out", str(d / "classes.txt")]
    _refused(argv, capsys, d / "classes.txt", "--out", "--classnames")


def test_a_segmentation_models_sidecar_is_part_of_the_model(seg_dirs, capsys, tmp_path):
    """Reports wrote over fit-seg's .seg.json (segment then refused the model), fit-seg replaced a
    user's file of that name, and a sidecar left beside a model `gpua fit` wrote since named the new
    model's classes with the old ones, without a word."""
    from gpua import load_model
    from gpua.cli.segment import _load_model
    from gpua.features import save_features
    from gpua.synthetic import make_planted

    d = seg_dirs
    fit_seg = ["fit-seg", "--images", str(d / "imgs"), "--classnames", str(d / "classes.txt"), "--vfm", "planted:vfm",
               "--vlm", "planted:vlm", "--templates", "simple", "--param", "refine=false", "--no-progress"]
    model = d / "seg.gpua"
    sidecar = d / "seg.gpua.seg.json"
    assert main([*fit_seg, "--out", str(model)]) == 0 and sidecar.is_file()
    capsys.readouterr()
    kept = sidecar.read_bytes()
    _refused(["evaluate-seg", "--pred", str(d / "pred"), "--gt", str(d / "gt"), "--classnames", str(d / "classes.txt"),
              "--json", str(sidecar)], capsys, d, "--json", "is a model")
    assert sidecar.read_bytes() == kept
    assert main([*fit_seg, "--out", str(model)]) == 0  # fit-seg replaces its own model and sidecar
    capsys.readouterr()
    (d / "mine.gpua.seg.json").write_text("my notes")
    _refused([*fit_seg, "--out", str(d / "mine.gpua")], capsys, d, "sidecar", "is a file gpua did not write")
    # gpua fit over the segmentation model: the old sidecar no longer names its classes
    m = load_model(model)
    fs = make_planted(n_samples=200, n_classes=3, d_vfm=m.n_features_vfm_, d_vlm=m.n_features_vlm_, d_latent=4,
                      random_state=0).feature_set()
    train = save_features(tmp_path / "f.npz", vfm_features=fs.vfm_features, vlm_features=fs.vlm_features,
                          text_prototypes=fs.text_prototypes, classnames=["cat", "dog", "car"])
    assert main(["fit", "--train", str(train), "--out", str(model), "--query", "vfm", "--param", "refine=false", "--quiet"]) == 0
    capsys.readouterr()
    from gpua import GPUAError

    # an image-level model now: refused for segmentation, whatever the sidecar says (was: its class list ignored, with a warning)
    with pytest.raises(GPUAError, match="was fitted on whole-image features"):
        _load_model(str(model))
    # a patch-level model fitted over it, without a sidecar: the old sidecar's class list is still ignored
    m = load_model(model)
    m.provenance_ = {"task": "segmentation"}
    m.save(model)
    with pytest.warns(UserWarning, match="was written for another model .* it is ignored"):
        _, rec = _load_model(str(model))
    assert "prompt_names" not in rec or rec["prompt_names"] == ["cat", "dog", "car"]


# -- extract --------------------------------------------------------------------------------------
class _Mean:
    """A tiny deterministic encoder pair for extract: per-channel means of a 2x2 grid."""

    @staticmethod
    def register():
        from gpua.encoders import Encoder, ImagePreprocess, register_encoder

        class Mean(Encoder):
            backend = "relmean"

            def __init__(self, spec, vlm):
                super().__init__(spec, ImagePreprocess(input_size=8, resize=8, mean=0.5, std=0.25), 12, patch_size=4)
                self.is_vlm = vlm

            def _patches(self, pixels):
                B = pixels.shape[0]
                return pixels.reshape(B, 3, 2, 4, 2, 4).mean(axis=(3, 5)).transpose(0, 2, 3, 1).repeat(4, axis=-1)

            def _embed(self, pixels):
                return self._patches(pixels).reshape(pixels.shape[0], -1)[:, :12] + 0.01

            def _encode_text_batch(self, texts):
                return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=12) for t in texts]).astype(np.float32)

        register_encoder("relmean:vfm", lambda device="cpu", cache_dir=None: Mean("relmean:vfm", False), overwrite=True)
        register_encoder("relmean:vlm", lambda device="cpu", cache_dir=None: Mean("relmean:vlm", True), overwrite=True)
        return ["--vfm", "relmean:vfm", "--vlm", "relmean:vlm", "--quiet"]


def _image_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), labels=np.arange(6) % 3,
             classnames=np.asarray(["cat", "dog", "car"]))
    return path


def test_extract_refuses_to_overwrite_its_dataset(tmp_path, capsys):
    enc = _Mean.register()
    data = _image_npz(tmp_path / "imgs.npz")
    _refused(["extract", *enc, "--data", str(data), "--out", str(data)], capsys, data, "--out", "--data")  # the flags
    # A shard-set output folder that holds the dataset would be replaced with it.
    (tmp_path / "ds").mkdir()
    inner = _image_npz(tmp_path / "ds" / "imgs.npz")
    _refused(["extract", *enc, "--data", str(inner), "--out", str(tmp_path / "ds"), "--format", "shards"], capsys,
             tmp_path / "ds", "--data")
    assert main(["extract", *enc, "--data", str(data), "--out", str(tmp_path / "f.npz")]) == 0  # a free path works


def test_features_never_replace_a_users_own_array_file(tmp_path, capsys):
    """extract --out (and save_features) replaced any existing .npz: a user's own image dataset
    (not the --data of this run) was overwritten with features."""
    from gpua import GPUAError
    from gpua.features import load_features, save_features

    enc = _Mean.register()
    data = _image_npz(tmp_path / "imgs.npz")
    mine = tmp_path / "my_other_dataset"
    mine.mkdir()
    _image_npz(mine / "photos.npz")
    np.save(mine / "embeddings.npy", np.ones((4, 3)))
    for name in ("photos.npz", "embeddings.npy"):
        target = mine / name
        if target.suffix == ".npz":
            _refused(["extract", *enc, "--data", str(data), "--out", str(target)], capsys, mine, "--out",
                     "is an array file that holds no gpua features")
            with pytest.raises(GPUAError, match="is an array file that holds no gpua features"):
                save_features(target, vfm_features=np.ones((3, 4), np.float32))
        else:  # the npy is not a feature name at all; a report over it is refused as before
            _refused(["predict", "--model", str(tmp_path / "none.gpua"), "--features", str(data), "--out", str(target)],
                     capsys, mine, "--out", "holds no gpua features")
    # a feature file is still replaced by features (a re-extraction, a re-save)
    out = tmp_path / "f.npz"
    assert main(["extract", *enc, "--data", str(data), "--out", str(out)]) == 0
    assert main(["extract", *enc, "--data", str(data), "--out", str(out), "--no-resume"]) == 0
    save_features(out, vfm_features=np.ones((3, 4), np.float32))
    assert load_features(out).vfm_features.shape == (3, 4)


def test_extract_never_deletes_a_parts_folder_it_did_not_make(tmp_path, capsys):
    enc = _Mean.register()
    data = _image_npz(tmp_path / "imgs.npz")
    parts = tmp_path / "results.parts"
    parts.mkdir()
    (parts / "notes.txt").write_text("my notes")
    _refused(["extract", *enc, "--data", str(data), "--out", str(tmp_path / "results"), "--no-resume"], capsys, parts,
             "results.parts")
    assert (parts / "notes.txt").read_text() == "my notes"
    # A folder that looks like gpua's (a manifest) but holds a user's file is not deleted either.
    (parts / "manifest.json").write_text('{"cache_key": "x", "shard_size": 1, "format": 1}')
    _refused(["extract", *enc, "--data", str(data), "--out", str(tmp_path / "results"), "--no-resume"], capsys, parts,
             "results.parts")
    # gpua's own stale parts folder is replaced as before.
    shutil.rmtree(parts)
    assert main(["extract", *enc, "--data", str(data), "--out", str(tmp_path / "results")]) == 0
    assert not parts.exists()


def test_reports_never_replace_gpua_data_that_is_not_an_input(files, tmp_path, capsys):
    """predict/evaluate/compare wrote their CSV or JSON over any file that was not one of their own
    inputs: another feature file, another model, another shard set's index."""
    from gpua.features import load_features
    from gpua.stream import write_shards

    other = tmp_path / "other"
    other.mkdir()
    for name in ("spare.npz", "old.gpua"):
        (other / name).write_bytes((files["train" if name.endswith(".npz") else "model"]).read_bytes())
    fs = load_features(files["test"])
    write_shards(tmp_path / "shards", fs.vfm_features, fs.vlm_features, dtype="float32", text_prototypes=fs.text_prototypes)
    run = ["predict", "--model", str(files["model"]), "--features", str(files["test"]), "--out"]
    err = _refused([*run, str(other / "spare.npz")], capsys, other, "--out", "is a feature or array file")
    assert "which this command would replace with a report" in err
    _refused([*run, str(other / "old.gpua")], capsys, other, "--out", "is a model")
    _refused(["evaluate", "--model", str(files["model"]), "--test", str(files["test"]), "--json", str(other / "spare.npz")],
             capsys, other, "--json")
    _refused([*run, str(tmp_path / "shards" / "index.json")], capsys, tmp_path / "shards", "a folder gpua wrote and replaces whole")
    _refused(["fit", "--train", str(files["train"]), "--out", str(tmp_path / "shards" / "new.gpua"), "--param", "refine=false"],
             capsys, tmp_path / "shards", "lies inside")  # a new file in a shard set: the next extraction into it stopped
    assert main([*run, str(other / "preds.csv")]) == 0  # a report beside them is fine
    capsys.readouterr()


@pytest.mark.parametrize("name", ["cifar.model", "x.pt", "model"])
def test_a_model_saved_under_any_name_is_never_replaced_by_a_report(files, tmp_path, capsys, name):
    """fit --out and save accept any name; a report over such a model replaced it (only .gpua and
    safetensors names were recognised as models): the model was lost."""
    from gpua import load_model

    model = tmp_path / name
    assert main(["fit", "--train", str(files["train"]), "--out", str(model), "--param", "refine=false", "--quiet"]) == 0
    capsys.readouterr()
    kept = model.read_bytes()
    run = ["--model", str(files["model"])]
    _refused(["predict", *run, "--features", str(files["test"]), "--out", str(model)], capsys, tmp_path, "is a model")
    _refused(["evaluate", *run, "--test", str(files["test"]), "--json", str(model)], capsys, tmp_path, "is a model")
    _refused(["compare", "--train", str(files["train"]), "--test", str(files["test"]), "--methods", "zero_shot",
              "--json", str(model)], capsys, tmp_path, "is a model")
    assert model.read_bytes() == kept
    load_model(model)
    # a model still replaces it (the same kind)
    assert main(["fit", "--train", str(files["train"]), "--out", str(model), "--param", "refine=false", "--quiet"]) == 0
    capsys.readouterr()


def test_a_file_output_ending_in_a_slash_is_refused(files, tmp_path, capsys):
    """Was: `--out results/` wrote a file named results (the slash dropped), and so did --json, --plot and fit --out."""
    tr, te, m = str(files["train"]), str(files["test"]), str(files["model"])
    for argv, flag in ((["predict", "--model", m, "--features", te, "--out"], "--out"),
                       (["fit", "--train", tr, "--no-refine", "--out"], "--out"),
                       (["evaluate", "--model", m, "--test", te, "--json"], "--json")):
        target = tmp_path / "results"
        assert main([*argv, f"{target}/"]) == 2
        assert f"{flag} '{target}/' ends with '/', a folder, but this command writes one file there" in capsys.readouterr().err
        assert not target.exists()


def test_fit_seg_names_a_users_file_where_its_sidecar_goes(seg_dirs, capsys):
    """Was: "... Choose another --out's sidecar (models end in .gpua)", an argument there is none of."""
    d = seg_dirs
    (d / "my.gpua.seg.json").write_text('{"mine": 1}')
    argv = ["fit-seg", "--images", str(d / "imgs"), "--classnames", str(d / "classes.txt"), "--vfm", "planted:vfm",
            "--vlm", "planted:vlm", "--templates", "simple", "--out", str(d / "my.gpua")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "where fit-seg writes the model's sidecar, is a file gpua did not write; nothing was written. Choose another --out" in err
    assert "--out's sidecar" not in err and (d / "my.gpua.seg.json").read_text() == '{"mine": 1}' and not (d / "my.gpua").exists()


def test_evaluate_seg_checks_the_class_file_against_the_classes_the_masks_record(seg_dirs, capsys):
    """Was: masks of a 5-class model scored against a class file with `background` prepended: each
    class's IoU printed one name off, without a word (mIoU unchanged, so nothing looked wrong)."""
    from gpua.segment.io import mask_classnames

    d = seg_dirs
    common = ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple"]
    assert main(["fit-seg", "--images", str(d / "imgs"), "--classnames", str(d / "classes.txt"), *common,
                 "--param", "refine=false", "--no-progress", "--out", str(d / "seg.gpua")]) == 0
    assert main(["segment", "--model", str(d / "seg.gpua"), "--images", str(d / "imgs"), "--out", str(d / "masks"),
                 "--no-overlay"]) == 0
    names = (d / "classes.txt").read_text().split()
    assert mask_classnames(next((d / "masks").glob("*.png"))) == names
    (d / "bg.txt").write_text("background\n" + "\n".join(names) + "\n")
    (d / "rev.txt").write_text("\n".join(names[::-1]) + "\n")
    capsys.readouterr()
    base = ["evaluate-seg", "--pred", str(d / "masks"), "--gt", str(d / "gt")]
    assert main([*base, "--classnames", str(d / "bg.txt")]) == 2
    assert f"were written by `gpua segment` for {len(names)} classes" in capsys.readouterr().err
    assert main([*base, "--classnames", str(d / "rev.txt")]) == 2
    assert "in another order" in capsys.readouterr().err
    assert main([*base, "--classnames", str(d / "classes.txt")]) == 0


def test_evaluate_seg_with_a_model_names_an_image_and_mask_of_different_sizes(seg_dirs, capsys):
    """Was: "pred is 32x32 but the ground truth is 16x16; predict at the ground truth's resolution",
    a fix for --pred masks: with --model gpua makes the prediction, at the image's size."""
    d = seg_dirs
    assert main(["fit-seg", "--images", str(d / "imgs"), "--classnames", str(d / "classes.txt"), "--vfm", "planted:vfm",
                 "--vlm", "planted:vlm", "--templates", "simple", "--param", "refine=false", "--no-progress",
                 "--out", str(d / "seg.gpua")]) == 0
    (d / "small").mkdir()
    for f in (d / "gt").glob("*.png"):
        Image.open(f).resize((16, 16), Image.NEAREST).save(d / "small" / f.name)
    capsys.readouterr()
    assert main(["evaluate-seg", "--model", str(d / "seg.gpua"), "--images", str(d / "imgs"), "--gt", str(d / "small"),
                 "--classnames", str(d / "classes.txt")]) == 2
    err = capsys.readouterr().err
    assert "is 32x32 but its ground truth" in err and "is 16x16; a mask has its image's size" in err
    assert "predict at the ground truth's resolution" not in err
