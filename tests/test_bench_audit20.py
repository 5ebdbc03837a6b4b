"""benchmarks/ audit fixes: shard sets reused only when they were made alike (scale.py), the pool imbalance a
long-tailed pool reaches, output paths checked before any work, strict JSON, inputs checked before the first
set runs, missing development sets said and never written over a results file, the demo's resolved paths,
devsets.py's swapped sets, and three help texts and errors. Every test says what happened before ("Was: ...")."""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def bench_path(monkeypatch):
    """The scripts import ``_harness`` and ``devsets`` as Python does when they run: ``benchmarks/`` on the path."""
    monkeypatch.syspath_prepend(str(BENCH))


def _script(name: str):
    return importlib.import_module(name)


def _strict_loads(text: str):
    """``json.loads`` that refuses NaN and Infinity, as strict JSON readers (JavaScript, jq) do."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _one_line_error(err: str, *needles: str) -> None:
    """argparse's usage error: the last line of stderr says it all, with each of ``needles``."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines and "error:" in lines[-1], err
    for needle in needles:
        assert needle in lines[-1], (needle, err)


def _save_planted(path: Path, n: int = 200, seed: int = 0, **kw) -> None:
    from gpua.features import save_features
    from gpua.synthetic import make_planted

    d = make_planted(n_samples=n, n_classes=4, d_vfm=12, d_vlm=8, d_latent=4, random_state=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_features(path, vfm_features=d.vfm_features, vlm_features=d.vlm_features, text_prototypes=d.text_prototypes,
                  labels=d.labels, classnames=list(d.classnames), **kw)


def _cache_cifar_lite2(cache: Path) -> None:
    """Planted features under the file names of the cifar-lite2 development set (pool = train, test)."""
    devsets = _script("devsets")
    paths = devsets.feature_paths("cifar-lite2", cache)
    _save_planted(paths["pool"], seed=0)
    _save_planted(paths["test"], seed=1)


# --- 1. scale.py: shard sets reused only when made with the same settings; exit 1 when no fit gave figures ---


def test_scale_rebuilds_a_shard_set_made_with_another_latent_width(tmp_path, capsys):
    """Was: the folder name held no --d-latent and reuse checked only that index.json existed, so a run with
    --d-latent 5 timed the shards a --d-latent 3 run had made, and said nothing."""
    scale = _script("scale")
    from gpua.stream import ShardedFeatures

    three = scale.make_shards(tmp_path, 300, 4, 8, 6, 3, "float16")
    five = scale.make_shards(tmp_path, 300, 4, 8, 6, 5, "float16")
    assert ShardedFeatures(three).meta["planted"]["latent"] == 3
    assert ShardedFeatures(five).meta["planted"]["latent"] == 5 and five != three
    assert scale.make_shards(tmp_path, 300, 4, 8, 6, 5, "float16") == five and "rebuilding" not in capsys.readouterr().out
    # a set whose stored settings differ from its name's (an older run's folder) is rebuilt, not reused
    import shutil

    shutil.rmtree(five)
    three.rename(five)
    assert scale.make_shards(tmp_path, 300, 4, 8, 6, 5, "float16") == five
    assert ShardedFeatures(five).meta["planted"]["latent"] == 5 and "rebuilding" in capsys.readouterr().out


def _child_fits(scale, outcome: str = "figures"):
    """``subprocess.run`` for scale.py's child fits: the child's own main run in this process (``"figures"``),
    a child that fails (``"fails"``) or one stopped by --timeout (``"stopped"``)."""
    def run(cmd, stdout=None, stderr=None, timeout=None):
        if outcome == "stopped":
            raise subprocess.TimeoutExpired(cmd, timeout)
        if outcome == "fails":
            stdout.write("Traceback ...\nRuntimeError: out of memory\n")
            return subprocess.CompletedProcess(cmd, 1)
        return subprocess.CompletedProcess(cmd, scale.main(cmd[2:]))

    return run


def test_scale_records_the_planted_settings_and_fails_when_no_fit_gave_figures(tmp_path, monkeypatch, capsys):
    """Was: the JSON held no --d-latent (nor the shards' settings), and a run whose every fit failed or was
    stopped exited 0 and wrote a results file of failures over the last good one."""
    scale = _script("scale")
    argv = ["--n", "300", "--k", "4", "--d-vfm", "8", "--d-vlm", "6", "--d-latent", "3", "--mode", "memory", "--root",
            str(tmp_path / "root"), "--threads", "1"]
    out = tmp_path / "scale.json"
    monkeypatch.setattr(scale.subprocess, "run", _child_fits(scale))
    assert scale.main([*argv, "--json", str(out)]) == 0
    res = _strict_loads(out.read_text())
    assert res["planted"]["d_latent"] == 3 and res["results"][0]["planted"]["latent"] == 3
    good = out.read_text()
    for outcome in ("fails", "stopped"):
        monkeypatch.setattr(scale.subprocess, "run", _child_fits(scale, outcome))
        capsys.readouterr()
        assert scale.main([*argv, "--timeout", "1", "--json", str(out)]) == 1
        assert out.read_text() == good  # the earlier figures are kept
        assert "no fit gave figures" in capsys.readouterr().err


# --- 2. devsets.long_tailed: the ratio reached, recorded and said ---


def test_long_tailed_pool_records_the_ratio_it_reaches(tmp_path, capsys, monkeypatch):
    """Was: planted's 16 rows per class (at least 2 kept) reach a ratio of 8, but --pool-imbalance 10 and 50 were
    labelled 10 and 50 in the note and the JSON, with no word."""
    devsets, accuracy = _script("devsets"), _script("accuracy")
    monkeypatch.setattr(devsets, "_warned", set(), raising=False)  # each warning is said once per process
    ds = devsets.planted_devset(0)
    for asked in (10, 50):
        lt = devsets.long_tailed(ds, asked, seed=0)
        counts = np.bincount(lt.pool.labels)
        assert lt.pool_imbalance == counts.max() / counts.min() == 8
        assert f"ratio 8 (asked {asked})" in lt.dev_note
    err = capsys.readouterr().err
    assert "pool imbalance 10 asked, 8 reached" in err and "pool imbalance 50 asked, 8 reached" in err
    assert len(err.strip().splitlines()) == 2  # one line each
    assert devsets.long_tailed(ds, 4, seed=0).pool_imbalance == 4 and capsys.readouterr().err == ""  # reached: no warning
    assert devsets.long_tailed(ds, 1).pool_imbalance is None  # the pool as it is
    out = tmp_path / "acc.json"
    assert accuracy.main(["--sets", "planted", "--methods", "zero_shot", "--pool-imbalance", "10", "--json", str(out)]) == 0
    row = _strict_loads(out.read_text())["rows"][0]
    assert row["pool_imbalance_achieved"] == 8 and "asked 10" in capsys.readouterr().out


# --- 3. output paths checked right after the arguments are parsed ---

#: Every script that writes a file, with arguments that keep its run small should the check be missed.
WRITERS = {
    "accuracy": ["--sets", "planted", "--methods", "zero_shot"],
    "ablations": ["--seeds", "1"],
    "cache_check_memory": ["--rows", "10"],
    "calibration": ["--data", "synthetic", "--seeds", "0", "--imbalance", "10", "--skip", "federated"],
    "extract_reuse": ["--encoders", "feed", "--images", "2", "--side", "64"],
    "extract_workers": ["--images", "2", "--side", "64", "--workers", "1"],
    "federated_gpua": ["--n-steps", "4", "--rounds", "1", "--clients", "2", "--alpha", "1"],
    "fit_agreement": ["--sets", "fmnist-lite2"],
    "fit_speed": ["--n", "200", "--k", "4", "--d-vfm", "8", "--d-vlm", "6", "--d-latent", "3", "--no-reference"],
    "headroom": ["--sets", "fmnist-lite2"],
    "imbalance_diagnosis": ["--sets", "fmnist-lite2", "--ratios", "1"],
    "map_levers": ["--sets", "fmnist-lite2"],
    "mining_levers": ["--sets", "fmnist-lite2", "--no-kmeans"],
    "pool_augment": ["--pools", "full", "--augment", "0", "--n-steps", "4"],
    "procrustes_completion": ["--sets", "fmnist-lite2"],
    "probabilities": ["--sets", "fmnist-lite2"],
    "scale": ["--n", "300", "--k", "4", "--d-vfm", "8", "--d-vlm", "6", "--d-latent", "3", "--mode", "memory"],
    "segment_memory": ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--crop", "32", "--height", "64", "--width", "64"],
    "segment_threshold": ["--vfm", "planted:vfm", "--vlm", "planted:vlm"],
    "segment_voc": ["overlay.png"],
    "sinkhorn_speed": ["--n", "100", "--k", "4", "--skip-pot"],
    "small_pools": ["--sets", "fmnist-lite2"],
}


def test_every_writing_script_is_checked_here():
    writers = {p.stem for p in BENCH.glob("[a-z]*.py") if "write_json(" in p.read_text(encoding="utf-8")}
    assert writers == set(WRITERS)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_bad_json_path_is_one_line_before_any_work(name, tmp_path, monkeypatch, capsys):
    """Was: a --json that is a folder or lies under a file was found by the final write, after the whole run:
    a traceback from deep inside, the figures lost."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUA_CACHE_DIR", str(tmp_path / "cache"))
    script = _script(name)
    monkeypatch.setattr(script, "write_json", lambda *a, **k: pytest.fail("a figure was measured and written"), raising=False)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for bad, said in (("folder", "is an existing folder"), ("file.txt/r.json", "which is a file")):
        with pytest.raises(SystemExit) as exc:
            script.main([*WRITERS[name], "--json", str(tmp_path / bad)])
        assert exc.value.code == 2
        captured = capsys.readouterr()
        _one_line_error(captured.err, "--json", said)
        assert "torch" not in captured.out  # stopped before the machine line: no work began


def test_segment_voc_overlay_and_scale_root_are_checked_too(tmp_path, monkeypatch, capsys):
    """Was: segment_voc.py's overlay path being a folder failed at the very end (after the encoders and
    the fit); scale.py's --root under a file failed in a traceback making the first shard set."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    segment_voc, scale = _script("segment_voc"), _script("scale")
    for argv, name in (([str(tmp_path / "folder")], "out"), (["o.png", "--json", "o.png"], "--json"),
                       ([*WRITERS["scale"], "--root", str(tmp_path / "file.txt" / "shards")], "--root")):
        with pytest.raises(SystemExit) as exc:
            (scale if "--root" in argv else segment_voc).main(argv)
        assert exc.value.code == 2
        _one_line_error(capsys.readouterr().err, name)


