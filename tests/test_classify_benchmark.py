"""`gpua classify` and `gpua benchmark` end to end, on planted photos and a cifar10-mini subset, with fast encoders."""

from __future__ import annotations

import csv
import json
import zlib

import numpy as np
import pytest

from gpua.cli import main

FAST = ["--n-steps", "20", "--param", "eval_every=5"]


class TinyEncoder:
    """A weight-free encoder for the pipeline's plumbing: 4x4 colour thumbnails, hashed prompts."""

    def __init__(self, spec: str, vlm: bool):
        self.spec, self.is_vlm, self.embed_dim = spec, vlm, 12
        self._proj = np.random.default_rng(1 if vlm else 2).normal(size=(48, 12))

    def metadata(self):
        return {"spec": self.spec, "embed_dim": self.embed_dim, "is_vlm": self.is_vlm}

    def encode_images(self, images, batch_size=None, progress=False):
        return np.stack([np.asarray(im.convert("RGB").resize((4, 4)), np.float32).ravel() / 255 @ self._proj for im in images]).astype(np.float32)

    def encode_text(self, texts):
        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=12) for t in texts]).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def tiny_encoders():
    from gpua.encoders import register_encoder

    register_encoder("tiny:", lambda body, device="cpu", cache_dir=None, spec=None: TinyEncoder(spec, body == "vlm"), overwrite=True)


def _classify(d, *extra):
    return main(["classify", "--classnames", str(d / "classes.txt"), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple",
                 "--cache-dir", str(d / "cache"), "--quiet", *FAST, *extra])


def test_classify_a_labelled_folder(photos, capsys):
    d = photos
    assert _classify(d, "--images", str(d / "photos" / "test"), "--out", str(d / "p.csv"), "--top-k", "3", "--model-out", str(d / "m.gpua")) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader((d / "p.csv").open()))
    assert len(rows) == 15 and list(rows[0])[:3] == ["image", "prediction", "probability"]
    assert {"top3", "top3_probability", "label"} <= set(rows[0]) and "top4" not in rows[0]
    assert rows[0]["image"] == "grass/grass_0.png" and rows[0]["label"] == "grass"
    acc = np.mean([r["prediction"] == r["label"] for r in rows])
    assert acc >= 0.6 and f"acc1 {100 * acc:.2f}%" in out and "labels used only to score" in out
    assert "features cached in" in out and (d / "cache" / "classify").is_dir()
    # the VLM's own zero-shot counts beside GPUA's, which assume balanced classes
    zs = next(line for line in out.splitlines() if line.startswith("VLM zero-shot would predict: "))
    counts = [int(part.rsplit(" ", 1)[1]) for part in zs.split(": ", 1)[1].split(" (")[0].split(", ")]
    assert sum(counts) == 15 and "Imbalanced folders" in zs and "try --param class_prior=estimate, or class_prior=zero_shot" in zs
    assert "the VLM favours some classes, common on balanced folders" in zs  # the other cause, as likely
    from gpua import load_model

    model = load_model(d / "m.gpua")
    prov = model.provenance_
    assert prov["vfm"] == "planted:vfm" and prov["class_prompts"][0] == ["sky", "blue sky"]
    # the probability column's scale, chosen on the photos (was: only in the model file)
    assert f"no labels; probabilities at softmax scale {model.proba_scale_:.3g}, chosen on the pool" in out


@pytest.mark.parametrize("method", ["lfa", "reference", "gpua"])
def test_no_class_prior_hint_for_a_method_that_refuses_it(photos, capsys, monkeypatch, method):
    """The summary told lfa and reference users to try --param class_prior=estimate, which those methods refuse."""
    import gpua.cli.classify as cli_classify

    monkeypatch.setattr(cli_classify, "_zero_shot_differs", lambda *args: True)  # the counts far apart, as on a skewed folder
    d = photos
    assert main(["classify", "--classnames", str(d / "classes.txt"), "--vfm", "planted:vfm", "--vlm", "planted:vlm",
                 "--templates", "simple", "--cache-dir", str(d / "cache"), "--quiet", "--images", str(d / "photos" / "test"),
                 "--out", str(d / "pm.csv"), "--method", method]) == 0
    zs = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("VLM zero-shot would predict: "))
    assert "far apart" in zs and "Imbalanced folders" in zs
    assert ("try --param class_prior=estimate" in zs) == (method == "gpua")


