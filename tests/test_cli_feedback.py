"""What the commands say: a cached extract is "up to date"."""

import numpy as np
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
    assert capsys.readouterr().out.startswith("wrote ")
