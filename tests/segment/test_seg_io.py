"""Label PNGs: values are stored exactly or refused, never wrapped around."""

from __future__ import annotations

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua._errors import GPUAError
from gpua.segment.io import write_label_png


@pytest.mark.parametrize(
    "label, match",
    [
        (np.array([[-1, 0], [1, 2]]), r"-1 outside \[0, 65535\]"),  # was read back as 65535
        (np.array([[70000, 0], [1, 2]]), r"70000 outside \[0, 65535\]"),  # was read back as 4464
        (np.array([[1.7, 0], [1, 2]]), r"integer class indices .*1\.7"),  # was read back as 1
        (np.array([[np.nan, 0], [1, 2]]), "integer class indices"),
        (np.zeros((2, 2, 3), np.int64), r"shape \(2, 2, 3\)"),
    ],
)
def test_labels_a_png_cannot_hold_are_refused(tmp_path, label, match):
    path = tmp_path / "a.png"
    with pytest.raises(GPUAError, match=match):
        write_label_png(path, label)
    assert not path.exists()


@pytest.mark.parametrize(
    "label",
    [
        np.array([[255, 0], [1, 2]]),  # 255, the datasets' ignore / "no class" label, in a palette PNG
        np.array([[300, 0], [65535, 2]]),  # beyond 255: 16-bit greyscale
        np.array([[3.0, 0.0], [1.0, 2.0]]),  # integer-valued floats
        np.array([[True, False], [False, True]]),
    ],
)
def test_label_pngs_read_back_exactly(tmp_path, label):
    path = tmp_path / "a.png"
    write_label_png(path, label)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), label.astype(np.int64))
