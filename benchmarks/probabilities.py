"""How well GPUA's class probabilities match its accuracy, under each label-free scale rule.

For each development set and seed, one GPUA fit with today's defaults (the scale changes no
prediction, so every rule scores the same fit), then ``predict_proba`` on the dev split (the
criterion that chose the rule: the pool itself on CIFAR-10, which has no dev split) and on the
test split (reported), under each rule for the softmax's scale ``s``:

* ``auto``: today's default, ``proba_scale="auto"`` (:mod:`gpua.probability`): the pool's mean
  top probability equals the VLM zero-shot's at ``logit_scale`` 100.
* ``logit_scale``: ``proba_scale=None``, CLIP's 100, the scale before 2026-12-02.
* ``plan_confidence`` (prototype, not in the package): the pool's mean top probability equals
  the mean top mass of UCM's final plan (``pseudo_confidence_``).
* ``mixup`` (prototype; PseudoCal, Hu et al., 2024, on features): temperature scaling with the
  fitted model's own labels on pool rows mixed 0.55 / 0.45 with other pool rows (VFM and VLM
  features alike), each mixed row labelled as the model labels its larger part.
* ``oracle_dev``: temperature scaling on the dev split **with its labels** (a ceiling for
  reading; never a rule).

Beside them, the VLM's own zero-shot probabilities (``softmax(100 cos(x, y))``, what ``auto``
matches on the pool) scored the same way: ``auto`` inherits their calibration.

Figures per cell: the expected calibration error (:func:`gpua.metrics.expected_calibration_error`,
15 bins), the negative log-likelihood of the true class, the mean top probability, beside the
accuracy.

    python benchmarks/probabilities.py                      # every set with cached features, seed 0
    python benchmarks/probabilities.py --seeds 3 --json results/probabilities.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _harness import OutputPath, float_tensor, setup, write_json
from devsets import SETS, add_set_arguments, cached_devset_seeds, chosen_sets
from scipy.optimize import brentq, minimize_scalar

from gpua import GPUA, make_method
from gpua.metrics import expected_calibration_error
from gpua.probability import top_probability_sums

RULES = ("auto", "logit_scale", "plan_confidence", "mixup", "oracle_dev")
#: PseudoCal's share of the row whose label a mixed row keeps.
MIX = 0.55


def softmax(scale: float, scores: np.ndarray) -> np.ndarray:
    return torch.softmax(scale * torch.as_tensor(scores, dtype=torch.float64), dim=1).numpy()


def mean_top(scale: float, scores: np.ndarray) -> float:
    """Mean top probability of ``softmax(scale * scores)``: the package's own sum, over the rows."""
    return float(top_probability_sums(torch.as_tensor(scores), torch.tensor([float(scale)]))[0]) / len(scores)


