"""Audit of `gpua benchmark` and `gpua demo`: resumed rows that must not be reused, rows that must not
be lost, tables that must say what they show, and flags that fail with one line."""

from __future__ import annotations

import json

import pytest

from gpua import GPUAError
from gpua import benchmark as bench_mod
from gpua import demo as demo_mod
from gpua.cli import main


pytestmark = pytest.mark.filterwarnings("ignore::gpua.ConvergenceWarning")


def _argv(d, dataset, *extra):  # zero_shot fits nothing: no GPUA parameter to give (one it would not apply is refused)
    return ["benchmark", "--datasets", str(dataset), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--methods", "zero_shot",
            "--pool", "2-shot", "--out", str(d / "bench"), "--cache-dir", str(d / "cache"), "--templates", "simple", "--quiet", *extra]


def _rows(d):
    return [json.loads(line) for line in (d / "bench" / "results.jsonl").read_text().splitlines()]


def _split_file(d, names):
    """A CoOp split file over the planted photos, naming the classes ``names`` (label order)."""
    entries = {}
    for split in ("train", "test"):
        entries[split] = [[f"{split}/{c}/{p.name}", k, names[k]] for k, c in enumerate(("sky", "grass", "road", "water", "sand"))
                          for p in sorted((d / "photos" / split / c).iterdir())]
    path = d / "photos" / "split_zhou_Planted.json"
    path.write_text(json.dumps(entries))
    return path


def test_renamed_classes_run_again(photos, capsys):
    """A split file whose class names change (same images, same labels) gives other prompts: its rows are not reused."""
    d = photos
    split = _split_file(d, ["sky", "grass", "road", "water", "sand"])
    assert main(_argv(d, split)) == 0
    first = _rows(d)
    assert [r["method"] for r in first] == ["zero_shot"]
    _split_file(d, ["blue sky", "grass", "road", "water", "sand"])
    capsys.readouterr()
    assert main(_argv(d, split)) == 0
    assert "already in" not in capsys.readouterr().out
    rows = _rows(d)
    assert len(rows) == 2 and rows[0]["prompts"] != rows[1]["prompts"]
    # the table shows the run's own row, not the stale one
    md = (d / "bench" / "results.md").read_text()
    assert f"{100 * rows[1]['metrics']['acc1']:.2f}" in md


def test_two_runs_into_one_folder_keep_each_others_rows(photos, monkeypatch):
    """Two benchmarks writing one results.jsonl (two configurations started side by side): neither loses the other's rows."""
    d = photos
    real = bench_mod._run_method
    other_ran = []

    def run_method(*a, **k):
        if not other_ran:  # the other run finishes while this one is fitting its first method
            other_ran.append(True)
            assert main(gpua(_argv(d, d / "photos", *fast, "--param", "lam=0.5"))) == 0
        return real(*a, **k)

    def gpua(argv):  # a configuration of GPUA parameters: the method that applies them
        argv[argv.index("--methods") + 1] = "gpua"
        return argv

    fast = ["--n-steps", "20", "--param", "eval_every=5", "--param", "self_learning=0"]
    monkeypatch.setattr(bench_mod, "_run_method", run_method)
    assert main(gpua(_argv(d, d / "photos", *fast))) == 0
    rows = _rows(d)
    assert len(rows) == 2 and sorted(json.dumps(r["params"], sort_keys=True) for r in rows) == [
        '{"eval_every": 5, "lam": 0.5, "n_steps": 20, "self_learning": 0}', '{"eval_every": 5, "n_steps": 20, "self_learning": 0}']


def test_repeated_method_runs_once(photos):
    d = photos
    argv = _argv(d, d / "photos")
    argv[argv.index("--methods") + 1] = "zero_shot,zero_shot"
    assert main(argv) == 0
    assert [r["method"] for r in _rows(d)] == ["zero_shot"]


def test_pool_spellings_are_one_setting(photos, capsys):
    """`--pool 2shot` is `--pool 2-shot`: the resumed run skips, and the table has one column."""
    d = photos
    assert main(_argv(d, d / "photos")) == 0
    argv = _argv(d, d / "photos")
    argv[argv.index("--pool") + 1] = "2shot"
    capsys.readouterr()
    assert main(argv) == 0
    assert "already in" in capsys.readouterr().out
    assert len(_rows(d)) == 1


