"""A third walk of the streamed fit as a user with many images would run it (see each test's docstring)."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

from gpua import GPUA, GPUAError
from gpua._errors import ModelFileError
from gpua.stream import ShardedFeatures, fit_streaming, write_shards
from stream_helpers import planted_case


@pytest.fixture(scope="module")
def small():
    return planted_case(300, 8, 16, 8, 6, seed=5)


def _write(path, data, **kw):
    Z, X, Y, _ = data
    return write_shards(path, Z, X, rows_per_shard=100, dtype="float32", text_prototypes=Y, **kw)


# --- Dask: what a task carries to the scheduler and the workers -----------------------------------
def test_a_set_opened_by_a_relative_path_reopens_from_another_working_folder(small, tmp_path, monkeypatch):
    """``gpua fit --shards feats --cluster tcp://...``: the tasks carried the path as typed ("feats"),
    which a worker (or the scheduler, which unpickles the task graph) resolved against its own
    working folder: the fit failed with Dask's "Error during deserialization of the task graph",
    or read another "feats" there."""
    _write(tmp_path / "feats", small)
    monkeypatch.chdir(tmp_path)
    sent = pickle.dumps(ShardedFeatures("feats"))
    elsewhere = tmp_path / "elsewhere"
    _write(elsewhere / "feats", planted_case(200, 8, 16, 8, 6, seed=9))  # another set under the same relative name
    monkeypatch.chdir(elsewhere)
    got = pickle.loads(sent)
    assert got.n_samples == 300
    np.testing.assert_array_equal(got.read("vfm_features", 0, 300).numpy(), small[0])


def test_a_process_that_cannot_see_the_set_unpickles_it_and_says_so_at_first_read(small, tmp_path):
    """The Dask scheduler unpickles every task's arguments (distributed >= 2024) but never reads rows:
    on a head node without the shared storage the fit died there with "Error during
    deserialization of the task graph ... different environments". Unpickling a set that is not
    visible here now succeeds; reading from it names the path and shared storage."""
    s = _write(tmp_path / "s", small)
    sent = pickle.dumps(s)
    shutil.move(tmp_path / "s", tmp_path / "away")  # as seen from a machine without the storage
    got = pickle.loads(sent)
    assert pickle.loads(pickle.dumps(got)) is not None  # the scheduler passes it on to a worker
    with pytest.raises(ModelFileError, match=r"same absolute path.*shared storage"):
        got.read("vfm_features", 0, 10)
    shutil.move(tmp_path / "away", tmp_path / "s")  # a worker that sees it reads it
    np.testing.assert_array_equal(got.read("vfm_features", 0, 300).numpy(), small[0])


# --- checkpoint folders ---------------------------------------------------------------------------
def test_an_unwritable_checkpoint_is_refused_before_any_pass(small, tmp_path):
    """The first save came after the pool passes and a whole UCM round (an hour at 1M rows), and
    said "path '.../ucm_state.safetensors' ..." without naming the argument."""
    s = _write(tmp_path / "s", small)
    (tmp_path / "afile").write_text("x")
    rounds = []
    with pytest.raises(GPUAError, match=r"^checkpoint '.*afile.*' lies under"):
        fit_streaming(GPUA(n_steps=5), s, checkpoint=tmp_path / "afile" / "ck", progress=False, callback=rounds.append)
    assert rounds == []


def test_the_shard_folder_is_refused_as_the_checkpoint(small, tmp_path):
    """As ``gpua fit --checkpoint`` refuses it: the state file in the set made the set one that
    ``write_shards(..., overwrite=True)`` and ``gpua extract --overwrite`` then refuse to replace."""
    s = _write(tmp_path / "s", small)
    with pytest.raises(GPUAError, match="checkpoint .* is the same path as the shard set"):
        fit_streaming(GPUA(n_steps=5), s, checkpoint=tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "ucm_state.safetensors").exists()
    _write(tmp_path / "s", small, overwrite=True)  # still replaceable


def test_a_checkpoint_inside_the_shard_folder_is_refused(small, tmp_path):
    """``--checkpoint feats/ck``: as the set itself, a folder of state inside it stopped the next
    ``write_shards(..., overwrite=True)`` (a set holding other files is not replaced)."""
    s = _write(tmp_path / "s", small)
    with pytest.raises(GPUAError, match="checkpoint .* lies inside .*, a folder gpua wrote and replaces whole"):
        fit_streaming(GPUA(n_steps=5), s, checkpoint=tmp_path / "s" / "ck", progress=False)
    assert not (tmp_path / "s" / "ck").exists()
    _write(tmp_path / "s", small, overwrite=True)  # still replaceable


@pytest.mark.parametrize("timeout", [float("nan"), -1, 0, "abc", True])
def test_a_connect_timeout_that_is_no_duration_is_refused_by_name(small, tmp_path, timeout):
    """It reached Dask as it was: a KeyError from inside distributed for NaN, a ValueError for a string."""
    s = _write(tmp_path / "s", small)
    with pytest.raises(GPUAError, match=r"connect_timeout=.* must be a positive number of seconds"):
        fit_streaming(GPUA(n_steps=5), s, cluster="tcp://127.0.0.1:1", connect_timeout=timeout, progress=False)


def test_a_finished_checkpoint_on_read_only_storage_still_resumes(small, tmp_path, monkeypatch):
    """A done state is only read: the up-front writability check must not refuse it."""
    from gpua import _atomic

    s = _write(tmp_path / "s", small)
    first = fit_streaming(GPUA(n_steps=5, random_state=0), s, checkpoint=tmp_path / "ck", progress=False)

    def read_only(path, name, kind):
        raise GPUAError(f"{name} {str(path)!r} cannot be written: read-only file system")

    monkeypatch.setattr(_atomic, "check_writable", read_only)
    again = fit_streaming(GPUA(n_steps=5, random_state=0), s, checkpoint=tmp_path / "ck", progress=False)
    np.testing.assert_allclose(np.asarray(first.W_), np.asarray(again.W_), atol=1e-5)  # README: to float rounding
    os.remove(tmp_path / "ck" / "ucm_state.safetensors")
    with pytest.raises(GPUAError, match="^checkpoint .*read-only"):
        fit_streaming(GPUA(n_steps=5, random_state=0), s, checkpoint=tmp_path / "ck", progress=False)


# --- prototypes stored with the set ---------------------------------------------------------------
def test_a_deleted_prototypes_file_is_named_not_reported_as_never_stored(small, tmp_path):
    """The index records text_prototypes.npy (and its checksum); with the file gone, the fit said
    "the source stores none; pass text_prototypes=(K, d_vlm) array", also from the CLI."""
    _write(tmp_path / "s", small)
    os.remove(tmp_path / "s" / "text_prototypes.npy")
    with pytest.raises(ModelFileError, match=r"text_prototypes\.npy.* is missing"):
        ShardedFeatures(tmp_path / "s").text_prototypes()


def test_the_cli_asks_for_prototypes_by_its_flag(small, tmp_path, capsys):
    from gpua.cli import main

    Z, X, _, _ = small
    write_shards(tmp_path / "s", Z, X, rows_per_shard=100, dtype="float32")  # no prototypes stored
    assert main(["fit", "--shards", str(tmp_path / "s"), "--out", str(tmp_path / "m.gpua"), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "--prototypes FILE" in err and "text_prototypes=" not in err


def test_the_cli_resumes_a_finished_checkpoint_on_read_only_storage(small, tmp_path, monkeypatch, capsys):
    """Was: `gpua fit --checkpoint` refused it up front ("cannot be written ... read-only file system")."""
    from gpua import _atomic
    from gpua.cli import main

    _write(tmp_path / "s", small)
    argv = ["fit", "--shards", str(tmp_path / "s"), "--n-steps", "5", "--checkpoint", str(tmp_path / "ck"), "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "a.gpua")]) == 0
    real = _atomic.check_writable

    def read_only_checkpoint(path, name, kind):
        if str(path).startswith(str(tmp_path / "ck")):
            raise GPUAError(f"{name} {str(path)!r} cannot be written: read-only file system")
        return real(path, name, kind)

    monkeypatch.setattr(_atomic, "check_writable", read_only_checkpoint)
    assert main(argv + ["--out", str(tmp_path / "b.gpua")]) == 0, capsys.readouterr().err
    from gpua import load_model

    np.testing.assert_allclose(np.asarray(load_model(tmp_path / "a.gpua").W_), np.asarray(load_model(tmp_path / "b.gpua").W_), atol=1e-5)
