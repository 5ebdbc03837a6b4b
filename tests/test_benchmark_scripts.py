"""benchmarks/: devsets.py and accuracy.py on a small cache written here (no extraction), fit_speed.py, segment_memory.py
and calibration.py on small problems, the harness's JSON files, and every README benchmark command parsed by its script."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(BENCH))
    try:
        import accuracy
        import devsets

        yield devsets, accuracy
    finally:
        sys.path.remove(str(BENCH))


def _write_fmnist_cache(devsets, cache: Path, set_name: str = "fmnist-lite2", bad_ids: bool = False) -> dict:
    """Planted features saved under the Fashion-MNIST file names, with the image ids the split assigns."""
    from gpua.features import save_features
    from gpua.synthetic import make_planted

    pool_idx, dev_idx = devsets.fmnist_indices()
    n_test = 300
    d = make_planted(n_samples=len(pool_idx) + len(dev_idx) + n_test, n_classes=10, d_vfm=12, d_vlm=8, d_latent=4, random_state=0)
    ids = {"pool": [f"train/{i}" for i in pool_idx], "dev": [f"train/{i}" for i in dev_idx], "test": [f"test/{i}" for i in range(n_test)]}
    if bad_ids:
        ids["pool"] = [f"train/{i}" for i in range(len(pool_idx))]
    start = 0
    paths = devsets.feature_paths(set_name, cache)
    for part in ("pool", "dev", "test"):
        rows = slice(start, start + len(ids[part]))
        start += len(ids[part])
        save_features(paths[part], vfm_features=d.vfm_features[rows], vlm_features=d.vlm_features[rows],
                      text_prototypes=d.text_prototypes, labels=d.labels[rows], classnames=list(d.classnames), image_ids=ids[part])
    return paths


def test_loads_the_cache_without_extracting(scripts, tmp_path, monkeypatch):
    devsets, _ = scripts
    paths = _write_fmnist_cache(devsets, tmp_path)
    assert all(p.parent == tmp_path / "devsets" for p in paths.values())
    monkeypatch.setattr("gpua.extract.extract_features", lambda *a, **k: pytest.fail("a cached set was re-extracted"))
    ds = devsets.load_devset("fmnist-lite2", cache_dir=tmp_path, extract_missing=True)
    assert (ds.pool.n_samples, ds.dev.n_samples, ds.test.n_samples) == (2000, 2000, 300)
    assert "dev split" in ds.dev_note
    pool_idx, dev_idx = devsets.fmnist_indices()
    assert len(set(pool_idx) & set(dev_idx)) == 0 and len(pool_idx) == len(dev_idx) == 2000  # disjoint, class-blind draw


def test_missing_and_stale_caches(scripts, tmp_path):
    devsets, _ = scripts
    with pytest.raises(FileNotFoundError, match="--extract"):
        devsets.load_devset("cifar-dinov2", cache_dir=tmp_path)
    _write_fmnist_cache(devsets, tmp_path, bad_ids=True)
    with pytest.raises(ValueError, match="other images"):
        devsets.load_devset("fmnist-lite2", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown development set"):
        devsets.load_devset("mnist-lite2", cache_dir=tmp_path)


def test_planted_set_splits_16_per_class(scripts):
    devsets, _ = scripts
    ds = devsets.planted_devset(0)
    assert ds.pool.n_samples == ds.dev.n_samples == 800 and ds.test.n_samples == 2400
    np.testing.assert_array_equal(np.bincount(ds.pool.labels), np.full(50, 16))
    np.testing.assert_array_equal(np.bincount(ds.dev.labels), np.full(50, 16))


def test_accuracy_rows_seeds_variants_and_json(scripts, tmp_path, capsys):
    devsets, accuracy = scripts
    _write_fmnist_cache(devsets, tmp_path)
    out = tmp_path / "acc.json"
    argv = ["--sets", "fmnist-lite2", "--methods", "zero_shot,gpua", "--seeds", "2", "--cache-dir", str(tmp_path),
            "--variant", 'short={"n_steps": 5}', "--json", str(out)]
    assert accuracy.main(argv) == 0
    res = json.loads(out.read_text())
    assert [(r["method"], r["seed"]) for r in res["rows"]] == [("zero_shot", 0), ("gpua", 0), ("short", 0),
                                                               ("zero_shot", 1), ("gpua", 1), ("short", 1)]
    means = {e["method"]: e for e in res["summary"]}
    assert means["gpua"]["seeds"] == [0, 1]
    assert means["gpua"]["test"] == pytest.approx(np.mean([r["test"] for r in res["rows"] if r["method"] == "gpua"]))
    assert means["zero_shot"]["test_std"] == 0.0  # no randomness in zero-shot
    assert means["gpua"]["test"] > means["zero_shot"]["test"] + 0.05  # planted features: the map must help
    # dev is the dev split here (not the pool); zero-shot's "pseudo-labels" are its pool argmax
    zs = devsets.load_devset("fmnist-lite2", cache_dir=tmp_path)
    from gpua import VLMZeroShot

    model = VLMZeroShot().fit(zs.pool.vfm_features, zs.pool.vlm_features, zs.pool.text_prototypes)
    assert res["rows"][0]["dev"] == pytest.approx(model.score(None, zs.dev.labels, zs.dev.vlm_features))
    assert res["rows"][0]["pl"] == pytest.approx(model.score(None, zs.pool.labels, zs.pool.vlm_features))
    assert res["args"]["variants"] == {"short": {"n_steps": 5}} and "machine" in res
    text = capsys.readouterr().out
    assert "| short |" in text and "± " in text


def test_accuracy_reference_row_and_bad_arguments(scripts, tmp_path, capsys):
    devsets, accuracy = scripts
    _write_fmnist_cache(devsets, tmp_path)
    assert accuracy.main(["--sets", "fmnist-lite2", "--methods", "zero_shot,reference", "--cache-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| reference |" in text and "| zero_shot |" in text
    row = next(line for line in text.splitlines() if line.startswith("| zero_shot |"))
    diff, interval = row.split("|")[3].strip().split(" ", 1)
    low, high = (float(v) for v in interval.strip("[]").split(","))
    assert low <= float(diff) <= high and low < high  # zero-shot and the fitted reference differ on some images
    for bad in (["--variant", 'x={"lam": 2}'], ["--variant", "x=lam"], ["--variant", 'gpua={"lam": 0.5}'], ["--sets", "mnist"],
                ["--pool-imbalance", "0.5"]):
        with pytest.raises(SystemExit) as exc:
            accuracy.main(bad)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "lam=2" in err and "not JSON" in err and "new and distinct" in err and "mnist" in err


def test_swapped_cifar_sets_and_their_two_fold_summary(scripts, tmp_path, capsys):
    """The swapped set fits on the test photos and scores the train photos; beside its twin, a two-fold summary."""
    from gpua.features import save_features
    from gpua.synthetic import make_planted

    devsets, accuracy = scripts
    d = make_planted(n_samples=400, n_classes=10, d_vfm=12, d_vlm=8, d_latent=4, random_state=1)
    paths = devsets.feature_paths("cifar-lite2", tmp_path)
    for part, rows in (("pool", slice(0, 200)), ("test", slice(200, 400))):
        save_features(paths[part], vfm_features=d.vfm_features[rows], vlm_features=d.vlm_features[rows],
                      text_prototypes=d.text_prototypes, labels=d.labels[rows], classnames=list(d.classnames))
    plain, swapped = (devsets.load_devset(n, cache_dir=tmp_path) for n in ("cifar-lite2", "cifar-lite2-swapped"))
    np.testing.assert_array_equal(swapped.pool.vfm_features, plain.test.vfm_features)
    np.testing.assert_array_equal(swapped.test.labels, plain.pool.labels)
    assert swapped.dev is None and "never a criterion" in swapped.dev_note
    assert "cifar-lite2-swapped" not in devsets.SETS  # never a default set: its pool is the other's test split
    out = tmp_path / "acc.json"
    argv = ["--sets", "cifar-lite2,cifar-lite2-swapped", "--methods", "zero_shot,reference", "--seeds", "2",
            "--variant", 'short={"n_steps": 5}', "--cache-dir", str(tmp_path), "--json", str(out)]
    assert accuracy.main(argv) == 0
    res = json.loads(out.read_text())
    folds = {e["method"]: e for e in res["two_fold"]}
    assert set(folds) == {"zero_shot", "reference", "short"} and all(e["set"] == "cifar-lite2 two-fold" for e in folds.values())
    by = {(r["set"], r["method"], r["seed"]): r for r in res["rows"]}
    for m, e in folds.items():  # equal halves: the two-fold accuracy is the mean of the folds' test accuracies
        per_seed = [np.mean([by[s, m, seed]["test"] for s in ("cifar-lite2", "cifar-lite2-swapped")]) for seed in (0, 1)]
        assert e["test"] == pytest.approx(np.mean(per_seed)) and e["test_std"] == pytest.approx(np.std(per_seed))
    low, high = folds["short"]["vs_reference_ci95"]
    assert low <= folds["short"]["vs_reference"] <= high and "vs_reference" not in folds["reference"]
    assert "cifar-lite2 two-fold" in capsys.readouterr().out


def test_paired_difference_interval(scripts):
    _, accuracy = scripts
    rng = np.random.default_rng(0)
    base = rng.random((2, 2000)) < 0.6
    assert accuracy.paired_difference(base, base) == (0.0, 0.0, 0.0)
    better = base.copy()
    better[:, :200] = True  # right on every image of the first 200 in both seeds
    diff, low, high = accuracy.paired_difference(better, base)
    assert diff == pytest.approx(np.mean(better) - np.mean(base)) and 0 < low < diff < high
    # an unrelated method of the same accuracy: the interval holds 0 and is wider than the paired one above
    other = rng.random((2, 2000)) < 0.6
    d2, low2, high2 = accuracy.paired_difference(other, base)
    assert low2 < 0 < high2 and high2 - low2 > high - low
    with pytest.raises(ValueError, match="same seeds"):
        accuracy.paired_difference(base[:1], base)


def test_fit_speed_times_the_reference_in_the_same_run(scripts, tmp_path, capsys):
    import fit_speed

    out = tmp_path / "speed.json"
    argv = ["--n", "400", "--k", "8", "--d-vfm", "24", "--d-vlm", "12", "--d-latent", "6", "--query", "fused",
            "--params", '{"n_steps": 20, "self_learning": 1}', "--reference-timed-steps", "2", "--reference-steps", "40", "--json", str(out)]
    assert fit_speed.main(argv) == 0
    res = json.loads(out.read_text())
    ref = res["reference"]
    assert res["params"] == {"query": "fused", "n_steps": 20, "self_learning": 1}
    assert res["reference_info"]["refine_steps_timed"] == 2 and res["reference_info"]["refine_steps_extrapolated_to"] == 40
    assert ref["refine"]["seconds"] == pytest.approx(40 * ref["refine"]["seconds_per_step"])
    assert ref["fit"]["seconds"] == pytest.approx(ref["ucm"]["seconds"] + ref["procrustes"]["seconds"] + ref["refine"]["seconds"])
    assert res["reference_over_gpua"] == pytest.approx(ref["fit"]["seconds"] / res["gpua"]["fit"]["seconds"])
    assert "self_learning" in res["gpua"]  # the rounds are a stage of GPUA's whole fit
    assert "proba_scale" in res["gpua"]  # and so is the choice of predict_proba's scale
    # GPU memory is recorded only for a CUDA fit (the H200 run's JSON holds it), never as 0 here
    assert res["gpua_info"]["cuda_peak_bytes"] is None and res["reference_info"]["cuda_peak_bytes"] is None
    assert "issue 12 target" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        fit_speed.main(["--params", '{"self_learnin": 2}'])
    assert "did you mean 'self_learning'" in capsys.readouterr().err


def test_headroom_ceilings_on_planted_features(scripts, tmp_path, capsys):
    devsets, _ = scripts
    import headroom

    _write_fmnist_cache(devsets, tmp_path)
    out = tmp_path / "headroom.json"
    assert headroom.main(["--sets", "fmnist-lite2", "--cache-dir", str(tmp_path), "--json", str(out)]) == 0
    res = json.loads(out.read_text())["results"]["fmnist-lite2"]
    assert set(res) == ({"zero-shot", "zero-shot, centred", "k-means [Z, X], matched (pool)"}
                        | {f"{c} {v}" for c in ("probe", "10-NN") for v in ("Z", "X", "[Z, X]")})
    assert 0.1 <= res["k-means [Z, X], matched (pool)"] <= 1.0
    ds = devsets.load_devset("fmnist-lite2", cache_dir=tmp_path)
    from gpua import VLMZeroShot

    zs = VLMZeroShot().fit(ds.pool.vfm_features, ds.pool.vlm_features, ds.pool.text_prototypes)
    assert res["zero-shot"] == pytest.approx(zs.score(None, ds.test.labels, ds.test.vlm_features))
    # planted: the VFM holds the classes (a linear map of the latent), the VLM only a noisy view of them
    assert res["probe Z"] > res["probe X"] + 0.1 and res["probe [Z, X]"] > res["zero-shot"] + 0.1
    assert "10-NN [Z, X]" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        headroom.main(["--sets", "planted"])
    assert exc.value.code == 2


def test_matched_clusters_names_clusters_with_the_best_permutation(scripts):
    import headroom

    rng = np.random.default_rng(0)
    centres = 10.0 * rng.normal(size=(4, 8))
    labels = np.repeat(np.arange(4), 25)
    Q = centres[labels] + rng.normal(size=(100, 8))
    assert headroom.matched_clusters(Q, labels, 4) == 1.0
    assert headroom.matched_clusters(Q, (labels + 1) % 4, 4) == 1.0  # cluster ids carry no names
    noise = rng.normal(size=(100, 8))  # no structure: about chance, far from 1
    assert headroom.matched_clusters(noise, labels, 4) < 0.6


def test_centred_zero_shot_is_the_fit_targets_argmax(scripts):
    import headroom

    from gpua.features import FeatureSet

    rng = np.random.default_rng(0)
    classes = rng.normal(size=(3, 6))
    Y = classes + 4.0 * rng.normal(size=6)  # each modality adds its own class-free direction
    X = np.repeat(classes, 20, axis=0) + rng.normal(scale=0.3, size=(60, 6)) + 4.0 * rng.normal(size=6)
    labels = np.repeat(np.arange(3), 20)
    fs = FeatureSet(vfm_features=X, vlm_features=X, text_prototypes=Y, labels=labels)
    raw = np.mean((X / np.linalg.norm(X, axis=1, keepdims=True) @ (Y / np.linalg.norm(Y, axis=1, keepdims=True)).T).argmax(1) == labels)
    assert raw < 0.8 and headroom.centred_zero_shot(fs, fs) == 1.0


def test_accuracy_on_a_long_tailed_pool(scripts, tmp_path):
    devsets, accuracy = scripts
    _write_fmnist_cache(devsets, tmp_path)
    full = devsets.load_devset("fmnist-lite2", cache_dir=tmp_path)
    ds = devsets.long_tailed(full, 10.0, seed=0)
    n = np.bincount(full.pool.labels).min()
    counts = np.sort(np.bincount(ds.pool.labels, minlength=10))
    assert counts[-1] == n and counts[0] == round(n / 10)  # the smallest class is a tenth of the largest
    assert ds.dev.n_samples == 2000 and "long-tailed" in ds.dev_note  # dev and test as they were
    out = tmp_path / "lt.json"
    assert accuracy.main(["--sets", "fmnist-lite2", "--methods", "zero_shot", "--pool-imbalance", "10", "--cache-dir", str(tmp_path),
                          "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    from gpua import VLMZeroShot

    zs = VLMZeroShot().fit(ds.pool.vfm_features, ds.pool.vlm_features, ds.pool.text_prototypes)
    assert row["pool"] == pytest.approx(zs.score(None, ds.pool.labels, ds.pool.vlm_features))


def test_imbalance_diagnosis_rows_and_oracles(scripts, tmp_path, capsys, monkeypatch):
    """Every row on a long-tailed planted pool; the oracle centring is the label-balanced mean, equal to the pool
    mean when the pool is balanced; bad --ratios are refused with one line."""
    import imbalance_diagnosis as diag

    devsets, _ = scripts
    _write_fmnist_cache(devsets, tmp_path)
    out = tmp_path / "imb.json"
    assert diag.main(["--sets", "fmnist-lite2", "--ratios", "1,10", "--cache-dir", str(tmp_path), "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]["fmnist-lite2"]
    assert set(results) == {"1", "10"} and all(set(r) == set(diag.ROWS) for r in results.values())
    assert all(0 <= v <= 1 for r in results.values() for v in r.values())
    assert "pool imbalance 10" in capsys.readouterr().out
    # the oracle is the mean of the class means: on an exactly balanced set of rows, the pool mean
    pool = devsets.load_devset("fmnist-lite2", cache_dir=tmp_path).pool
    n = np.bincount(pool.labels).min()
    rows = np.concatenate([np.flatnonzero(pool.labels == k)[:n] for k in range(10)])
    from gpua.query import pool_mean

    Z = diag.float_tensor(pool.vfm_features[rows])
    np.testing.assert_allclose(diag.label_balanced_mean(Z, pool.labels[rows]).numpy(), pool_mean(Z).numpy(), atol=1e-6)
    for bad in ("0.5", "ten", ""):
        with pytest.raises(SystemExit):
            diag.main(["--sets", "fmnist-lite2", "--ratios", bad, "--cache-dir", str(tmp_path)])
    # --base puts parameters under every GPUA row (the README's table ran before plan_ridge), recorded in the JSON
    import gpua

    assert json.loads(out.read_text())["base"] == {"random_state": 0}
    seen, real = [], gpua.GPUA.fit
    monkeypatch.setattr(gpua.GPUA, "fit", lambda self, *a, **k: seen.append(self.plan_ridge) or real(self, *a, **k))
    monkeypatch.setattr(sys.modules["_levers"], "BASE_PARAMS", {})
    assert diag.main(["--sets", "fmnist-lite2", "--ratios", "10", "--cache-dir", str(tmp_path), "--base", '{"plan_ridge": null}']) == 0
    assert seen and set(seen) == {None}


README = BENCH.parent / "README.md"
#: a README command that is a whole inline code span or fenced line: ``[.venv/bin/]python benchmarks/NAME.py ARGS``,
#: or ``benchmarks/NAME.py ARGS`` where ARGS start with an option (``-``) or an optional part (``[``)
_COMMAND = re.compile(r"^(?:(?:\.venv/bin/)?python\s+benchmarks/(\w+)\.py\b(.*)|benchmarks/(\w+)\.py\s+([-\[].*))$", re.S)
#: placeholders the README's prose uses for a value -> a value of the right type
_PLACEHOLDERS = {"--pool-imbalance R": "--pool-imbalance 10"}


def _name_args(found: re.Match) -> tuple[str, str]:
    return (found.group(1), found.group(2)) if found.group(1) else (found.group(3), found.group(4))


def readme_benchmark_commands() -> list[tuple[int, str, list[str]]]:
    """(line, script, argv) of every benchmark command in README.md: fenced lines, and inline code spans,
    including spans that a line break splits (``.venv/bin/python`` at a line's end, its script and
    arguments on the next): test_readme's line-by-line reading misses those arguments."""
    lines = README.read_text(encoding="utf-8").splitlines()
    out, in_block, paragraph, start = [], False, [], 0

    def spans(par: list[str], first: int) -> None:
        text = "\n".join(par)
        for m in re.finditer(r"`([^`]+)`", text):
            found = _COMMAND.match(" ".join(m.group(1).split()))
            if found:
                out.append((first + text.count("\n", 0, m.start()), *_name_args(found)))

    for i, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            spans(paragraph, start)
            paragraph, in_block = [], not in_block
            continue
        if in_block:
            found = _COMMAND.match(line.strip().removeprefix("$ "))
            if found:
                out.append((i, *_name_args(found)))
        elif line.strip():
            if not paragraph:
                start = i
            paragraph.append(line)
        else:
            spans(paragraph, start)
            paragraph = []
    spans(paragraph, start)
    result = []
    for i, name, args in out:
        for placeholder, value in _PLACEHOLDERS.items():
            args = args.replace(placeholder, value)
        result.append((i, name, shlex.split(args.replace("[", " ").replace("]", " "), comments=True)))
    return result


