"""mmseg-convention segmentation scores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gpua._errors import GPUAError
from gpua.segment.metrics import SegmentationMetric, confusion_matrix


def _brute_force(preds, gts, K, ignore=255):
    """Per-class IoU/acc the long way: sets of pixel positions over the whole dataset."""
    p = np.concatenate([a.ravel() for a in preds])
    g = np.concatenate([a.ravel() for a in gts])
    keep = g != ignore
    p, g = p[keep], g[keep]
    iou, acc = [], []
    for k in range(K):
        inter = np.sum((p == k) & (g == k))
        union = np.sum((p == k) | (g == k))
        iou.append(inter / union if union else np.nan)
        acc.append(inter / np.sum(g == k) if np.sum(g == k) else np.nan)
    return np.array(iou), np.array(acc), (p == g).sum() / max(g.size, 1)


def test_known_example_with_absent_and_ignored_classes():
    gt = np.array([[0, 0, 1, 255], [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 2], [0, 0, 1, 3]])
    m = SegmentationMetric(5, classnames=list("abcde"))
    m.update(pred, gt)
    s = m.compute()
    # class 0: inter 3, union 4; class 1: inter 2, union 4; class 3: predicted once, never
    # true -> IoU 0; classes 2 (only on an ignored pixel) and 4: absent -> NaN, not in the mean
    np.testing.assert_allclose(s.iou, [0.75, 0.5, np.nan, 0.0, np.nan])
    assert s.mIoU == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert s.aAcc == pytest.approx(5 / 7)
    np.testing.assert_allclose(s.acc, [0.75, 2 / 3, np.nan, np.nan, np.nan])
    d = s.to_dict()
    assert d["per_class"]["c"]["IoU"] is None and d["n_pixels"] == 7
    assert "mIoU 41.67%" in s.table() and "IoU (%)" in s.table()  # percent, said (the JSON holds fractions)


def test_confusion_accumulates_over_images_not_a_mean_of_images():
    m = SegmentationMetric(2)
    m.update(np.zeros((2, 2), int), np.zeros((2, 2), int))  # perfect, 4 pixels of class 0
    m.update(np.array([[1]]), np.array([[0]]))  # one wrong pixel
    s = m.compute()
    assert s.iou[0] == pytest.approx(4 / 5) and s.iou[1] == 0.0
    assert m.n_images == 2


def test_prediction_ignore_value_is_a_miss():
    c = confusion_matrix(np.array([[255, 0]]), np.array([[0, 0]]), 2)
    assert c.shape == (2, 3) and c[0, 2] == 1 and c[0, 0] == 1
    m = SegmentationMetric(2)
    m.update(np.array([[255, 0]]), np.array([[0, 0]]))
    assert m.compute().iou[0] == 0.5


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.int64, (3, 5, 6), elements=st.integers(0, 3)),
    arrays(np.int64, (3, 5, 6), elements=st.sampled_from([0, 1, 2, 3, 255])),
)
def test_matches_brute_force(preds, gts):
    m = SegmentationMetric(4)
    for p, g in zip(preds, gts):
        m.update(p, g)
    s = m.compute()
    iou, acc, aacc = _brute_force(preds, gts, 4)
    np.testing.assert_allclose(s.iou, iou)
    np.testing.assert_allclose(s.acc, acc)
    if (gts != 255).any():
        assert s.aAcc == pytest.approx(aacc)
        assert s.mIoU == pytest.approx(np.nanmean(iou))


def test_size_mismatch_is_a_clear_error():
    m = SegmentationMetric(3)
    with pytest.raises(GPUAError, match=r"pred is 4x5 but the ground truth is 4x6"):
        m.update(np.zeros((4, 5), int), np.zeros((4, 6), int))


@pytest.mark.parametrize("which", ["pred", "target"])
def test_labels_outside_the_class_list_are_a_clear_error(which):
    bad, ok = np.array([[0, 7]]), np.array([[0, 1]])
    args = (bad, ok) if which == "pred" else (ok, bad)
    with pytest.raises(GPUAError, match=rf"{which} holds value\(s\) 7 outside the 3 classes"):
        SegmentationMetric(3).update(*args)
    # 255 is the ignore index, not an error
    SegmentationMetric(3).update(np.array([[0, 255]]), np.array([[0, 255]]))


def test_other_bad_inputs():
    with pytest.raises(GPUAError, match="2-D"):
        SegmentationMetric(3).update(np.zeros((2, 2, 3), int), np.zeros((2, 2), int))
    with pytest.raises(GPUAError, match="integer"):
        SegmentationMetric(3).update(np.full((2, 2), 0.5), np.zeros((2, 2), int))
    with pytest.raises(GPUAError, match="classnames"):
        SegmentationMetric(3, classnames=["a", "b"])
    assert np.isnan(SegmentationMetric(2).compute().mIoU)
