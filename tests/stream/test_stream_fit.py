"""fit_streaming equals GPUA.fit, whatever the chunking, cache mode, storage or interruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpua import GPUA, GPUAError, load_model
from gpua.stream import ShardedFeatures, fit_streaming, minimum_budget_for, write_shards

from stream_helpers import assert_same_fit, planted_case, reference_fit

FAST = dict(refine=False)


def budget(data, extra_rows: int, **params) -> int:
    """A budget just above the minimum: ``extra_rows`` of chunk work beyond the smallest chunk."""
    Z, X, Y, _ = data
    return minimum_budget_for(GPUA(**params), len(Z), Y.shape[0], Z.shape[1], X.shape[1]) + extra_rows


@pytest.mark.parametrize(
    "params",
    [
        dict(refine=False),
        dict(refine=False, center=True, query="fused", retrieval="csls"),
        dict(refine=False, assignment="hard", rho=1.0),
        dict(refine=True, n_steps=20),
        dict(refine=True, n_steps=20, self_learning=2),
        dict(refine=False, center=True, retrieval="csls", self_learning=2),
        dict(refine=True, n_steps=20, center=True, query="fused", whiten=24, self_learning=2),
        dict(refine=False, query="fused", whiten="auto", whiten_shrink=0.5),
        dict(refine=False, similarity="neg_euclidean", eps=0.5, self_learning=1),  # -distance/0.1: ten times cosine units
        dict(refine=False, plan_ridge=None, self_learning=1),  # the plan as mined, no projection pass
        dict(refine=False, plan_ridge=30.0, assignment="hard", whiten=24),
    ],
    ids=["default", "center-fused-csls", "hard-semirelaxed", "refine", "self-learning", "self-learning-center-csls",
         "whiten-self-learning", "whiten-auto", "whiten-neg-euclidean", "plain-plan", "ridge30-hard-whiten"],
)
def test_equals_in_memory_fit(case, params, device):
    Z, X, Y, _ = case
    params = {**params, "device": device}
    ref = reference_fit(case, **params)
    got = fit_streaming(GPUA(**params), (Z, X), Y, max_memory="2GB", progress=False)
    assert got.history_["streaming"]["cache"] == "float64"
    assert got.W_.device.type == device
    assert_same_fit(ref, got)
    assert set(ref.history_) <= set(got.history_)
    if params.get("self_learning"):
        rounds = got.history_["self_learning"]
        assert len(rounds) > 1 and any(r["kept"] for r in rounds[1:])  # the rounds ran and changed the fit
        for a, b in zip(ref.history_["self_learning"], rounds):
            assert a["kept"] == b["kept"] and a["label_change"] == b["label_change"]
            assert a["criterion"] == pytest.approx(b["criterion"], abs=1e-6)


@pytest.mark.parametrize("extra, mode", [(500_000, "float32"), (100_000, "float16"), (30_000, "partial"), (0, "recompute")])
def test_equals_in_memory_fit_on_a_tight_budget(case, extra, mode):
    # Many small chunks; float32 or float16 tiles, some tiles recomputed every pass, or all of them.
    Z, X, Y, _ = case
    got = fit_streaming(GPUA(**FAST), (Z, X), Y, max_memory=budget(case, extra, **FAST), progress=False)
    s = got.history_["streaming"]
    assert s["cache"] == mode and s["n_chunks"] > 1
    assert s["estimated_peak_bytes"] <= s["budget_bytes"]
    # Half-precision tiles hold kernel entries to a relative 5e-4: at the default eps = 0.02 the
    # fit moves by ~1.5e-4 (the plan's sensitivity grows as 1/eps), not 1e-5.
    half = mode in ("float16", "partial")
    assert_same_fit(reference_fit(case, **FAST), got, atol=3e-4 if half else 1e-5, exact_iterations=not half)


def test_a_whitened_fit_on_many_chunks_equals_the_in_memory_fit(case):
    """The query's second moment summed chunk by chunk gives the in-memory whitening, folded into W_ the same way."""
    Z, X, Y, _ = case
    params = dict(refine=False, center=True, query="fused", whiten=24)
    got = fit_streaming(GPUA(**params), (Z, X), Y, max_memory=budget(case, 500_000, **params), progress=False)
    assert got.history_["streaming"]["n_chunks"] > 1
    ref = reference_fit(case, **params)
    assert_same_fit(ref, got)
    assert got.W_.shape == (Z.shape[1] + X.shape[1], Y.shape[1])  # the whitening folded in: a map on the query
    assert got.history_["whiten_components"] == 24 and got.history_["timings"]["whiten_s"] > 0.0


