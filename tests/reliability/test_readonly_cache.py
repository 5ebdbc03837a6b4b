"""Extraction output on read-only storage: an up-to-date one is a cache hit, a stale one is refused before any encoding.

A feature file already extracted into a shared dataset folder, a read-only mount or a file made
read-only (chmod) must be usable as it is: the re-run that finds it up to date writes nothing.
Read-only storage is made two ways: ``chmod`` (which root ignores, so skipped as root) and a
simulated read-only file system (every write under the folder fails with EROFS, as on a
read-only mount: this one runs as root too).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.data import ArrayImageDataset
from gpua.encoders import Encoder, ImagePreprocess
from gpua.extract import extract_features
from gpua.features import load_features

from rel_helpers import tree_bytes

CLASSES = ["cat", "dog", "car"]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Toy(Encoder):
    """A deterministic offline encoder (per-channel means); ``calls`` counts the images it encoded."""

    backend = "toy"

    def __init__(self, spec: str = "toy:vfm", vlm: bool = False):
        super().__init__(spec, ImagePreprocess(input_size=8, resize=8, mean=0.5, std=0.25), 12, patch_size=4)
        self.is_vlm = vlm
        self.calls = 0

    def _patches(self, pixels):
        B = pixels.shape[0]
        return pixels.reshape(B, 3, 2, 4, 2, 4).mean(axis=(3, 5)).transpose(0, 2, 3, 1).repeat(4, axis=-1)

    def _embed(self, pixels):
        self.calls += pixels.shape[0]
        return self._patches(pixels).reshape(pixels.shape[0], -1)[:, :12] + 0.01

    def _encode_text_batch(self, texts):
        return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=12) for t in texts]).astype(np.float32)


def _dataset(n=7):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    return ArrayImageDataset(images, rng.integers(0, 3, n), CLASSES, name="toyset", split="train",
                             image_ids=[f"img{i:03d}" for i in range(n)])


def _run(out, templates=("a photo of a {}.",), **kw):
    vfm, vlm = Toy(), Toy("toy:vlm", vlm=True)
    path = extract_features(vfm, vlm, _dataset(), out=out, templates=list(templates), progress=False, shard_size=3, **kw)
    return path, vfm.calls + vlm.calls


def _under(path, top: str) -> bool:
    if isinstance(path, int):
        return False
    try:
        real = os.path.realpath(os.fspath(path))
    except TypeError:
        return False
    return real == top or real.startswith(top + os.sep)


def _simulate_read_only_fs(monkeypatch, folder: Path) -> None:
    """Every write, create, rename or removal under ``folder`` fails with EROFS (a read-only mount)."""
    top = os.path.realpath(folder)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_io_open = os.open, io.open

    def os_open(path, flags, *a, **k):
        if flags & _WRITE_FLAGS and _under(path, top):
            refuse(path)
        return real_open(path, flags, *a, **k)

    def io_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and _under(file, top):
            refuse(file)
        return real_io_open(file, mode, *a, **k)

    def one(real):
        def f(path, *a, **k):
            if _under(path, top) and not k.get("dir_fd"):
                refuse(path)
            return real(path, *a, **k)
        return f

    def two(real):
        def f(src, dst, *a, **k):
            if _under(src, top) or _under(dst, top):
                refuse(dst)
            return real(src, dst, *a, **k)
        return f

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)
    for name in ("mkdir", "unlink", "remove", "rmdir"):
        monkeypatch.setattr(os, name, one(getattr(os, name)))
    for name in ("replace", "rename"):
        monkeypatch.setattr(os, name, two(getattr(os, name)))


def _chmod_read_only(folder: Path, request) -> None:
    if sys.platform == "win32" or os.geteuid() == 0:
        pytest.skip("chmod does not make a folder read-only for root (or on Windows)")
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for p in sorted(modes, key=lambda p: -len(p.parts)):  # the contents first, the folder last
        p.chmod(0o555 if p.is_dir() else 0o444)
    request.addfinalizer(lambda: [p.chmod(m) for p, m in modes.items()])


@pytest.fixture(params=["chmod", "read-only-fs"])
def make_read_only(request, monkeypatch):
    def apply(folder: Path) -> None:
        if request.param == "chmod":
            _chmod_read_only(folder, request)
        else:
            _simulate_read_only_fs(monkeypatch, folder)
    return apply


@pytest.mark.parametrize("name", ["feats.npz", "feats.safetensors", "feats"])  # two files and a shard set
def test_an_up_to_date_output_on_read_only_storage_is_a_cache_hit(tmp_path, make_read_only, name):
    shared = tmp_path / "shared"
    shared.mkdir()
    out, encoded = _run(shared / name)
    assert encoded > 0 and not (shared / f"{name}.parts").exists()
    before = tree_bytes(shared)
    make_read_only(shared)
    again, encoded = _run(shared / name)
    assert again == shared / name and encoded == 0  # nothing re-encoded, nothing written
    assert tree_bytes(shared) == before
    if name.endswith(".npz"):
        assert load_features(again).image_ids == [f"img{i:03d}" for i in range(7)]


def test_a_stale_output_on_read_only_storage_is_refused_before_any_image_is_encoded(tmp_path, make_read_only):
    shared = tmp_path / "shared"
    shared.mkdir()
    _run(shared / "feats.npz")
    before = tree_bytes(shared)
    make_read_only(shared)
    with pytest.raises(GPUAError, match=r"cannot be written: .* is not writable .*choose a folder you can write to"):
        _run(shared / "feats.npz", templates=("a drawing of a {}.",))  # another key: it would be rewritten
    with pytest.raises(GPUAError, match="cannot be written"):
        _run(shared / "new.npz")  # no output yet
    with pytest.raises(GPUAError, match="cannot be written"):
        _run(shared / "feats.npz", resume=False)  # resume=False re-extracts: no cache hit
    assert tree_bytes(shared) == before


def test_a_stale_output_on_read_only_storage_encodes_nothing(tmp_path, make_read_only, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    _run(shared / "feats.npz")
    make_read_only(shared)

    def no_encoding(self, *a, **k):
        raise AssertionError("an image was encoded before the unwritable output was refused")

    monkeypatch.setattr(Toy, "_embed", no_encoding)
    with pytest.raises(GPUAError, match="cannot be written"):
        _run(shared / "feats.npz", templates=("a drawing of a {}.",))


def test_a_read_only_feature_file_in_a_writable_folder_that_is_up_to_date_is_a_cache_hit(tmp_path):
    out, _ = _run(tmp_path / "feats.npz")
    out.chmod(0o444)
    try:
        again, encoded = _run(out)
        assert encoded == 0
        if os.geteuid() != 0:  # root may replace any file: the protection is the owner's
            with pytest.raises(GPUAError, match="is a read-only file"):
                _run(out, templates=("a drawing of a {}.",))
    finally:
        out.chmod(0o644)


def test_an_output_that_would_destroy_an_input_is_still_refused_up_front(tmp_path, make_read_only):
    """The other up-front checks keep their place: a cache hit never excuses an output that is an input."""
    shared = tmp_path / "shared"
    shared.mkdir()
    _run(shared / "feats.npz")
    (shared / "feats.npz.parts").mkdir()
    (shared / "feats.npz.parts" / "mine.txt").write_text("not gpua's")
    make_read_only(shared)
    with pytest.raises(GPUAError, match="not a parts folder written by gpua"):
        _run(shared / "feats.npz")


@pytest.mark.parametrize("name", ["feats.npz", "feats"])  # a file and a shard set
def test_the_cli_serves_an_up_to_date_output_on_read_only_storage(tmp_path, make_read_only, name, capsys):
    """Was: `gpua extract` refused the output up front ("is a read-only file; make it writable (chmod u+w)",
    or "cannot be written ... read-only file system"), where the library serves it as the README says."""
    from PIL import Image

    from gpua.cli import main

    rng = np.random.default_rng(0)
    for c in ("sky", "grass"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    shared = tmp_path / "shared"
    shared.mkdir()
    argv = ["extract", "--data", str(tmp_path / "imgs"), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple",
            "--quiet", "--out", str(shared / name), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    before = tree_bytes(shared)
    make_read_only(shared)
    capsys.readouterr()
    assert main(argv) == 0 and "up to date" in capsys.readouterr().out
    assert tree_bytes(shared) == before
    assert main(argv[:-4] + ["--templates", "imagenet_select", "--out", str(shared / name), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "cannot be written" in capsys.readouterr().err  # a stale one is still refused, by the library
