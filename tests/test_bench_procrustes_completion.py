"""benchmarks/procrustes_completion.py: the canonical completions of a rank-deficient Procrustes map, the fit built around
them (equal to GPUA's with the default completion), the row-order and perturbation checks, and the command line (planted data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def pc(import_benchmark):
    return import_benchmark("procrustes_completion")


@pytest.fixture(scope="module")
def few_classes():
    """5 classes, VLM width 16: Q^T P Y has rank <= 4 < 16, so the Procrustes map is not unique."""
    from gpua.synthetic import make_planted

    return make_planted(n_samples=300, n_classes=5, d_vfm=24, d_vlm=16, d_latent=6, random_state=0)


def _low_rank(d_in: int, d_out: int, r: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_in, r, generator=g, dtype=torch.float64) @ torch.randn(r, d_out, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_completions_keep_the_determined_part_and_the_objective(pc, shape):
    d_in, d_out = shape
    M = _low_rank(d_in, d_out, 3)
    F = torch.randn(d_in, d_out, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    W_def, rec_def = pc.completed_polar(M, None)
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    Ur, Vr = U[:, :3], Vh[:3].T
    for filler in (F, torch.eye(d_in, d_out, dtype=torch.float64)):
        W, rec = pc.completed_polar(M, filler)
        assert (rec["rank"], rec["width"]) == (3, min(shape)) and rec["dropped_over_kept"] < 1e-12
        G = W.T @ W if d_in >= d_out else W @ W.T
        assert torch.allclose(G, torch.eye(min(shape), dtype=torch.float64), atol=1e-10)  # (semi-)orthogonal
        assert torch.allclose(W @ Vr, Ur, atol=1e-10) and torch.allclose(W.T @ Ur, Vr, atol=1e-10)  # what M fixes, unchanged
        assert rec["objective"] == pytest.approx(rec_def["objective"], rel=1e-12)  # an equal maximiser of tr(W^T M)
        assert rec["filler_cond"] > 1e-3
        assert float(torch.linalg.matrix_norm(W - W_def)) > 1e-3  # ... but another completion than the SVD's


def test_the_null_space_completion_is_the_small_t_limit(pc):
    M = _low_rank(10, 16, 4)
    F = torch.randn(10, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact, _ = pc.completed_polar(M, F)
    for t, tol in ((1e-3, 1e-2), (1e-6, 1e-5)):
        literal, _ = pc.completed_polar(M, F, t=t)
        assert float((literal - exact).abs().max()) < tol
    far, _ = pc.completed_polar(M, F, t=1.0)  # a large t tilts the determined part too
    assert float((far - exact).abs().max()) > 1e-2


def test_zero_and_full_rank_cases(pc):
    W, rec = pc.completed_polar(torch.zeros(4, 6, dtype=torch.float64), torch.eye(4, 6, dtype=torch.float64))
    assert rec["rank"] == 0 and torch.allclose(W, torch.eye(4, 6, dtype=torch.float64))
    M = _low_rank(6, 4, 4)  # full rank: unique, every completion is the polar factor
    for F in (None, torch.ones(6, 4, dtype=torch.float64)):
        W, rec = pc.completed_polar(M, F)
        assert rec["rank"] == 4 and rec["filler_cond"] is None
        assert torch.allclose(W, pc.polar_factor(M), atol=1e-12)


def test_canonical_completions_do_not_follow_rounding_in_the_null_space(pc):
    M = _low_rank(16, 24, 4)
    noise = 1e-9 * torch.randn(16, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    F = torch.randn(16, 24, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for filler in (F, torch.eye(16, 24, dtype=torch.float64)):
        a, _ = pc.completed_polar(M, filler)
        b, _ = pc.completed_polar(M + noise, filler)
        assert float((a - b).abs().max()) < 1e-6
    a, _ = pc.completed_polar(M, None)
    b, _ = pc.completed_polar(M + noise, None)
    assert float((a - b).abs().max()) > 0.05  # the SVD's own completion is the noise's


@pytest.mark.parametrize("completion, package", [("default", "svd"), ("complete_crosscov", "crosscov")])
def test_the_prototypes_are_gpuas_own_fits(pc, few_classes, completion, package):
    """"default" is the SVD's completion (GPUA's until 2026-12-01, ``procrustes_completion="svd"``); the
    cross-covariance prototype is today's package default, which fills from Q^T X as the prototype does."""
    from gpua import GPUA

    d = few_classes
    model, records = pc.fit_completed({"random_state": 0}, d.vfm_features, d.vlm_features, d.text_prototypes, completion)
    ref = GPUA(random_state=0, procrustes_completion=package).fit(d.vfm_features, d.vlm_features, d.text_prototypes)
    assert torch.allclose(model.W_, ref.W_, atol=1e-5) and torch.allclose(model.W0_, ref.W0_, atol=1e-5)
    assert np.array_equal(model.predict(d.vfm_features, d.vlm_features), ref.predict(d.vfm_features, d.vlm_features))
    assert records and all(r["rank"] == 4 < r["width"] for r in records)  # K - 1 = 4 of 16: not unique
    assert len(records) == 1 + sum(1 for h in ref.history_["self_learning"] if h["refit"] and h["round"] > 0)


