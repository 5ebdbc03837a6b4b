"""Real development sets for choosing GPUA's defaults without test labels (issue 12).

Sets (VLM stand-in ``offline:semantic-lite0`` throughout; VFM ``offline:dinov2-s`` or
``offline:efficientnet-lite2``):

* ``fmnist-dinov2`` / ``fmnist-lite2``: Fashion-MNIST (``gpua.data.load_dataset("fashion-mnist")``,
  Debian's ``dataset-fashion-mnist``). From the 60,000 train images, one class-blind permutation
  (``numpy.random.default_rng(0)``) gives the unlabeled fit **pool** (its first 2,000 images)
  and a labelled **dev** split (the next 2,000), used only to choose defaults; the **test**
  split is all 10,000 t10k images, the split we report. Prompt: ``"a photo of a {}."``.
* ``cifar-dinov2`` / ``cifar-lite2``: the demo's CIFAR-10 photos (the ``gpua demo`` features:
  1,000 train = pool, 1,000 test) with CLIP's 18 CIFAR templates. There is no separate dev
  split: the dev criterion is the transductive accuracy on the pool, scored with the pool's own
  labels (never the test labels).
* ``cifar-dinov2-swapped`` / ``cifar-lite2-swapped``: the same two CIFAR-10 sets with their
  splits swapped: fit on the 1,000 test photos (unlabeled), score the 1,000 train photos. They
  are **reported only, never used to choose a default**: their pool is the other sets' test
  split, whose labels the dev criterion (the pool's transductive accuracy) would read. With the
  unswapped sets they score all 2,000 photos, each by a model fitted on the other half (a
  two-fold estimate: one 1,000-photo test split cannot tell apart methods a few points apart).
  Not among the default ``--sets``; name them.
* ``planted``: ``gpua.synthetic.make_planted(n_samples=4000, n_classes=50, random_state=seed)``
  (default widths); pool = 16 rows per class (drawn with the labels, as the paper's 16-shot pool;
  the labels never reach a fit), dev = another 16 per class, test = the other 2,400 rows.
  Generated on the fly, nothing to extract.

Features are cached where gpua's commands put them (:func:`gpua.classify.feature_cache_path`):
``<cache>/devsets/fashion_mnist_{pool,dev,test}__<vfm>__<vlm>.npz`` and the demo's
``<cache>/demo/cifar10-mini_{train,test}__<vfm>__<vlm>.npz`` (``<cache>``: ``--cache-dir``,
``$GPUA_CACHE_DIR`` or the user cache). A cached file is loaded as it is, never re-extracted;
a missing one is extracted only with ``--extract`` (DINOv2-S through onnxruntime runs about
10 images/s on 2 cores: the DINOv2 Fashion-MNIST files take over an hour).

    python benchmarks/devsets.py                    # list the sets: sizes, zero-shot accuracy
    python benchmarks/devsets.py --sets fmnist-lite2,cifar-lite2
    python benchmarks/devsets.py --sets fmnist-lite2 --extract   # extract what is missing

Other scripts call :func:`load_devset`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _harness import setup

VLM = "offline:semantic-lite0"
VFMS = {"dinov2": "offline:dinov2-s", "lite2": "offline:efficientnet-lite2"}
REAL_SETS = ("cifar-dinov2", "cifar-lite2", "fmnist-dinov2", "fmnist-lite2")
SETS = REAL_SETS + ("planted",)
#: CIFAR-10's sets with pool and test swapped: reported only (:func:`load_devset`), never in a default's criterion.
SWAPPED = "-swapped"
SWAPPED_SETS = ("cifar-dinov2" + SWAPPED, "cifar-lite2" + SWAPPED)
#: Every name ``--sets`` takes where a script allows the swapped sets (they are never a default).
ALL_SETS = SETS + SWAPPED_SETS
FMNIST_TRAIN, FMNIST_POOL, FMNIST_DEV, FMNIST_SEED = 60000, 2000, 2000, 0
PLANTED_SAMPLES, PLANTED_CLASSES, PLANTED_PER_CLASS = 4000, 50, 16


@dataclass
class DevSet:
    """One development set: pool (fit; its labels for diagnostics only), dev (choose), test (report).

    ``dev`` is None where there is no dev split (CIFAR): the dev criterion is then the
    transductive accuracy on the pool; ``dev_note`` says which.
    """

    name: str
    pool: Any  # gpua.features.FeatureSet
    dev: Any | None
    test: Any
    dev_note: str
    #: The pool's largest class count over its smallest where :func:`long_tailed` drew it; None: the pool as it is.
    pool_imbalance: float | None = None


def _split(name: str) -> tuple[str, str]:
    if name not in REAL_SETS:
        raise ValueError(f"unknown development set {name!r}; choose from {SETS}.")
    data, vfm_key = name.split("-")
    return data, VFMS[vfm_key]


def feature_paths(name: str, cache_dir=None) -> dict[str, Path]:
    """The cached feature files of a real set: ``{"pool", "test"}`` (CIFAR) or ``{"pool", "dev", "test"}``."""
    from gpua.classify import feature_cache_path

    data, vfm = _split(name)
    if data == "cifar":
        return {part: feature_cache_path("demo", f"cifar10-mini_{split}", vfm, VLM, cache_dir)
                for part, split in (("pool", "train"), ("test", "test"))}
    return {part: feature_cache_path("devsets", f"fashion_mnist_{part}", vfm, VLM, cache_dir) for part in ("pool", "dev", "test")}


def fmnist_indices() -> tuple[np.ndarray, np.ndarray]:
    """Pool and dev rows of Fashion-MNIST's train split: one class-blind seeded permutation."""
    perm = np.random.default_rng(FMNIST_SEED).permutation(FMNIST_TRAIN)
    return np.sort(perm[:FMNIST_POOL]), np.sort(perm[FMNIST_POOL:FMNIST_POOL + FMNIST_DEV])


