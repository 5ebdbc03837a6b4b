"""Files gpua writes and reads: what a replace keeps (mode, owner, links), writes the system refuses,
names near the length limit, safetensors' header limit, files from other tools, checkpoints of
another gpua version."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpua import GPUAError
from gpua._atomic import TEMP_MARK, atomic_write_text
from gpua.features import load_features, save_features

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions, links and limits")
Z = np.arange(1.0, 13.0).reshape(3, 4)


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMP_MARK in p.name]


def _save(path: Path, scale: float = 1.0) -> None:
    if path.suffix == ".json":
        atomic_write_text(path, json.dumps({"scale": scale}))
    else:
        save_features(path, vfm_features=Z * scale)


def _scale(path: Path) -> float:
    if path.suffix == ".json":
        return json.loads(path.read_text())["scale"]
    return float(load_features(path).vfm_features[0, 0])


NAMES = ["f.npz", "f.safetensors", "r.json"]


# -- a replaced file keeps its permissions and owner ----------------------------------------------
@posix_only
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_resave_keeps_the_files_permissions(tmp_path, name, mode):
    # A private (0600) file re-saved became world-readable (0644): the umask's mode was forced on it.
    f = tmp_path / name
    _save(f)
    os.chmod(f, mode)
    _save(f, 2.0)
    assert f.stat().st_mode & 0o777 == mode
    assert _scale(f) == 2.0 and not _temps(tmp_path)


@posix_only
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give a file away")
@pytest.mark.parametrize("name", NAMES)
def test_resave_by_root_leaves_the_file_to_its_owner(tmp_path, name):
    # `sudo gpua ...` over a user's file made it root's: the user could no longer replace it.
    f = tmp_path / name
    _save(f)
    os.chown(f, 12345, 23456)
    _save(f, 2.0)
    st = f.stat()
    assert (st.st_uid, st.st_gid) == (12345, 23456) and _scale(f) == 2.0


# -- a symbolic link is written through, not replaced by a copy ----------------------------------
@posix_only
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("relative", [False, True])
def test_save_through_a_link_updates_the_file_it_points_to(tmp_path, name, relative):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / name
    _save(target)
    link = tmp_path / ("link" + Path(name).suffix)
    link.symlink_to(Path("shared") / name if relative else target)
    _save(link, 3.0)
    # The link survives, and everything that reads the shared file sees the new contents.
    assert link.is_symlink() and _scale(target) == 3.0 and _scale(link) == 3.0
    assert not _temps(tmp_path) and not _temps(shared)


@posix_only
def test_link_into_a_missing_folder_is_refused(tmp_path):
    link = tmp_path / "f.npz"
    link.symlink_to(tmp_path / "not-mounted" / "f.npz")
    with pytest.raises(GPUAError, match="link to .*not-mounted.*folder does not exist"):
        save_features(link, vfm_features=Z)
    assert link.is_symlink() and not (tmp_path / "not-mounted").exists()


# -- names near the file-name limit ---------------------------------------------------------------
@pytest.mark.parametrize("stem", ["x" * 240, "é" * 118, "日本" * 40], ids=["ascii", "latin", "cjk"])  # 240, 236, 240 bytes
@pytest.mark.parametrize("ext", [".npz", ".safetensors", ".json"])
def test_names_near_the_length_limit_can_be_saved(tmp_path, stem, ext):
    # The temp file's name is the target's plus ~40 characters: past 255 bytes, ENAMETOOLONG.
    f = tmp_path / (stem + ext)
    if len(os.fsencode(f.name)) > 255:
        pytest.skip("longer than a file name may be")
    _save(f, 2.0)
    _save(f, 5.0)
    assert _scale(f) == 5.0 and not _temps(tmp_path)


# -- a write the system refuses: OSError naming the target, old file intact ------------------------
def _fill_disk_at(limit: int):
    """Writes past ``limit`` bytes of any file fail as on a full disk (EFBIG from RLIMIT_FSIZE)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))

    def restore():
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)

    return restore


