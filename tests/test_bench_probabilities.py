"""benchmarks/probabilities.py: each scale rule's calibration figures on one fit, the command line (planted data)."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def pb(import_benchmark):
    return import_benchmark("probabilities")


@pytest.fixture(scope="module")
def planted_run(pb, tmp_path_factory):
    out = tmp_path_factory.mktemp("pb") / "pb.json"
    assert pb.main(["--sets", "planted", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_rules_are_scored_on_one_fit(planted_run, pb):
    from gpua import GPUA

    (row,) = planted_run["rows"]
    assert row["set"] == "planted" and row["seed"] == 0 and set(row["rules"]) == set(pb.RULES)
    rules = row["rules"]
    assert rules["logit_scale"]["scale"] == GPUA().logit_scale == 100.0
    for r in rules.values():
        for split in ("dev", "test"):
            assert 0 <= r[split]["ece"] <= 1 and r[split]["nll"] > 0 and 0 < r[split]["mean_top"] <= 1
    # the oracle minimises the dev split's NLL over the scale: no rule has a lower one
    assert all(rules["oracle_dev"]["dev"]["nll"] <= r["dev"]["nll"] + 1e-6 for r in rules.values())
    # today's rule is calibrated better than CLIP's 100 here (the README's table, planted row)
    assert rules["auto"]["test"]["ece"] < rules["logit_scale"]["test"]["ece"]
    assert 0 < row["accuracy"]["test"] <= 1
    assert 0 < row["plan"]["mean_confidence"] <= 1 and 0 <= row["plan"]["pseudo_label_accuracy"] <= 1
    zs = row["zero_shot"]["test"]
    assert 0 <= zs["ece"] <= 1 and 0 < zs["mean_top"] <= 1 and 0 <= zs["accuracy"] <= 1


def test_auto_is_the_packages_own_scale(pb):
    from gpua import GPUA
    from gpua.synthetic import make_planted

    d = make_planted(n_samples=300, n_classes=5, d_vfm=12, d_vlm=10, d_latent=5, random_state=2)
    model = GPUA(n_steps=20, self_learning=0).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    pool = type("Pool", (), {"vfm_features": d.vfm_features, "vlm_features": d.vlm_features})()
    scores = model.decision_function(d.vfm_features, d.vlm_features)
    scales = pb.rule_scales(model, pool, scores, np.asarray(d.labels), seed=0)
    assert scales["auto"] == model.proba_scale_
    assert pb.mean_top(scales["plan_confidence"], scores) == pytest.approx(float(np.mean(model.pseudo_confidence_)), abs=1e-6)
    assert scales["oracle_dev"] == pytest.approx(pb.temperature_scaled(scores, np.asarray(d.labels)))


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--sets", "cifar"]])
def test_bad_arguments_exit_2(pb, argv):
    with pytest.raises(SystemExit) as exc:
        pb.main(argv)
    assert exc.value.code == 2