# --- 4. ablations.py --seeds 0; strict JSON ---


def test_ablations_refuses_no_seeds(capsys):
    """Was: --seeds 0 printed a table of NaN (the mean of no seeds), exited 0 and wrote "acc1": NaN."""
    ablations = _script("ablations")
    with pytest.raises(SystemExit) as exc:
        ablations.main(["--seeds", "0"])
    assert exc.value.code == 2
    _one_line_error(capsys.readouterr().err, "--seeds 0")


def test_write_json_writes_strict_json(tmp_path):
    """Was: json.dumps wrote a NaN as the bare token NaN (not JSON: strict readers refuse the file), and a
    numpy float32 as a string ("0.5")."""
    harness = _script("_harness")
    path = harness.write_json(tmp_path / "r.json", {"acc1": float("nan"), "x": [np.float32(0.5), float("inf")],
                                                    "per_seed": np.array([1.0, np.nan]), "n": np.int64(3), "ok": True})
    got = _strict_loads(path.read_text())
    assert {k: got[k] for k in ("acc1", "x", "per_seed", "n", "ok")} == {"acc1": None, "x": [0.5, None], "per_seed": [1.0, None],
                                                                            "n": 3, "ok": True}


# --- 5. inputs checked before the first data set runs ---


def test_calibration_checks_every_data_entry_first(tmp_path, capsys):
    """Was: --data synthetic digit (a typo of digits) ran synthetic, then ended in a traceback "feature file
    'digit' does not exist"; fashion-mnist without its files, or a missing --test, likewise only in their turn."""
    calibration = _script("calibration")
    fast = ["--seeds", "0", "--imbalance", "10", "--skip", "federated"]
    for argv, said in ((["--data", "synthetic", "digit"], "did you mean 'digits'"),
                       (["--data", "synthetic", "fashion-mnist", "--fashion-mnist", str(tmp_path)], "train-images-idx3-ubyte.gz"),
                       (["--data", "synthetic", str(tmp_path / "missing.npz")], "synthetic-domains, digits, fashion-mnist"),
                       (["--data", "synthetic", "--test", str(tmp_path / "test.npz")], "--test")):
        with pytest.raises(SystemExit) as exc:
            calibration.main([*argv, *fast])
        assert exc.value.code == 2
        captured = capsys.readouterr()
        _one_line_error(captured.err, said)
        assert "== synthetic" not in captured.out  # nothing ran