def test_an_interrupted_fit_says_the_features_are_cached(photos, capsys, monkeypatch):
    """Ctrl-C during the fit said "the photos encoded so far are saved (every 256)": every photo was
    already encoded and cached; only the fit runs again."""
    from gpua.cli._common import FitProgress

    def interrupt(self, entry):
        raise KeyboardInterrupt

    d = photos
    monkeypatch.setattr(FitProgress, "__call__", interrupt)  # Ctrl-C at the fit's first report
    assert _classify(d, "--images", str(d / "photos" / "test"), "--out", str(d / "pi.csv")) == 130
    err = capsys.readouterr().err
    assert "interrupted; every photo's features are cached; the same command reads them back and only the fit runs again" in err
    monkeypatch.undo()
    assert _classify(d, "--images", str(d / "photos" / "test"), "--out", str(d / "pi.csv")) == 0
    assert "features cached in" in capsys.readouterr().out


def test_a_warning_about_the_folder_is_said_once(photos, capsys):
    """The photos folder is read as the photos and as the pool: its warnings (an empty class folder,
    a file whose name ends otherwise) were printed twice."""
    import shutil

    d = photos
    folder = d / "photos" / "test"
    for f in (folder / "sand").iterdir():
        f.unlink()
    shutil.copy(folder / "sky" / "sky_0.png", folder / "sky" / "sky_9.png_large")
    assert _classify(d, "--images", str(folder), "--out", str(d / "pw.csv")) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]
    assert len(warned) == 2 and any("hold no images" in w for w in warned) and any("end otherwise" in w for w in warned)


@pytest.mark.parametrize("estimate", ["estimate", "zero_shot"])
def test_classify_with_an_estimated_class_prior(photos, capsys, estimate):
    """--param class_prior=estimate / zero_shot reaches the fit (the history records the estimate); no hint to try it."""
    d = photos
    assert _classify(d, "--images", str(d / "photos" / "test"), "--out", str(d / "pe.csv"), "--model-out", str(d / "me.gpua"),
                     "--param", f"class_prior={estimate}") == 0
    zs = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("VLM zero-shot would predict: "))
    assert "try --param" not in zs
    from gpua import load_model

    model = load_model(d / "me.gpua")
    assert model.class_prior == estimate and len(model.history_["class_prior_estimate"]["prior"]) == 5
    source = "first_fit_pseudo_label_counts" if estimate == "estimate" else "zero_shot_counts"
    assert sum(model.history_["class_prior_estimate"][source]) == 15


def test_classify_a_flat_folder_with_a_pool(photos, capsys):
    d = photos
    assert _classify(d, "--images", str(d / "flat"), "--pool", str(d / "photos" / "train"), "--out", str(d / "p.csv")) == 0
    rows = list(csv.DictReader((d / "p.csv").open()))
    assert len(rows) == 15 and "label" not in rows[0]  # flat: no labels
    assert np.mean([r["prediction"] == r["image"].split("_")[0] for r in rows]) >= 0.6
    assert "--pool" in capsys.readouterr().out
    # a second run reads the cached features back: the same predictions
    assert _classify(d, "--images", str(d / "flat"), "--pool", str(d / "photos" / "train"), "--out", str(d / "p2.csv")) == 0
    assert (d / "p2.csv").read_text() == (d / "p.csv").read_text()


def test_classify_checks_the_method_before_extracting(photos, capsys):
    d = photos
    assert _classify(d, "--images", str(d / "flat"), "--out", str(d / "p.csv"), "--method", "gpau") == 2
    assert "'gpau'" in capsys.readouterr().err and not (d / "cache").exists() and not (d / "p.csv").exists()


