"""The paper's protocol over many datasets and models, resumable: ``run_benchmark`` (``gpua benchmark``).

For every dataset, every VFM, every VLM and every method: fit on an unlabeled pool of the train
split (``"16-shot"``: 16 images per class, the paper's few-shot pool; ``"full"``: the whole train
split; ``"N-shot"`` for any N), score on the test split. Labels choose a class-balanced pool, as
the paper's (CoOp's) protocol does, and score; they never reach a fit.

Like CLIP_benchmark's ``eval`` and ``build``:

* ``DIR/results.jsonl``: one JSON object per (dataset, vfm, vlm, method, pool) with
  ``metrics: {acc1, acc5, mean_per_class_recall}`` and ``seconds: {extract, fit, predict}``,
  and the settings that made its numbers: ``params`` (the GPUA parameters given, without
  ``device`` and ``verbose``), ``gpua_defaults`` (a hash of GPUA's defaults), ``prompt_templates`` (the template set's name, or a file's name
  and the hash of its templates), ``data`` (the folder the dataset was read from, None for
  the embedded and system copies), ``contents`` (a hash of what its splits hold) and
  ``prompts`` (a hash of its class names and the templates they fill: a renamed class runs
  again), and ``unreadable: {pool, test}`` (how many images of each the extraction could not
  read: they are left out of the numbers). Rewritten atomically after every row (temp file and
  rename), merged with the rows another run has written there meanwhile: runs into one folder
  take turns through a lock file, ``DIR/results.jsonl.lock``, so none loses another's rows. An
  interrupted run loses at most the row in progress, and a re-run skips the rows already there
  with the same settings (features are cached per dataset and model, too); a row of other
  settings is kept and the run is done again. Rows written before gpua recorded the settings
  (no ``params``, or no ``prompts``) load, but their settings are unknown: they are kept, and
  never taken for a run's. A line that is not a JSON row (a hand edit gone wrong) is skipped
  with a warning and, at the next write, moved as it was to ``DIR/results.jsonl.rejected``.
* ``DIR/results.md`` and ``DIR/results.csv``: acc1 across datasets (one column per method and
  encoder pair) with a mean row, built from the rows of the jsonl with this run's settings
  (where several rows fall into one cell, the latest is shown and a note under the table says so).

Datasets: anything :func:`gpua.data.load_dataset` opens by name (the embedded ``cifar10-mini``;
``fashion-mnist``, read from its idx files in ``dataset_root/fashion-mnist/`` when that folder
exists, else from Debian's ``/usr/share/datasets/fashion-mnist``) or by path (an image folder
with ``train/`` and ``test/`` split folders, a CoOp split file), and the 11 CoOp datasets by
name under ``dataset_root`` (CoOp's layout: ``ROOT/oxford_pets/split_zhou_OxfordPets.json`` ...).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import __version__
from ._atomic import atomic_write_text
from ._errors import GPUAError, warn_user

__all__ = ["BENCHMARK_METRICS", "parse_pool", "open_benchmark_dataset", "run_benchmark", "build_tables", "read_results"]

#: The metrics of every row (CLIP_benchmark's names).
BENCHMARK_METRICS = ("acc1", "acc5", "mean_per_class_recall")
_POOL = re.compile(r"^(\d+)-?shots?$")


def parse_pool(pool: str) -> int | None:
    """``"16-shot"`` -> 16 images per class; ``"full"`` -> None (the whole train split)."""
    p = str(pool).strip().lower()
    if p == "full":
        return None
    m = _POOL.match(p)
    if not m or int(m.group(1)) < 1:
        raise GPUAError(f"pool={pool!r} is not understood; use '16-shot' (any N-shot, N >= 1) or 'full'.")
    return int(m.group(1))


def open_benchmark_dataset(name: str, split: str, dataset_root: str | Path | None = None):
    """Open one split of a benchmark dataset by name or path (see the module docstring).

    Returns
    -------
    ImageDataset
    """
    from .data import canonical_name, load_dataset

    p = Path(name).expanduser()
    if p.exists():
        return load_dataset(p, split=split)
    folder = _coop_folder(name, dataset_root)
    if folder is not None:
        return load_dataset(folder, split=split, name=canonical_name(name))
    folder = _idx_folder(name, dataset_root)
    return load_dataset(name, split=split, image_root=folder)


def _coop_folder(name: str, dataset_root: str | Path | None) -> Path | None:
    """The folder of a CoOp dataset given by name under ``dataset_root`` (None for other names)."""
    from .data import COOP_DATASETS, canonical_name, dataset_info

    canon = canonical_name(name)
    if canon not in COOP_DATASETS:
        return None
    if dataset_root is None:
        raise GPUAError(f"dataset {name!r} is a CoOp dataset; pass --dataset-root, the folder that holds CoOp's dataset folders.")
    root = Path(dataset_root).expanduser()
    info = dataset_info(canon)
    tried = [root / n for n in dict.fromkeys([name, canon, *info.aliases, canon.replace("_", "-")])]
    folder = next((t for t in tried if t.is_dir()), None)
    if folder is None:
        raise GPUAError(f"dataset {name!r}: none of {[str(t) for t in tried[:4]]} is a folder under --dataset-root {str(root)!r}.")
    return folder


def _data_source(name: str, dataset_root: str | Path | None) -> str | None:
    """Where a dataset's files are read from (resolved), None for the embedded and system copies."""
    p = Path(name).expanduser()
    folder = p if p.exists() else _coop_folder(name, dataset_root) or _idx_folder(name, dataset_root)
    return None if folder is None else str(folder.resolve())


