"""Writers killed at the worst moment (a real SIGKILL in a child process) lose nothing.

Each child process replaces ``os.replace`` with a version that kills the process with SIGKILL on
a chosen rename: the point where the new data is complete but not yet published (or, for a
shard set, between the two renames that swap it in). The parent then checks that the user's
previous data is intact and readable, and that the next reader or writer cleans up.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

from gpua import GPUAError, load_model
from gpua.features import ShardedFeatures, save_features, write_shards
from rel_helpers import kill_on, run_child

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


def _killed(proc) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def _sets(rng):
    A = (rng.standard_normal((50, 6)).astype(np.float32), rng.standard_normal((50, 4)).astype(np.float32))
    B = (rng.standard_normal((30, 6)).astype(np.float32), rng.standard_normal((30, 4)).astype(np.float32))
    return A, B


def _write_in_child(tmp_path, prelude: str, arrays, **kw) -> None:
    np.savez(tmp_path / "new.npz", Z=arrays[0], X=arrays[1])
    code = prelude + f"""
import numpy as np
from gpua.features import write_shards
a = np.load("new.npz")
write_shards("s", a["Z"], a["X"], rows_per_shard=10, dtype="float32", **{kw!r})
"""
    _killed(run_child(code, cwd=tmp_path))


@pytest.mark.parametrize("storage", ["npy", "safetensors"])
def test_shard_swap_killed_between_its_renames_is_recovered(tmp_path, rng, storage):
    A, B = _sets(rng)
    write_shards(tmp_path / "s", *A, rows_per_shard=10, dtype="float32", storage=storage)
    # Killed after the old set moved to .s.old, before the new one moved from .s.partial.
    _write_in_child(tmp_path, kill_on(r"(^|[/\\])s$"), B, overwrite=True, storage=storage)
    assert not (tmp_path / "s").exists()
    assert (tmp_path / ".s.old" / "index.json").is_file() and (tmp_path / ".s.partial" / "index.json").is_file()
    # The next writer, not told to overwrite, deletes nothing: it puts the finished set back and stops.
    with pytest.raises(GPUAError, match="already holds a shard set"):
        write_shards(tmp_path / "s", *A, overwrite=False)
    s = ShardedFeatures(tmp_path / "s")  # the new set, complete: its writer had finished it
    np.testing.assert_array_equal(s.read("vfm_features", 0, 30).numpy(), B[0])
    assert not (tmp_path / ".s.old").exists() and not (tmp_path / ".s.partial").exists()


def test_reader_restores_a_hidden_set(tmp_path, rng):
    A, B = _sets(rng)
    write_shards(tmp_path / "s", *A, rows_per_shard=10, dtype="float32")
    _write_in_child(tmp_path, kill_on(r"(^|[/\\])s$"), B, overwrite=True)
    np.testing.assert_array_equal(ShardedFeatures(tmp_path / "s").read("vlm_features", 0, 30).numpy(), B[1])


def test_overwrite_killed_after_two_files_keeps_the_old_set(tmp_path, rng):
    A, B = _sets(rng)
    write_shards(tmp_path / "s", *A, rows_per_shard=10, dtype="float32")
    # Killed as the second file of the new set is published (inside the hidden partial folder).
    _write_in_child(tmp_path, kill_on(r"\.s\.partial[/\\]shard-", nth=2), B, overwrite=True)
    s = ShardedFeatures(tmp_path / "s")
    assert s.n_samples == 50  # the old set, whole: no mix of old and new shards
    np.testing.assert_array_equal(s.read("vfm_features", 0, 50).numpy(), A[0])
    # The next writer clears the unfinished partial folder and succeeds.
    s = write_shards(tmp_path / "s", *B, rows_per_shard=10, dtype="float32", overwrite=True)
    np.testing.assert_array_equal(s.read("vfm_features", 0, 30).numpy(), B[0])
    assert not (tmp_path / ".s.partial").exists()


WRITERS = {
    "model": ("m.gpua", """
from gpua import load_model
m = load_model("m.gpua"); m.set_params(lam=0.5); m.save("m.gpua")
"""),
    "features": ("f.npz", """
import numpy as np
from gpua.features import save_features
save_features("f.npz", vfm_features=np.ones((4, 3)), vlm_features=np.ones((4, 2)), text_prototypes=np.eye(2))
"""),
}


@pytest.mark.parametrize("what", sorted(WRITERS))
def test_killed_save_keeps_the_old_file_and_its_temp_is_cleaned(files, tmp_path, what):
    if what == "features":
        save_features(tmp_path / "f.npz", vfm_features=np.full((2, 3), 2.0), vlm_features=np.ones((2, 2)))
    name, code = WRITERS[what]
    target = tmp_path / name
    before = target.read_bytes()
    _killed(run_child(kill_on(rf"{name.replace('.', '[.]')}$") + code, cwd=tmp_path))
    assert target.read_bytes() == before  # the old file, untouched
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}.gpua-")]
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the killed writer's finished temp file
    # The next save in that folder (by a live process) removes it: its writer is dead.
    if what == "model":
        load_model(target).save(target)
    else:
        save_features(target, vfm_features=np.full((2, 3), 2.0), vlm_features=np.ones((2, 2)))
    assert not temps[0].exists()
    assert not [p for p in tmp_path.iterdir() if ".gpua-" in p.name]


def test_temps_of_live_writers_and_foreign_files_are_kept(tmp_path):
    from gpua._atomic import STALE_AFTER_S, atomic_write_text, clean_stale_temps

    alive = tmp_path / f".a.txt.gpua-{_host()}-{os.getpid()}-ab12cd34.tmp"  # this (live) process
    alive.write_text("x")
    foreign = tmp_path / ".a.txt.12345.tmp"  # not gpua's naming
    foreign.write_text("y")
    other_host = tmp_path / ".a.txt.gpua-00000000-1-ab12cd34.tmp"  # another host's writer: kept until old
    other_host.write_text("z")
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert alive.exists() and foreign.exists() and other_host.exists()
    os.utime(other_host, (0, 0))
    assert clean_stale_temps(tmp_path) == [other_host] and STALE_AFTER_S > 3600
    assert foreign.exists() and alive.exists()


def _host() -> str:
    from gpua import _atomic

    return _atomic._HOST


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask):
    code = f"""
import os, numpy as np
os.umask({umask})
from gpua.features import save_features
from gpua._atomic import atomic_write_text
save_features("f.npz", vfm_features=np.ones((2, 3)))
save_features("f.safetensors", vfm_features=np.ones((2, 3)))
atomic_write_text("r.json", "{{}}")
"""
    proc = run_child(code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("f.npz", "f.safetensors", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