# The tiny random encoders give 30-image pools with no class structure, on which UCM's sharp default
# plan may still be moving after max_outer rounds: the warning is right there, and beside the point.
@pytest.mark.filterwarnings("ignore::gpua.ConvergenceWarning")
def test_benchmark_runs_resumes_and_tables(photos, capsys):
    d = photos
    argv = ["benchmark", "--datasets", f"{d / 'photos'},cifar10-mini", "--vfm", "planted:vfm", "--vlm", "planted:vlm",
            "--methods", "zero_shot,gpua", "--pool", "3-shot", "--out", str(d / "bench"), "--cache-dir", str(d / "cache"),
            "--templates", "simple", "--quiet", *FAST]
    # cifar10-mini's class names mean nothing to the planted VLM: only the photos run with it, then tiny encoders on both
    argv_photos = list(argv)
    argv_photos[2] = str(d / "photos")
    assert main(argv_photos) == 0
    rows = [json.loads(line) for line in (d / "bench" / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["zero_shot", "gpua"]
    r = rows[1]
    assert (r["vfm"], r["vlm"], r["pool"], r["n_pool"], r["n_test"], r["n_classes"]) == ("planted:vfm", "planted:vlm", "3-shot", 15, 15, 5)
    assert set(r["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"} and set(r["seconds"]) == {"extract", "fit", "predict"}
    capsys.readouterr()
    assert main(argv_photos) == 0  # resumed: nothing to redo
    assert "already in" in capsys.readouterr().out
    assert len((d / "bench" / "results.jsonl").read_text().splitlines()) == 2
    tiny = [a if a not in ("planted:vfm", "planted:vlm") else a.replace("planted", "tiny") for a in argv] + ["--test-per-class", "2"]
    assert main(tiny) == 0
    rows = [json.loads(line) for line in (d / "bench" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["dataset"] for r in rows} == {str(d / "photos"), "cifar10-mini"}
    cifar = [r for r in rows if r["dataset"] == "cifar10-mini"]
    assert all(r["n_pool"] == 30 and r["n_test"] == 20 and r["test_subset"] == "2 per class" for r in cifar)
    md = (d / "bench" / "results.md").read_text()
    assert "| **mean** |" in md and "cifar10-mini" in md
    table = list(csv.reader((d / "bench" / "results.csv").open()))
    assert table[-1][0] == "mean" and len(table[0]) == 5  # dataset + 4 runs: 2 methods x (planted, tiny encoders)
    col = table[0].index(next(h for h in table[0] if "gpua" in h and "tiny" in h))
    vals = [float(row[col]) for row in table[1:-1] if row[col]]
    assert float(table[-1][col].split()[0]) == pytest.approx(np.mean(vals), abs=0.01)


def test_benchmark_checks_names_before_extracting(photos, capsys):
    d = photos
    base = ["benchmark", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--out", str(d / "b"), "--cache-dir", str(d / "cache")]
    assert main([*base, "--datasets", str(d / "photos"), "--methods", "gpua,zeroshot"]) == 2
    assert "'zeroshot'" in capsys.readouterr().err
    assert main([*base, "--datasets", f"{d / 'photos'},nope-dataset"]) == 2
    assert "nope-dataset" in capsys.readouterr().err
    assert main([*base, "--datasets", "oxford_pets"]) == 2
    assert "--dataset-root" in capsys.readouterr().err
    assert main([*base, "--datasets", str(d / "photos"), "--pool", "sixteen"]) == 2
    assert not (d / "cache").exists()


def test_benchmark_fashion_mnist_from_idx_files(tmp_path, idx_files, capsys):
    """`--datasets fashion-mnist` reads the idx files of --dataset-root/fashion-mnist/ (tiny ones here)."""
    # two grey stripes per class (the tiny encoder sees 4x4 thumbnails): 3 train and 2 test images of each class. (One
    # flat grey level per class gave features that differ only in length: one direction, a pool GPUA now refuses.)
    idx_files.make_folder(tmp_path / "data" / "fashion-mnist", n_train=30, n_test=20,
                          images=lambda split, labels: np.stack([np.tile(np.repeat([20 + 20 * k, 235 - 20 * k], 14), (28, 1))
                                                                 for k in labels]).astype(np.uint8))
    argv = ["benchmark", "--datasets", "fashion-mnist", "--dataset-root", str(tmp_path / "data"), "--vfm", "tiny:vfm", "--vlm", "tiny:vlm",
            "--methods", "zero_shot,gpua", "--pool", "2-shot", "--out", str(tmp_path / "bench"), "--cache-dir", str(tmp_path / "cache"),
            "--quiet", *FAST]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "bench" / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["zero_shot", "gpua"]
    assert all((r["dataset"], r["n_pool"], r["n_test"], r["n_classes"]) == ("fashion-mnist", 20, 20, 10) for r in rows)
    assert "fashion-mnist" in capsys.readouterr().out
    # the files are cached under their own key (not the system's /usr/share/datasets copy)
    cached = {p.name for p in (tmp_path / "cache" / "benchmark").iterdir()}
    assert cached and all(name.startswith("fashion-mnist-") for name in cached)


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
def test_benchmark_never_writes_a_new_folder_into_a_dataset_split(photos, capsys, flag):
    """benchmark --out ds/train/res scored 'res' as a sixth class (n_classes 6) without a word, and a
    --cache-dir there left a folder the next run read as a class."""
    d = photos
    split = d / "photos" / "train"
    before = sorted(p.name for p in split.iterdir())
    argv = ["benchmark", "--datasets", str(d / "photos"), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--methods",
            "zero_shot", "--quiet", "--out", str(d / "bench"), "--cache-dir", str(d / "cache")]
    argv[argv.index(flag) + 1] = str(split / "new")
    assert main(argv) == 2
    err = capsys.readouterr().err
    if flag == "--cache-dir":
        assert f"lies in --datasets {str(split)!r}" in err, err
    else:
        assert f"would create the folder 'new' inside --datasets {str(split)!r}" in err, err
    assert sorted(p.name for p in split.iterdir()) == before