def _same_data(name: str, data: str | None) -> tuple[str, str]:
    """What makes two ``--datasets`` entries one dataset: the folder read (resolved), else the
    embedded or system copy's canonical name."""
    from .data import canonical_name

    return ("path", data) if data is not None else ("name", canonical_name(name) or name.strip().lower())


def _idx_folder(name: str, dataset_root: str | Path | None) -> Path | None:
    """Fashion-MNIST's idx folder under ``dataset_root`` (``fashion-mnist/`` or an alias), if there is one."""
    from .data import canonical_name, dataset_info

    if dataset_root is None or canonical_name(name) != "fashion_mnist":
        return None
    info = dataset_info("fashion_mnist")
    root = Path(dataset_root).expanduser()
    return next((root / n for n in dict.fromkeys([name, "fashion-mnist", *info.aliases, info.name]) if (root / n).is_dir()), None)


def _slug(name: str, dataset_root: str | Path | None = None) -> str:
    import hashlib

    p = Path(name).expanduser()
    if p.exists():  # a path: its name plus a hash of where it is
        return f"{p.resolve().name}-{hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:10]}"
    slug = re.sub(r"[^0-9A-Za-z_.-]+", "-", name)
    folder = _idx_folder(name, dataset_root)
    if folder is not None:  # files other than the system's: their own cache entry
        slug += "-" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:10]
    return slug


@dataclass
class _Prepared:
    name: str
    pool: Any
    test: Any
    pool_tag: str
    test_tag: str
    slug: str
    data: str | None
    contents: str
    prompts: str


def _contents(train, test) -> str:
    """A hash of what a dataset's train and test splits hold (ids, labels, each file's size and
    times, or the pixels: :func:`gpua.extract._dataset_identity`), before any pool or subset is
    drawn: photos added to or replaced in a folder change it."""
    from .extract import _dataset_identity, _label, _sha

    def identity(ds) -> dict:
        return _dataset_identity(ds, list(ds.image_ids), [_label(ds, i) for i in range(len(ds))])

    return _sha([identity(train), identity(test)])[:16]


def _prompts(train, test, templates: Any) -> str:
    """A hash of what the text prototypes are built from: the class names of both splits and the
    templates they fill (``auto`` resolved for this dataset). A split file whose classes are
    renamed holds the same images and labels (same ``contents``) but gives other prompts."""
    from .data.prompts import resolve_templates
    from .extract import _sha

    return _sha({"classnames": [list(train.classnames or []), list(test.classnames or [])],
                 "templates": resolve_templates(templates, getattr(train, "name", None))})[:16]


def _prepare(name: str, n_shot: int | None, seed: int, test_per_class: int | None, dataset_root, templates: Any = None) -> _Prepared:
    from .classify import check_classes
    from .data import sample_pool

    train = open_benchmark_dataset(name, "train", dataset_root)
    check_classes(list(train.classnames or []), f"--datasets {name!r}", "use a dataset of two or more classes")
    test = open_benchmark_dataset(name, "test", dataset_root)
    contents = _contents(train, test)
    prompts = _prompts(train, test, templates)
    pool = train if n_shot is None else sample_pool(train, n_per_class=n_shot, seed=seed)
    pool_tag = "train" if n_shot is None else f"train-{n_shot}shot-seed{seed}"
    test_tag = "test"
    if test_per_class is not None:
        test = sample_pool(test, n_per_class=test_per_class, seed=seed, role="the test subset")
        test_tag = f"test-{test_per_class}pc-seed{seed}"
    return _Prepared(name, pool, test, pool_tag, test_tag, _slug(name, dataset_root), _data_source(name, dataset_root), contents,
                     prompts)