def extract(name: str, cache_dir=None, progress: bool = True) -> dict[str, Path]:
    """Extract the missing feature files of a real set (slow: see the module docstring)."""
    data, vfm = _split(name)
    paths = feature_paths(name, cache_dir)
    if all(p.is_file() for p in paths.values()):
        return paths
    if data == "cifar":
        from gpua.demo import demo_features

        demo_features(vfm, VLM, cache_dir=cache_dir, progress=progress)
        return paths
    from gpua.data import load_dataset
    from gpua.extract import extract_features

    pool_idx, dev_idx = fmnist_indices()
    train = load_dataset("fashion-mnist", split="train")
    parts = {"pool": lambda: train.subset(pool_idx), "dev": lambda: train.subset(dev_idx),
             "test": lambda: load_dataset("fashion-mnist", split="test")}
    for part, path in paths.items():
        if path.is_file():
            continue
        t0 = time.perf_counter()
        extract_features(vfm, VLM, parts[part](), templates="auto", out=path, cache_dir=cache_dir, progress=progress)
        print(f"{name} {part}: {path} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return paths


def _check_rows(name: str, part: str, fs, expected: np.ndarray | None) -> None:
    """A cached Fashion-MNIST file must hold the rows this script's split assigns it."""
    if expected is None or fs.image_ids is None:
        return
    want = [f"train/{i}" for i in expected]
    if list(fs.image_ids) != want:
        raise ValueError(f"{name}: the cached {part} file holds other images than the {part} split here "
                         f"(first ids {list(fs.image_ids[:3])}, expected {want[:3]}); move it away and run --extract.")


def load_devset(name: str, *, cache_dir=None, extract_missing: bool = False, seed: int = 0) -> DevSet:
    """Load a development set from its cached features (``planted``: generated with ``seed``).

    Raises
    ------
    FileNotFoundError
        A feature file is not cached and ``extract_missing`` is False (the message gives the command).
    """
    from gpua.features import load_features

    if name == "planted":
        return planted_devset(seed)
    if name in SWAPPED_SETS:
        ds = load_devset(name[: -len(SWAPPED)], cache_dir=cache_dir, extract_missing=extract_missing)
        return DevSet(name, ds.test, None, ds.pool, "pool accuracy (transductive) of the swapped set: reported only, "
                      "never a criterion (its pool is the unswapped set's test split)")
    data, _ = _split(name)
    paths = extract(name, cache_dir, progress=False) if extract_missing else feature_paths(name, cache_dir)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{name}: not extracted yet ({', '.join(missing)}); run python benchmarks/devsets.py --sets {name} --extract")
    fs = {part: load_features(p, require=("labels",)) for part, p in paths.items()}
    if data == "cifar":
        return DevSet(name, fs["pool"], None, fs["test"], "pool accuracy (transductive, the pool's own labels)")
    pool_idx, dev_idx = fmnist_indices()
    _check_rows(name, "pool", fs["pool"], pool_idx)
    _check_rows(name, "dev", fs["dev"], dev_idx)
    return DevSet(name, fs["pool"], fs["dev"], fs["test"], "dev split (2,000 labelled train images outside the pool)")


class CachedDevsets:
    """The development sets a script measures: iterating yields ``(name, seed, DevSet)`` (``(name,
    DevSet)`` with ``pairs``) for each of ``sets`` whose features are cached and each seed in
    ``range(seeds)`` (:func:`load_devset`'s ``seed``), and remembers the sets that are not.

    A set named in ``--sets`` but not extracted used to be one "skipping" line among the figures,
    and a run that measured nothing wrote ``"rows": []`` over the results file it was pointed at,
    exiting 0. Every development-set script ends its loop with :meth:`finish`.

    Attributes
    ----------
    missing : dict
        ``{name: why}`` of the sets skipped so far, in ``sets``' order.
    """

    def __init__(self, sets, seeds: int = 1, cache_dir=None, pairs: bool = False):
        self.sets, self.seeds, self.cache_dir, self.pairs = list(sets), seeds, cache_dir, pairs
        self.missing: dict[str, str] = {}

    def __iter__(self):
        for name in self.sets:
            for seed in range(self.seeds):
                try:
                    ds = load_devset(name, cache_dir=self.cache_dir, seed=seed)
                except FileNotFoundError as exc:
                    self.missing[name] = str(exc)
                    print(f"skipping {name}: {exc}", flush=True)
                    break
                yield (name, ds) if self.pairs else (name, seed, ds)

    @property
    def missing_sets(self) -> list[str]:
        """The names of the sets skipped (for the JSON's ``"missing_sets"``)."""
        return list(self.missing)

    def finish(self, measured: bool, json_path=None) -> None:
        """Call after the loop: name the skipped sets again (stderr, one line), and when nothing at all
        was ``measured`` end the script (exit 1) before anything is written: an existing results
        file is never replaced by an empty one."""
        if self.missing:
            names = ",".join(self.missing)
            print(f"warning: not measured, features not extracted: {names} (run python benchmarks/devsets.py --sets {names} "
                  "--extract)", file=sys.stderr, flush=True)
        if not measured:
            why = f"the features of --sets {','.join(self.missing)} are not extracted" if self.missing else "--sets names no set"
            kept = f"; {str(json_path)!r} not written" if json_path else ""
            raise SystemExit(f"error: nothing was measured: {why}{kept}.")


def cached_devset_seeds(sets, seeds: int, cache_dir=None) -> CachedDevsets:
    """:class:`CachedDevsets` of ``sets`` and seeds ``0..seeds-1``: iterate for ``(name, seed, DevSet)``."""
    return CachedDevsets(sets, seeds, cache_dir)


def cached_devsets(sets, cache_dir=None) -> CachedDevsets:
    """:class:`CachedDevsets` of ``sets``, one seed: iterate for ``(name, DevSet)``."""
    return CachedDevsets(sets, 1, cache_dir, pairs=True)


def planted_devset(seed: int = 0) -> DevSet:
    """K = 50 planted classes, 16 unlabeled rows per class in the pool (see the module docstring)."""
    from gpua.synthetic import make_planted

    d = make_planted(n_samples=PLANTED_SAMPLES, n_classes=PLANTED_CLASSES, random_state=seed)
    rng = np.random.default_rng(seed)
    pool, dev = [], []
    for k in range(PLANTED_CLASSES):
        rows = rng.permutation(np.flatnonzero(d.labels == k))
        pool.extend(rows[:PLANTED_PER_CLASS])
        dev.extend(rows[PLANTED_PER_CLASS:2 * PLANTED_PER_CLASS])
    pool, dev = np.sort(pool), np.sort(dev)
    test = np.setdiff1d(np.arange(PLANTED_SAMPLES), np.concatenate([pool, dev]))

    return DevSet("planted", d.feature_set(pool), d.feature_set(dev), d.feature_set(test),
                  "dev split (16 labelled rows per class outside the pool)")


def zero_shot_accuracy(fs) -> float:
    """Top-1 of the VLM alone, argmax cos(x, y), on a labelled feature set."""
    from gpua import VLMZeroShot

    return VLMZeroShot().fit(fs.vfm_features, fs.vlm_features, fs.text_prototypes).score(None, fs.labels, fs.vlm_features)


def long_tailed(ds: DevSet, ratio: float, seed: int = 0) -> DevSet:
    """``ds`` with a long-tailed pool: class ``c`` (in a seeded random order) keeps ``n r^{-c/(K-1)}`` rows.

    ``n`` is the smallest class's count, ``r`` = ``ratio`` (the largest class over the smallest;
    1 keeps ``ds`` as it is); each class keeps at least 2 rows. The labels choose the rows only,
    as a user's folder happens to hold more of some classes: the fit never sees them. The dev
    and test splits are unchanged (a set without a dev split is then scored on this pool).

    The ratio the pool gets, its largest class count over its smallest, is the returned set's
    ``pool_imbalance`` and is in its ``dev_note``. It falls short of ``ratio`` where the floor of
    2 rows binds (``planted``'s 16 rows per class reach 8 at most) or rounding to whole rows
    does: a line on stderr says so when it is more than 5% short.
    """
    if ratio < 1:
        raise ValueError(f"ratio={ratio}; the largest class over the smallest is at least 1.")
    if ratio == 1:
        return ds
    pool = ds.pool
    classes = np.unique(pool.labels)
    rng = np.random.default_rng(seed)
    n = min(int((pool.labels == c).sum()) for c in classes)
    order = rng.permutation(classes)
    keep = {c: max(2, int(round(n * ratio ** (-i / (len(classes) - 1))))) for i, c in enumerate(order)}
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(pool.labels == c), keep[c], replace=False) for c in classes]))
    achieved = max(keep.values()) / min(keep.values())
    note = f"; pool long-tailed, ratio {achieved:.3g} (asked {ratio:g})"
    if achieved < LONG_TAIL_SHORT * ratio:
        smallest = min(keep.values())
        why = (f"the largest class keeps its {n} rows and every class at least 2" if n / ratio < 1.5
               else f"rounded to whole rows, the smallest class keeps {smallest} of {n}")
        _warn_once(f"warning: {ds.name}: pool imbalance {ratio:g} asked, {achieved:.3g} reached ({why}); "
                   "the rows record the ratio reached")
    from dataclasses import replace

    rows = replace(pool, vfm_features=pool.vfm_features[idx], vlm_features=pool.vlm_features[idx], labels=pool.labels[idx],
                   image_ids=None if pool.image_ids is None else [pool.image_ids[i] for i in idx])
    return DevSet(ds.name, rows, ds.dev, ds.test, ds.dev_note + note, pool_imbalance=achieved)


