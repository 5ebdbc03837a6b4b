"""What the commands say: a cached extract is "up to date"."""

import numpy as np
import pytest
pytest.importorskip("PIL")
from PIL import Image

from gpua.cli import main


def test_a_cached_extract_says_up_to_date(tmp_path, capsys):
    for k, name in enumerate(("sky", "grass")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.fromarray(np.full((16, 16, 3), 60 + 100 * k, np.uint8)).save(tmp_path / "imgs" / name / "a.png")
    argv = ["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "f.npz"), "--quiet"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("wrote ") and "80 prompt template(s)" in first  # the default: CLIP's 80 for a folder
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert second.startswith("up to date ") and "nothing was extracted" in second
    assert main(argv + ["--templates", "simple"]) == 0  # other templates: extracted again
    out = capsys.readouterr().out
    assert out.startswith("wrote ") and "2 images, " in out and "2 classes, " in out  # was: "2 classs"


def test_a_cache_inside_the_shard_set_extract_writes_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """Was: the whole extraction ran, then 'path=... is a folder that is not a gpua shard set' (the cache's own
    files), and every re-run failed the same way."""
    (tmp_path / "imgs" / "sky").mkdir(parents=True)
    Image.fromarray(np.full((16, 16, 3), 60, np.uint8)).save(tmp_path / "imgs" / "sky" / "a.png")
    monkeypatch.setattr("gpua.extract.extract_features", lambda *a, **k: pytest.fail("extraction started"))
    base = ["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", str(tmp_path / "imgs"), "--quiet"]
    for out, cache, where in (("fe", "fe", "--out"), ("fe", "fe/cache", "--out"), ("f.npz", "f.npz.parts/c", "the parts folder"),
                              ("fe2/", "fe2.parts/c", "the parts folder")):  # a trailing slash: the parts folder is fe2.parts
        assert main(base + ["--out", str(tmp_path / out), "--cache-dir", str(tmp_path / cache)]) == 2
        assert f"lies in {where} " in capsys.readouterr().err


def test_fit_progress_gives_each_self_learning_round_its_own_bars(capsys):
    from gpua import GPUA
    from gpua.cli._common import FitProgress
    from gpua.synthetic import make_planted

    made = []

    class Bar:
        def __init__(self, desc, total, unit):
            self.desc, self.n, self.closed = desc, 0, False
            made.append(self)

        def update(self, k):
            assert k >= 0 and not self.closed, f"{self.desc}: moved by {k} (closed: {self.closed})"
            self.n += k

        def set_postfix(self, **kw):
            assert not self.closed

        def close(self):
            self.closed = True

    data = make_planted(200, 16, 12, 8, 5, random_state=0)
    model = GPUA(n_steps=20, self_learning=2, self_learning_tol=0.0, random_state=0)
    progress = FitProgress(model)
    progress._bar = Bar
    with progress:
        model.fit(data.vfm_features, data.vlm_features, data.text_prototypes, callback=progress)
    records = model.history_["self_learning"][1:]
    descs = [b.desc for b in made]
    # was: the self-learning rounds' UCM updated the closed first bar and their refinement moved it backwards
    assert descs[:2] == ["UCM rounds", "refinement"]
    for r in range(1, len(records) + 1):
        assert f"self-learning {r}: UCM rounds" in descs
    assert all(b.closed for b in made)
    out = capsys.readouterr().out
    assert all(f"self-learning round {rec['round']}:" in out for rec in records)


def test_a_large_photo_read_whole_gets_no_nameless_bomb_warning(tmp_path, capsys, monkeypatch):
    """Was: "warning: Image size (108000000 pixels) exceeds limit ..., could be decompression bomb DOS attack.",
    naming no file, for a 108-megapixel photo gpua read and classified normally."""
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # a 40 x 40 photo is then "large" (under twice: decoded)
    for k, name in enumerate(("sky", "grass")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.fromarray(np.full((40, 40, 3), 60 + 100 * k, np.uint8)).save(tmp_path / "imgs" / name / "a.png")
    argv = ["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "f.npz"),
            "--quiet", "--workers", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("wrote ") and "2 images" in captured.out
    assert "decompression bomb" not in captured.err
    with pytest.warns(PILImage.DecompressionBombWarning):  # the library leaves Pillow's own warning alone
        PILImage.open(tmp_path / "imgs" / "sky" / "a.png").load()