def test_canonical_fits_are_stable_where_the_default_is_not(pc, few_classes):
    from types import SimpleNamespace

    d = few_classes
    train, test = slice(0, 200), slice(200, 300)

    def fs(s):
        return SimpleNamespace(vfm_features=d.vfm_features[s], vlm_features=d.vlm_features[s], labels=d.labels[s])

    ds = SimpleNamespace(pool=SimpleNamespace(**vars(fs(train)), text_prototypes=d.text_prototypes, n_samples=200), test=fs(test))
    for c in ("complete_crosscov", "complete_identity"):
        # the same plan, M nudged by 1e-6 of its RMS entry: the canonical W0 does not move
        got = pc.order_check(ds, c, "perturbed_sl0", seed=0, shuffle_seed=1, t=0.0, rtol=pc.RANK_RTOL)
        assert (got["pool_differ"], got["test_differ"]) == (0, 0) and got["W0_max_abs_diff"] < 1e-4, c
        # permuted rows: on these 200 rows UCM's plan itself moves by about 1e-4 (tr(W^T M) 80.873 against
        # 80.876), and the canonical W0 follows it continuously (about 0.03; the SVD's own completion moves by 2.5)
        # (a row or two may flip: the plan's ridge projection sums the permuted rows in another order)
        got = pc.order_check(ds, c, "off_sl0", seed=0, shuffle_seed=1, t=0.0, rtol=pc.RANK_RTOL)
        assert got["pool_differ"] + got["test_differ"] <= 2 and got["W0_max_abs_diff"] < 0.1, c
        got = pc.order_check(ds, c, "aligned_sl0", seed=0, shuffle_seed=1, t=0.0, rtol=pc.RANK_RTOL)
        assert got["pool_differ"] + got["test_differ"] <= 2 and got["W0_max_abs_diff"] < 0.1, c  # refinement amplifies the 1e-4
    got = pc.order_check(ds, "default", "perturbed_sl0", seed=0, shuffle_seed=1, t=0.0, rtol=pc.RANK_RTOL)
    assert got["W0_max_abs_diff"] > 0.5  # the same nudge re-completes the SVD's map