@posix_only
@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
def test_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, ext):
    # safetensors reported it as SafetensorError('... (os error 27)'), which `gpua` printed as a
    # traceback; numpy's OSError named no file (the CLI said "no file named").
    f = tmp_path / ("f" + ext)
    save_features(f, vfm_features=Z)
    big = np.random.default_rng(0).normal(size=(1000, 64))  # 256 KB in float32
    restore = _fill_disk_at(64 << 10)
    try:
        with pytest.raises(OSError) as err:
            save_features(f, vfm_features=big)
    finally:
        restore()
    assert err.value.errno == errno.EFBIG and err.value.filename == str(f)
    np.testing.assert_array_equal(load_features(f).vfm_features, Z.astype(np.float32))
    assert not _temps(tmp_path)


def test_disk_full_inside_numpy_names_the_target(tmp_path, monkeypatch):
    f = tmp_path / "f.npz"
    save_features(f, vfm_features=Z)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", full)
    with pytest.raises(OSError, match="No space left") as err:
        save_features(f, vfm_features=Z * 2)
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(f)
    assert _scale(f) == 1.0 and not _temps(tmp_path)


@posix_only
def test_full_disk_during_a_checkpoint_names_the_checkpoint(tmp_path):
    from gpua.stream._checkpoint import Checkpoint

    ck = Checkpoint(tmp_path / "ck", "fp")
    restore = _fill_disk_at(64 << 10)
    try:
        with pytest.raises(OSError) as err:
            ck.save({"round": 1, "converged": False, "done": False, "history": [], "passes": 1},
                    centres=torch.zeros(200, 100), centres_final=torch.zeros(200, 100), g=torch.zeros(200),
                    cross_covariance=torch.zeros(10, 10))
    finally:
        restore()
    assert err.value.filename == str(ck.file) and not ck.file.exists() and not _temps(ck.path)


# -- safetensors' header limit --------------------------------------------------------------------
def test_strings_beyond_the_safetensors_header_limit_are_refused_clearly(tmp_path):
    # safetensors refuses a header over 100 MB: the save ended in SafetensorError("header too large").
    f = tmp_path / "f.safetensors"
    save_features(f, vfm_features=Z)
    with pytest.raises(GPUAError, match=r"safetensors header.*\.npz"):
        save_features(f, vfm_features=Z, meta={"notes": "x" * 100_000_001})
    assert _scale(f) == 1.0 and not _temps(tmp_path)


# -- meta keys that JSON would merge -------------------------------------------------------------
@pytest.mark.parametrize("meta", [{1: "x", "1": "y"}, {"flags": {True: "a", "true": "b"}}, {"l": [{None: 1, "null": 2}]}])
def test_meta_keys_that_json_would_merge_are_refused(tmp_path, meta):
    # JSON keys are strings: {1: "x", "1": "y"} was stored as {"1": "y"}, "x" lost without a word.
    f = tmp_path / "f.npz"
    save_features(f, vfm_features=Z)
    with pytest.raises(GPUAError, match="same string.*lost.*rename"):
        save_features(f, vfm_features=Z * 2, meta=meta)
    assert _scale(f) == 1.0


def test_meta_with_int_keys_alone_is_still_saved(tmp_path):
    save_features(tmp_path / "f.npz", vfm_features=Z, meta={"counts": {0: 5, 1: 7}})
    assert load_features(tmp_path / "f.npz").meta == {"counts": {"0": 5, "1": 7}}


# -- safetensors files from other tools -----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_bfloat16_safetensors_from_another_tool_is_read_not_called_corrupt(tmp_path, dtype):
    # numpy has no bfloat16: the file was reported "corrupt or truncated ... re-create it".
    from safetensors.torch import save_file

    t = torch.tensor([[0.5, -1.25, 2.0], [3.0, 0.75, -0.5]]).to(dtype)
    save_file({"vfm_features": t, "labels": torch.tensor([0, 1])}, str(tmp_path / "f.safetensors"))
    fs = load_features(tmp_path / "f.safetensors")
    assert fs.vfm_features.dtype == np.float32
    np.testing.assert_array_equal(fs.vfm_features, t.float().numpy())
    np.testing.assert_array_equal(fs.labels, [0, 1])


# -- a checkpoint written by another gpua ---------------------------------------------------------
def _checkpoint(folder: Path):
    from gpua.stream._checkpoint import Checkpoint

    ck = Checkpoint(folder, "fp")
    ck.save({"round": 2, "converged": False, "done": False, "history": [{"round": 1}], "passes": 3},
            centres=torch.ones(2, 3), centres_final=torch.ones(2, 3), g=torch.zeros(2).double(),
            cross_covariance=torch.eye(3).double())
    return ck