def test_ablations_checks_train_and_test_first(tmp_path, capsys):
    """Was: a missing --train was read after every planted seed had run, then a traceback; --train without
    --test was silently ignored (only the planted table, exit 0)."""
    ablations = _script("ablations")
    _save_planted(tmp_path / "train.npz")
    for argv, said in ((["--train", str(tmp_path / "missing.npz"), "--test", str(tmp_path / "train.npz")], "does not exist"),
                       (["--train", str(tmp_path / "train.npz")], "--train and --test go together"),
                       (["--test", str(tmp_path / "train.npz")], "--train and --test go together")):
        with pytest.raises(SystemExit) as exc:
            ablations.main(["--seeds", "1", *argv])
        assert exc.value.code == 2
        captured = capsys.readouterr()
        _one_line_error(captured.err, said)
        assert "planted (20 classes" not in captured.out


# --- 6. development sets that are not extracted ---

DEVSET_SCRIPTS = {
    "accuracy": ["--methods", "zero_shot"], "headroom": [], "imbalance_diagnosis": [], "small_pools": [], "map_levers": [],
    "mining_levers": ["--no-kmeans"], "procrustes_completion": [], "fit_agreement": [],
}


@pytest.mark.parametrize("name", sorted(DEVSET_SCRIPTS))
def test_nothing_measured_exits_nonzero_and_keeps_the_results_file(name, tmp_path, capsys):
    """Was: with no named set extracted, the script said "skipping ...", wrote {"rows": []} (small_pools and
    procrustes_completion even "complete": true) over the results file it was given, and exited 0."""
    out = tmp_path / "results.json"
    out.write_text('{"rows": ["last week\'s figures"]}')
    with pytest.raises(SystemExit) as exc:
        _script(name).main(["--sets", "fmnist-lite2", "--cache-dir", str(tmp_path / "empty"), *DEVSET_SCRIPTS[name], "--json", str(out)])
    said = str(exc.value.code)  # SystemExit(message): Python prints it on stderr and exits 1
    assert exc.value.code not in (0, None) and "nothing was measured" in said and "not written" in said
    assert out.read_text() == '{"rows": ["last week\'s figures"]}'
    assert "devsets.py --sets fmnist-lite2 --extract" in capsys.readouterr().err


