"""Session 21's audit of the scale paths: each test says what happened before."""

from __future__ import annotations

import numpy as np
import pytest

from gpua import GPUA
from gpua._errors import GPUAError
from gpua.stream import ShardedFeatures, ShardWriter, fit_streaming, write_shards
from gpua.synthetic import make_planted


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.chdir(tmp_path)
    return h


def test_write_shards_and_read_them_under_a_tilde_path(home, tmp_path):
    """Was: the set was left in $HOME/.feats.partial, a literal ./~/feats folder was made, and the
    writer said the set had no index.json."""
    Z = np.random.default_rng(0).random((10, 4), dtype=np.float32)
    write_shards("~/feats", Z, Z[:, :3])
    assert (home / "feats" / "index.json").is_file() and not (tmp_path / "~").exists()
    assert not list(home.glob(".feats*"))
    np.testing.assert_allclose(ShardedFeatures("~/feats").read("vfm_features", 0, 10).numpy(), Z, rtol=2e-3)  # float16 on disk
    write_shards("~/feats", Z, Z[:, :3], overwrite=True)  # replacing, through the hidden folders
    assert ShardedFeatures("~/feats/index.json").n_samples == 10


def test_a_checkpoint_under_a_tilde_path_resumes(home, tmp_path):
    """Was: saved after every round to $HOME/ck but looked for in ./~/ck, so never resumed, and
    another fit's checkpoint there was never refused."""
    d = make_planted(n_samples=300, n_classes=5, random_state=1)
    write_shards(tmp_path / "s", d.vfm_features, d.vlm_features, text_prototypes=d.text_prototypes)
    runs = [fit_streaming(GPUA(refine=False, self_learning=0), tmp_path / "s", checkpoint="~/ck", progress=False) for _ in range(2)]
    assert (home / "ck").is_dir() and not (tmp_path / "~").exists()
    assert [m.history_["streaming"]["resumed"] for m in runs] == [False, True]
    with pytest.raises(GPUAError, match="checkpoint"):
        fit_streaming(GPUA(refine=False, self_learning=0, lam=0.3), tmp_path / "s", checkpoint="~/ck", progress=False)


def test_a_writer_after_an_interrupted_one_clears_its_leftover_shards(tmp_path):
    """Was: the retry wrote its set, then failed in close() with "the index is stale or was edited",
    leaving a folder that could not be read and that a third try refused."""
    rng = np.random.default_rng(0)
    Z, X = rng.random((500, 12), dtype=np.float32), rng.random((500, 8), dtype=np.float32)
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(tmp_path / "w", rows_per_shard=100) as w:
            for s in range(0, 500, 100):
                w.append(Z[s : s + 100], X[s : s + 100])
                if s == 300:
                    raise KeyboardInterrupt
    with pytest.warns(UserWarning, match=r"removing the 8 shard file\(s\) an interrupted writer left"):
        with ShardWriter(tmp_path / "w", rows_per_shard=100) as w:
            w.append(Z[:200], X[:200])
    fs = ShardedFeatures(tmp_path / "w")
    assert fs.n_samples == 200
    np.testing.assert_allclose(fs.read("vfm_features", 0, 200).numpy(), Z[:200], rtol=2e-3)
    # leftovers beside a user's file: said up front, nothing deleted
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "shard-000003.vfm_features.npy").write_bytes(b"x")
    (tmp_path / "v" / "notes.txt").write_text("mine")
    with pytest.raises(GPUAError, match="holds shard files without an index.json .* beside other files"):
        ShardWriter(tmp_path / "v")
    assert (tmp_path / "v" / "notes.txt").read_text() == "mine"


def test_a_non_dict_meta_is_a_clear_error(tmp_path):
    """Was: ValueError: dictionary update sequence element #0 has length 1; 2 is required."""
    with pytest.raises(GPUAError, match="meta is a list; pass a dict"):
        write_shards(tmp_path / "m", np.ones((3, 2), np.float32), np.ones((3, 2), np.float32), meta=["a"])


