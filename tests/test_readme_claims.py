"""Claims of README.md's prose that the code must keep (tests/test_readme.py runs its command lines).

README, "Command line": "Counts, seeds, timeouts, `--device` and `--cache-dir` are checked before
any file is read, each error naming its flag." The segmentation commands' window and refinement
counts (`--crop`, `--stride`, `--affinity-topk`) were checked only once the model and the encoders
had loaded, after the images had been listed; `fit-seg --max-images` after the class-name file had
been read. Here the inputs do not exist, so an error about them shows that the count came second.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

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


# README, "Numbers in the README come from commands in the repo": the JSON each figure cites is kept
# in docs/measurements/. Names the tools write into a user's folder are not measurements.
_WRITTEN_BY_TOOLS = {".seg.json", ".gpua-source.json", "index.json", "preprocessor_config.json", "results.json", "results.jsonl",
                     "split_zhou_<Dataset>.json"}


def _expanded(name: str) -> list[str]:
    """``a_{1,2}.json`` -> ``a_1.json``, ``a_2.json`` (the README's shorthand for sibling files)."""
    m = re.search(r"\{([^{}]*)\}", name)
    if m is None:
        return [name]
    return [e for alt in m.group(1).split(",") for e in _expanded(name[:m.start()] + alt + name[m.end():])]


def test_every_measurement_file_the_readme_cites_is_kept():
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text(encoding="utf-8")
    kept = [p.name for p in (root / "docs" / "measurements").iterdir()]
    cited = {m.group(1) for m in re.finditer(r"`([^`\s]+\.jsonl?)`", text)}
    names = {c.removeprefix("docs/measurements/") for c in cited
             if c.startswith("docs/measurements/") or ("/" not in c and not c.startswith(("~", "$", "...")))}
    missing = [n for c in sorted(names - _WRITTEN_BY_TOOLS) for n in _expanded(c) if not fnmatch.filter(kept, n)]
    assert len(names) > 30 and not missing, missing