def test_missing_sets_are_said_at_the_end_and_recorded(tmp_path, capsys):
    """Was: a set named in --sets but not extracted was one "skipping" line above the figures; the JSON did not
    say that the set was asked for and is missing."""
    accuracy, small_pools = _script("accuracy"), _script("small_pools")
    out = tmp_path / "acc.json"
    argv = ["--sets", "planted,fmnist-lite2", "--cache-dir", str(tmp_path / "empty")]
    assert accuracy.main([*argv, "--methods", "zero_shot", "--json", str(out)]) == 0
    assert _strict_loads(out.read_text())["missing_sets"] == ["fmnist-lite2"]
    err = capsys.readouterr().err
    assert "not measured" in err and "devsets.py --sets fmnist-lite2 --extract" in err
    assert small_pools.main([*argv, "--per-class", "2", "--draws", "1", "--settings", "zero_shot", "--json", str(out)]) == 0
    res = _strict_loads(out.read_text())
    assert res["missing_sets"] == ["fmnist-lite2"] and res["complete"] is True and res["rows"]


# --- 7. federated_gpua.py / pool_augment.py: the demo's files, resolved and named ---


@pytest.fixture()
def demo_cache(tmp_path, monkeypatch):
    """Small planted features where `gpua demo` caches its DINOv2-S CIFAR-10 files, under $GPUA_CACHE_DIR."""
    monkeypatch.setenv("GPUA_CACHE_DIR", str(tmp_path / "cache"))
    harness = _script("_harness")
    _save_planted(harness.demo_features("train"), n=120, seed=0)
    _save_planted(harness.demo_features("test"), n=80, seed=1)
    return harness.demo_features("train"), harness.demo_features("test")