def nll(scale: float, scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(scale * scores)``."""
    logp = torch.log_softmax(scale * torch.as_tensor(scores, dtype=torch.float64), dim=1).numpy()
    return float(-logp[np.arange(len(labels)), labels].mean())


def temperature_scaled(scores: np.ndarray, labels: np.ndarray) -> float:
    """The scale minimising :func:`nll` (Guo et al.'s temperature scaling), searched in log space."""
    found = minimize_scalar(lambda t: nll(float(np.exp(t)), scores, labels), bounds=(np.log(1e-2), np.log(1e4)), method="bounded")
    return float(np.exp(found.x))


def confidence_matched(scores: np.ndarray, target: float) -> float:
    """The scale at which ``scores``' mean top probability is ``target``."""
    return float(brentq(lambda s: mean_top(s, scores) - target, 1e-3, 1e5))


def mixup_scale(model: GPUA, pool, seed: int) -> float:
    """PseudoCal on features: temperature scaling on mixed pool rows with the model's labels of their larger part."""
    Z, X = float_tensor(pool.vfm_features), float_tensor(pool.vlm_features)
    normalize = torch.nn.functional.normalize
    Z, X = normalize(Z, dim=1), normalize(X, dim=1)
    other = torch.randperm(Z.shape[0], generator=torch.Generator().manual_seed(seed))
    labels = model.predict(Z, X)
    mixed = model.decision_function(MIX * Z + (1 - MIX) * Z[other], MIX * X + (1 - MIX) * X[other])
    return temperature_scaled(mixed, labels)


def rule_scales(model: GPUA, pool, dev_scores: np.ndarray, dev_labels: np.ndarray, seed: int) -> dict[str, float]:
    """Each rule's scale for the fitted ``model`` (only ``oracle_dev`` reads labels, the dev split's)."""
    pool_scores = model.decision_function(pool.vfm_features, pool.vlm_features)
    return {
        "auto": float(model.proba_scale_),
        "logit_scale": float(model.logit_scale),
        "plan_confidence": confidence_matched(pool_scores, float(np.mean(model.pseudo_confidence_))),
        "mixup": mixup_scale(model, pool, seed),
        "oracle_dev": temperature_scaled(dev_scores, dev_labels),
    }


def measure(ds, seed: int) -> dict:
    """One fit of ``ds``' pool; every rule's figures on its dev and test splits."""
    pool = ds.pool
    model = GPUA(random_state=seed).fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes)
    dev = ds.dev if ds.dev is not None else pool
    splits = {name: (model.decision_function(fs.vfm_features, fs.vlm_features), np.asarray(fs.labels))
              for name, fs in (("dev", dev), ("test", ds.test))}
    scales = rule_scales(model, pool, *splits["dev"], seed)
    row = {"accuracy": {name: float(np.mean(S.argmax(1) == y)) for name, (S, y) in splits.items()}, "rules": {},
           # what plan_confidence matches, beside how often the plan is right (the pool's labels: scoring only)
           "plan": {"mean_confidence": float(np.mean(model.pseudo_confidence_)),
                    "pseudo_label_accuracy": float(np.mean(model.pseudo_labels_ == np.asarray(pool.labels)))}}
    zero_shot = make_method("zero_shot").fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes)
    row["zero_shot"] = {}
    for name, fs in (("dev", dev), ("test", ds.test)):
        P, y = zero_shot.predict_proba(None, fs.vlm_features), np.asarray(fs.labels)
        row["zero_shot"][name] = {"accuracy": float(np.mean(P.argmax(1) == y)), "ece": expected_calibration_error(y, P),
                                  "mean_top": float(P.max(1).mean())}
    for rule, s in scales.items():
        row["rules"][rule] = {"scale": s, **{
            name: {"ece": expected_calibration_error(y, softmax(s, S)), "nll": nll(s, S, y), "mean_top": mean_top(s, S)}
            for name, (S, y) in splits.items()}}
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(ap, SETS)
    ap.add_argument("--seeds", type=int, default=1, help="fits per set, random_state 0..seeds-1 (default 1)")
    ap.add_argument("--json", action=OutputPath, default=None, help="write the figures here (atomically)")
    args = ap.parse_args(argv)
    sets = chosen_sets(ap, args, SETS)
    if args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: give at least 1")
    setup(args)
    rows = []
    devsets = cached_devset_seeds(sets, args.seeds, args.cache_dir)
    for name, seed, ds in devsets:
        row = {"set": name, "seed": seed, "dev_note": ds.dev_note, **measure(ds, seed)}
        rows.append(row)
        acc, plan = row["accuracy"], row["plan"]
        print(f"\n{name} seed {seed}: accuracy dev {100 * acc['dev']:.2f} / test {100 * acc['test']:.2f}; UCM's plan: mean "
              f"confidence {plan['mean_confidence']:.3f}, pseudo-labels {100 * plan['pseudo_label_accuracy']:.2f}% right "
              "(ECE dev / test, NLL test, mean top probability test)")
        for rule, r in row["rules"].items():
            print(f"  {rule:<16} s={r['scale']:8.3f}  ECE {r['dev']['ece']:.4f} / {r['test']['ece']:.4f}  "
                  f"NLL {r['test']['nll']:.3f}  top {r['test']['mean_top']:.3f}", flush=True)
        zs = row["zero_shot"]
        print(f"  VLM zero-shot    s= 100.000  ECE {zs['dev']['ece']:.4f} / {zs['test']['ece']:.4f}  "
              f"accuracy {100 * zs['test']['accuracy']:.2f}  top {zs['test']['mean_top']:.3f}", flush=True)
    devsets.finish(bool(rows), args.json)
    if rows:
        print("\nmean over the rows (ECE dev / test):")
        for rule in RULES:
            dev_ece = np.mean([r["rules"][rule]["dev"]["ece"] for r in rows])
            test_ece = np.mean([r["rules"][rule]["test"]["ece"] for r in rows])
            print(f"  {rule:<16} {dev_ece:.4f} / {test_ece:.4f}")
    if args.json:
        write_json(args.json, {"sets": sets, "seeds": args.seeds, "missing_sets": devsets.missing_sets, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