@pytest.mark.parametrize("address", ["tcp://127.0.0.1", "", "   "])
def test_a_malformed_scheduler_address_is_said_before_any_connection(address):
    """Was: "did not answer within 2 s (missing port number ...)" though nothing was tried, then a
    traceback from the half-built client at exit."""
    pytest.importorskip("distributed")
    from gpua.stream._executor import connect

    with pytest.raises(GPUAError, match=r"is not a scheduler address .*tcp://HOST:PORT") as info:
        connect(address, timeout=1)
    assert "did not answer" not in str(info.value)


def test_local_is_read_in_any_case_and_numpy_worker_counts_are_counts(monkeypatch):
    pytest.importorskip("distributed")
    import distributed

    from gpua.stream import _executor

    made = []

    class FakeCluster:
        def __init__(self, n_workers, **kw):
            made.append(n_workers)

    class FakeClient:
        def __init__(self, *a, **kw):
            pass

        def run(self, *a, **kw):
            pass

    monkeypatch.setattr(distributed, "LocalCluster", FakeCluster)
    monkeypatch.setattr(distributed, "Client", FakeClient)
    monkeypatch.setattr(_executor, "DaskExecutor", lambda client, own_cluster=None: "dask")
    assert _executor.connect(np.int64(2)) == "dask" and _executor.connect(" LOCAL ") == "dask"
    assert made[0] == 2


def test_a_folder_of_someone_elses_shard_files_is_never_deleted(tmp_path):
    """Was (in this session's first fix): a WebDataset's shard-000000.tar and a shard-notes.txt were
    taken for an interrupted writer's leftovers and deleted without a word."""
    d = tmp_path / "wds"
    d.mkdir()
    (d / "shard-000000.tar").write_text("data")
    (d / "shard-notes.txt").write_text("x")
    ShardWriter(d, dtype="float32")  # no leftovers of gpua's: writes beside them, as before
    assert sorted(p.name for p in d.iterdir()) == ["shard-000000.tar", "shard-notes.txt"]
    (d / "shard-000001.vfm_features.npy").write_bytes(b"x")  # a gpua leftover beside them: refused, nothing deleted
    with pytest.raises(GPUAError, match="holds shard files without an index.json"):
        ShardWriter(d)
    assert len(list(d.iterdir())) == 3
    from gpua.features import check_destination

    with pytest.raises(GPUAError, match="is a folder that is not a gpua shard set"):
        check_destination(d, overwrite=True)  # an extraction with format='shards' into it: refused, as any user folder


def test_a_folder_with_another_tools_index_is_not_said_to_lack_one(tmp_path):
    """Was: "it has no index.json" for a folder that holds one (not gpua's)."""
    from gpua.features import check_destination

    d = tmp_path / "userdir"
    d.mkdir()
    (d / "index.json").write_text("x")
    (d / "notes.txt").write_text("precious")
    with pytest.raises(GPUAError, match="its index.json is not gpua's and it holds other files"):
        check_destination(d, overwrite=True)
    assert (d / "notes.txt").read_text() == "precious" and (d / "index.json").read_text() == "x"


def test_a_users_side_file_named_like_a_shard_is_not_deleted_with_the_set(tmp_path):
    """Was: any shard-NNNNNN.<word>.npy or .json counted as gpua's, so replacing a set deleted a user's
    shard-000000.captions.json and shard-000000.clip.npy without a word."""
    from gpua.features import check_destination

    rng = np.random.default_rng(0)
    d = tmp_path / "feats"
    write_shards(d, rng.normal(size=(6, 4)), rng.normal(size=(6, 3)), labels=np.arange(6) % 2, image_ids=[f"{i}" for i in range(6)],
                 rows_per_shard=3)
    check_destination(d, overwrite=True)  # gpua's own files alone: may be replaced
    (d / "shard-000000.captions.json").write_text('{"captions": ["a cat"]}')
    (d / "shard-000000.clip.npy").write_bytes(b"mine")
    with pytest.raises(GPUAError, match=r"not written by gpua: 'shard-000000.captions.json', 'shard-000000.clip.npy'\); refusing"):
        check_destination(d, overwrite=True)
    assert (d / "shard-000000.captions.json").is_file() and (d / "shard-000000.clip.npy").read_bytes() == b"mine"