@pytest.mark.parametrize("name, argv", [
    ("federated_gpua", ["--clients", "2", "--alpha", "1", "--rounds", "1", "--n-steps", "4"]),
    ("pool_augment", ["--pools", "full", "--augment", "0", "--n-steps", "4", "--seeds", "1", "--query", "vfm"]),
])
def test_demo_feature_files_are_named_in_the_report_and_json(name, argv, demo_cache, tmp_path, capsys):
    """Was: with the demo's files used by default the JSON recorded "train": "None", "test": "None" and the
    report said "None (120 rows)"."""
    train, test = demo_cache
    out = tmp_path / "r.json"
    assert _script(name).main([*argv, "--json", str(out)]) == 0
    res = _strict_loads(out.read_text())
    assert (res["train"], res["test"]) == (str(train), str(test))
    text = capsys.readouterr().out
    assert train.name in text and "None" not in text


def test_demo_paths_in_docstrings_follow_the_cache_setting():
    """Was: the usage lines gave ~/.cache/gpua/demo/... though the scripts read $GPUA_CACHE_DIR when it is set."""
    for name in ("federated_gpua", "pool_augment"):
        doc = _script(name).__doc__
        assert "${GPUA_CACHE_DIR:-~/.cache/gpua}/demo/cifar10-mini_train__" in doc
        assert " ~/.cache/gpua/demo" not in doc


# --- 8. devsets.py takes the swapped sets ---


def test_devsets_lists_the_swapped_sets(tmp_path, capsys):
    """Was: devsets.py --sets cifar-dinov2-swapped failed "unknown set(s)", though accuracy.py takes it."""
    devsets = _script("devsets")
    _cache_cifar_lite2(tmp_path)
    assert devsets.main(["--sets", "cifar-lite2-swapped", "--cache-dir", str(tmp_path)]) == 0
    assert "cifar-lite2-swapped: pool 200, dev -, test 200" in capsys.readouterr().out


# --- 9. help texts and errors ---


def test_extract_workers_help_is_a_whole_sentence(capsys):
    """Was: the description was the docstring's first line, cut mid-sentence ("... decoding and")."""
    with pytest.raises(SystemExit):
        _script("extract_workers").main(["--help"])
    assert "against one thread (the baseline, measured in the same run)." in " ".join(capsys.readouterr().out.split())


def test_pool_augment_change_column_needs_no_order(capsys):
    """Was: --augment's help said "0 must come first for the paired change", but the change is matched by draw
    whatever the order (only a run without 0 has no change column)."""
    pool_augment = _script("pool_augment")
    with pytest.raises(SystemExit):
        pool_augment.parse_args(["--help"])
    assert "must come first" not in capsys.readouterr().out
    records = [{"pool": "full", "seed": 0, "n_pool": 10, "pool_augment": m, "acc1": acc, "pseudo_label_acc": 0.5, "n_synthetic": m,
                "mean_oas_rho": None, "refine_steps": 1, "seconds": 0.1} for m, acc in ((16, 0.7), (0, 0.6))]
    got = {r["pool_augment"]: r["delta_mean"] for r in pool_augment.summarise(records)}
    assert got[16] == pytest.approx(0.1) and got[0] == 0


def test_small_pools_usage_error_only_for_too_few_rows(monkeypatch, capsys):
    """Was: any ValueError while fitting (a bug in a setting) became "error: planted: <message>", exit 2, as if
    --per-class were wrong; only too few rows per class is the user's to fix."""
    small_pools = _script("small_pools")
    with pytest.raises(SystemExit) as exc:
        small_pools.main(["--sets", "planted", "--per-class", "20", "--draws", "1", "--settings", "zero_shot"])
    assert exc.value.code == 2
    _one_line_error(capsys.readouterr().err, "planted", "fewer than --per-class 20")

    def broken(*a, **k):
        raise ValueError("a bug in a setting")

    monkeypatch.setattr(small_pools, "fit_and_score", broken)
    with pytest.raises(ValueError, match="a bug in a setting"):
        small_pools.main(["--sets", "planted", "--per-class", "2", "--draws", "1", "--settings", "zero_shot"])
