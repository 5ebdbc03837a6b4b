"""Every warning gpua's library raises points at the user's line (gpua._errors.warn_user), however deep the
call that raises it: a folder's class-folder walk, a fit's prototype check, a pool's sampling. These used
fixed stacklevels, which pointed inside gpua as soon as a call was added between."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpua import GPUA
from gpua.data import load_dataset, sample_pool

pytest.importorskip("PIL")
from test_extract_audit2 import _photos  # noqa: E402  (a folder of small random photos, one folder per class)

# Their HEIC files are gpua without pillow-heif (with it: tests/data/test_data_heif.py).
pytestmark = pytest.mark.usefixtures("without_heif")


def _caught(call, match: str) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    found = [w for w in caught if match in str(w.message)]
    assert found, [str(w.message) for w in caught]
    return found


def _through_a_user_helper(call):
    return call()  # one more frame of the user's own: the warning still names this file


@pytest.mark.parametrize("depth", [_caught, lambda call, match: _caught(lambda: _through_a_user_helper(call), match)])
def test_folder_walk_warnings_point_at_the_caller(tmp_path, depth):
    photos = _photos(tmp_path / "photos", n=2)
    (photos / "bird").mkdir()  # a class folder with no images
    (photos / "cat" / "IMG_1.HEIC").write_bytes(b"\0\0\0\x18ftypheic")  # a photo gpua does not read
    for match in ("hold no images", "left out 1 photo"):
        assert [w.filename for w in depth(lambda: load_dataset(photos), match)] == [__file__]


def test_fit_and_pool_warnings_point_at_the_caller(tmp_path):
    rng = np.random.default_rng(0)
    Z, X = rng.normal(size=(40, 6)), rng.normal(size=(40, 5))
    Y = rng.normal(size=(3, 5))
    Y[2] = Y[1]  # two classes with one prototype
    found = _caught(lambda: GPUA(refine=False, self_learning=0, whiten=None).fit(Z, X, Y), "point the same way")
    assert {w.filename for w in found} == {__file__}
    ds = load_dataset(_photos(tmp_path / "small", n=2))
    found = _caught(lambda: sample_pool(ds, size=10, seed=0, class_balanced=False), "more than the 4 images")
    assert [w.filename for w in found] == [__file__]