#: What a row's numbers depend on: a re-run skips a row only when all of these are the same.
_KEY = ("dataset", "vfm", "vlm", "method", "pool", "seed", "test_subset", "data", "contents", "prompts", "encoders",
        "gpua_defaults", "params", "prompt_templates")
#: GPUA parameters that do not change the numbers (beyond float rounding): not part of the key.
#: (``proba_scale`` sets predict_proba's softmax, which no figure of a row reads.)
_NOT_SETTINGS = ("device", "verbose", "proba_scale")


def _key(row: dict[str, Any]) -> tuple:
    # A field the row lacks (an older file) is unknown, never equal to a value, None included.
    return tuple((k in row, json.dumps(row.get(k), sort_keys=True, default=str)) for k in _KEY)


def _settings(row: dict[str, Any]) -> tuple:
    """The run-wide settings of a row (defaults, parameters and templates), comparable; unknown for older rows."""
    return _key(row)[-3:]


#: What a row that does not record a field reads as: never equal to a value (None included).
_UNRECORDED = object()


def _encoders_setting(vfm, vlm) -> str:
    """A short hash of the two encoders' metadata: what their specs name (weights files' fingerprints,
    hub snapshots, preprocessing), so that a checkpoint replaced at the same path is a new row, not
    "already done" (the feature cache keys on the same metadata)."""
    import hashlib

    return hashlib.sha256(json.dumps([vfm.metadata(), vlm.metadata()], sort_keys=True, default=str).encode()).hexdigest()[:12]


def _defaults_setting() -> str:
    """A short hash of GPUA's default parameters (:data:`_NOT_SETTINGS` left out).

    ``params`` records only the parameters given; a release that changes a default (say, ``rho``)
    changes the numbers too, so its rows are not taken for an older release's.
    """
    import hashlib

    from .estimator import GPUA

    defaults = _param_settings(GPUA().get_params())
    return hashlib.sha256(json.dumps(defaults, sort_keys=True).encode()).hexdigest()[:12]


