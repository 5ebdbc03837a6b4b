"""How much room a label-free method has on each development set: supervised ceilings beside the zero-shot floor.

For each set of ``benchmarks/devsets.py`` (cached features; never extracted here), test top-1 of

* ``zero-shot``: :class:`gpua.VLMZeroShot` (cosine of the VLM image features with the prototypes);
* ``zero-shot, centred``: the same after removing each modality's own mean (the image
  features' pool mean, the prototypes' mean: :func:`gpua.query.centre_rows` and
  :func:`gpua.query.target_prototypes`, what ``GPUA(center_vlm=True)`` fits to);
* ``probe`` / ``10-NN`` on the VFM rows Z, the VLM rows X and the fused query [Z, X]
  (:func:`gpua.query.build_query`): a logistic-regression probe and a cosine 10-nearest-neighbour
  classifier **trained with the pool's labels**. These are ceilings for reading the other
  numbers, never an input to a label-free fit: a map fitted without labels on the same pool
  rarely beats a supervised linear probe on the same query.
* ``k-means [Z, X], matched (pool)``: how much of the class structure the pool's geometry holds
  on its own. K-means with K clusters on the fused query's top 64 principal directions, each
  cluster then given the class that maximises the pool's agreement (Hungarian matching **with
  the pool's labels**); scored on the pool. A label-free miner that named clusters perfectly
  would reach this; pseudo-labels above it come from the VLM's text signal, not the geometry.

    python benchmarks/headroom.py                        # every real set with a cache
    python benchmarks/headroom.py --sets cifar-dinov2 --json results/headroom.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _harness import OutputPath, float_tensor, setup, write_json
from devsets import REAL_SETS, add_set_arguments, cached_devsets, chosen_sets

from gpua.query import build_query, centre_rows, pool_mean, target_prototypes


def centred_zero_shot_scores(fs, vlm_mean: torch.Tensor) -> torch.Tensor:
    """Cosine of the centred X rows of ``fs`` (on ``vlm_mean``) and the prototypes centred on their own mean: (n, K)."""
    X = centre_rows(float_tensor(fs.vlm_features), vlm_mean)  # each of these normalises the rows first
    Y = target_prototypes(float_tensor(fs.text_prototypes), True)
    return X @ Y.T


def centred_zero_shot(pool, test) -> float:
    """Top-1 of cosine(centred X, centred Y) on ``test``, the image mean taken on ``pool``."""
    scores = centred_zero_shot_scores(test, pool_mean(float_tensor(pool.vlm_features)))
    return float((scores.argmax(1).numpy() == test.labels).mean())


def views(fs) -> dict[str, np.ndarray]:
    """The rows a supervised ceiling is measured on: Z, X and the fused query [Z, X], each part normalised."""
    Z, X = float_tensor(fs.vfm_features), float_tensor(fs.vlm_features)
    normalize = torch.nn.functional.normalize
    return {"Z": normalize(Z, dim=1).numpy(), "X": normalize(X, dim=1).numpy(), "[Z, X]": build_query(Z, X, "fused").numpy()}


def matched_clusters(Q: np.ndarray, labels: np.ndarray, n_classes: int, n_components: int = 64) -> float:
    """Pool accuracy of k-means clusters of ``Q`` given their best one-to-one class names (uses the labels)."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    F = PCA(min(n_components, *Q.shape), random_state=0).fit_transform(Q)
    clusters = KMeans(n_classes, n_init=10, random_state=0).fit_predict(F)
    agreement = np.zeros((n_classes, n_classes))
    np.add.at(agreement, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(-agreement)
    return float(agreement[rows, cols].sum() / len(labels))


def headroom(ds) -> dict[str, float]:
    """Every figure of this script for one development set (fractions)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from gpua import VLMZeroShot

    pool, test = ds.pool, ds.test
    zs = VLMZeroShot().fit(pool.vfm_features, pool.vlm_features, pool.text_prototypes)
    out = {"zero-shot": zs.score(None, test.labels, test.vlm_features), "zero-shot, centred": centred_zero_shot(pool, test)}
    train, held = views(pool), views(test)
    for name in train:
        probe = LogisticRegression(max_iter=3000).fit(train[name], pool.labels)
        knn = KNeighborsClassifier(10, metric="cosine").fit(train[name], pool.labels)
        out[f"probe {name}"] = float(probe.score(held[name], test.labels))
        out[f"10-NN {name}"] = float(knn.score(held[name], test.labels))
    out["k-means [Z, X], matched (pool)"] = matched_clusters(train["[Z, X]"], pool.labels, len(pool.classnames))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(ap, REAL_SETS)
    ap.add_argument("--json", action=OutputPath, default=None, help="write the figures here (atomically)")
    args = ap.parse_args(argv)
    sets = chosen_sets(ap, args, REAL_SETS)
    setup(args)
    results = {}
    devsets = cached_devsets(sets, args.cache_dir)
    for s, ds in devsets:
        results[s] = headroom(ds)
        print(f"\n{s}  (pool {ds.pool.n_samples}, test {ds.test.n_samples}; test top-1 %)")
        for name, acc in results[s].items():
            print(f"  {name:<31} {100 * acc:6.2f}")
    devsets.finish(bool(results), args.json)
    if args.json:
        write_json(args.json, {"sets": sets, "missing_sets": devsets.missing_sets, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