#: :func:`long_tailed` warns when the ratio it reaches is below this fraction of the one asked.
LONG_TAIL_SHORT = 0.95
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Print ``message`` on stderr the first time (a script draws a long-tailed pool per seed)."""
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr, flush=True)


def add_set_arguments(ap: argparse.ArgumentParser, choices: tuple[str, ...] = SETS, default: tuple[str, ...] | None = None) -> None:
    """``--sets``, ``--cache-dir`` and ``--threads``: what every development-set script takes.

    ``--sets`` defaults to ``default`` (``choices`` when None); its help lists ``choices``."""
    default = choices if default is None else default
    ap.add_argument("--sets", default=",".join(default),
                    help=f"comma-separated subset of {choices}" + (f" (default {','.join(default)})" if default != choices else ""))
    ap.add_argument("--cache-dir", default=None, help="feature cache (default: $GPUA_CACHE_DIR or the user cache)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: these sets are small, and two threads on a busy 2-core machine run many times slower)")


def chosen_sets(ap: argparse.ArgumentParser, args: argparse.Namespace, choices: tuple[str, ...] = SETS) -> list[str]:
    """The names ``--sets`` gave, each checked (an unknown one is a usage error: exit 2)."""
    names = [s for s in args.sets.split(",") if s]
    unknown = [s for s in names if s not in choices]
    if unknown:
        ap.error(f"unknown set(s) {unknown}; choose from {choices}")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(ap, ALL_SETS, SETS)  # every set accuracy.py takes; the swapped ones only when named
    ap.add_argument("--extract", action="store_true", help="extract the missing feature files (slow; cached ones are kept)")
    args = ap.parse_args(argv)
    names = chosen_sets(ap, args, ALL_SETS)
    setup(args)
    if args.extract:
        # Cheapest first, so experiments can start while DINOv2-S runs; a swapped set is its unswapped set's files.
        real = {n.removesuffix(SWAPPED) for n in names} & set(REAL_SETS)
        for name in sorted(real, key=lambda s: ("dinov2" in s, "fmnist" in s, s)):
            t0 = time.perf_counter()
            extract(name, args.cache_dir, progress=sys.stderr.isatty())
            print(f"{name}: features ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    for name in names:
        try:
            ds = load_devset(name, cache_dir=args.cache_dir)
        except FileNotFoundError as exc:
            print(exc)
            continue
        sizes = f"pool {ds.pool.n_samples}, dev {ds.dev.n_samples if ds.dev is not None else '-'}, test {ds.test.n_samples}"
        print(f"{name}: {sizes}; zero-shot test {100 * zero_shot_accuracy(ds.test):.2f}%, pool {100 * zero_shot_accuracy(ds.pool):.2f}%; "
              f"dev criterion: {ds.dev_note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
