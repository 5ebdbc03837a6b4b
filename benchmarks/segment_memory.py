"""Peak memory of sliding-window segmentation of one Cityscapes-size (1024 x 2048) image on CPU.

Runs the full patch-level GPUA pipeline: both encoders on every crop (common grid), GPUA
scores, VFM-affinity refinement, bilinear upsampling and overlap averaging into a
(K, 1024, 2048) score map, with the 19 Cityscapes classes (``--classes ade20k``: 150). The model is fitted first on patches
of the image's own crops (no labels). Prints peak RSS of the process (``ru_maxrss``), which
includes the Python interpreter, torch, both encoders' weights and the fit, during the
segmentation against the 4 GB budget (the exit status is 1 above it), and the segmentation's peak (sampled every 5 ms) over the baseline measured in the same
run: the RSS just before it, with the encoders, the image and the fitted model loaded. Then the
same image scored whole (``predict_scores``: every pixel's (K, H, W) scores at once, as
``predict`` did before it scored a band of rows at a time), and the memory each needs above the
RSS before it.

Usage::

    python benchmarks/segment_memory.py                       # offline stand-ins
    python benchmarks/segment_memory.py --vfm planted:vfm --vlm planted:vlm --crop 64 --height 128 --width 256   # quick
    python benchmarks/segment_memory.py --json results/segment_memory.json
    python benchmarks/segment_memory.py --classes ade20k --height 3000 --width 4000   # 150 classes, 12 MP

Timing, RSS, the machine record and the JSON file (written atomically) come from ``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse

import numpy as np
from _harness import OutputPath, machine_line, peak_rss_bytes, rss_bytes, timer, write_json

MB = 2**20
_CLASS_LISTS = {"cityscapes": "CITYSCAPES_CLASSES", "ade20k": "ADE20K_CLASSES", "voc": "VOC_CLASSES"}


def _class_list(name: str) -> tuple[str, ...]:
    from gpua.segment import datasets

    return getattr(datasets, _CLASS_LISTS[name])


def _cityscapes_size_photo(height: int, width: int) -> np.ndarray:
    """A real photo (scikit-image's coffee) resized to the Cityscapes frame."""
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.coffee()).resize((width, height), Image.Resampling.BICUBIC))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vfm", default="offline:dinov2-s")
    ap.add_argument("--vlm", default="offline:semantic-lite0")
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--classes", choices=sorted(_CLASS_LISTS), default="cityscapes",
                    help="the class list prompted (default: Cityscapes' 19; ade20k: 150)")
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--stride", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4, help="crops per encoder call")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", action=OutputPath, default=None, help="write the figures here (atomically, with the machine record)")
    args = ap.parse_args(argv)

    import torch

    from gpua.data.prompts import build_text_prototypes, get_templates
    from gpua.segment import make_encoder
    from gpua.segment.datasets import prompt_name
    from gpua.segment.inference import DenseSegmenter, fit_patch_gpua, sliding_windows

    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    with timer() as fit_time:
        vfm, vlm = make_encoder(args.vfm, "cpu"), make_encoder(args.vlm, "cpu")
        image = _cityscapes_size_photo(args.height, args.width)
        names = [prompt_name(c) for c in _class_list(args.classes)]
        if args.vlm.startswith("planted:"):
            names = vlm.classnames
        Y = build_text_prototypes(vlm.encode_text, names, get_templates("simple"))
        stride = args.stride or max(1, (2 * args.crop) // 3)
        wins = sliding_windows(args.height, args.width, (args.crop, args.crop), (stride, stride))
        pool = [image[y1:y2, x1:x2] for y1, y2, x1, x2 in wins[:: max(1, len(wins) // 24)]]
        model = fit_patch_gpua(vfm, vlm, pool, Y, patches_per_image=32, seed=0)
    t_fit = fit_time.seconds
    rss_before, peak_before = rss_bytes() / MB, peak_rss_bytes() / MB

    seg = DenseSegmenter(vfm, vlm, Y, model=model, crop_size=args.crop, stride=stride,
                         refine="affinity", batch_size=args.batch_size)
    with timer() as seg_time:
        labels = seg.predict(image)
    t_seg = seg_time.seconds
    seg_peak = seg_time.peak_rss / MB
    ratio = seg_peak / max(rss_before, 1e-9)
    # The same image scored whole, (K, H, W) at once (predict_scores, as predict did before it
    # scored a band of rows at a time), measured in the same run: what the bands save.
    rss_before_whole = rss_bytes() / MB
    with timer() as whole_time:
        whole_labels = seg.labels_from_scores(seg.predict_scores(image))
    whole_peak = whole_time.peak_rss / MB
    agree = float(np.mean(whole_labels == labels))
    del whole_labels
    extra_bands, extra_whole = max(seg_peak - rss_before, 0.0), max(whole_peak - rss_before_whole, 0.0)
    peak = peak_rss_bytes() / MB

    print(f"image {args.height}x{args.width}, {len(names)} classes, crop {args.crop}, stride {stride}: "
          f"{len(wins)} windows, encoders {args.vfm} + {args.vlm}")
    print(f"setup (encoders, prototypes, fit on {len(pool)} crops): {t_fit:.1f} s; RSS {rss_before:.0f} MB, peak {peak_before:.0f} MB")
    print(f"segmentation: {t_seg:.1f} s; labels {labels.shape}, {len(np.unique(labels))} classes used")
    print(f"segmentation peak over the RSS before it (baseline, this run: encoders, image, fit): "
          f"{ratio:.2f}x ({seg_peak:.0f} MB against {rss_before:.0f} MB)")
    print(f"scores a band of rows at a time: {extra_bands:.0f} MB above the baseline; the (K, H, W) scores whole "
          f"(baseline of the same run): {extra_whole:.0f} MB above it, {whole_time.seconds:.1f} s; "
          f"labels equal on {100 * agree:.3f}% of pixels")
    # The budget is the segmentation's: the whole-image baseline after it may exceed it (150 classes, 6 MP: 9 GB).
    print(f"peak RSS of the segmentation: {seg_peak:.0f} MB ({seg_peak / 1024:.2f} GB; budget 4 GB); of the whole run, "
          f"the whole-image baseline included: {peak:.0f} MB")
    if args.json:
        write_json(args.json, {
            "args": vars(args), "windows": len(wins), "stride": stride, "classes": len(names), "pool_crops": len(pool),
            "setup_seconds": t_fit, "segment_seconds": t_seg, "baseline_rss_mb": rss_before, "setup_peak_mb": peak_before,
            "segment_peak_mb": seg_peak, "segment_peak_over_baseline": ratio, "peak_rss_mb": peak, "budget_mb": 4096,
            "bands_extra_mb": extra_bands, "whole_scores_extra_mb": extra_whole, "whole_scores_seconds": whole_time.seconds,
            "labels_agree": agree,
        })
    return 0 if seg_peak < 4096 else 1


if __name__ == "__main__":
    raise SystemExit(main())
