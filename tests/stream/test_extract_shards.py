"""gpua.extract to a shard set: equal to the file output, resumable, cached, atomic, on Dask, and fit by the CLI."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.data import ArrayImageDataset
from gpua.encoders import Encoder, ImagePreprocess, register_encoder
from gpua.extract import extract_features
from gpua.features import load_features
from gpua.stream import ShardedFeatures

CLASSES = ["cat", "dog", "car"]


class Proj(Encoder):
    """Deterministic toy encoder: a fixed random projection of the 8x8 pixels (the same in every process).

    ``calls`` counts encoded images, to see what a resumed or cached run recomputes.
    """

    backend = "toy"

    def __init__(self, spec: str = "toy-shards:vfm", vlm: bool = False, dim: int = 10, seed: int = 0):
        super().__init__(spec, ImagePreprocess(input_size=8, resize=8, mean=0.5, std=0.25), dim, patch_size=4)
        self.is_vlm = vlm
        self.W = np.random.default_rng(seed).standard_normal((3 * 8 * 8, dim)).astype(np.float32) / 8
        self.calls = 0

    def _patches(self, pixels):
        return np.repeat(self._embed(pixels)[:, None, None, :], 2, axis=1).repeat(2, axis=2)

    def _embed(self, pixels):
        self.calls += pixels.shape[0]
        return pixels.reshape(pixels.shape[0], -1) @ self.W + 0.01

    def _encode_text_batch(self, texts):
        return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=self.embed_dim) for t in texts]).astype(np.float32)


# Module-level factories: picklable by reference, so Dask workers can build the encoders by name.
def make_vfm(device="cpu", cache_dir=None):
    return Proj("toy-shards:vfm", dim=10, seed=0)


def make_vlm(device="cpu", cache_dir=None):
    return Proj("toy-shards:vlm", vlm=True, dim=6, seed=1)


register_encoder("toy-shards:vfm", make_vfm, overwrite=True)
register_encoder("toy-shards:vlm", make_vlm, overwrite=True)
SPECS = ("toy-shards:vfm", "toy-shards:vlm")


class Flaky(ArrayImageDataset):
    """Images ``bad`` cannot be read (as a truncated file would)."""

    def __init__(self, *args, bad=(), **kw):
        super().__init__(*args, **kw)
        self.bad = set(bad)

    def load_image(self, i):
        if i in self.bad:
            raise OSError(f"truncated image {i}")
        return super().load_image(i)


def _dataset(n=11, seed=0, bad=()):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    return Flaky(images, rng.integers(0, 3, n), CLASSES, name="toyset", split="train",
                 image_ids=[f"img{i:03d}" for i in range(n)], bad=bad)


def _run(ds, out, vfm=None, vlm=None, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("templates", ["a photo of a {}.", "a drawing of a {}."])
    return extract_features(vfm or make_vfm(), vlm or make_vlm(), ds, out=out, **kw)


def _assert_same(shards: ShardedFeatures, ref) -> None:
    """A shard set holds exactly what a feature file holds."""
    np.testing.assert_array_equal(shards.read("vfm_features", 0, shards.n_samples).numpy(), ref.vfm_features)
    np.testing.assert_array_equal(shards.read("vlm_features", 0, shards.n_samples).numpy(), ref.vlm_features)
    np.testing.assert_array_equal(shards.labels(), ref.labels)
    np.testing.assert_array_equal(shards.text_prototypes(), ref.text_prototypes)
    assert shards.image_ids() == ref.image_ids and shards.classnames == ref.classnames
    # The same record, but for what was copied from an earlier output (a set written beside a
    # file takes its text prototypes: meta["reused"] says so; the arrays are equal above).
    assert {k: v for k, v in shards.meta.items() if k != "reused"} == {k: v for k, v in ref.meta.items() if k != "reused"}


def test_shards_equal_the_file_output(tmp_path):
    # Images 4-7 are one whole part (shard_size=4) and all unreadable: an empty part; 9 is skipped too.
    ds = _dataset(n=13, bad=(4, 5, 6, 7, 9))
    with pytest.warns(UserWarning, match="skipped 5 unreadable"):
        ref = load_features(_run(ds, tmp_path / "f.npz", shard_size=4))
    with pytest.warns(UserWarning, match="skipped 5 unreadable"):
        out = _run(ds, tmp_path / "feats", shard_size=4, rows_per_shard=3)
    assert out == tmp_path / "feats"
    shards = ShardedFeatures(out)
    assert shards.n_samples == 8 and shards.shard_rows == [3, 3, 2] and shards.dtype == "float32"
    _assert_same(shards, ref)
    assert shards.image_ids(2, 5) == ref.image_ids[2:5]
    assert shards.meta["skipped"]["count"] == 5 and len(shards.meta["cache_key"]) == 64
    # Nothing is left beside the set: no parts, no partial or old folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz", "feats"]


def test_safetensors_storage_and_float16(tmp_path):
    ds = _dataset()
    ref = ShardedFeatures(_run(ds, tmp_path / "a"))
    half = ShardedFeatures(_run(ds, tmp_path / "b", float16=True, rows_per_shard=4))
    assert half.dtype == "float16" and half.meta["float16"] is True
    assert np.load(tmp_path / "b" / "shard-000000.vfm_features.npy").dtype == np.float16
    np.testing.assert_allclose(half.read("vfm_features", 0, 11).numpy(), ref.read("vfm_features", 0, 11).numpy(), rtol=2e-3, atol=1e-3)
    st = ShardedFeatures(_run(ds, tmp_path / "c", shard_storage="safetensors"))
    assert st.storage == "safetensors" and (tmp_path / "c" / "shard-000000.safetensors").is_file()
    np.testing.assert_array_equal(st.read("vlm_features", 0, 11).numpy(), ref.read("vlm_features", 0, 11).numpy())
    assert st.image_ids() == ref.image_ids()


def test_resume_after_a_kill(tmp_path, interrupt):
    ds = _dataset()
    ref = load_features(_run(ds, tmp_path / "ref.npz", shard_size=4))
    out = tmp_path / "feats"
    interrupt(_run, ds, out, shard_size=4, stop=lambda i, done: i == 1)  # killed after the second part
    assert not out.exists() and len(list((tmp_path / "feats.parts").glob("shard-*.npz"))) == 2
    vfm, vlm = make_vfm(), make_vlm()
    _run(ds, out, vfm, vlm, shard_size=4, rows_per_shard=4)
    assert vfm.calls == vlm.calls == 3  # only the last part was encoded
    _assert_same(ShardedFeatures(out), ref)
    assert not (tmp_path / "feats.parts").exists()


def test_cache_hit_and_replacement(tmp_path):
    ds = _dataset()
    out = _run(ds, tmp_path / "feats")
    mtime = (out / "index.json").stat().st_mtime_ns
    vfm, vlm = make_vfm(), make_vlm()
    assert _run(ds, out, vfm, vlm) == out
    assert vfm.calls == vlm.calls == 0 and (out / "index.json").stat().st_mtime_ns == mtime
    # Other inputs: the old set (ours) is replaced in place, its stale shard files gone.
    _run(ds, out, vfm, vlm, templates=["itap of a {}."], rows_per_shard=4)
    assert vfm.calls == 11
    got = ShardedFeatures(out)
    assert got.meta["templates"] == ["itap of a {}."] and got.shard_rows == [4, 4, 3]
    _run(ds, out, vfm, vlm, templates=["itap of a {}."], resume=False)  # forced
    assert vfm.calls == 22 and ShardedFeatures(out).shard_rows == [11]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.json", "text_prototypes.npy", "shard-000000.vfm_features.npy", "shard-000000.vlm_features.npy",
         "shard-000000.labels.npy", "shard-000000.image_ids.json"]
    )


def test_bad_out_is_refused_before_encoding(tmp_path):
    ds = _dataset()
    vfm = make_vfm()
    with pytest.raises(GPUAError, match=r"\.npz or \.safetensors.*format='shards'"):
        _run(ds, tmp_path / "f.csv", vfm)
    with pytest.raises(GPUAError, match="format='shards' writes a folder"):
        _run(ds, tmp_path / "f.npz", vfm, format="shards")
    with pytest.raises(GPUAError, match="format="):
        _run(ds, tmp_path / "f", vfm, format="folder")
    with pytest.raises(GPUAError, match="for format='file'"):
        _run(ds, tmp_path / "f", vfm, format="file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(GPUAError, match="out=.*not a gpua shard set.*refusing"):
        _run(ds, mine, vfm)
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(GPUAError, match="existing file"):
        _run(ds, tmp_path / "plain", vfm)
    with pytest.raises(GPUAError, match="rows_per_shard"):
        _run(ds, tmp_path / "g", vfm, rows_per_shard=0)
    with pytest.raises(GPUAError, match="storage"):
        _run(ds, tmp_path / "g", vfm, shard_storage="parquet")
    with pytest.raises(GPUAError, match="vfm is a Proj object, but cluster= needs encoder specs"):
        _run(ds, tmp_path / "g", vfm, cluster="local")
    assert vfm.calls == 0
    # A dotted folder name is a shard set when asked for explicitly; an empty folder may be used.
    assert ShardedFeatures(_run(ds, tmp_path / "feats.v2", format="shards")).n_samples == 11
    (tmp_path / "empty").mkdir()
    assert ShardedFeatures(_run(ds, tmp_path / "empty")).n_samples == 11


@pytest.mark.slow
def test_dask_extraction_equals_local(tmp_path):
    pytest.importorskip("distributed")
    ds = _dataset(n=11, bad=(5,))
    with pytest.warns(UserWarning, match="skipped 1"):
        local = _run(ds, tmp_path / "local", *SPECS, shard_size=3)
    seen = []
    with pytest.warns(UserWarning, match="skipped 1"):
        dist = _run(ds, tmp_path / "dist", *SPECS, shard_size=3, cluster=2, on_shard=lambda i, done: seen.append((i, done)))
    assert sorted(i for i, _ in seen) == [0, 1, 2, 3] and max(d for _, d in seen) == 11
    a, b = ShardedFeatures(local), ShardedFeatures(dist)
    for key in ("vfm_features", "vlm_features", "labels"):
        np.testing.assert_array_equal(a.read(key, 0, a.n_samples).numpy(), b.read(key, 0, b.n_samples).numpy())
    assert a.image_ids() == b.image_ids() and a.meta == b.meta and a.n_samples == 10
    np.testing.assert_array_equal(a.text_prototypes(), b.text_prototypes())
    assert not (tmp_path / "dist.parts").exists()


def test_dead_scheduler_fails_fast(tmp_path):
    pytest.importorskip("distributed")
    with pytest.raises(GPUAError, match="did not answer within 1 s"):
        _run(_dataset(), tmp_path / "feats", *SPECS, cluster="tcp://127.0.0.1:9", connect_timeout=1.0)
    assert not (tmp_path / "feats").exists()


def test_cli_writes_shards_that_gpua_fit_reads(tmp_path, capsys):
    from gpua import load_model
    from gpua.cli import main

    ds = _dataset(n=30)
    data = tmp_path / "toy.npz"
    np.savez(data, images=ds.array(), labels=ds.labels, classnames=np.asarray(CLASSES))
    out = tmp_path / "feats"
    argv = ["extract", "--vfm", SPECS[0], "--vlm", SPECS[1], "--data", str(data), "--out", str(out), "--float16",
            "--shard-size", "8", "--rows-per-shard", "16", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: shard set of 2 shard(s) (float16, npy), 30 images" in printed and "gpua fit --shards" in printed
    shards = ShardedFeatures(out)
    assert shards.n_samples == 30 and shards.classnames == CLASSES and shards.meta["float16"]
    assert main(["fit", "--shards", str(out), "--out", str(tmp_path / "m.gpua"), "--n-steps", "2", "--no-progress"]) == 0
    assert "fitted on 30 images (2 shards), 3 classes" in capsys.readouterr().out
    assert load_model(tmp_path / "m.gpua").n_classes_ == 3
    # A dotted folder name needs --format shards.
    assert main(argv[:-6] + ["--out", str(tmp_path / "f.v2"), "--quiet"]) == 2
    assert "format='shards'" in capsys.readouterr().err
    assert main(argv[:-6] + ["--out", str(tmp_path / "f.v2"), "--format", "shards", "--quiet"]) == 0


def test_writer_image_ids_and_atomic_mode(tmp_path):
    from gpua.stream import ShardWriter, write_shards

    rng = np.random.default_rng(0)
    Z, X = rng.standard_normal((7, 4)), rng.standard_normal((7, 3))
    ids = [f"a/{i}.png" for i in range(7)]
    s = write_shards(tmp_path / "s", Z, X, image_ids=ids, rows_per_shard=3)
    assert s.has_image_ids and s.image_ids() == ids and s.image_ids(2, 4) == ids[2:4]
    assert not write_shards(tmp_path / "t", Z, X).has_image_ids and ShardedFeatures(tmp_path / "t").image_ids() is None
    with pytest.raises(GPUAError, match="image_ids were given for earlier rows"):
        with ShardWriter(tmp_path / "u") as w:
            w.append(Z[:3], X[:3], image_ids=ids[:3])
            w.append(Z[3:], X[3:])
    with pytest.raises(GPUAError, match="image_ids has 2 entries for 3 rows"):
        ShardWriter(tmp_path / "v").append(Z[:3], X[:3], image_ids=ids[:2])
    # Atomic: an error inside the block leaves the old set as it was, and no partial folder.
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s", overwrite=True, atomic=True) as w:
            w.append(Z, X)
            raise RuntimeError
    assert ShardedFeatures(tmp_path / "s").image_ids() == ids and not (tmp_path / ".s.partial").exists()
    with pytest.raises(GPUAError, match="already holds a shard set"):
        ShardWriter(tmp_path / "s", atomic=True)
    with ShardWriter(tmp_path / "s", overwrite=True, atomic=True, rows_per_shard=10) as w:
        w.append(Z, X)
    assert w.result.path == tmp_path / "s" and w.result.shard_rows == [7] and not w.result.has_image_ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "t", "u", "v"]
