"""Patch-level fitting, grids, sliding windows, refinement and background handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpua._errors import GPUAError
from gpua.segment.inference import (
    DenseSegmenter,
    encode_grids,
    fit_patch_gpua,
    resample_grid,
    sample_patch_features,
    sliding_windows,
)
from gpua.segment.metrics import SegmentationMetric
from gpua.segment.planted import make_planted_world


def test_resample_grid_area_pools_when_shrinking_and_interpolates_when_growing():
    f = torch.arange(16.0).reshape(1, 4, 4, 1)
    pooled = resample_grid(f, (2, 2))
    np.testing.assert_allclose(pooled[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])  # means of 2x2 blocks
    assert resample_grid(f, (4, 4)) is f
    grown = resample_grid(torch.ones(2, 3, 5, 7), (6, 10))
    assert grown.shape == (2, 6, 10, 7) and torch.allclose(grown, torch.ones(()))


def test_grids_of_different_sizes_are_resampled_not_crashed(world):
    imgs, _ = world.sample(2, (32, 48), seed=3)
    assert world.vfm.encode_patches(imgs).shape[1:3] == (8, 12)  # patch 4
    assert world.vlm.encode_patches(imgs).shape[1:3] == (4, 6)  # patch 8
    Z, X = encode_grids(world.vfm, world.vlm, imgs)
    assert Z.shape == (2, 4, 6, 24) and X.shape == (2, 4, 6, 16)
    Zf, Xf = encode_grids(world.vfm, world.vlm, imgs, grid="finer")
    assert Zf.shape[1:3] == Xf.shape[1:3] == (8, 12)
    Z, X = sample_patch_features(world.vfm, world.vlm, imgs, patches_per_image=100)
    assert Z.shape == (48, 24) and X.shape == (48, 16)  # all 4x6 cells of both images


def test_patch_sampling_is_seeded(world):
    imgs, _ = world.sample(3, (32, 32), seed=4)
    a = sample_patch_features(world.vfm, world.vlm, imgs, patches_per_image=5, seed=7)
    b = sample_patch_features(world.vfm, world.vlm, imgs, patches_per_image=5, seed=7)
    c = sample_patch_features(world.vfm, world.vlm, imgs, patches_per_image=5, seed=8)
    assert a[0].shape == (15, 24)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(GPUAError, match="patches_per_image"):
        sample_patch_features(world.vfm, world.vlm, imgs, patches_per_image=0)


def test_mixed_image_sizes_in_the_pool(world):
    small, _ = world.sample(2, (16, 24), seed=5)
    big, _ = world.sample(1, (40, 40), seed=6)
    Z, X = sample_patch_features(world.vfm, world.vlm, [small[0], big[0], small[1]], patches_per_image=1000)
    assert Z.shape[0] == 2 * 2 * 3 + 5 * 5


def test_images_smaller_than_a_patch_are_a_clear_error(world):
    tiny = np.zeros((6, 40, 3), np.uint8)  # 6 rows < the VLM's 8-pixel patch
    with pytest.raises(GPUAError, match=r"images\[0\] is 6x40 pixels, smaller than one 8x8"):
        sample_patch_features(world.vfm, world.vlm, [tiny])
    seg = DenseSegmenter(world.vfm, world.vlm, world.prototypes)
    with pytest.raises(GPUAError, match=r"image\[0\] is 6x40 pixels"):
        seg.predict(tiny)


def test_sliding_windows_cover_the_image_like_mmseg():
    wins = sliding_windows(10, 25, (6, 8), (4, 6))
    assert all(y2 - y1 == 6 and x2 - x1 == 8 for y1, y2, x1, x2 in wins)
    cover = np.zeros((10, 25), int)
    for y1, y2, x1, x2 in wins:
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    assert sliding_windows(5, 5, (8, 8), (4, 4)) == [(0, 5, 0, 5)]  # crop larger than the image


@pytest.mark.parametrize("use_model", [False, True])
def test_sliding_window_equals_whole_image_for_a_per_pixel_model(use_model, make_estimator):
    # patch size 1: features are a function of each pixel alone (translation-equivariant), so
    # crops see exactly what the whole image sees and averaging overlaps changes nothing.
    w = make_planted_world(4, vfm_patch_size=1, vlm_patch_size=1, seed=2)
    imgs, _ = w.sample(6, (24, 24), seed=1)
    model = fit_patch_gpua(w.vfm, w.vlm, imgs, w.prototypes, patches_per_image=40, estimator=make_estimator()) if use_model else None
    img, _ = w.sample(1, (37, 53), seed=9)
    whole = DenseSegmenter(w.vfm, w.vlm, w.prototypes, model=model)
    slide = DenseSegmenter(w.vfm, w.vlm, w.prototypes, model=model, crop_size=(16, 20), stride=(7, 9), batch_size=3)
    torch.testing.assert_close(slide.predict_scores(img[0]), whole.predict_scores(img[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(slide.predict(img[0]), whole.predict(img[0]))


def test_prompt_synonyms_score_the_max_over_their_rows(world):
    img, _ = world.sample(1, (32, 32), seed=2)
    Y = world.prototypes
    plain = DenseSegmenter(None, world.vlm, Y).grid_scores([img[0]])[0]
    # class 0 gets a second prompt (class 3's): its score becomes the max of rows 0 and 3
    Y2 = np.concatenate([Y, Y[3:4]])
    merged = DenseSegmenter(None, world.vlm, Y2, class_of_prototype=[0, 1, 2, 3, 4, 0]).grid_scores([img[0]])[0]
    assert merged.shape == plain.shape
    torch.testing.assert_close(merged[0], torch.maximum(plain[0], plain[3]))
    torch.testing.assert_close(merged[1:], plain[1:])
    with pytest.raises(GPUAError, match="class_of_prototype"):
        DenseSegmenter(None, world.vlm, Y, class_of_prototype=[0, 1])


def test_score_threshold_labels_unsure_pixels(world):
    img, _ = world.sample(1, (32, 32), seed=2)
    none = DenseSegmenter(None, world.vlm, world.prototypes).predict(img[0])
    # at temperature 1 five cosines give a top probability far below 0.9 everywhere
    unsure = dict(score_threshold=0.9, threshold_label=255, temperature=1.0)
    all_bg = DenseSegmenter(None, world.vlm, world.prototypes, **unsure).predict(img[0])
    assert (all_bg == 255).all() and (none != 255).all()
    some = DenseSegmenter(None, world.vlm, world.prototypes, score_threshold=0.6, threshold_label=0).predict(img[0])
    assert set(np.unique(some)) <= set(np.unique(none)) | {0}
    with pytest.raises(GPUAError, match="score_threshold"):
        DenseSegmenter(None, world.vlm, world.prototypes, score_threshold=2.0)


def test_affinity_refinement(world, make_estimator):
    imgs, _ = world.sample(8, (32, 32), seed=1)
    model = fit_patch_gpua(world.vfm, world.vlm, imgs, world.prototypes, patches_per_image=16, estimator=make_estimator())
    base = DenseSegmenter(world.vfm, world.vlm, world.prototypes, model=model)
    one = DenseSegmenter(world.vfm, world.vlm, world.prototypes, model=model, refine="affinity", affinity_topk=1)
    crops = [imgs[0]]
    torch.testing.assert_close(one.grid_scores(crops), base.grid_scores(crops))  # top-1 neighbour = itself
    smooth = DenseSegmenter(world.vfm, world.vlm, world.prototypes, model=model, refine="affinity", affinity_topk=6)
    s = smooth.grid_scores(crops)
    assert s.shape == base.grid_scores(crops).shape and torch.isfinite(s).all()
    # zero-shot with refinement needs the VFM, resampled to the VLM grid
    zs = DenseSegmenter(world.vfm, world.vlm, world.prototypes, refine="affinity").grid_scores(crops)
    assert zs.shape == (1, 5, 4, 4)
    with pytest.raises(GPUAError, match="refine"):
        DenseSegmenter(world.vfm, world.vlm, world.prototypes, refine="crf")
    with pytest.raises(GPUAError, match="vfm is None"):
        DenseSegmenter(None, world.vlm, world.prototypes, refine="affinity")


def test_vfm_only_model_predicts_on_the_vfm_grid_without_the_vlm(world, make_estimator):
    imgs, _ = world.sample(8, (32, 32), seed=1)
    model = fit_patch_gpua(world.vfm, world.vlm, imgs, world.prototypes, patches_per_image=16, estimator=make_estimator())
    seg = DenseSegmenter(world.vfm, None, world.prototypes, model=model)
    assert seg.grid_scores([imgs[0]]).shape == (1, 5, 8, 8)  # the VFM's 4-pixel patches


def test_patch_gpua_beats_dense_zero_shot_on_the_planted_world(world, make_estimator):
    pool, _ = world.sample(40, (64, 64), seed=1)  # unlabeled: masks are never read
    test_imgs, test_labels = world.sample(12, (64, 64), seed=2)
    model = fit_patch_gpua(world.vfm, world.vlm, pool, world.prototypes, patches_per_image=32, seed=0, estimator=make_estimator())
    scores = {}
    for name, seg in {
        "zero-shot": DenseSegmenter(world.vfm, world.vlm, world.prototypes),
        "gpua": DenseSegmenter(world.vfm, world.vlm, world.prototypes, model=model, crop_size=48, stride=32),
    }.items():
        m = SegmentationMetric(len(world.classnames), classnames=world.classnames)
        for im, lab in zip(test_imgs, test_labels):
            m.update(seg.predict(im), lab)
        scores[name] = m.compute().mIoU
    assert scores["zero-shot"] < 0.5
    assert scores["gpua"] > 0.85 and scores["gpua"] > scores["zero-shot"] + 0.3, scores


class _PreprocessingEncoder:
    """An encoder that, like gpua.encoders' back ends, resizes and centre-crops its input
    (short side to 32, crop 28) and returns 4x4-pixel patches of the normalised pixels."""

    patch_size = 4

    def __init__(self):
        from gpua.encoders._preprocess import ImagePreprocess

        self.preprocess = ImagePreprocess(input_size=28, resize=32, mean=0.0, std=1.0, interpolation="nearest")

    def encode_patches(self, images):
        from PIL import Image

        px = self.preprocess([Image.fromarray(im) for im in images])  # (B, 3, 28, 28)
        return torch.nn.functional.avg_pool2d(torch.as_tensor(px), 4).permute(0, 2, 3, 1).numpy()


def test_dense_view_tiles_the_whole_crop_instead_of_centre_cropping():
    from gpua.segment.inference import dense_view

    enc = _PreprocessingEncoder()
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :20, 0] = 255  # a red strip on the left quarter: a centre crop would cut it off
    assert enc.encode_patches([img])[0, :, :, 0].max() == 0
    view = dense_view(enc)
    grid = view.encode_patches([img])[0, :, :, 0]
    assert grid.shape == (7, 7) and grid[:, 0].min() == 1.0 and grid[:, -1].max() == 0.0
    assert enc.preprocess.resize == 32 and view is not enc  # the caller's encoder is untouched
    assert dense_view(view) is view and dense_view(make_planted_world(2).vfm).patch_size == 4


def test_fused_query_model_reads_the_vlm_on_the_common_grid(world):
    from gpua import GPUA

    imgs, _ = world.sample(8, (32, 32), seed=1)
    model = fit_patch_gpua(world.vfm, world.vlm, imgs, world.prototypes, patches_per_image=16, estimator=GPUA(query="fused"))
    seg = DenseSegmenter(world.vfm, world.vlm, world.prototypes, model=model)
    assert seg.uses_vlm and seg.grid_scores([imgs[0]]).shape == (1, 5, 4, 4)  # the VLM's coarser grid
    with pytest.raises(GPUAError, match="vlm is None"):
        DenseSegmenter(world.vfm, None, world.prototypes, model=model)


# --------------------------------------------------------------------------- silent NaN labels


def test_a_stride_larger_than_the_crop_is_refused_rather_than_leaving_pixels_unscored(world):
    # stride 100 over 16-pixel crops scored only the four corner windows of a 64x64 image: the
    # other 3,072 pixels had 0/0 = NaN scores and still got labels
    with pytest.raises(GPUAError, match=r"stride=\(100, 100\) is larger than crop_size=\(16, 16\)"):
        DenseSegmenter(None, world.vlm, world.prototypes, crop_size=16, stride=100)
    with pytest.raises(GPUAError, match=r"stride=\(16, 9\) is larger than crop=\(8, 8\)"):
        sliding_windows(64, 64, (8, 8), (16, 9))
    img, _ = world.sample(1, (64, 64), seed=2)
    seg = DenseSegmenter(None, world.vlm, world.prototypes, crop_size=16, stride=16)  # stride == crop: tiles
    assert torch.isfinite(seg.predict_scores(img[0])).all()


def test_a_class_without_a_prototype_is_refused_rather_than_predicted_from_nan(world):
    # class 4 had no row: its -inf score turned into NaN under bilinear upsampling and won the argmax
    with pytest.raises(GPUAError, match=r"class_of_prototype .*class 4 has no prototype"):
        DenseSegmenter(None, world.vlm, world.prototypes, class_of_prototype=[0, 1, 2, 3, 5])


@pytest.mark.parametrize(
    "bad",
    [
        {"affinity_temperature": 0},
        {"affinity_temperature": -0.1},
        {"affinity_temperature": float("nan")},
        {"affinity_topk": 0},
        {"affinity_topk": -3},
        {"temperature": 0},
    ],
)
def test_temperatures_and_topk_out_of_range_are_refused(world, bad):
    # affinity temperature 0 gave NaN for every score (every pixel class 0); topk -3 a raw torch
    # RuntimeError; score temperature 0 a NaN probability that no threshold catches
    (name,) = bad
    with pytest.raises(GPUAError, match=name):
        DenseSegmenter(world.vfm, world.vlm, world.prototypes, refine="affinity", **bad)


def test_tiny_temperatures_still_give_finite_scores_and_probabilities(world):
    img, _ = world.sample(1, (32, 32), seed=2)
    seg = DenseSegmenter(world.vfm, world.vlm, world.prototypes, refine="affinity", affinity_temperature=1e-40)
    assert torch.isfinite(seg.grid_scores([img[0]])).all()
    # at a vanishing score temperature every top probability is 1: nothing falls below 0.9
    sharp = DenseSegmenter(None, world.vlm, world.prototypes, score_threshold=0.9, temperature=1e-40)
    assert (sharp.predict(img[0]) != 255).all()


def test_zero_shot_prototypes_of_the_wrong_width_name_both_widths(world):
    img, _ = world.sample(1, (32, 32), seed=2)
    Y = np.random.default_rng(0).normal(size=(5, 7))  # the planted VLM's features are 16 wide
    seg = DenseSegmenter(None, world.vlm, Y)
    with pytest.raises(GPUAError, match=r"prototypes has width 7 but the vlm encoder's patch features have width 16"):
        seg.predict(img[0])


class _NaNModel:
    """A fitted model whose scores are NaN (e.g. fitted on non-finite features)."""

    query = "vfm"

    def decision_function(self, Z, X):
        return np.full((Z.shape[0], 5), np.nan, dtype=np.float32)


def test_non_finite_scores_are_an_error_not_a_label(world):
    img, _ = world.sample(1, (32, 32), seed=2)
    seg = DenseSegmenter(world.vfm, None, world.prototypes, model=_NaNModel())
    with pytest.raises(GPUAError, match="NaN or inf"):
        seg.predict(img[0])


def test_a_model_alone_segments_into_its_own_classes(world, make_estimator):
    # without prototypes or class_of_prototype, np.arange(None) was a raw TypeError
    imgs, _ = world.sample(8, (32, 32), seed=1)
    model = fit_patch_gpua(world.vfm, world.vlm, imgs, world.prototypes, patches_per_image=16, estimator=make_estimator())
    alone = DenseSegmenter(world.vfm, world.vlm, model=model)
    given = DenseSegmenter(world.vfm, world.vlm, world.prototypes, model=model)
    assert alone.n_classes == model.n_classes_
    np.testing.assert_array_equal(alone.predict(imgs[0]), given.predict(imgs[0]))


def test_a_stride_without_a_crop_is_refused_rather_than_ignored(world):
    with pytest.raises(GPUAError, match="stride=8 is given without crop_size"):
        DenseSegmenter(None, world.vlm, world.prototypes, stride=8)


def test_segmentation_metric_refuses_a_fractional_class_count():
    with pytest.raises(GPUAError, match="n_classes=2.7 must be an int"):
        SegmentationMetric(2.7)
