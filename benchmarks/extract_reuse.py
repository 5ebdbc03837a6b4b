"""Seconds ``gpua extract`` takes again after one photo is added to a folder, or with other
prompts, against a first extraction of the whole folder (the baseline, measured in the same run).

A folder of JPEG photos (``extract_workers.photo_folder``: scikit-image's colour photos, resized
to ``--side`` pixels) is left to settle for longer than :data:`gpua.extract.REUSE_MARGIN_NS` (a
file changed less than that before an extraction stat'ed it is never reused), then:

1. ``full``: the whole folder extracted into a new file (every photo encoded: the baseline);
2. ``one_added``: a photo added to the folder, the same command again: the other photos' rows
   are copied from the file it replaces, the new photo encoded;
3. ``other_prompts``: other prompt templates (as another class file, a change of the text side
   only), into a new file beside the first: every row copied from the file beside it, except
   the photo added in 2, which changed less than the margin before 2 stat'ed it and is encoded
   again;
4. ``no_resume``: 2's command with ``resume=False`` (every photo encoded), into another file: its
   features must equal 2's (checked, to ``--atol``: the encoders see the copied photos in other
   batches; a mismatch fails the script);
5. ``interrupted_other_prompts``: an extraction into a folder of its own stopped after its first
   part (half the photos; untimed), then the same output with other prompt templates: the
   stopped run's parts lend their rows (they were discarded before), the other half is encoded.

Prints each run's seconds, the photos it encoded, and its time as a fraction of ``full``.

    python benchmarks/extract_reuse.py                               # the offline encoders, 200 photos
    python benchmarks/extract_reuse.py --encoders feed --images 64  # decoding only, quick
    python benchmarks/extract_reuse.py --json results/extract_reuse.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import OutputPath, machine_line, timer, write_json
from extract_workers import encoders, photo_folder

from gpua import extract
from gpua.extract import extract_features
from gpua.features import load_features

TEMPLATES = ["a photo of a {}."]


class _Stopped(Exception):
    """Raised from ``on_shard`` after the first part, as Ctrl-C would stop the run."""

OTHER_TEMPLATES = ["a photo of a {}.", "a picture of a {}."]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoders", choices=("feed", "offline"), default="offline",
                    help="offline: offline:dinov2-s + offline:semantic-lite0 (default); feed: networks that cost nothing")
    ap.add_argument("--images", type=int, default=200, help="photos in the folder (default 200)")
    ap.add_argument("--side", type=int, default=640, help="long edge of each photo in pixels (default 640)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--atol", type=float, default=1e-4, help="largest difference allowed between run 2's rows and run 4's")
    ap.add_argument("--json", type=Path, action=OutputPath, default=None, help="write the figures here (with the machine record)")
    args = ap.parse_args(argv)
    if args.images < 2 or args.side < 32:
        ap.error("--images must be 2 or more, --side 32 or more")
    print(machine_line(), flush=True)
    vfm, vlm = encoders(args.encoders)
    classes = ["a", "b"]  # photo_folder's class folders
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = photo_folder(tmp / "photos", args.images, args.side)  # class folders a/ and b/
        # Warm-up (the offline encoders load and cut their models), untimed, on another folder.
        extract_features(vfm, vlm, str(photo_folder(tmp / "warm", 2, args.side)), classnames=classes, templates=TEMPLATES,
                         out=tmp / "warm.npz", progress=False)
        time.sleep(extract.REUSE_MARGIN_NS / 1e9 + 1)  # the photos settle: older than the margin at run 1's stat

        def run(name: str, out: Path, templates: list[str], **kw) -> None:
            with timer() as m:
                extract_features(vfm, vlm, str(folder), classnames=classes, templates=templates, out=out, progress=False,
                                 batch_size=args.batch_size, **kw)
            fs = load_features(out, validate=False)
            encoded = fs.n_samples - (fs.meta.get("reused") or {}).get("rows", 0)
            full = rows[0]["seconds"] if rows else m.seconds
            row = {"run": name, "images": fs.n_samples, "encoded": encoded, "seconds": m.seconds, "of_full": m.seconds / full,
                   "cpu_seconds": m.cpu_seconds}
            rows.append(row)
            print(f"{name:<26} {fs.n_samples:>6} photos, {encoded:>6} encoded: {m.seconds:8.2f} s  "
                  f"({row['of_full']:.3f} of the full extraction)", flush=True)

        first = tmp / "cache" / "photos.npz"
        run("full", first, TEMPLATES)
        photo_folder(tmp / "added", 1, args.side)
        (tmp / "added" / "b" / "00000.jpg").rename(folder / "b" / "added.jpg")
        run("one_added", first, TEMPLATES)
        run("other_prompts", tmp / "cache" / "other_prompts.npz", OTHER_TEMPLATES)
        check = tmp / "fresh" / "photos.npz"
        run("no_resume", check, TEMPLATES, resume=False)
        got, want = load_features(first), load_features(check)
        diff = max(float(np.abs(got.vfm_features - want.vfm_features).max()), float(np.abs(got.vlm_features - want.vlm_features).max()))
        print(f"largest difference between the copied-and-encoded rows and an extraction of every photo: {diff:.2e}", flush=True)
        if got.image_ids != want.image_ids or diff > args.atol:
            raise SystemExit(f"run one_added gave other features than an extraction of every photo (largest difference {diff:.2e})")
        half = (got.n_samples + 1) // 2
        stopped = tmp / "stopped" / "photos.npz"  # a folder of its own: the files beside the first would lend every row

        def stop(part: int, done: int) -> None:
            raise _Stopped

        try:
            extract_features(vfm, vlm, str(folder), classnames=classes, templates=TEMPLATES, out=stopped, progress=False,
                             batch_size=args.batch_size, shard_size=half, on_shard=stop)
        except _Stopped:
            pass
        run("interrupted_other_prompts", stopped, OTHER_TEMPLATES, shard_size=half)
    if args.json:
        write_json(args.json, {"encoders": args.encoders, "images": args.images, "side": args.side, "batch_size": args.batch_size,
                               "largest_difference": diff, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
