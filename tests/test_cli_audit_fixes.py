"""Audit fixes of the command line: benchmark resume keys, predict's encoder check, class-count and
pool checks of classify/benchmark, and output piped into a reader that stops early."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gpua.cli import main
from gpua.features import load_features, save_features
from test_classify_benchmark import FAST, _classify  # the planted-photo folders come from conftest's photos fixture


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- 1. gpua benchmark: a re-run with other parameters or templates is not a resumed run ----------
@pytest.mark.filterwarnings("ignore::gpua.ConvergenceWarning")
def test_benchmark_rerun_with_other_settings_recomputes(photos, capsys):
    d = photos
    jsonl = d / "bench" / "results.jsonl"
    base = ["benchmark", "--datasets", str(d / "photos"), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--methods", "zero_shot,gpua",
            "--pool", "2-shot", "--out", str(d / "bench"), "--cache-dir", str(d / "cache"), "--quiet", *FAST]
    assert main([*base, "--templates", "simple"]) == 0
    first = _rows(jsonl)
    assert [r["params"] for r in first] == [{"n_steps": 20, "eval_every": 5}] * 2 and {r["prompt_templates"] for r in first} == {"simple"}
    capsys.readouterr()
    changed = [*base, "--templates", "simple", "--param", "whiten=none", "--param", "center=false", "--lam", "0.1"]
    assert main(changed) == 0
    out = capsys.readouterr().out
    assert "already in" not in out
    rows = _rows(jsonl)
    assert len(rows) == 4 and rows[:2] == first  # the first run's rows are kept
    new = rows[3]
    assert new["method"] == "gpua" and new["params"] == {"n_steps": 20, "eval_every": 5, "whiten": None, "center": False, "lam": 0.1}
    # the table is this run's: its gpua figure is the new row's, and it says the settings
    md = (d / "bench" / "results.md").read_text()
    assert f"| {100 * new['metrics']['acc1']:.2f} |" in md and "lam=0.1" in md and "templates simple" in md
    assert "2 row(s) of other settings" in out
    capsys.readouterr()
    assert main(changed) == 0  # the same settings again: resumed
    assert "already in" in capsys.readouterr().out and len(_rows(jsonl)) == 4
    assert main([*base, "--templates", "auto"]) == 0  # other templates: run again
    assert "already in" not in capsys.readouterr().out and len(_rows(jsonl)) == 6
    # a release whose defaults differ (say rho's) is another setting too, though --param is the same
    import gpua.benchmark

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpua.benchmark, "_defaults_setting", lambda: "other")
        assert main(changed) == 0
    assert "already in" not in capsys.readouterr().out and len(_rows(jsonl)) == 8


@pytest.mark.filterwarnings("ignore::gpua.ConvergenceWarning")
def test_benchmark_reads_rows_written_before_settings_were_recorded(photos, capsys):
    d = photos
    jsonl = d / "bench" / "results.jsonl"
    argv = ["benchmark", "--datasets", str(d / "photos"), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--methods", "zero_shot",
            "--pool", "2-shot", "--out", str(d / "bench"), "--cache-dir", str(d / "cache"), "--templates", "simple", "--quiet"]
    assert main(argv) == 0
    old = [{k: v for k, v in r.items() if k not in ("params", "prompt_templates", "data")} for r in _rows(jsonl)]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in old))
    capsys.readouterr()
    assert main(argv) == 0  # their settings are unknown: not reused, kept
    out = capsys.readouterr().out
    assert "already in" not in out and "1 row(s) of other settings" in out
    rows = _rows(jsonl)
    assert len(rows) == 2 and rows[0] == old[0] and rows[1]["params"] == {}
    from gpua.benchmark import build_tables

    md, _ = build_tables(rows)  # the whole file: the two runs are told apart
    assert "unknown" in md.splitlines()[2]


# -- 2. gpua predict checks the encoders as gpua evaluate does -----------------------------------
def test_predict_warns_when_the_features_come_from_other_encoders(planted, tmp_path, capsys):
    train, test = planted
    meta = {"vfm": {"spec": "offline:efficientnet-lite2"}, "vlm": {"spec": "offline:semantic-lite0"}}
    for name, part, vfm in (("lite2", train, "offline:efficientnet-lite2"), ("lite0", test, "offline:efficientnet-lite0")):
        save_features(tmp_path / f"{name}.npz", vfm_features=part.vfm_features, vlm_features=part.vlm_features, labels=part.labels,
                      text_prototypes=part.text_prototypes, classnames=part.classnames, meta={**meta, "vfm": {"spec": vfm}})
    model = tmp_path / "m.gpua"
    assert main(["fit", "--train", str(tmp_path / "lite2.npz"), "--out", str(model), "--n-steps", "5", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--features", str(tmp_path / "lite0.npz"), "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "'offline:efficientnet-lite0'" in err and "'offline:efficientnet-lite2'" in err
    assert main(["predict", "--model", str(model), "--features", str(tmp_path / "lite2.npz"), "--out", str(tmp_path / "p.csv")]) == 0
    assert "warning" not in capsys.readouterr().err


# -- 3. one class: refused before anything is encoded, naming the option ---------------------------
def test_one_class_is_refused_before_encoding(photos, capsys):
    d = photos
    (d / "one.txt").write_text("sky\n")
    assert main(["classify", "--images", str(d / "flat"), "--classnames", str(d / "one.txt"), "--out", str(d / "one.csv"),
                 "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--cache-dir", str(d / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--classnames" in err and "1 class" in err and "text_prototypes" not in err
    assert not (d / "cache").exists() and not (d / "one.csv").exists()
    for split in ("train", "test"):  # a benchmark dataset of one class folder
        shutil.copytree(d / "photos" / split / "sky", d / "onecls" / split / "sky")
    assert main(["benchmark", "--datasets", str(d / "onecls"), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--pool", "2-shot",
                 "--out", str(d / "bench"), "--cache-dir", str(d / "cache")]) == 2
    err = capsys.readouterr().err
    assert "--datasets" in err and "1 class" in err and not (d / "cache").exists()


# -- 4. --pool is read as unlabeled images, whatever its sub-folders are called --------------------
def test_classify_pool_subfolders_need_not_be_classes(photos, capsys):
    d = photos
    for year, split in (("2023", "train"), ("2024", "test")):
        shutil.copytree(d / "photos" / split / "sky", d / "dated" / year / "sky_photos")
        for k, cls in enumerate(("grass", "road", "water", "sand")):
            shutil.copytree(d / "photos" / split / cls, d / "dated" / year / f"batch{k}")
    assert _classify(d, "--images", str(d / "flat"), "--pool", str(d / "dated"), "--out", str(d / "x.csv"), "--model-out", str(d / "m.gpua")) == 0
    from gpua import load_model

    pool = load_features(load_model(d / "m.gpua").provenance_["features"]["path"])
    assert pool.n_samples == 40 and (pool.labels is None or (pool.labels == -1).all())
    assert pool.image_ids[0].startswith("2023/batch0/")
    capsys.readouterr()
    assert _classify(d, "--images", str(d / "photos" / "test"), "--pool", str(d / "photos" / "test"), "--out", str(d / "z.csv")) == 0
    assert "acc1" in capsys.readouterr().out  # --pool as --images: the photos themselves, labels kept for the score
    (d / "empty" / "2023").mkdir(parents=True)
    assert _classify(d, "--images", str(d / "flat"), "--pool", str(d / "empty"), "--out", str(d / "y.csv")) == 2
    assert "--pool" in capsys.readouterr().err


# -- 5. a reader that stops early (| head -1) ends the command quietly -----------------------------
class _ClosedPipe(io.StringIO):
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")


def test_broken_pipe_ends_quietly(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["fit", "--list-params"]) == 141
    assert main(["fit", "--train", str(files["train"]), "--out", str(tmp_path / "m.gpua"), "--n-steps", "5", "--no-progress"]) == 141
    assert (tmp_path / "m.gpua").exists()  # the work is done; only the report could not be shown
    assert capsys.readouterr().err == ""


def test_a_json_file_is_written_when_the_reader_of_stdout_stops_early(planted, tmp_path, monkeypatch):
    """evaluate, compare and calibrate printed their table before writing --json FILE: with
    `| head` or `| true` the work was done and the JSON lost (exit 141, no file)."""
    train, test = planted
    kw = dict(vfm_features=test.vfm_features, vlm_features=test.vlm_features, text_prototypes=test.text_prototypes,
              classnames=test.classnames, labels=test.labels)
    test_file = save_features(tmp_path / "test.npz", **kw)
    train_file = save_features(tmp_path / "train.npz", **{**kw, "vfm_features": train.vfm_features,
                                                          "vlm_features": train.vlm_features, "labels": train.labels})
    assert main(["fit", "--train", str(train_file), "--out", str(tmp_path / "m.gpua"), "--n-steps", "5", "--no-progress",
                 "--quiet"]) == 0
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    runs = {
        "evaluate.json": ["evaluate", "--model", str(tmp_path / "m.gpua"), "--test", str(test_file), "--report"],
        "compare.json": ["compare", "--train", str(train_file), "--test", str(test_file), "--methods", "zero_shot", "--quiet"],
        "calibrate.json": ["calibrate", "longtail", "--features", str(train_file), "--test", str(test_file), "--imbalance", "10"],
    }
    for name, argv in runs.items():
        assert main([*argv, "--json", str(tmp_path / name)]) == 141, name
        assert json.loads((tmp_path / name).read_text()), name


@pytest.mark.parametrize("damage", ["duplicate_classnames", "nan_row", "short_image_ids"])
def test_a_damaged_feature_file_is_named_in_the_error(planted, tmp_path, capsys, damage):
    """The checks of a file's contents said what was wrong but not in which file (fit, predict and
    compare read two or three)."""
    train, _ = planted
    kw = dict(vfm_features=train.vfm_features.copy(), vlm_features=train.vlm_features, text_prototypes=train.text_prototypes,
              classnames=list(train.classnames))
    if damage == "duplicate_classnames":
        kw["classnames"][1] = kw["classnames"][0]
    elif damage == "nan_row":
        kw["vfm_features"][10, 0] = np.nan
    else:
        kw["image_ids"] = ["a", "b", "c"]
    bad = tmp_path / "damaged.npz"
    np.savez(bad, **{k: np.asarray(v) for k, v in kw.items()})
    assert main(["fit", "--train", str(bad), "--out", str(tmp_path / "m.gpua"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpua fit: error: feature file {str(bad)!r}: "), err
    assert not (tmp_path / "m.gpua").exists()


def test_a_model_given_as_a_feature_file_is_named(files, tmp_path, capsys):
    model = tmp_path / "m.gpua"
    assert main(["fit", "--train", str(files["train"]), "--out", str(model), "--n-steps", "5", "--no-progress", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--test", str(model)]) == 2
    assert f"feature file {str(model)!r} is a gpua model (written by model.save or gpua fit), not features" in capsys.readouterr().err


def test_a_parameter_given_twice_with_two_values_is_refused(files, tmp_path, capsys):
    """--param lam=0.3 --param lam=0.5 fitted with 0.5 without a word (a flag and a --param that disagree were refused)."""
    out = tmp_path / "m.gpua"
    assert main(["fit", "--train", str(files["train"]), "--out", str(out), "--param", "lam=0.3", "--param", "lam=0.5"]) == 2
    assert "--param lam=0.3 and --param lam=0.5 both set lam, to different values" in capsys.readouterr().err
    assert not out.exists()
    from gpua.cli._common import parse_params

    assert parse_params(["lam=0.5", "lam=0.50"]) == {"lam": 0.5}  # the same value twice is no conflict


def test_compare_runs_a_method_named_twice_once(planted, tmp_path):
    from gpua.report import compare_methods

    train, test = (part.feature_set() for part in planted)
    rows = compare_methods(train, test, ["zero_shot", "zero_shot", "procrustes_only"], overrides={"n_steps": 5})
    assert [r["method"] for r in rows] == ["zero_shot", "procrustes_only"]


def test_list_params_into_a_closed_pipe(tmp_path):
    r, w = os.pipe()
    os.close(r)  # nobody reads: every write fails with EPIPE, as after `| head -1` has exited
    try:
        proc = subprocess.run([sys.executable, "-m", "gpua", "fit", "--list-params"], stdout=w, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)
    assert proc.returncode == 141 and proc.stderr == b""


@pytest.fixture
def files(planted, tmp_path):
    train, _ = planted
    return {"train": save_features(tmp_path / "train.npz", vfm_features=train.vfm_features, vlm_features=train.vlm_features,
                                   text_prototypes=train.text_prototypes, classnames=train.classnames)}



@pytest.mark.parametrize("flags", [["--rows-per-shard", "10"], ["--shard-storage", "safetensors"]])
def test_shard_set_flags_with_one_feature_file_are_refused(tmp_path, capsys, flags):
    """They were ignored without a word when --out named one .npz file."""
    from gpua.cli import main

    out = tmp_path / "x.npz"
    assert main(["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", "cifar10-mini", "--out", str(out),
                 "--quiet", *flags]) == 2
    assert f"{flags[0]} applies to a shard set, but --out" in capsys.readouterr().err  # was: "apply", and "leave them out"
    assert not out.exists()


def test_extract_names_split_and_image_root_as_flags(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from gpua.cli import main

    for split in ("train", "test"):
        (tmp_path / "d" / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "d" / split / "cat" / "0.png")
    argv = ["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", str(tmp_path / "d"), "--out",
            str(tmp_path / "x.npz"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pass --split" in err and "split=" not in err  # was: "pass split= one of them"
    assert main([*argv, "--split", "train", "--image-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--image-root applies to CoOp split files" in err and "image_root=" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("flags, named", [(["--device", "cuda"], "--device 'cuda'"), (["--param", "device=cuda"], "--param device")])
def test_a_cuda_device_without_a_gpu_is_named_as_the_flag_before_any_work(tmp_path, capsys, flags, named):
    """It said "device='cuda' ... use device='cpu'", the Python spelling, from inside the fit."""
    from gpua.cli import main

    assert main(["fit", "--train", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "m.gpua"), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "no CUDA GPU is available here" in err and "device=" not in err.replace("--param device", "")


@pytest.mark.parametrize("value, said", [("0", "0 must be 1 or more"), ("1000", "1000 must be from 1 to 256")])
def test_workers_out_of_range_is_refused_by_its_flag(value, said, capsys):
    """--workers 1000 got "workers=1000 must be ..." from the library, after the parsing, naming no flag."""
    with pytest.raises(SystemExit) as e:
        main(["classify", "--images", "x", "--classnames", "y", "--out", "z.csv", "--workers", value])
    assert e.value.code == 2 and f"argument --workers: {said}" in capsys.readouterr().err