class _Parsed(Exception):
    """Raised once a benchmark's parser has accepted its arguments, so nothing runs."""


def test_every_readme_benchmark_command_parses_with_its_own_parser(monkeypatch):
    """Each README benchmark command (one split over two lines too) names flags its script accepts."""
    import argparse
    import importlib

    cmds = readme_benchmark_commands()
    found = {(i, name, " ".join(argv)) for i, name, argv in cmds}
    # commands a line break splits (arguments on the next line), which only this reading sees
    assert any(n == "calibration" and "fashion-mnist" in a for _, n, a in found)
    assert any(n == "fit_speed" and "cuda" in a for _, n, a in found)
    assert any(n == "federated_gpua" and "--train" in a for _, n, a in found)
    assert any(n == "pool_augment" and "--train" in a for _, n, a in found)
    scripts = {p.stem for p in BENCH.glob("[a-z]*.py")}
    assert {name for _, name, _ in cmds} <= scripts
    assert len(cmds) >= 15 and {name for _, name, _ in cmds} >= {"accuracy", "headroom", "ablations", "fit_speed", "segment_voc"}
    original = argparse.ArgumentParser.parse_known_args

    def parse_then_stop(self, args=None, namespace=None):
        ns, extras = original(self, args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        raise _Parsed(ns)

    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_then_stop)
    failed = []
    for i, name, argv in cmds:
        try:
            importlib.import_module(name).main(argv)
        except _Parsed:
            continue
        except SystemExit as exc:
            failed.append(f"README.md:{i}: benchmarks/{name}.py {shlex.join(argv)} -> exit {exc.code}")
            continue
        failed.append(f"README.md:{i}: benchmarks/{name}.py ran past its parser")  # pragma: no cover
    assert not failed, "\n".join(failed)


