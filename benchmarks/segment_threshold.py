"""What ``gpua segment --threshold P`` marks as "no class" with a ``fit-seg`` model: at the
model's probability scale (today's: the scale its fit chose on its pool of patches) against
CLIP's 100 (before 2026-12-02), on one real photo, both measured in the same run.

The pool is four of scikit-image's sample photos (the cat ``chelsea``, ``coffee``,
``astronaut``, ``rocket``), fitted without labels by ``gpua fit-seg`` with its defaults, into 5
classes (``cat``, ``cup``, ``background: background, wall, floor``, ``person``, ``rocket``); the
photo segmented is the cat. For each threshold, the share of its pixels whose top class
probability falls below it: a threshold that marks almost nothing at every useful value is one
the user cannot use.

Usage::

    python benchmarks/segment_threshold.py                          # offline stand-ins
    python benchmarks/segment_threshold.py --json results/segment_threshold.json
    python benchmarks/segment_threshold.py --vfm planted:vfm --vlm planted:vlm   # quick (the planted world's classes)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _harness import OutputPath, machine_line, timer, write_json

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
CLASS_LINES = ("cat", "cup", "background: background, wall, floor", "person", "rocket")
THRESHOLDS = (0.5, 0.7, 0.9, 0.99, 0.999, 0.9999)
CLIP_SCALE = 100.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vfm", default="offline:dinov2-s")
    ap.add_argument("--vlm", default="offline:semantic-lite0")
    ap.add_argument("--json", action=OutputPath, default=None, help="write the figures here (atomically, with the machine record)")
    args = ap.parse_args(argv)

    import torch
    from PIL import Image
    from skimage import data

    from gpua import load_model
    from gpua.cli import main as gpua_main
    from gpua.segment import make_encoder
    from gpua.segment.inference import DenseSegmenter

    print(machine_line(), flush=True)
    planted = args.vlm.startswith("planted:")
    lines = make_encoder(args.vlm, "cpu").classnames if planted else CLASS_LINES
    with tempfile.TemporaryDirectory() as tmp, timer() as fit_time:
        pool = Path(tmp) / "pool"
        pool.mkdir()
        for name in PHOTOS:
            Image.fromarray(getattr(data, name)()).convert("RGB").save(pool / f"{name}.png")
        (Path(tmp) / "classes.txt").write_text("\n".join(lines) + "\n")
        model_path = str(Path(tmp) / "seg.gpua")
        argv_fit = ["fit-seg", "--images", str(pool), "--classnames", str(Path(tmp) / "classes.txt"), "--out", model_path,
                    "--vfm", args.vfm, "--vlm", args.vlm, "--quiet"] + (["--templates", "simple"] if planted else [])
        if gpua_main(argv_fit) != 0:
            return 1
        model = load_model(model_path)
    owner = np.asarray(model.provenance_["class_of_prototype"])
    vfm, vlm = make_encoder(args.vfm, "cpu"), make_encoder(args.vlm, "cpu")
    seg = DenseSegmenter(vfm, vlm, model=model, class_of_prototype=owner)
    photo = data.chelsea()
    scores = seg.predict_scores(photo)  # (K, H, W)
    top = {"model": seg.top_probability(scores), "clip": torch.softmax((scores - scores.amax(0)) * CLIP_SCALE, dim=0).amax(0)}
    marked = {rule: {t: float((p < t).float().mean()) for t in THRESHOLDS} for rule, p in top.items()}
    scale = 1.0 / seg.temperature

    print(f"fit-seg on {len(PHOTOS)} photos ({', '.join(PHOTOS)}), {len(lines)} classes, {fit_time.seconds:.1f} s; "
          f"the model's probability scale (proba_scale_) {scale:.3g}; segmented: chelsea {photo.shape[1]}x{photo.shape[0]}")
    print(f"{'--threshold':>11}  {'marked at 100 (before)':>22}  {'marked at the model scale (today)':>33}")
    for t in THRESHOLDS:
        print(f"{t:>11g}  {100 * marked['clip'][t]:>21.1f}%  {100 * marked['model'][t]:>32.1f}%")
    print(f"median top probability: {float(top['clip'].median()):.4f} at 100, {float(top['model'].median()):.4f} at {scale:.3g}")
    if args.json:
        write_json(args.json, {"args": vars(args), "model_scale": scale, "clip_scale": CLIP_SCALE,
                               "marked_at_model_scale": {str(t): v for t, v in marked["model"].items()},
                               "marked_at_clip_scale": {str(t): v for t, v in marked["clip"].items()},
                               "fit_seconds": fit_time.seconds})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
