"""Every `gpua` command line in README.md's code blocks parses, and the runnable ones run.

The runnable ones run in README order in one working folder, on small fixtures under the names
the README uses (``my_photos/``, ``classes.txt``, ``pool/``, ``scenes/``...): the offline encoders
become the planted ones (``planted:vfm`` / ``planted:vlm``), ``cifar10-mini`` a folder of planted
photos with train/ and test/ splits, the demo's cached feature files the ones extracted above,
fits take 20 refinement steps and the federated split 3 clients. A README line the suite cannot run must match an entry of
``NOT_RUNNABLE`` (with the reason); an entry no line matches fails the test, so the list stays true.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np

from gpua.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"

#: README lines the suite cannot run: a pattern of the line -> why.
NOT_RUNNABLE = {
    "gpua demo": "extracts 2,000 photos with real weights (tests/test_demo.py runs its pieces)",
    "--dataset voc": "needs PASCAL VOC on disk (tests/segment covers the dataset readers)",
    "--cluster tcp://": "needs a Dask scheduler (tests/stream runs a LocalCluster)",
    "--dataset-root": "needs CoOp's datasets on disk (tests/data covers split files)",
    "--datasets fashion-mnist": "reads Debian's dataset-fashion-mnist (test_classify_benchmark runs the loader on tiny idx files)",
}

ENCODERS = {"offline:dinov2-s": "planted:vfm", "offline:efficientnet-lite2": "planted:vfm", "offline:semantic-lite0": "planted:vlm"}
FAST = {"fit", "compare", "classify", "benchmark"}  # commands that take GPUA parameters


def readme_commands() -> list[tuple[int, str, list[str]]]:
    """(line number, text, argv) of every ``gpua`` line inside README.md's fenced code blocks."""
    out, in_block = [], False
    for i, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        text = line.strip().removeprefix("$ ")
        text = text.removeprefix(".venv/bin/")
        if in_block and text.startswith("gpua "):
            argv = shlex.split(text[len("gpua "):], comments=True)
            out.append((i, text, argv[:argv.index("|")] if "|" in argv else argv))  # gpua's part of a pipeline
    return out


def test_every_readme_command_parses():
    cmds = readme_commands()
    assert len(cmds) >= 20, "the README's command lines were not found"
    parser = build_parser()
    failed = []
    for i, text, argv in cmds:
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # --help, --list-params and --version exit 0 once they have printed
            if exc.code not in (0, None):
                failed.append(f"README.md:{i}: {text}")
    assert not failed, "README command lines that do not parse:\n" + "\n".join(failed)


def _single_colour(colour, rng, jitter):
    from PIL import Image

    c = np.clip(colour + rng.uniform(-jitter, jitter, 3), 0, 1)
    return Image.fromarray(np.round(np.broadcast_to(c, (16, 16, 3)) * 255).astype(np.uint8))


def _fixtures(root: Path) -> None:
    """The files and folders the README's commands name, made of planted data."""
    from PIL import Image

    from gpua.segment.planted import make_planted_world

    w = make_planted_world()
    rng = np.random.default_rng(0)
    for folder, n in (("planted_cifar/train", 6), ("planted_cifar/test", 4), ("my_photos", 3)):
        for k, name in enumerate(w.classnames):
            (root / folder / name).mkdir(parents=True)
            for j in range(n):
                _single_colour(w.colours[k], rng, w.jitter).save(root / folder / name / f"{name}_{j}.png")
    (root / "classes.txt").write_text("# the planted classes\nsky: sky, blue sky\ngrass\nroad\nwater\nsand\n")
    pool, _ = w.sample(8, (48, 48), seed=1)
    scenes, masks = w.sample(3, (48, 64), seed=2)
    for folder in ("pool", "scenes", "scenes_gt"):
        (root / folder).mkdir()
    for i, im in enumerate(pool):
        Image.fromarray(im).save(root / "pool" / f"p{i}.png")
    for i, (im, m) in enumerate(zip(scenes, masks)):
        Image.fromarray(im).save(root / "scenes" / f"s{i}.png")
        Image.fromarray(m.astype(np.uint8)).save(root / "scenes_gt" / f"s{i}.png")


def _substitute(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        a = ",".join(ENCODERS.get(part, part) for part in a.split(","))
        a = "planted_cifar" if a == "cifar10-mini" else a
        a = a.replace("$C/cifar10-mini_", "").replace("__$F", "")  # the demo's cached files -> train.npz / test.npz
        out.append(a)
    if "--clients" in out:  # 30 planted training photos do not give 10 Dirichlet clients two photos each
        out[out.index("--clients") + 1] = "3"
    if out[0] in FAST:
        out += ["--n-steps", "20", "--param", "eval_every=5"]
    if out[0] == "classify" and "--vfm" not in out:  # its default encoders are the offline ones
        out += ["--vfm", "planted:vfm", "--vlm", "planted:vlm"]
    if out[0] in ("classify", "benchmark"):
        out.append("--quiet")
    return out


def test_runnable_readme_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUA_CACHE_DIR", str(tmp_path / "cache"))
    _fixtures(tmp_path)
    used, ran = set(), 0
    for i, text, argv in readme_commands():
        reason = next((p for p in NOT_RUNNABLE if re.search(re.escape(p), text)), None)
        if reason:
            used.add(reason)
            continue
        try:
            code = main(_substitute(argv))
        except SystemExit as exc:  # --list-params prints and exits, as --help does
            code = exc.code or 0
        err = capsys.readouterr().err
        assert code == 0, f"README.md:{i}: {text}\n(run as gpua {' '.join(_substitute(argv))})\n{err[-2000:]}"
        ran += 1
    assert ran >= 15
    assert used == set(NOT_RUNNABLE), f"NOT_RUNNABLE entries no README line needs: {set(NOT_RUNNABLE) - used}"
    # what the commands were meant to leave behind
    for f in ("train.npz", "test.npz", "cifar.gpua", "results.json", "confusion.png", "predictions.csv", "table.json",
              "bench/results.jsonl", "bench/results.md", "seg.gpua", "seg.json", "lt.json", "fl.json", "model.gpua"):
        assert (tmp_path / f).exists(), f


# README benchmark commands are parsed with each script's own parser in tests/test_benchmark_scripts.py
# (test_every_readme_benchmark_command_parses_with_its_own_parser), which also reads commands a line break splits.