def test_json_files_get_a_plain_files_mode(scripts, tmp_path):
    """write_json's atomic rename keeps the temporary file's mode: mkstemp's 0600 left results unreadable to others."""
    import os

    import _harness

    mask = os.umask(0o022)
    try:
        path = _harness.write_json(tmp_path / "sub" / "r.json", {"x": 1})
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert json.loads(path.read_text())["machine"]["cores"] == os.cpu_count()
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left beside it


def test_segment_memory_prints_a_ratio_against_its_baseline_and_writes_json(scripts, tmp_path, capsys):
    """A memory target's figure is a ratio against a baseline of the same run, and --json holds the machine record."""
    import segment_memory

    out = tmp_path / "seg.json"
    argv = ["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--crop", "64", "--height", "128", "--width", "256", "--threads", "1"]
    assert segment_memory.main([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "segmentation peak over the RSS before it" in text and "budget 4 GB" in text
    res = json.loads(out.read_text())
    assert res["segment_peak_over_baseline"] == pytest.approx(res["segment_peak_mb"] / res["baseline_rss_mb"])
    assert res["windows"] > 1 and "load_avg" in res["machine"]
    # The banded labels against the whole (K, H, W) scores of the same run (the baseline they save memory on).
    assert "scores a band of rows at a time" in text and res["labels_agree"] > 0.999
    assert res["bands_extra_mb"] >= 0 and res["whole_scores_extra_mb"] >= 0 and res["whole_scores_seconds"] > 0
    assert res["args"]["classes"] == "cityscapes"  # the planted VLM prompts its own class names, not the list
    assert [len(segment_memory._class_list(c)) for c in ("cityscapes", "ade20k", "voc")] == [19, 150, 21]


def test_segment_voc_json_prints_or_writes_a_file(scripts, monkeypatch):
    """``--json`` alone prints the scores (as before); ``--json PATH`` writes them like every other script's --json."""
    import argparse

    import segment_voc

    original = argparse.ArgumentParser.parse_known_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace)[0])

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_then_stop)
    for argv, want in ((["o.png"], None), (["o.png", "--json"], "-"), (["o.png", "--json", "r.json"], "r.json")):
        with pytest.raises(_Parsed) as got:
            segment_voc.main(argv)
        assert got.value.args[0].json == want and got.value.args[0].out == "o.png"