def test_aligned_refinement_reads_the_rows_in_the_original_order(pc, few_classes):
    from gpua import GPUA
    from gpua.fitting import ArrayPool, check_entry

    d = few_classes
    n, normalize = 120, torch.nn.functional.normalize
    Q = normalize(torch.as_tensor(d.vfm_features[:n]), dim=1)
    X = normalize(torch.as_tensor(d.vlm_features[:n]), dim=1)
    Y = normalize(torch.as_tensor(d.text_prototypes), dim=1)
    labels = torch.as_tensor(d.labels[:n])
    config = check_entry(GPUA(random_state=0, n_steps=30).get_params(), n, Y.shape[0])
    W0 = pc.polar_factor(torch.randn(Q.shape[1], Y.shape[1], generator=torch.Generator().manual_seed(0)))
    perm = torch.as_tensor(np.random.default_rng(1).permutation(n))
    pos = torch.argsort(perm)
    want, _, _ = ArrayPool(Q, X, Y, Q, config).refine(W0, labels, config.refinement, None)
    aligned = pc.CompletedPool(Q[perm], X[perm], Y, Q[perm], config, align=pos)
    got, _, _ = aligned.refine(W0, labels[perm], config.refinement, None)
    assert torch.allclose(got, want, atol=1e-6)
    assert aligned.consistency(labels[perm]) == pytest.approx(ArrayPool(Q, X, Y, Q, config).consistency(labels))
    raw, _, _ = pc.CompletedPool(Q[perm], X[perm], Y, Q[perm], config).refine(W0, labels[perm], config.refinement, None)
    assert float((raw - want).abs().max()) > 1e-4  # unaligned: other batches


def test_mean_dev_needs_the_four_real_sets(pc):
    rows = [{"set": s, "completion": c, "dev": dev} for c, base in (("default", 0.6), ("complete_identity", 0.5))
            for s, dev in zip(pc.REAL_SETS, (base, base + 0.1, base + 0.2, base + 0.3))]
    rows.append({"set": "planted", "completion": "default", "dev": 0.0})  # not counted
    got = pc.mean_dev(rows)
    assert got["default"]["mean_dev_real"] == pytest.approx(0.75) and got["complete_identity"]["mean_dev_real"] == pytest.approx(0.65)
    partial = pc.mean_dev([r for r in rows if r["set"] != "fmnist-lite2"])
    assert partial["default"]["mean_dev_real"] is None and partial["default"]["mean_dev_available"] == pytest.approx(0.7)
    merged = pc.merge_rows(rows, [{"set": "cifar-dinov2", "completion": "default", "dev": 1.0}])
    assert len(merged) == len(rows) and pc.mean_dev(merged)["default"]["mean_dev_real"] == pytest.approx(0.85)


def test_main_on_planted_writes_every_completion(pc, tmp_path, capsys):
    out = tmp_path / "pc.json"
    assert pc.main(["--sets", "planted", "--order-modes", "off_sl0", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(c in printed for c in pc.COMPLETIONS) and "mean dev, 4 real sets" in printed
    data = json.loads(out.read_text())
    rows = {r["completion"]: r for r in data["rows"]}
    assert set(rows) == set(pc.COMPLETIONS) and data["machine"]["cores"] and data["complete"] is True
    for r in rows.values():
        assert 0 < r["test"] <= 1 and 0 < r["dev"] <= 1 and set(r["order"]) == {"off_sl0"}
        assert r["procrustes"][0]["rank"] == 17 and r["procrustes"][0]["width"] == 32  # planted: a 16-d latent
        assert r["order"]["off_sl0"]["pool_differ"] == 0
    assert rows["complete_crosscov"]["procrustes"][0]["vs_default_fro"] > 0.1  # it did complete differently
    assert data["mean_dev"]["default"]["mean_dev_real"] is None


@pytest.mark.parametrize("argv", [["--completions", "default,best"], ["--order-modes", "sideways"], ["--crosscov-t", "-1"],
                                  ["--rank-rtol", "0"], ["--perturb", "0"], ["--sets", "imagenet"]])
def test_bad_arguments_exit_2(pc, argv):
    with pytest.raises(SystemExit) as exc:
        pc.main(["--sets", "planted", *argv])
    assert exc.value.code == 2