def test_checkpoint_of_another_gpua_version_is_refused(tmp_path, monkeypatch):
    from gpua.stream import _checkpoint as module

    ck = _checkpoint(tmp_path / "ck")
    assert ck.load()["meta"]["round"] == 2
    monkeypatch.setattr(module, "__version__", "9.9.9")  # the same folder, after an upgrade
    with pytest.raises(GPUAError, match="written by gpua 0.*this is gpua 9.9.9.*delete"):
        module.Checkpoint(tmp_path / "ck", "fp").load()


def test_checkpoint_of_another_state_format_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from gpua._integrity import CHECKSUM_KEY, digest
    from gpua.stream._checkpoint import Checkpoint

    ck = _checkpoint(tmp_path / "ck")
    with safe_open(str(ck.file), framework="pt") as f:
        meta = json.loads(f.metadata()["gpua_stream"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.pop(CHECKSUM_KEY)
    from gpua.stream._checkpoint import STATE_VERSION

    meta["version"] = STATE_VERSION + 1  # a later layout, checksum and fingerprint in order
    meta[CHECKSUM_KEY] = digest(meta, tensors)
    save_file(tensors, str(ck.file), metadata={"gpua_stream": json.dumps(meta)})
    with pytest.raises(GPUAError, match=f"state format {STATE_VERSION + 1}.*format {STATE_VERSION}"):
        Checkpoint(tmp_path / "ck", "fp").load()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_bfloat16_safetensors_are_read_once_ml_dtypes_is_loaded(tmp_path, dtype):
    # onnx imports ml_dtypes, which teaches numpy bfloat16: safetensors then returned bfloat16
    # arrays, which the feature checks refused ("pass a numeric array").
    pytest.importorskip("ml_dtypes")
    from safetensors.torch import save_file

    t = torch.tensor([[0.5, -1.25, 2.0], [3.0, 0.75, -0.5]]).to(dtype)
    save_file({"vfm_features": t}, str(tmp_path / "f.safetensors"))
    fs = load_features(tmp_path / "f.safetensors")
    assert fs.vfm_features.dtype == np.float32
    np.testing.assert_array_equal(fs.vfm_features, t.float().numpy())


def test_checkpoint_waiting_for_its_projection_needs_the_plan_sums(tmp_path):
    # A state saved after UCM's last round and before plan_ridge's pass must hold the plan's
    # sums that pass is solved from; without them (or with a projected flag that is not a bool)
    # it is called corrupt, not resumed into a KeyError.
    import torch
    from gpua import ModelFileError
    from gpua.stream._checkpoint import Checkpoint

    ck = Checkpoint(tmp_path / "ck", "fp")
    k, q = 3, 5
    base = dict(centres=torch.randn(k, q), centres_final=torch.randn(k, q), g=torch.randn(k).double(), cross_covariance=torch.randn(q, 4).double())
    meta = {"round": 2, "converged": True, "done": True, "history": [], "passes": 9, "projected": False}
    ck.save(meta, **base)
    with pytest.raises(ModelFileError, match=r"lacking \['plan_query', 'plan_mass'\].*corrupt"):
        ck.load()
    ck.save({**meta, "projected": "no"}, **base, plan_query=torch.randn(k, q).double(), plan_mass=torch.rand(k).double())
    with pytest.raises(ModelFileError, match="projected='no', not a bool"):
        ck.load()
    ck.save(meta, **base, plan_query=torch.randn(k, q).double(), plan_mass=torch.rand(k + 1).double())
    with pytest.raises(ModelFileError, match="'plan_mass' of shape"):
        ck.load()
    ck.save(meta, **base, plan_query=torch.randn(k, q).double(), plan_mass=torch.rand(k).double())
    assert ck.load()["meta"]["projected"] is False


def test_a_short_write_without_an_errno_is_named_a_full_disk(tmp_path, monkeypatch):
    """Was: numpy's tofile reports a full disk as OSError("9600 requested and 7136 written") with no
    errno, which reached the user as "... (no file named); free space or fix the permissions"."""
    f = tmp_path / "f.npz"
    Z = np.ones((4, 3), np.float32)

    def short(*args, **kwargs):
        raise OSError("9600 requested and 7136 written")

    monkeypatch.setattr(np.lib.format, "write_array", short)
    with pytest.raises(OSError, match="No space left") as err:
        save_features(f, vfm_features=Z)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(f) and not _temps(tmp_path)
