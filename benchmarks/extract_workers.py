"""Images per second that ``gpua extract`` feeds its encoders, with ``workers`` threads decoding and
preparing the images against one thread (the baseline, measured in the same run).

A folder of JPEG photos the size a phone takes (scikit-image's colour sample photos, resized
to ``--side`` pixels on their long edge, written at quality 90) is extracted with
:func:`gpua.extract_features` once per ``--workers`` value, each run into a fresh output (no
cache hit). Two encoder pairs:

* ``feed`` (default): encoders whose network costs next to nothing (the mean of each prepared
  channel): what is measured is decoding, resizing, cropping and normalising for two encoders of
  CLIP's preprocessing (224 px, bicubic) -- the part that holds a GPU back, whose forward pass is
  fast next to it;
* ``offline``: the real offline encoders (``offline:dinov2-s`` + ``offline:semantic-lite0``), on
  CPU, where the networks dominate and threads gain less.

Each run's features must equal the one-thread run's (checked; a mismatch fails the script).
Prints images per second and the ratio to ``workers=1`` per setting.

    python benchmarks/extract_workers.py                                 # feed-only, 256 photos
    python benchmarks/extract_workers.py --images 64 --workers 1,2       # quick
    python benchmarks/extract_workers.py --json results/extract_workers.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _harness import OutputPath, machine_line, timer, write_json

from gpua.extract import extract_features
from gpua.encoders import CLIP_MEAN, CLIP_STD, Encoder, ImagePreprocess
from gpua.features import load_features

#: scikit-image's colour photos (RGB, 300 to 600 px), cycled through to fill the folder.
SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


class FeedOnly(Encoder):
    """An encoder whose network is free: the mean of each prepared channel (3 numbers per image).

    With CLIP's preprocessing (224 px, shortest edge, bicubic, centre crop, CLIP's mean and std),
    so that the work left is the one a GPU run cannot hide: the preparation.
    """

    backend = "feed"

    def __init__(self, spec: str, vlm: bool = False):
        super().__init__(spec, ImagePreprocess(input_size=224, resize=224, mean=CLIP_MEAN, std=CLIP_STD), 3)
        self.is_vlm = vlm

    def _embed(self, pixels):
        return pixels.mean(axis=(2, 3))

    def _patches(self, pixels):
        return pixels.mean(axis=(2, 3))[:, None, None, :]

    def _encode_text_batch(self, texts):
        return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=3) for t in texts]).astype(np.float32)


def photo_folder(root: Path, n_images: int, side: int) -> Path:
    """``n_images`` JPEGs of scikit-image's photos, ``side`` px on the long edge, in two class folders."""
    from PIL import Image
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in SAMPLES]
    for i in range(n_images):
        im = photos[i % len(photos)]
        scale = side / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC)
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def encoders(kind: str):
    if kind == "feed":
        return FeedOnly("feed:vfm"), FeedOnly("feed:vlm", vlm=True)
    return "offline:dinov2-s", "offline:semantic-lite0"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # the first paragraph: its first line stops mid-sentence
    ap.add_argument("--encoders", choices=("feed", "offline"), default="feed")
    ap.add_argument("--images", type=int, default=256, help="photos in the folder (default 256)")
    ap.add_argument("--side", type=int, default=1600, help="long edge of each photo in pixels (default 1600)")
    ap.add_argument("--workers", default="1,2,4", help="comma-separated thread counts; 1 (the baseline) is always run first")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", type=Path, action=OutputPath, default=None, help="write the figures here (with the machine record)")
    args = ap.parse_args(argv)
    try:
        counts = sorted({1, *(int(w) for w in args.workers.split(","))})
    except ValueError:
        ap.error(f"--workers {args.workers!r}: comma-separated integers, e.g. 1,2,4")
    if counts[0] < 1 or args.images < 1 or args.side < 32:
        ap.error("--workers must be 1 or more, --images 1 or more, --side 32 or more")
    print(machine_line(), flush=True)
    rows, baseline = [], None
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp) / "photos", args.images, args.side)
        vfm, vlm = encoders(args.encoders)
        # Warm-up (the offline encoders load and cut their models; the page cache holds the photos), untimed.
        extract_features(vfm, vlm, str(folder), templates=["a photo of a {}."], out=Path(tmp) / "warm.npz", progress=False, workers=1)
        for w in counts:
            out = Path(tmp) / f"w{w}.npz"
            with timer() as m:
                extract_features(vfm, vlm, str(folder), templates=["a photo of a {}."], out=out, progress=False, workers=w,
                                 batch_size=args.batch_size)
            fs = load_features(out)
            if baseline is None:
                baseline = (fs, m.seconds)
            elif not (np.array_equal(fs.vfm_features, baseline[0].vfm_features) and np.array_equal(fs.vlm_features, baseline[0].vlm_features)):
                raise SystemExit(f"workers={w} gave other features than workers=1")
            row = {"workers": w, "seconds": m.seconds, "images_per_s": args.images / m.seconds, "speedup": baseline[1] / m.seconds,
                   "cpu_seconds": m.cpu_seconds}
            rows.append(row)
            print(f"workers {w:>2}: {row['images_per_s']:7.1f} images/s  ({m.seconds:6.2f} s)  x{row['speedup']:.2f} against workers=1",
                  flush=True)
    if args.json:
        write_json(args.json, {"encoders": args.encoders, "images": args.images, "side": args.side, "batch_size": args.batch_size,
                               "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
