"""Claims of README.md's prose that the code must keep (tests/test_readme.py runs its command lines).

README, "Command line": "Counts, seeds, timeouts, `--device` and `--cache-dir` are checked before
any file is read, each error naming its flag." The segmentation commands' window and refinement
counts (`--crop`, `--stride`, `--affinity-topk`) were checked only once the model and the encoders
had loaded, after the images had been listed; `fit-seg --max-images` after the class-name file had
been read. Here the inputs do not exist, so an error about them shows that the count came second.
"""

from __future__ import annotations

import pytest

from gpua.cli import main


def _error(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--crop", "0"), ("--crop", "-1"), ("--stride", "0"), ("--affinity-topk", "0")])
def test_segment_counts_are_checked_before_any_file(tmp_path, capsys, flag, value):
    missing = str(tmp_path / "missing")
    err = _error(capsys, ["segment", "--model", missing + ".gpua", "--images", missing, "--out", str(tmp_path / "masks"),
                          flag, value])
    assert flag in err and "missing" not in err, err


@pytest.mark.parametrize("flag, value", [("--crop", "0"), ("--stride", "-3"), ("--affinity-topk", "0")])
def test_evaluate_seg_counts_are_checked_before_any_file(tmp_path, capsys, flag, value):
    missing = str(tmp_path / "missing")
    err = _error(capsys, ["evaluate-seg", "--model", missing + ".gpua", "--dataset", "voc", "--root", missing, flag, value])
    assert flag in err and "missing" not in err, err


def test_fit_seg_max_images_is_checked_before_any_file(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    missing = str(tmp_path / "missing.txt")
    err = _error(capsys, ["fit-seg", "--images", str(images), "--classnames", missing, "--vfm", "planted:vfm",
                          "--vlm", "planted:vlm", "--out", str(tmp_path / "seg.gpua"), "--max-images", "0"])
    assert "--max-images" in err and "missing" not in err, err
