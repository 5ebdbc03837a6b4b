"""Scores made a band of rows at a time (:meth:`DenseSegmenter.iter_scores`): the same labels and
scores as the whole image, with memory that grows with the width, not the area.

Was: ``predict`` and ``gpua segment`` held every pixel's (K, H, W) float32 scores, and the
softmax of the threshold as much again: 7 GB each for a 12-megapixel photo of 150 classes, even
with ``--crop``, whose docstring said sliding windows bound memory on large images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpua.segment.inference import DenseSegmenter, sliding_windows
from gpua.segment.planted import make_planted_world


@pytest.fixture(scope="module")
def world4():
    return make_planted_world(4, seed=3)


def _whole_scores_the_old_way(seg: DenseSegmenter, img: np.ndarray) -> torch.Tensor:
    """The (K, H, W) scores as predict_scores made them before bands: one F.interpolate of the
    grid, or every window accumulated into a full-size buffer."""
    H, W = img.shape[:2]
    if seg.crop_size is None:
        return F.interpolate(seg.grid_scores([img]), size=(H, W), mode="bilinear", align_corners=False)[0]
    acc = torch.zeros((seg.n_classes, H, W))
    count = torch.zeros((1, H, W))
    for y1, y2, x1, x2 in sliding_windows(H, W, seg.crop_size, seg.stride):
        s = F.interpolate(seg.grid_scores([img[y1:y2, x1:x2]]), size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
        acc[:, y1:y2, x1:x2] += s
        count[:, y1:y2, x1:x2] += 1
    return acc / count


@pytest.mark.parametrize("crop", [None, (16, 20), (24, 24)])
@pytest.mark.parametrize("band_bytes", [1, 4 * 4 * 53 * 5, 2**30])  # one row, five rows, the whole image
def test_bands_join_to_the_whole_image_scores(world4, crop, band_bytes):
    img, _ = world4.sample(1, (37, 53), seed=9)
    stride = None if crop is None else (7, 9)
    seg = DenseSegmenter(world4.vfm, world4.vlm, world4.prototypes, crop_size=crop, stride=stride, batch_size=3)
    seg.band_bytes = band_bytes
    bands = list(seg.iter_scores(img[0]))
    starts = [y0 for y0, _ in bands]
    heights = [b.shape[1] for _, b in bands]
    assert starts[0] == 0 and all(a + h == b for a, h, b in zip(starts, heights, starts[1:]))  # no gap, no overlap
    assert sum(heights) == 37 and all(b.shape == (4, b.shape[1], 53) for _, b in bands)
    if band_bytes == 1:  # sliding windows too: was a stride of rows whatever the budget
        assert max(heights) == 1
    joined = seg.predict_scores(img[0])
    old = _whole_scores_the_old_way(seg, img[0])
    torch.testing.assert_close(joined, old, rtol=1e-5, atol=1e-6)
    labels = seg.predict(img[0])
    assert labels.shape == (37, 53) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, joined.argmax(0).numpy())


def test_window_bands_hold_about_a_crop_of_rows_not_the_image(world4):
    img, _ = world4.sample(1, (200, 40), seed=4)
    seg = DenseSegmenter(world4.vfm, world4.vlm, world4.prototypes, crop_size=(24, 24), stride=(16, 16))
    heights = [b.shape[1] for _, b in seg.iter_scores(img[0])]
    assert sum(heights) == 200
    assert len(heights) > 5 and max(heights) <= 24  # a stride of rows at a time, the last crop at the end


def test_window_bands_follow_the_byte_budget(world4):
    """Was: a band of final rows was handed out whole, a stride of rows however wide the image
    and however many the classes, from a buffer of a crop plus a stride of full-width rows."""
    img, _ = world4.sample(1, (64, 32), seed=5)
    seg = DenseSegmenter(world4.vfm, world4.vlm, world4.prototypes, crop_size=(24, 24), stride=(16, 16))
    seg.band_bytes = 4 * 4 * 32 * 5  # five rows of 4 classes x 32 float32 columns
    bands = list(seg.iter_scores(img[0]))
    assert max(b.shape[1] for _, b in bands) == 5 and sum(b.shape[1] for _, b in bands) == 64
    torch.testing.assert_close(torch.cat([b for _, b in bands], dim=1), _whole_scores_the_old_way(seg, img[0]), rtol=1e-5, atol=1e-6)


def test_whole_image_bands_follow_the_byte_budget(world4):
    img, _ = world4.sample(1, (64, 32), seed=5)
    seg = DenseSegmenter(world4.vfm, world4.vlm, world4.prototypes)
    seg.band_bytes = 4 * 4 * 32 * 10  # ten rows of 4 classes x 32 float32 columns
    heights = [b.shape[1] for _, b in seg.iter_scores(img[0])]
    assert heights == [10] * 6 + [4]


def test_threshold_is_applied_per_band_like_the_whole(world4):
    img, _ = world4.sample(1, (40, 48), seed=6)
    kw = dict(score_threshold=0.9, threshold_label=255)
    banded = DenseSegmenter(world4.vfm, world4.vlm, world4.prototypes, **kw)
    banded.band_bytes = 1
    whole = DenseSegmenter(world4.vfm, world4.vlm, world4.prototypes, **kw)
    got = banded.predict(img[0])
    want = whole.labels_from_scores(_whole_scores_the_old_way(whole, img[0]))
    assert (want == 255).any() and (want != 255).any()  # the threshold bites somewhere, not everywhere
    assert np.mean(got == want) > 0.999


@pytest.mark.parametrize("grid", [(0, 5), (5,), "fine", (2.5, 3), True])
def test_a_bad_grid_is_refused_where_it_is_given(world4, grid):
    """Was: stored unchecked; (0, 5) failed on a reshape and (5,) on an index at the first predict,
    and zero-shot never said anything."""
    from gpua._errors import GPUAError
    from gpua.segment.inference import encode_grids, sample_patch_features

    img, _ = world4.sample(1, (32, 32), seed=1)
    with pytest.raises(GPUAError, match=r"grid=.*use 'coarser', 'finer' or an \(h, w\) pair of positive ints"):
        DenseSegmenter(world4.vfm, world4.vlm, world4.prototypes, grid=grid)
    with pytest.raises(GPUAError, match="grid="):
        encode_grids(world4.vfm, world4.vlm, img, grid=grid)
    with pytest.raises(GPUAError, match="grid="):
        sample_patch_features(world4.vfm, world4.vlm, img, grid=grid)
    assert DenseSegmenter(world4.vfm, world4.vlm, world4.prototypes, grid=[4, 4]).grid == (4, 4)
