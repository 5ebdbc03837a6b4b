"""Session 21's audit of gpua benchmark: each test says what happened before."""

from __future__ import annotations

import json

import pytest

from gpua._errors import GPUAError
from gpua.benchmark import _check_tables_ours


def test_a_users_results_jsonl_is_not_rewritten(tmp_path):
    """Was: rewritten row by row (NaN and Infinity became null, 1.50 became 1.5, comments moved away)."""
    text = '{"model": "mine", "score": NaN, "x": 1.50}\n# my notes\n{"model": "other", "score": Infinity}\n'
    (tmp_path / "results.jsonl").write_text(text)
    with pytest.raises(GPUAError, match="holds a results.jsonl that holds no `gpua benchmark` row"):
        _check_tables_ours(tmp_path)
    assert (tmp_path / "results.jsonl").read_text() == text


@pytest.mark.parametrize("name", ["results.jsonl", "results.md", "results.csv"])
def test_a_folder_where_a_results_file_goes_is_refused_before_the_work(tmp_path, name):
    """Was: said after every fit, and the rows lost."""
    (tmp_path / name).mkdir()
    with pytest.raises(GPUAError, match=f"holds a folder '{name}' where the benchmark writes a file"):
        _check_tables_ours(tmp_path)


def test_one_dataset_given_two_ways_runs_once(tmp_path, monkeypatch):
    """Was: ds1, ./ds1 and /abs/ds1 ran three times and counted three times in the mean."""
    import numpy as np
    from PIL import Image

    from gpua.benchmark import run_benchmark
    from gpua.segment.planted import make_planted_world

    world = make_planted_world(5, seed=0)
    for split, n in (("train", 4), ("test", 3)):
        for k, c in enumerate(world.classnames):
            imgs, _ = world.sample(n, (16, 16), seed=10 * k + (split == "test"))
            for i, im in enumerate(imgs):
                d = tmp_path / "ds1" / split / c
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.ascontiguousarray(im)).save(d / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    said = []
    rows = run_benchmark(["ds1", "./ds1", str(tmp_path / "ds1") + "/"], ["planted:vfm"], ["planted:vlm"], ["zero_shot"],
                         tmp_path / "out", pool="2-shot", cache_dir=tmp_path / "cache", progress=False, log=said.append)
    assert [r["dataset"] for r in rows] == ["ds1"]
    assert sum("is 'ds1' again (the same data); it runs once" in s for s in said) == 2
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["dataset"] == "ds1"


def test_benchmark_errors_name_the_flags(tmp_path, capsys):
    """Was: "methods names no method" and "give at least one dataset, one VFM and one VLM"."""
    from gpua.cli import main

    base = ["benchmark", "--datasets", "x", "--vlm", "planted:vlm", "--out", str(tmp_path / "b")]
    assert main([*base, "--vfm", "planted:vfm", "--methods", ","]) == 2
    assert "--methods names no method" in capsys.readouterr().err
    assert main([*base, "--vfm", ",", "--methods", "zero_shot"]) == 2
    assert "--vfm names nothing" in capsys.readouterr().err