def test_whitened_rows_are_never_formed_but_multiply_as_if_they_were():
    """WhitenedRows: Q B, A Q and Q[idx] equal the products with normalize(Q0 M) formed."""
    from gpua.stream._kernels import WhitenedRows

    g = torch.Generator().manual_seed(0)
    Q0, M = torch.randn(50, 12, generator=g), torch.randn(12, 7, generator=g)
    Q = torch.nn.functional.normalize(Q0 @ M, dim=1)
    lazy = WhitenedRows(Q0, M, 1.0 / (Q0 @ M).norm(dim=1))
    B, A = torch.randn(7, 5, generator=g), torch.randn(4, 50, generator=g)
    assert lazy.shape == (50, 7)
    torch.testing.assert_close(lazy @ B, Q @ B)
    torch.testing.assert_close(lazy.left(A), A @ Q)
    torch.testing.assert_close(lazy[torch.tensor([3, 1])], Q[[3, 1]])


def test_chunking_does_not_change_the_result_even_with_ties():
    # make_planted's defaults saturate softmax(100 X Y^T): many exact ties for the confident
    # centres, which the streamed selection breaks by row index, the same for any chunking.
    data = planted_case(1200, 24, 32, 16, 12, ties=True)
    Z, X, Y, _ = data
    whole = fit_streaming(GPUA(**FAST), (Z, X), Y, max_memory="2GB", progress=False)
    assert whole.history_["streaming"]["n_chunks"] == 1
    chunked = fit_streaming(GPUA(**FAST), (Z, X), Y, max_memory=budget(data, 300_000, **FAST), progress=False)
    assert chunked.history_["streaming"]["n_chunks"] > 2
    assert_same_fit(whole, chunked)


def test_a_pool_without_class_structure_predicts_identically_without_refinement_and_self_learning():
    # Pure noise (no row belongs to any prototype): the plan is nearly flat, so float rounding
    # could tip pseudo-labels. Without refinement and self-learning rounds it does not; the
    # README says the rounds, which re-mine from the map's own scores, can part there.
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((600, 64)).astype(np.float32)
    X = rng.standard_normal((600, 48)).astype(np.float32)
    Y = rng.standard_normal((10, 48)).astype(np.float32)
    params = dict(refine=False, self_learning=0)
    ref = GPUA(**params).fit(Z, X, Y)
    got = fit_streaming(GPUA(**params), (Z, X), Y, progress=False, chunk_rows=150)
    assert got.history_["streaming"]["n_chunks"] == 4
    np.testing.assert_array_equal(ref.predict(Z, X), got.predict(Z, X))


@pytest.mark.parametrize("dtype, storage", [("float16", "npy"), ("bfloat16", "safetensors"), ("float32", "safetensors")])
def test_shards_equal_in_memory_fit_on_the_stored_values(case, tmp_path, dtype, storage):
    Z, X, Y, _ = case
    shards = write_shards(tmp_path / "s", Z, X, rows_per_shard=400, dtype=dtype, storage=storage, text_prototypes=Y)
    # The reference sees what the shards hold: the features rounded to the storage dtype.
    tdt = getattr(torch, dtype)
    Zs, Xs = (torch.from_numpy(A).to(tdt).float().numpy() for A in (Z, X))
    if dtype == "bfloat16":
        # Rounding to 8 bits of mantissa ties two confidences here: compare with the streamed
        # fit of the same values in one chunk (ties broken by row), not with torch.topk's pick.
        ref = fit_streaming(GPUA(**FAST), (Zs, Xs), Y, max_memory="2GB", progress=False)
    else:
        ref = GPUA(**FAST).fit(Zs, Xs, Y)
    got = fit_streaming(GPUA(**FAST), shards, max_memory=budget(case, 1_000_000, **FAST), progress=False)
    assert got.history_["streaming"]["n_chunks"] > 1
    assert_same_fit(ref, got)


def test_gpua_fit_accepts_a_shard_set(case, tmp_path):
    Z, X, Y, _ = case
    shards = write_shards(tmp_path / "s", Z, X, dtype="float32", text_prototypes=Y)
    got = GPUA(**FAST).fit(shards, None, Y)
    assert "streaming" in got.history_
    assert_same_fit(reference_fit(case, **FAST), got)
    with pytest.raises(GPUAError, match="vlm_features must be None"):
        GPUA(**FAST).fit(shards, X, Y)


