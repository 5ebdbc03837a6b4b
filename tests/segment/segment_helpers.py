"""Helpers shared by the segmentation tests (imported by name, as tests/stream/stream_helpers.py)."""

from __future__ import annotations

import numpy as np


def write_scenes(folder, world, n: int, size: tuple[int, int]):
    """``n`` planted test photos (PNG, ``size``) in ``folder/test``, their masks in ``folder/gt``
    and the class file ``folder/classes.txt``; returns ``folder``."""
    from PIL import Image

    test, labels = world.sample(n, size, seed=2)
    for name in ("test", "gt"):
        (folder / name).mkdir()
    for i, (im, lab) in enumerate(zip(test, labels)):
        Image.fromarray(im).save(folder / "test" / f"t{i}.png")
        Image.fromarray(lab.astype(np.uint8)).save(folder / "gt" / f"t{i}.png")
    (folder / "classes.txt").write_text("\n".join(world.classnames) + "\n")
    return folder


def write_pool_scenes(folder, world, n_test: int = 3):
    """8 planted pool photos (``folder/pool``), ``n_test`` test photos (``folder/test``) with their
    masks (``folder/gt``), all 48x48 PNG, and the class file; returns ``folder``."""
    from PIL import Image

    pool, _ = world.sample(8, (48, 48), seed=1)
    test, labels = world.sample(n_test, (48, 48), seed=2)
    for name, images in (("pool", pool), ("test", test)):
        (folder / name).mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im).save(folder / name / f"{name[0]}{i}.png")
    (folder / "gt").mkdir()
    for i, lab in enumerate(labels):
        Image.fromarray(lab.astype(np.uint8)).save(folder / "gt" / f"t{i}.png")
    (folder / "classes.txt").write_text("\n".join(world.classnames) + "\n")
    return folder
