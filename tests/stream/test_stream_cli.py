"""The ``gpua fit --shards`` options and their dispatch."""

from __future__ import annotations

import argparse

import pytest

from gpua import GPUA, GPUAError, load_model
from gpua.stream import write_shards
from gpua.cli._common import parse_cluster
from gpua.cli.features import add_streaming_arguments, run_streamed_fit


def test_fit_from_shards_writes_a_model(case, tmp_path, capsys):
    Z, X, Y, labels = case
    write_shards(tmp_path / "s", Z, X, dtype="float16", text_prototypes=Y)
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    add_streaming_arguments(parser)
    args = parser.parse_args(["--shards", str(tmp_path / "s"), "--out", str(tmp_path / "m.gpua"), "--max-memory", "1GB",
                              "--checkpoint", str(tmp_path / "ck"), "--no-progress"])
    assert run_streamed_fit(args, GPUA(refine=False, query="vfm")) == 0
    out = capsys.readouterr().out
    assert "fitted on 1500 images (1 shard), 32 classes" in out
    model = load_model(tmp_path / "m.gpua")
    assert model.score(Z, labels, X) > 0.8
    assert (tmp_path / "ck" / "ucm_state.safetensors").is_file()


@pytest.mark.parametrize("value, parsed", [(None, None), ("local", "local"), ("4", 4), ("tcp://h:8786", "tcp://h:8786"), ("h:8786", "h:8786")])
def test_parse_cluster(value, parsed):
    assert parse_cluster(value) == parsed


def test_parse_cluster_refuses_nonsense():
    with pytest.raises(GPUAError, match="--cluster"):
        parse_cluster("somewhere")


def test_fit_from_shards_estimates_the_class_prior_with_the_zero_shot(case, tmp_path, capsys):
    """`gpua fit --shards DIR --param class_prior=zero_shot` (was refused): a model whose file keeps
    the setting and the estimate; `--param class_prior=estimate` is refused by name, before a pass."""
    from gpua.cli import main

    Z, X, Y, labels = case
    write_shards(tmp_path / "s", Z, X, text_prototypes=Y)
    common = ["fit", "--shards", str(tmp_path / "s"), "--max-memory", "1GB", "--no-progress", "--param", "n_steps=5"]
    assert main([*common, "--out", str(tmp_path / "m.gpua"), "--param", "class_prior=zero_shot"]) == 0
    model = load_model(tmp_path / "m.gpua")
    assert model.class_prior == "zero_shot" and model.history_["class_prior_estimate"]["rows_estimated_from"] == len(Z)
    assert main([*common, "--out", str(tmp_path / "e.gpua"), "--param", "class_prior=estimate"]) == 2
    assert "class_prior='estimate' needs a first whole fit" in capsys.readouterr().err
    assert not (tmp_path / "e.gpua").exists()


def test_prototypes_from_another_shard_set(tmp_path, capsys):
    """Was: "a shard set is read with gpua.features.ShardedFeatures (gpua fit --shards DIR)", with --shards given."""
    from gpua.cli import main
    from gpua.synthetic import make_planted

    d = make_planted(400, 4, random_state=0)
    write_shards(tmp_path / "withp", d.vfm_features, d.vlm_features, text_prototypes=d.text_prototypes,
                 classnames=["a", "b", "c", "d"], dtype="float32")
    write_shards(tmp_path / "nop", d.vfm_features, d.vlm_features, dtype="float32")
    base = ["fit", "--no-progress", "--param", "self_learning=0", "--param", "refine=false"]
    assert main(base + ["--shards", str(tmp_path / "nop"), "--prototypes", str(tmp_path / "withp"), "--out", str(tmp_path / "m.gpua")]) == 0
    assert load_model(tmp_path / "m.gpua").classnames_ == ["a", "b", "c", "d"]
    assert main(base + ["--shards", str(tmp_path / "withp"), "--prototypes", str(tmp_path / "nop"), "--out", str(tmp_path / "n.gpua")]) == 2
    err = capsys.readouterr().err
    assert f"shard set {str(tmp_path / 'nop')!r} (--prototypes) has no 'text_prototypes'" in err
    assert "Write it with gpua.stream.write_shards(..., text_prototypes=...)" in err  # was: save_features, for a shard set
