"""Outputs that are not regular files: a device or a FIFO is refused, never replaced by a file.

Was: ``model.save`` / ``gpua fit --out`` / ``save_features`` onto a character device or a FIFO
renamed a regular file over it; as root, ``--out /dev/null`` (a common way to discard an output)
replaced the machine's /dev/null with a model file. The device tests use a private copy of
/dev/null made with mknod (root only), never the real one.
"""

from __future__ import annotations

import os
import stat

import pytest

from gpua import GPUA
from gpua._errors import GPUAError
from gpua.synthetic import make_planted


def _fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    p = tmp_path / "pipe.gpua"
    os.mkfifo(p)
    return p, stat.S_ISFIFO


def _char_device(tmp_path):
    if not hasattr(os, "mknod") or os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    p = tmp_path / "null.gpua"
    os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a private /dev/null
    return p, stat.S_ISCHR


@pytest.fixture(scope="module")
def fitted():
    d = make_planted(n_samples=120, n_classes=4, random_state=0)
    return GPUA(n_steps=3, self_learning=0).fit(d.vfm_features, d.vlm_features, d.text_prototypes), d


@pytest.mark.parametrize("make", [_fifo, _char_device])
def test_saving_a_model_over_a_device_or_fifo_is_refused(tmp_path, fitted, make):
    target, still = make(tmp_path)
    with pytest.raises(GPUAError, match=r"is (a named pipe \(FIFO\)|a character device), not a regular file.*nothing was written"):
        fitted[0].save(target)
    assert still(os.stat(target).st_mode)
    link = tmp_path / "link.gpua"  # through a link too
    link.symlink_to(target)
    with pytest.raises(GPUAError, match="not a regular file"):
        fitted[0].save(link)
    assert still(os.stat(target).st_mode) and link.is_symlink()


@pytest.mark.parametrize("make", [_fifo, _char_device])
def test_saving_features_or_fitting_from_the_cli_over_a_device_is_refused(tmp_path, fitted, make, capsys):
    from gpua.cli import main
    from gpua.features import FeatureSet, save_features

    target, still = make(tmp_path)
    d = fitted[1]
    npz = target.with_name("f.npz")
    os.rename(target, npz)  # the same node, named like a feature file
    fs = FeatureSet(d.vfm_features, d.vlm_features, d.text_prototypes, labels=d.labels)
    with pytest.raises(GPUAError, match="not a regular file"):
        save_features(npz, fs)
    assert still(os.stat(npz).st_mode)
    train = tmp_path / "train.npz"
    save_features(train, fs)
    assert main(["fit", "--train", str(train), "--out", str(target.with_name("m.gpua")),
                 "--param", "n_steps=3", "--quiet"]) == 0  # a regular path still works
    os.rename(npz, target)
    assert main(["fit", "--train", str(train), "--out", str(target), "--param", "n_steps=3", "--quiet"]) == 2
    assert "not a regular file" in capsys.readouterr().err and still(os.stat(target).st_mode)