def _param_settings(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The GPUA parameters as a row records them (JSON values; :data:`_NOT_SETTINGS` left out)."""
    return json.loads(json.dumps({k: v for k, v in (overrides or {}).items() if k not in _NOT_SETTINGS}, default=str))


def _templates_setting(templates: Any) -> str:
    """How a row names its templates: a set's name (``auto``: each dataset's own), or a file or list with their hash.

    Read now, so an unknown name or a missing file fails before anything is encoded.
    """
    import hashlib
    import os

    from .data.prompts import DEFAULT_TEMPLATES, get_templates

    if templates is None or (isinstance(templates, str) and templates.strip().lower() == DEFAULT_TEMPLATES):
        return DEFAULT_TEMPLATES
    listed = get_templates(templates)
    if isinstance(templates, (str, os.PathLike)) and not os.path.isfile(templates):
        return os.fspath(templates).strip().lower().replace("-", "_")
    sha = hashlib.sha256(json.dumps(listed).encode()).hexdigest()[:12]
    what = f"file {Path(templates).name}" if isinstance(templates, (str, os.PathLike)) else f"{len(listed)} given"
    return f"{what} (sha256 {sha})"


def _templates_tag(setting: str) -> str:
    """The part of a feature cache file's name that tells template sets apart ('' for the default
    ``auto``, whose files keep their names): two sets on one dataset and encoder pair keep
    their own cached features instead of re-encoding every image at each switch."""
    import hashlib

    from .data.prompts import DEFAULT_TEMPLATES

    return "" if setting == DEFAULT_TEMPLATES else "_templates-" + hashlib.sha256(setting.encode()).hexdigest()[:10]


def _label(value: Any) -> str:
    return value if isinstance(value, str) else "none" if value is None else json.dumps(value)


def _params_label(row: dict[str, Any]) -> str:
    if "params" not in row:
        return "unknown"
    return " ".join(f"{k}={_label(v)}" for k, v in sorted(row["params"].items())) or "default"


def _rejected_path(path: Path) -> Path:
    """Where the lines of a results file that are not rows go before it is rewritten: ``<name>.rejected``."""
    return path.with_name(path.name + ".rejected")


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The rows of a results file, and its lines that are not rows (line number, text): not JSON
    (a hand edit, a file cut short), or JSON that is not an object."""
    if not path.is_file():
        return [], []
    rows, bad = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append((i, line))
    return rows, bad


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``results.jsonl``.

    A line that is not a row (not JSON, or not a JSON object) is skipped with a warning; when
    the file is next written, such lines are moved, as they were, to ``results.jsonl.rejected``
    beside it rather than dropped.
    """
    path = Path(path)
    rows, bad = _read_lines(path)
    for i, _ in bad:
        warn_user(f"{path}: line {i} is not a JSON row; it is skipped (and moved to {_rejected_path(path).name} when the "
                  "file is next written).")
    return rows


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from .report import json_text

    atomic_write_text(path, "".join(json_text(r, indent=None) + "\n" for r in rows))  # strict JSON lines


def _current_rows(path: Path) -> list[dict[str, Any]]:
    """The rows the file holds now (another run into the same folder may have added some since
    this one read it); its unreadable lines were warned about when the run first read it."""
    return _read_lines(path)[0]


#: Seconds a run waits for another run's hold on a results file before a :class:`GPUAError`
#: (a hold lasts one read and one write of the file).
RESULTS_LOCK_TIMEOUT_S = 600.0
@contextlib.contextmanager
def _results_lock(path: Path, timeout: float | None = None):
    """Hold ``<path>.lock`` exclusively: one run at a time reads, merges and rewrites ``path``.

    Runs into one folder (processes, or threads of one) wait for each other. The lock is the
    ``filelock`` package's (``flock`` on POSIX, ``msvcrt`` on Windows), so a run that dies while
    holding it releases it with its process; the lock file stays in the folder, empty.

    Raises
    ------
    GPUAError
        When the lock is not obtained within ``timeout`` seconds (default
        :data:`RESULTS_LOCK_TIMEOUT_S`), naming the lock file.
    """
    import os

    import filelock

    timeout = RESULTS_LOCK_TIMEOUT_S if timeout is None else float(timeout)
    lock = path.with_name(path.name + ".lock")
    held = filelock.FileLock(os.fspath(lock), timeout=timeout)
    try:
        held.acquire()
    except filelock.Timeout:
        raise GPUAError(f"{str(lock)!r} has been held for over {timeout:g} s by another gpua benchmark writing into that folder "
                        "(a running one: a stopped run's hold ends with it); wait for it to finish, or stop it, and run "
                        "again.") from None
    try:
        yield
    finally:
        held.release()


def _set_aside(path: Path, bad: list[tuple[int, str]]) -> None:
    """Append the lines of ``path`` that are not rows to ``<path>.rejected`` (those not there yet), before a rewrite drops them."""
    if not bad:
        return
    rejected = _rejected_path(path)
    old = rejected.read_text(encoding="utf-8") if rejected.is_file() else ""
    have = set(old.splitlines())
    new = [line for _, line in bad if line not in have]
    if new:
        atomic_write_text(rejected, old + ("" if not old or old.endswith("\n") else "\n") + "".join(f"{line}\n" for line in new))
    warn_user(f"{path}: {len(bad)} line(s) that are not JSON rows (first: line {bad[0][0]}) moved to {rejected} as they were; "
              f"{path.name} keeps the rows.")


def _add_row(path: Path, row: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Append ``row`` to the rows the file holds now and rewrite it atomically; returns them all,
    and whether ``row`` was added.

    The file is read again just before the write, and the read, merge and rewrite happen under
    :func:`_results_lock`, so that two runs into one folder (two configurations started side by
    side) keep each other's rows instead of the last writer's list winning. A row with the same
    settings that another run wrote meanwhile is kept, and ``row`` is not added (one row per run).
    The rewrite is atomic (temp file and rename): an interrupted run leaves the old file whole.
    """
    with _results_lock(path):
        rows, bad = _read_lines(path)
        key = _key(row)
        if all(known for known, _ in key) and key in {_key(r) for r in rows}:  # a row of unknown settings is no one's
            return rows, False
        _set_aside(path, bad)
        rows.append(row)
        _write_rows(path, rows)
    return rows, True