def test_streamed_model_saves_and_predicts(case, tmp_path):
    Z, X, Y, labels = case
    got = fit_streaming(GPUA(refine=False, query="vfm"), (Z, X), Y, max_memory="2GB", progress=True)  # bars on stderr
    model = load_model(got.save(tmp_path / "m.gpua"))
    np.testing.assert_array_equal(model.predict(Z, X), got.predict(Z, X))
    assert got.score(Z, labels, X) > 0.8


class _Stop(Exception):
    pass


def test_interrupted_fit_resumes_to_the_uninterrupted_result(case, tmp_path):
    Z, X, Y, _ = case
    params = dict(refine=True, n_steps=10, center=True, whiten=24)
    whole = fit_streaming(GPUA(**params), (Z, X), Y, max_memory="2GB", progress=False)

    def stop_at_round_3(entry):
        if entry.get("round") == 3:
            raise _Stop

    ck = tmp_path / "ck"
    with pytest.raises(_Stop):
        fit_streaming(GPUA(**params), (Z, X), Y, max_memory="2GB", checkpoint=ck, progress=False, callback=stop_at_round_3)
    seen = []
    resumed = fit_streaming(GPUA(**params), (Z, X), Y, max_memory="2GB", checkpoint=ck, progress=False, callback=seen.append)
    assert [e["round"] for e in seen if "round" in e][0] == 4  # rounds 1-3 were not run again
    assert_same_fit(whole, resumed, atol=1e-6)
    assert resumed.history_["ucm"] == whole.history_["ucm"]
    # A finished checkpoint skips UCM; one from another fit is refused.
    again = fit_streaming(GPUA(**params), (Z, X), Y, max_memory="2GB", checkpoint=ck, progress=False)
    assert_same_fit(whole, again, atol=1e-6)
    with pytest.raises(GPUAError, match="another fit"):
        fit_streaming(GPUA(**params, lam=0.8), (Z, X), Y, checkpoint=ck, progress=False)


def test_a_fit_stopped_before_the_plan_projection_resumes_with_that_pass_alone(case, tmp_path, monkeypatch):
    import gpua.stream._kernels as K_

    Z, X, Y, _ = case
    params = dict(refine=False, whiten=24, self_learning=0)
    whole = fit_streaming(GPUA(**params), (Z, X), Y, max_memory="2GB", progress=False)
    real = K_.part_projected_stats

    def killed(*a, **k):
        raise _Stop

    monkeypatch.setattr(K_, "part_projected_stats", killed)
    ck = tmp_path / "ck"
    with pytest.raises(_Stop):
        fit_streaming(GPUA(**params), (Z, X), Y, max_memory="2GB", checkpoint=ck, progress=False)
    monkeypatch.setattr(K_, "part_projected_stats", real)
    seen = []
    resumed = fit_streaming(GPUA(**params), (Z, X), Y, max_memory="2GB", checkpoint=ck, progress=False, callback=seen.append)
    assert not [e for e in seen if "round" in e and "plan_change" in e]  # no UCM round ran again
    assert_same_fit(whole, resumed, atol=1e-6)
    assert resumed.history_["ucm"] == whole.history_["ucm"]
    # The checkpoint now holds the projected result: a third run reads it and runs no pass of UCM,
    # nor the query-moments pass only a projection still to solve needs.
    moments_passes, real_moments = [], K_.part_query_moments
    monkeypatch.setattr(K_, "part_query_moments", lambda *a: moments_passes.append(1) or real_moments(*a))
    again = fit_streaming(GPUA(**params), (Z, X), Y, max_memory="2GB", checkpoint=ck, progress=False)
    assert_same_fit(whole, again, atol=1e-6)
    assert moments_passes == []
    # The projection is part of the fingerprint: another plan_ridge is another fit.
    with pytest.raises(GPUAError, match="another fit"):
        fit_streaming(GPUA(**params, plan_ridge=None), (Z, X), Y, checkpoint=ck, progress=False)