def test_calibration_records_the_arguments_it_ran_with(scripts, tmp_path):
    """Called as main(argv), the JSON's argv is that argv, not the calling process's command line."""
    import calibration

    out = tmp_path / "cal.json"
    argv = ["--data", "synthetic", "--seeds", "0", "--imbalance", "10", "--alpha", "0.5", "--clients", "3", "--rounds", "2",
            "--json", str(out)]
    assert calibration.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["argv"] == argv and res["seeds"] == [0] and "machine" in res


def test_extract_reuse_prints_each_run_against_the_full_extraction_and_checks_the_rows(scripts, tmp_path, capsys, monkeypatch):
    """The re-extraction's figure is a fraction of the full extraction of the same run; copied rows
    that differ from an extraction of every photo fail the script."""
    import extract_reuse

    import gpua.extract

    monkeypatch.setattr(gpua.extract, "REUSE_MARGIN_NS", 0)  # the photos settle in 1 s, not 11
    out = tmp_path / "r.json"
    assert extract_reuse.main(["--encoders", "feed", "--images", "6", "--side", "64", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1.000 of the full extraction" in text and "largest difference" in text
    res = json.loads(out.read_text())
    assert [(r["run"], r["images"], r["encoded"]) for r in res["rows"]] == [
        ("full", 6, 6), ("one_added", 7, 1), ("other_prompts", 7, 0), ("no_resume", 7, 7),
        ("interrupted_other_prompts", 7, 3)]  # the stopped run's part of 4 lent
    assert res["rows"][1]["of_full"] == pytest.approx(res["rows"][1]["seconds"] / res["rows"][0]["seconds"])
    real = gpua.extract._ReusedRows.merged
    monkeypatch.setattr(gpua.extract._ReusedRows, "merged", lambda self, part, rows, ids: {
        **(m := real(self, part, rows, ids)), "vfm": m["vfm"] + (rows.stop > rows.start)})
    with pytest.raises(SystemExit, match="other features than an extraction of every photo"):
        extract_reuse.main(["--encoders", "feed", "--images", "4", "--side", "64"])


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_cache_check_memory_prints_a_ratio_against_the_whole_read_and_writes_json(scripts, tmp_path, capsys, monkeypatch, fmt):
    """The memory figure of the cache check is a ratio against loading the file whole, in the same run;
    a check that calls a whole file damaged fails the script."""
    import cache_check_memory

    out = tmp_path / "c.json"
    assert cache_check_memory.main(["--rows", "300", "--format", fmt, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "memory of the check against the baseline" in text and "baseline of the same run" in text
    res = json.loads(out.read_text())
    assert res["ratio"] == pytest.approx(res["streamed_extra_mb"] / max(res["whole_extra_mb"], 1e-9))
    assert res["file_mb"] > 0 and res["streamed_seconds"] > 0 and "machine" in res
    import gpua.extract

    monkeypatch.setattr(gpua.extract, "_damage", lambda path: "it does not match its checksum")
    with pytest.raises(SystemExit, match="called a whole file damaged"):
        cache_check_memory.main(["--rows", "30", "--format", fmt])


def test_extract_workers_prints_speedups_against_one_thread_and_checks_the_features(scripts, tmp_path, capsys, monkeypatch):
    """The speed target's figure is a ratio against workers=1 of the same run; a run whose features
    differ from the one-thread run's fails the script."""
    import extract_workers

    out = tmp_path / "w.json"
    assert extract_workers.main(["--images", "6", "--side", "96", "--workers", "2", "--batch-size", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "workers  1:" in text and "x1.00 against workers=1" in text and "workers  2:" in text
    res = json.loads(out.read_text())
    assert [r["workers"] for r in res["rows"]] == [1, 2] and res["rows"][0]["speedup"] == 1.0
    assert res["rows"][1]["speedup"] == pytest.approx(res["rows"][0]["seconds"] / res["rows"][1]["seconds"])
    # a feature mismatch is an error, not a figure
    real = extract_workers.FeedOnly._embed
    monkeypatch.setattr(extract_workers.FeedOnly, "_embed", lambda self, px: real(self, px) + (len(px) % 2) * np.random.rand())
    with pytest.raises(SystemExit, match="other features than workers=1"):
        extract_workers.main(["--images", "5", "--side", "96", "--workers", "2", "--batch-size", "2"])


def test_segment_threshold_prints_both_scales_and_writes_json(scripts, tmp_path, capsys):
    """The threshold's figure: pixels marked at the model's scale against CLIP's 100, in one run."""
    sys.path.insert(0, str(BENCH))
    try:
        import segment_threshold
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "t.json"
    assert segment_threshold.main(["--vfm", "planted:vfm", "--vlm", "planted:vlm", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "marked at 100 (before)" in text and "marked at the model scale (today)" in text
    res = json.loads(out.read_text())
    assert res["clip_scale"] == 100.0 and 0 < res["model_scale"] < 1e4
    for rule in ("marked_at_model_scale", "marked_at_clip_scale"):
        shares = list(res[rule].values())
        assert all(0 <= a <= b <= 1 for a, b in zip(shares, shares[1:]))  # a higher threshold marks more