def run_benchmark(
    datasets: Sequence[str],
    vfms: Sequence[str],
    vlms: Sequence[str],
    methods: Sequence[str],
    out_dir: str | Path,
    *,
    pool: str = "16-shot",
    seed: int = 0,
    test_per_class: int | None = None,
    dataset_root: str | Path | None = None,
    templates: Any = None,
    overrides: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) a benchmark; returns every row of ``out_dir/results.jsonl``.

    Parameters
    ----------
    datasets : sequence of str
        Dataset names or paths (see the module docstring).
    vfms, vlms : sequence of str
        Encoder specs; every pair is run.
    methods : sequence of str
        Names of :func:`gpua.list_methods`; checked before anything is read.
    out_dir : path
        Gets ``results.jsonl``, ``results.md`` and ``results.csv``.
    pool : str
        ``"16-shot"`` (default), any ``"N-shot"``, or ``"full"``.
    seed : int
        Seed of the pool draw (and of the test subset).
    test_per_class : int, optional
        Score on a class-balanced subset of the test split with this many images per class (a
        quick run; recorded in each row as ``test_subset``); default: the whole test split.
    dataset_root : path, optional
        CoOp's data folder, for the CoOp datasets by name.
    templates : optional
        Prompt templates; default ``"auto"``: each dataset's own (CoOp's prompt, CLIP's CIFAR
        templates), else CLIP's 80 ImageNet templates.
    overrides : dict, optional
        GPUA parameters for every GPUA-based method (recorded in each row as ``params``, and
        part of what a re-run compares).
    cache_dir : path, optional
        Feature cache root (features go to ``<cache>/benchmark/``, one file per dataset, split,
        pool, encoder pair and template set).
    device, batch_size, progress
        As :func:`gpua.extract.extract_features`.
    log : callable or None
        Where progress lines go (default ``print``).
    workers : int, optional
        Threads that decode and prepare the images (:func:`gpua.extract.extract_features`).

    Returns
    -------
    list of dict
        Every row ``out_dir/results.jsonl`` holds after the run, rows of other settings, data
        or encoder weights included: the tables (``results.md``, ``results.csv``) show only
        those of this run's settings, so :func:`build_tables` of these rows may mix settings.
    """
    from .baselines import override_notes
    from .classify import check_methods, feature_cache_path
    from .encoders import create_encoder
    from .cache import feature_cache_used
    from .extract import extract_features
    from .features import load_features
    say = log or (lambda s: None)
    methods = list(dict.fromkeys(check_methods(list(methods), "methods")))  # a name given twice runs once
    n_shot = parse_pool(pool)
    pool = "full" if n_shot is None else f"{n_shot}-shot"  # one spelling: '16shot' is '16-shot', in the rows and the tables
    if test_per_class is not None and (isinstance(test_per_class, bool) or int(test_per_class) < 1):
        raise GPUAError(f"test_per_class={test_per_class!r} must be a positive integer.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise GPUAError(f"seed={seed!r} must be a non-negative integer (the seed of the pool draw).")
    datasets, vfms, vlms = (list(dict.fromkeys(v)) for v in (datasets, vfms, vlms))
    if not datasets or not vfms or not vlms:
        raise GPUAError("give at least one dataset, one VFM and one VLM.")
    # The rows record the parameters given; one that no method applies would be claimed and run by none.
    for note in override_notes(methods, dict(overrides or {})):
        say(note)
    out = Path(out_dir)
    _check_tables_ours(out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "results.jsonl"
    rows = read_results(jsonl)
    done = {_key(r) for r in rows}
    test_subset = None if test_per_class is None else f"{int(test_per_class)} per class"
    settings = {"gpua_defaults": _defaults_setting(), "params": _param_settings(overrides), "prompt_templates": _templates_setting(templates)}
    templates_tag = _templates_tag(settings["prompt_templates"])
    # Every dataset opened (and its pool drawn) before the first image is encoded: a typo fails now.
    prepared = [_prepare(d, n_shot, seed, None if test_per_class is None else int(test_per_class), dataset_root, templates)
                for d in datasets]
    # One dataset spelled two ways (ds1, ./ds1, /abs/ds1; cifar10-mini, CIFAR10-mini) runs once, as first
    # written: was run twice and counted twice in the mean.
    first: dict[Any, _Prepared] = {}
    for prep in prepared:
        same = first.setdefault(_same_data(prep.name, prep.data), prep)
        if same is not prep:
            say(f"note: --datasets {prep.name!r} is {same.name!r} again (the same data); it runs once, as {same.name!r}")
    prepared = list(first.values())
    contents = {prep.name: prep.contents for prep in prepared}
    prompts = {prep.name: prep.prompts for prep in prepared}
    pair: tuple[Any, Any] | None = None
    pair_encoders: dict[tuple[str, str], str] = {}  # (vfm, vlm) -> their metadata's hash (the rows' "encoders")
    for prep in prepared:
        for vfm in vfms:
            for vlm in vlms:
                # One pair of models loaded at a time (the last released first): their metadata is part
                # of the rows' key (a checkpoint replaced at the same path runs again), and they extract.
                pair = None
                pair = (create_encoder(vfm, device=device, cache_dir=cache_dir), create_encoder(vlm, device=device, cache_dir=cache_dir))
                pair_encoders[(vfm, vlm)] = _encoders_setting(*pair)
                base = {"dataset": prep.name, "vfm": vfm, "vlm": vlm, "pool": pool, "seed": seed, "test_subset": test_subset,
                        "data": prep.data, "contents": contents[prep.name], "prompts": prompts[prep.name],
                        "encoders": pair_encoders[(vfm, vlm)], **settings}
                todo = [m for m in methods if _key({**base, "method": m}) not in done]
                if not todo:
                    say(f"{prep.name}  {vfm} + {vlm}: all {len(methods)} method(s) already in {jsonl} with these settings; skipped")
                    continue
                t0 = time.perf_counter()
                files, loaded, load_s = {}, {}, 0.0
                for part, ds, tag in (("pool", prep.pool, prep.pool_tag), ("test", prep.test, prep.test_tag)):
                    files[part] = extract_features(
                        pair[0], pair[1], ds, templates=templates, out=feature_cache_path("benchmark", f"{prep.slug}_{tag}{templates_tag}", vfm, vlm, cache_dir),
                        device=device, batch_size=batch_size, cache_dir=cache_dir, progress=progress, workers=workers,
                    )
                    # Read at once, before the next extraction: a `gpua cache clean --features` meanwhile
                    # would remove a cache this run reused and had not read yet.
                    t_load = time.perf_counter()
                    loaded[part] = load_features(files[part], require=("labels",) if part == "test" else ())
                    load_s += time.perf_counter() - t_load
                    feature_cache_used(files[part])  # gpua's cache, and its age for `gpua cache clean` is the time since this use
                extract_s = time.perf_counter() - t0 - load_s
                train_fs, test_fs = loaded["pool"], loaded["test"]
                # Images the extraction could not read are left out of the scores: said on every run (cached
                # features included) and recorded in each row, never a silently smaller test split.
                unreadable = {"pool": _n_skipped(train_fs), "test": _n_skipped(test_fs)}
                left_out = "" if not any(unreadable.values()) else (
                    f"; {unreadable['pool']} pool and {unreadable['test']} test image(s) could not be read and are left out "
                    "(the rows' 'unreadable')")
                say(f"{prep.name}  {vfm} + {vlm}: pool {train_fs.n_samples} images ({pool}), test {test_fs.n_samples}, "
                    f"{len(train_fs.classnames or [])} classes; features in {files['pool'].parent} ({extract_s:.1f} s){left_out}")
                for method in todo:
                    if _key({**base, "method": method}) in done:  # written meanwhile by another run into this folder
                        continue
                    row = _run_method(method, train_fs, test_fs, files["pool"], prep.name, overrides)
                    row = {**base, "method": method, "task": "zeroshot_classification", **row, "unreadable": unreadable,
                           "seconds": {"extract": extract_s, **row["seconds"]}, "gpua_version": __version__}
                    rows, added = _add_row(jsonl, row)
                    done = {_key(r) for r in rows}
                    say(f"  {method:<16} acc1 {100 * row['metrics']['acc1']:6.2f}%  fit {row['seconds']['fit']:.1f} s"
                        + ("" if added else f"  (another run wrote this row into {jsonl} meanwhile: its row is kept)"))
                    extract_s = 0.0  # counted once per (dataset, encoders)
    del pair  # the last models, before the tables
    # The tables are this run's settings (and data): rows of others stay in the jsonl, out of the tables.
    rows = _current_rows(jsonl)  # with the rows another run into this folder may have written meanwhile
    ours, data = _settings(settings), {p.name: p.data for p in prepared}
    # A pair of this run is shown with its encoders of now only: rows of weights since replaced at
    # the same path (or from before the rows recorded them) would mix two models in one mean.
    shown = [r for r in rows if _settings(r) == ours and r.get("encoders", _UNRECORDED) == pair_encoders.get(
        (r.get("vfm"), r.get("vlm")), r.get("encoders", _UNRECORDED)) and (r.get("dataset") not in data or (
            r.get("data") == data[r.get("dataset")] and r.get("contents") == contents[r.get("dataset")]
            and r.get("prompts") == prompts[r.get("dataset")]))]
    if len(shown) < len(rows):
        say(f"{jsonl} also holds {len(rows) - len(shown)} row(s) of other settings (GPUA parameters, templates, class names, "
            "data or the encoders' weights, or written before gpua recorded them); kept there, left out of the tables")
    md, table_csv = build_tables(shown)
    atomic_write_text(out / "results.md", md)
    atomic_write_text(out / "results.csv", table_csv)
    say(f"wrote {jsonl}, {out / 'results.md'} and {out / 'results.csv'}")
    return rows


def _check_tables_ours(out: Path) -> None:
    """A ``results.md`` or ``results.csv`` already in ``out`` is replaced only when a benchmark wrote
    it (a ``results.jsonl`` of benchmark rows lies beside it, its first line is :func:`build_tables`',
    and a CSV's last row is its ``mean``) or it is empty; a ``results.jsonl`` only when it holds a
    benchmark row (or nothing); a folder under any of these names never. A folder of one's own
    (``--out .`` in a project) keeps its own results files, checked before any image is encoded."""
    for name in ("results.jsonl", "results.md", "results.csv", "results.jsonl.lock"):
        path = out / name
        if path.exists() and not path.is_file():  # was: said after every fit, and the rows lost
            raise GPUAError(f"out_dir {str(out)!r} holds a folder {name!r} where the benchmark writes a file; pass another "
                            f"out_dir, or move {name} out of it.")
    jsonl = out / "results.jsonl"
    ours = jsonl.is_file() and _holds_benchmark_rows(jsonl)
    if jsonl.is_file() and jsonl.stat().st_size and not ours:
        # Was: rewritten row by row (NaN and Infinity became null, comments moved away).
        raise GPUAError(f"out_dir {str(out)!r} holds a results.jsonl that holds no `gpua benchmark` row, which the benchmark "
                        "would rewrite; pass another out_dir, or move results.jsonl out of it.")
    for name, first, last in (("results.md", _MD_TITLE, None), ("results.csv", _CSV_HEAD, _CSV_LAST)):
        path = out / name
        if not path.is_file() or path.stat().st_size == 0:
            continue  # an empty file holds nothing to lose (what `> DIR/results.md` or `| tee` makes before the run)
        if not ours:  # a table is the benchmark's only beside the rows it was made from (was: any "dataset ... mean" CSV)
            raise GPUAError(f"out_dir {str(out)!r} holds a {name} that `gpua benchmark` did not write (no results.jsonl of "
                            f"benchmark rows beside it), which the benchmark's table would replace; pass another out_dir, or "
                            f"move {name} out of it.")
        try:
            with open(path, encoding="utf-8") as f:
                line = f.readline()
                # a CSV's first line says little ("dataset,price" is anyone's): the table ends in its mean row
                final = None if last is None else ([row for row in f.read(_OWN_TABLE_BYTES).splitlines() if row.strip()] or [""])[-1]
        except (OSError, UnicodeDecodeError):
            line, final = "", ""
        if not first.match(line) or (last is not None and not last.match(final or "")):
            raise GPUAError(f"out_dir {str(out)!r} holds a {name} that `gpua benchmark` did not write, which the "
                            f"benchmark's table would replace; pass another out_dir, or move {name} out of it.")


def _holds_benchmark_rows(path: Path) -> bool:
    """Whether ``results.jsonl`` ``path`` holds a row :func:`run_benchmark` wrote (a JSON object with its
    ``dataset`` and its ``metrics``, as every release wrote them)."""
    try:
        rows = _read_lines(path)[0]  # the JSON objects among its lines, as the run reads them
    except (OSError, UnicodeDecodeError):
        return False
    return any({"dataset", "metrics"} <= row.keys() for row in rows)


#: The first lines :func:`build_tables` writes: what marks a results file as the benchmark's.
_MD_TITLE = re.compile(r"^[a-z0-9_]+ \(%\) by dataset(;|$)")
_CSV_HEAD = re.compile(r"^dataset(,|\r?$)")
_CSV_LAST = re.compile(r"^mean(,|$)")
#: The most of a results.csv read to find its last row (a benchmark's table is a row per dataset).
_OWN_TABLE_BYTES = 1 << 22


def _n_skipped(fs) -> int:
    """How many images of a feature file's dataset the extraction could not read (its ``meta["skipped"]``)."""
    skipped = (fs.meta or {}).get("skipped") or {}
    return int(skipped.get("count", 0) or 0) if isinstance(skipped, dict) else 0


def _run_method(method: str, train_fs, test_fs, pool_file: Path, name: str, overrides) -> dict[str, Any]:
    """Fit one method on the pool features (no labels) and score it on the test features."""
    from .baselines import make_method
    from .report import evaluate_model, provenance_from_features

    est = make_method(method, **(overrides or {}))
    t0 = time.perf_counter()
    est.fit(train_fs.vfm_features, train_fs.vlm_features, train_fs.text_prototypes, classnames=train_fs.classnames)
    fit_s = time.perf_counter() - t0
    est.provenance_ = provenance_from_features(train_fs.meta, classnames=train_fs.classnames, source=str(pool_file))
    res = evaluate_model(est, test_fs, dataset=name, test_name=f"the test features of {name!r}")
    return {
        "metrics": res["metrics"],
        "n_classes": res["gpua"]["n_classes"],
        "n_pool": int(train_fs.n_samples),
        "n_test": int(test_fs.n_samples),
        "templates": len(train_fs.meta.get("templates") or []),
        "seconds": {"fit": fit_s, "predict": res["gpua"]["predict_seconds"]},
    }


def build_tables(rows: Sequence[dict[str, Any]], metric: str = "acc1") -> tuple[str, str]:
    """acc1 (percent) by dataset (rows, then ``mean``) and run (columns), as Markdown and CSV.

    A column is one (method, VFM, VLM, pool, seed, test subset, GPUA parameters, templates); the
    parts that are the same for every column are said once above the Markdown table instead of
    in every header (``params default``: none given; ``unknown``: a row written before gpua
    recorded them). The mean of a column covers the datasets it has; a column missing some says
    how many it has. Rows that fall into one cell (one dataset and run, but other data, contents,
    class names or GPUA defaults: photos replaced between runs) are not averaged: the cell shows
    the latest row, marked ``*`` in the Markdown table, and a note under it says how many rows
    the cell had.
    """
    if metric not in BENCHMARK_METRICS:
        raise GPUAError(f"metric={metric!r}; choose from {BENCHMARK_METRICS}.")
    for i, r in enumerate(rows):  # was: a KeyError ('dataset') from deep inside
        value = r.get("metrics", {}).get(metric) if isinstance(r, dict) and isinstance(r.get("metrics"), dict) else None
        if not isinstance(r, dict) or not isinstance(r.get("dataset"), str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            what = (f"is a {type(r).__name__}" if not isinstance(r, dict) else "has no 'dataset' name" if not isinstance(r.get("dataset"), str)
                    else f"has no number metrics[{metric!r}]")
            raise GPUAError(f"rows[{i}] {what}; build_tables takes benchmark rows (gpua.benchmark.read_results of a "
                            f"results.jsonl, or run_benchmark's), each with a 'dataset' and its 'metrics'.")
    parts = ("method", "vfm", "vlm", "pool", "seed", "test_subset", "params", "templates")

    def run_of(r):
        return tuple(r.get(p) for p in parts[:-2]) + (_params_label(r), r.get("prompt_templates", "unknown"))

    runs = list(dict.fromkeys(run_of(r) for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    varying = [i for i, p in enumerate(parts) if len({run[i] for run in runs}) > 1] or [0]
    fixed = [(p, runs[0][i]) for i, p in enumerate(parts) if i not in varying and runs and runs[0][i] is not None]
    header = [" / ".join(str(run[i]) for i in varying) for run in runs]
    value = {(r["dataset"], run_of(r)): r["metrics"][metric] for r in rows}  # the latest row of a cell wins
    n_rows: dict[tuple, int] = {}
    for r in rows:
        n_rows[(r["dataset"], run_of(r))] = n_rows.get((r["dataset"], run_of(r)), 0) + 1
    several = {cell: n for cell, n in n_rows.items() if n > 1}
    table = []
    for d in datasets:
        table.append([d] + [value.get((d, run)) for run in runs])
    means = []
    for j, run in enumerate(runs):
        vals = [value[(d, run)] for d in datasets if (d, run) in value]
        means.append(None if not vals else (float(np.mean(vals)), len(vals)))
    def fmt(v):
        return "" if v is None else f"{100 * v:.2f}"

    mean_cells = ["" if m is None else fmt(m[0]) + ("" if m[1] == len(datasets) else f" ({m[1]} of {len(datasets)})") for m in means]
    md = [f"{metric} (%) by dataset" + ("; " + ", ".join(f"{p} {v}" for p, v in fixed) if fixed else ""), "",
          "| dataset | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    md += ["| " + " | ".join([row[0]] + [fmt(v) + ("*" if (row[0], run) in several else "") for v, run in zip(row[1:], runs)]) + " |"
           for row in table]
    md.append("| **mean** | " + " | ".join(mean_cells) + " |")
    if several:
        cells = "; ".join(f"{d} / {header[runs.index(run)]}: {n} rows" for (d, run), n in several.items())
        md += ["", f"\\* several rows in one cell ({cells}): rows of other data, contents, class names, encoders' weights or GPUA defaults; "
                   "the latest is shown (all are in results.jsonl)."]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["dataset"] + header)
    for row in table:
        w.writerow([row[0]] + [fmt(v) for v in row[1:]])
    w.writerow(["mean"] + mean_cells)
    return "\n".join(md) + "\n", buf.getvalue()