def test_bad_inputs_are_clear_errors(case, tmp_path):
    Z, X, Y, _ = case
    with pytest.raises(GPUAError, match="solver"):
        fit_streaming(GPUA(solver="pot"), (Z, X), Y, progress=False)
    with pytest.raises(GPUAError, match="text_prototypes"):
        fit_streaming(GPUA(), (Z, X), None, progress=False)
    with pytest.raises(GPUAError, match="width"):
        fit_streaming(GPUA(), (Z, X), Y[:, :-1], progress=False)
    with pytest.raises(GPUAError, match="source must be"):
        fit_streaming(GPUA(), Z, Y, progress=False)
    bad = Z.copy()
    bad[777, 3] = np.nan
    shards = write_shards(tmp_path / "s", Z, X, rows_per_shard=500, dtype="float32")
    np.save(tmp_path / "s" / "shard-000001.vfm_features.npy", bad[500:1000])  # corrupt after writing
    with pytest.raises(GPUAError, match="shard 1 .* does not match its checksum"):
        fit_streaming(GPUA(**FAST), shards, Y, progress=False)
    # A set without checksums (written by hand, or by an older gpua) is still checked row by row.
    unverified = ShardedFeatures(tmp_path / "s", verify=False)
    with pytest.raises(GPUAError, match=r"row 777 \(shard 1, local row 277\)"):
        fit_streaming(GPUA(**FAST), unverified, Y, progress=False)


@pytest.mark.parametrize("completion", ["crosscov", "svd"])
def test_a_map_the_classes_leave_free_is_completed_alike_by_both_fits(completion):
    """Was: with fewer classes than the widths, Q^T P Y fixes W0 on K - 1 directions only and the SVD
    completed the rest from the sum's rounding, so the streamed fit (other chunk sums) started refinement
    from another map (W0_ apart by about 1; 18 of 200 predictions of a CIFAR-10 folder differed). The
    default completes it from the pool's Q^T X, which both fits sum alike; the SVD's completion still parts."""
    Z, X, Y, _ = planted_case(600, 6, 40, 20, 8)  # 6 classes: rank 5 of the 20 columns
    params = dict(n_steps=30, self_learning=1, procrustes_completion=completion)
    ref = GPUA(**params).fit(Z, X, Y)
    got = fit_streaming(GPUA(**params), (Z, X), Y, chunk_rows=211, progress=False)
    assert got.history_["streaming"]["n_chunks"] == 3
    if completion == "crosscov":
        assert_same_fit(ref, got)
        np.testing.assert_array_equal(ref.predict(Z, X), got.predict(Z, X))
    else:
        assert float((ref.W0_ - got.W0_).abs().max()) > 1e-2


def test_a_resumed_fit_whose_map_the_classes_leave_free_equals_the_uninterrupted_one(tmp_path):
    """Where the classes leave part of the map free, the completion's Q^T X pass runs after the resumed UCM
    as in the uninterrupted fit: the two are one fit, self-learning rounds included."""
    Z, X, Y, _ = planted_case(600, 6, 40, 20, 8)
    params = dict(n_steps=30, self_learning=2, whiten=24)
    whole = fit_streaming(GPUA(**params), (Z, X), Y, chunk_rows=211, progress=False)

    def stop_at_round_2(entry):
        if entry.get("round") == 2 and "plan_change" in entry:
            raise _Stop

    ck = tmp_path / "ck"
    with pytest.raises(_Stop):
        fit_streaming(GPUA(**params), (Z, X), Y, chunk_rows=211, checkpoint=ck, progress=False, callback=stop_at_round_2)
    resumed = fit_streaming(GPUA(**params), (Z, X), Y, chunk_rows=211, checkpoint=ck, progress=False)
    assert len(whole.history_["self_learning"]) > 1
    assert_same_fit(whole, resumed)
    np.testing.assert_array_equal(whole.predict(Z, X), resumed.predict(Z, X))


def test_the_completion_pass_keeps_no_rows_into_refinement(monkeypatch):
    """The Q^T X pass runs after the mining freed its tiles; chunk rows it kept (where the plan has room)
    stayed in memory through refinement, outside the budget the plan made for it."""
    import gpua.stream._fit as F
    import gpua.stream._kernels as K_

    Z, X, Y, _ = planted_case(600, 6, 40, 20, 8)
    held, real = [], F.refine

    def refine_watched(*args, **kwargs):
        held.append(sum(1 for st in K_._STORE.values() if st.rows is not None))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "refine", refine_watched)
    kept = []
    real_read = K_._read

    def read_watched(part, fit, dev, check=False):
        kept.append(part.keep_rows)
        return real_read(part, fit, dev, check)

    monkeypatch.setattr(K_, "_read", read_watched)
    fit_streaming(GPUA(n_steps=10, self_learning=0), (Z, X), Y, chunk_rows=211, progress=False)
    assert any(kept)  # the plan had room: chunks kept their rows between passes
    assert held == [0]