def test_negative_pool_seed_is_one_line(photos, capsys):
    d = photos
    with pytest.raises(SystemExit) as exc:  # argparse's own error: usage line, then one line naming the flag
        main(_argv(d, d / "photos", "--pool-seed", "-1"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--pool-seed" in err and "Traceback" not in err
    assert not (d / "cache").exists()


def test_non_positive_test_per_class_names_the_flag(photos, capsys):
    d = photos
    with pytest.raises(SystemExit) as exc:
        main(_argv(d, d / "photos", "--test-per-class", "0"))
    assert exc.value.code == 2 and "--test-per-class" in capsys.readouterr().err
    with pytest.raises(bench_mod.GPUAError, match="seed"):  # the library says it too
        bench_mod.run_benchmark([str(d / "photos")], ["planted:vfm"], ["planted:vlm"], ["zero_shot"], d / "b", seed=-1, log=None)


def _row(contents, acc1, **kw):
    return {"dataset": "photos", "vfm": "v", "vlm": "l", "pool": "16-shot", "seed": 0, "test_subset": None, "data": None,
            "contents": contents, "gpua_defaults": "x", "params": {}, "prompt_templates": "auto", "method": "gpua",
            "metrics": {"acc1": acc1, "acc5": 1.0, "mean_per_class_recall": acc1}, **kw}


@pytest.mark.parametrize("bad, what", [
    ({"metrics": {"acc1": 0.5}}, "rows\\[1\\] has no 'dataset' name"),
    ({"dataset": "photos"}, "rows\\[1\\] has no number metrics\\['acc1'\\]"),
    ({"dataset": "photos", "metrics": {"acc1": None}}, "has no number metrics"),
    ("photos,0.5", "rows\\[1\\] is a str"),
])
def test_rows_that_are_not_benchmark_rows_are_named(bad, what):
    """Was: a KeyError ('dataset') from deep inside build_tables for a row of one's own."""
    with pytest.raises(GPUAError, match=what):
        bench_mod.build_tables([_row("a", 0.5), bad])


def test_table_says_when_one_cell_has_several_rows():
    """Rows of one dataset and run that differ in data or contents (photos replaced between runs) fall into one
    cell: the table says the latest is shown, rather than picking one silently."""
    md, table_csv = bench_mod.build_tables([_row("a", 0.5), _row("b", 0.75)])
    assert "75.00" in md and "50.00" not in md
    assert "2 rows" in md
    md, _ = bench_mod.build_tables([_row("a", 0.5)])
    assert "rows" not in md.split("\n", 1)[0] and "latest" not in md


def _feature_paths(planted, tmp_path):
    from gpua.features import save_features

    paths = {}
    for split, d in zip(("train", "test"), planted):
        paths[split] = save_features(tmp_path / f"{split}.npz", d.feature_set())
    return paths


def test_demo_records_its_parameters(planted, tmp_path, monkeypatch, capsys):
    """`gpua demo --param lam=0.5`: results.json and the printed table say which parameters made the numbers."""
    paths = _feature_paths(planted, tmp_path)
    monkeypatch.setattr(demo_mod, "demo_features", lambda *a, **k: paths)
    res = demo_mod.run_demo(tmp_path / "out", methods=["zero_shot", "procrustes_only"], plot=False, progress=False, overrides={"lam": 0.5})
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["params"] == res["params"] == {"lam": 0.5}
    assert "lam=0.5" in capsys.readouterr().out
    res = demo_mod.run_demo(tmp_path / "out", methods=["zero_shot"], plot=False, progress=False)
    assert res["params"] == {}


def test_demo_runs_a_repeated_vfm_or_method_once(planted, tmp_path, monkeypatch):
    paths = _feature_paths(planted, tmp_path)
    calls = []
    monkeypatch.setattr(demo_mod, "demo_features", lambda *a, **k: calls.append(a) or paths)
    res = demo_mod.run_demo(tmp_path / "out", vfms=["a", "a"], methods=["zero_shot", "zero_shot"], plot=False, progress=False)
    assert len(calls) == 1 and len(res["runs"]) == 1 and [r["method"] for r in res["runs"][0]["results"]] == ["zero_shot"]


def test_demo_command_line_all_among_others(monkeypatch):
    """`--vfm all --vfm X` runs X too (it was dropped silently), `--methods all,M` adds M (it ran a method named 'all')."""
    seen = {}
    monkeypatch.setattr(demo_mod, "run_demo", lambda out, **kw: seen.update(kw))
    from gpua import cli

    assert cli.main(["demo", "--no-plot", "--vfm", "all", "--vfm", "planted:vfm", "--methods", "all,hard_assignment"]) == 0
    assert list(seen["vfms"]) == [*demo_mod.ALL_DEMO_VFMS, "planted:vfm"]
    assert list(seen["methods"]) == [*demo_mod.ALL_DEMO_METHODS, "hard_assignment"]


def test_other_templates_do_not_overwrite_the_cached_features(photos):
    """Two template sets on one dataset and encoder pair (a researcher comparing prompts): each keeps its own cached
    features; they shared one file, so every switch re-encoded every image and replaced the other's cache."""
    d = photos
    assert main(_argv(d, d / "photos")) == 0
    files = sorted((d / "cache" / "benchmark").glob("*.npz"))
    before = {p: p.stat().st_mtime_ns for p in files}
    argv = _argv(d, d / "photos")
    argv[argv.index("--templates") + 1] = "auto"
    assert main(argv) == 0
    assert main(_argv(d, d / "photos")) == 0
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert len(list((d / "cache" / "benchmark").glob("*.npz"))) == 2 * len(files)
    assert len(_rows(d)) == 2


def test_a_parameter_no_method_applies_is_refused_and_partial_ones_are_said(photos, capsys):
    """`--methods zero_shot,lambda_1 --lam 0.3` recorded lam=0.3 in both rows, which neither ran (as `compare` refuses)."""
    d = photos
    argv = _argv(d, d / "photos", "--lam", "0.3")
    argv[argv.index("--methods") + 1] = "zero_shot,lambda_1"
    assert main(argv) == 2
    assert "lam=0.3: none of --methods zero_shot,lambda_1 applies it" in capsys.readouterr().err
    assert not (d / "cache").exists()  # before any image is encoded
    from gpua.baselines import override_notes  # the one check `compare` uses too

    notes = override_notes(["zero_shot", "gpua"], {"lam": 0.3})
    assert notes == ["note: zero_shot does not apply lam=0.3 (its own setting, or not its parameter)"]


@pytest.mark.parametrize("name", ["results.md", "results.csv"])
def test_a_results_file_of_ones_own_is_not_replaced(photos, capsys, name):
    """`--out .` in a project: the benchmark replaced the project's own results.md / results.csv with
    its table. Refused before any image is encoded, the flag named; its own tables are still rewritten."""
    d = photos
    (d / "bench").mkdir()
    mine = d / "bench" / name
    mine.write_text("# my results\n| a | b |\n")
    capsys.readouterr()
    assert main(_argv(d, d / "photos")) == 2
    err = capsys.readouterr().err
    assert f"--out {str(d / 'bench')!r} holds a {name} that `gpua benchmark` did not write" in err
    assert mine.read_text() == "# my results\n| a | b |\n" and not (d / "cache").exists()
    mine.unlink()
    assert main(_argv(d, d / "photos")) == 0  # a second run replaces the tables the first wrote
    assert main(_argv(d, d / "photos")) == 0
    assert (d / "bench" / "results.md").read_text().startswith("acc1 (%) by dataset")


def test_an_empty_results_file_is_replaced_and_a_binary_one_kept(tmp_path):
    """Was: an empty results.md (what `gpua benchmark --out DIR | tee DIR/results.md` makes before
    the benchmark starts) was refused as "not written by the benchmark", though it holds nothing."""
    from gpua.benchmark import _check_tables_ours

    (tmp_path / "results.md").write_bytes(b"")
    (tmp_path / "results.csv").write_bytes(b"")
    _check_tables_ours(tmp_path)
    (tmp_path / "results.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(GPUAError, match="holds a results.csv that `gpua benchmark` did not write"):
        _check_tables_ours(tmp_path)


def test_a_csv_of_datasets_of_ones_own_is_not_taken_for_the_benchmarks(tmp_path):
    """Was: any results.csv whose header began with `dataset` (`dataset,price`) was replaced by the table."""
    from gpua.benchmark import _check_tables_ours

    own = tmp_path / "results.csv"
    own.write_text("dataset,price\nfoo,3\n")
    with pytest.raises(GPUAError, match="holds a results.csv that `gpua benchmark` did not write"):
        _check_tables_ours(tmp_path)
    own.write_text("dataset,zero_shot\nplanted_cifar,50.00\nmean,50.00\n")  # what build_tables writes
    # ... and what anyone's per-dataset table looks like: the benchmark's only beside its rows (session 21;
    # was replaced without a word)
    with pytest.raises(GPUAError, match="holds a results.csv that `gpua benchmark` did not write .no results.jsonl"):
        _check_tables_ours(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"dataset": "planted_cifar", "method": "zero_shot", "metrics": {}, "gpua_version": "0"}\n')
    _check_tables_ours(tmp_path)
    own.write_text("dataset,zero_shot\r\nplanted_cifar,50.00\r\nmean,50.00\r\n\r\n")
    _check_tables_ours(tmp_path)


class _WeightedPlanted:
    """``planted:vfm`` with a weights file: its metadata holds the file's fingerprint, as a real encoder's does."""

    def __init__(self, path):
        from gpua.segment.planted import planted_encoder

        self._enc, self.path, self.spec = planted_encoder("vfm"), path, f"weighted:{path}"

    def __getattr__(self, name):
        return getattr(self._enc, name)

    def metadata(self):
        from gpua.encoders._registry import file_fingerprint

        return {**self._enc.metadata(), "spec": self.spec, "weights": file_fingerprint(self.path)}


def test_weights_replaced_at_the_same_path_are_a_new_row(photos, capsys):
    """Was: the rows' key held the encoder spec, not its weights: a checkpoint replaced at the same path
    (same size, same time) was "already in results.jsonl ... skipped", the old model's numbers kept."""
    import os

    from gpua.encoders import register_encoder

    register_encoder("weighted:", lambda body, device="cpu", cache_dir=None, spec=None: _WeightedPlanted(body), overwrite=True)
    d = photos
    w = d / "w.bin"
    w.write_bytes(b"A" * 64)
    argv = _argv(d, d / "photos")
    argv[argv.index("planted:vfm")] = f"weighted:{w}"
    assert main(argv) == 0 and len(_rows(d)) == 1
    assert main(argv) == 0 and "already in" in capsys.readouterr().out and len(_rows(d)) == 1  # unchanged: skipped
    st = w.stat()
    w.write_bytes(b"B" * 64)  # other weights, same size, and the same time set back
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert main(argv) == 0 and "already in" not in capsys.readouterr().out
    rows = _rows(d)
    assert len(rows) == 2 and rows[0]["encoders"] != rows[1]["encoders"]


def test_rows_of_replaced_weights_are_left_out_of_the_tables(photos, capsys):
    """Was (upgrade audit): a dataset not re-run kept its row of the old weights in the table, and the
    mean averaged two models; the note blamed "data, contents, class names or GPUA defaults"."""
    import os
    import shutil

    from gpua.encoders import register_encoder

    register_encoder("weighted:", lambda body, device="cpu", cache_dir=None, spec=None: _WeightedPlanted(body), overwrite=True)
    d = photos
    shutil.copytree(d / "photos", d / "photos2")
    w = d / "w.bin"
    w.write_bytes(b"A" * 64)
    both = _argv(d, f"{d / 'photos'},{d / 'photos2'}")
    both[both.index("planted:vfm")] = f"weighted:{w}"
    assert main(both) == 0
    st = w.stat()
    w.write_bytes(b"B" * 64)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    one = _argv(d, d / "photos")
    one[one.index("planted:vfm")] = f"weighted:{w}"
    capsys.readouterr()
    assert main(one) == 0
    assert "or the encoders' weights" in capsys.readouterr().out
    table = (d / "bench" / "results.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in table] == ["dataset", str(d / "photos"), "mean"]  # photos2's old-weights row left out
    assert len(_rows(d)) == 3  # kept in the jsonl
