"""gpua.extract: images -> feature file, with resumable shards, caching and bad-image handling."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.data import ArrayImageDataset, load_dataset
from gpua.encoders import Encoder, ImagePreprocess, register_encoder
from gpua.extract import extract_features
from gpua.features import load_features

CLASSES = ["cat", "dog", "car"]


class Toy(Encoder):
    """Deterministic toy encoder: per-channel means of a 2x2 grid (+ a text hash for the VLM).

    ``calls`` counts encoded images, to see what a resumed or cached run recomputes.
    """

    backend = "toy"

    def __init__(self, spec: str = "toy:vfm", vlm: bool = False, scale: float = 1.0):
        super().__init__(spec, ImagePreprocess(input_size=8, resize=8, mean=0.5, std=0.25), 12, patch_size=4)
        self.is_vlm = vlm
        self.scale = scale
        self.calls = 0

    def _patches(self, pixels):
        B = pixels.shape[0]
        return self.scale * pixels.reshape(B, 3, 2, 4, 2, 4).mean(axis=(3, 5)).transpose(0, 2, 3, 1).repeat(4, axis=-1)

    def _embed(self, pixels):
        self.calls += pixels.shape[0]
        return self._patches(pixels).reshape(pixels.shape[0], -1)[:, :12] + 0.01

    def _encode_text_batch(self, texts):
        rng = [np.random.default_rng(sum(map(ord, t))) for t in texts]
        return np.stack([r.normal(size=12) for r in rng]).astype(np.float32)


def _dataset(n=10, seed=0, labels=True):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    y = rng.integers(0, 3, n) if labels else None
    return ArrayImageDataset(images, y, CLASSES, name="toyset", split="train", image_ids=[f"img{i:03d}" for i in range(n)])


def _run(ds, out, vfm=None, vlm=None, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("templates", ["a photo of a {}.", "a drawing of a {}."])
    return extract_features(vfm or Toy(), vlm or Toy("toy:vlm", vlm=True, scale=2.0), ds, out=out, **kw)


def test_writes_a_complete_feature_file(tmp_path):
    ds = _dataset()
    vfm, vlm = Toy(), Toy("toy:vlm", vlm=True, scale=2.0)
    path = _run(ds, tmp_path / "f.npz", vfm, vlm, batch_size=3)
    fs = load_features(path)
    assert fs.vfm_features.shape == (10, 12) and fs.vlm_features.shape == (10, 12) and fs.text_prototypes.shape == (3, 12)
    assert fs.classnames == CLASSES and fs.image_ids == ds.image_ids
    np.testing.assert_array_equal(fs.labels, ds.labels)
    np.testing.assert_allclose(fs.vfm_features, vfm.encode_images(ds.array()), atol=1e-6)
    np.testing.assert_allclose(fs.vlm_features, vlm.encode_images(ds.array()), atol=1e-6)
    # Prompt ensemble: normalise each prompt embedding, average over templates, normalise again.
    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)
    T = np.stack([unit(vlm.encode_text([f"a photo of a {c}.", f"a drawing of a {c}."])).mean(0) for c in CLASSES])
    np.testing.assert_allclose(fs.text_prototypes, unit(T), atol=1e-6)
    meta = fs.meta
    assert meta["vfm"]["spec"] == "toy:vfm" and meta["vlm"]["spec"] == "toy:vlm"
    assert meta["vfm"]["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["templates"] == ["a photo of a {}.", "a drawing of a {}."] and meta["skipped"]["count"] == 0
    assert meta["dataset"]["name"] == "toyset" and meta["dataset"]["n_images"] == 10 and len(meta["cache_key"]) == 64
    assert not (tmp_path / "f.npz.parts").exists()


def test_cache_hit_returns_without_encoding(tmp_path):
    ds = _dataset()
    path = _run(ds, tmp_path / "f.npz")
    mtime = path.stat().st_mtime_ns
    vfm, vlm = Toy(), Toy("toy:vlm", vlm=True, scale=2.0)
    assert _run(ds, path, vfm, vlm) == path
    assert vfm.calls == vlm.calls == 0 and path.stat().st_mtime_ns == mtime
    # Anything that changes the numbers changes the key: here the templates, then the pixels.
    _run(ds, path, vfm, vlm, templates=["itap of a {}."])
    assert vfm.calls == 10 and load_features(path).meta["templates"] == ["itap of a {}."]
    _run(_dataset(seed=1), path, vfm, vlm, templates=["itap of a {}."])
    assert vfm.calls == 20
    _run(_dataset(seed=1), path, vfm, vlm, templates=["itap of a {}."], resume=False)  # forced
    assert vfm.calls == 30


def test_a_new_image_decoding_invalidates_cached_features(tmp_path, monkeypatch):
    # Features of pixels decoded the old way (say, before EXIF orientation) are not served again.
    import gpua.extract

    ds = _dataset()
    path = _run(ds, tmp_path / "f.npz")
    vfm, vlm = Toy(), Toy("toy:vlm", vlm=True, scale=2.0)
    monkeypatch.setattr(gpua.extract, "DECODE_VERSION", gpua.extract.DECODE_VERSION + 1)
    _run(ds, path, vfm, vlm)
    assert vfm.calls == 10


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, interrupt):
    ds = _dataset(n=11)
    ref = load_features(_run(ds, tmp_path / "ref.npz", shard_size=4))
    out = tmp_path / "f.npz"
    interrupt(_run, ds, out, shard_size=4, stop=lambda i, done: i == 1)  # killed after the second shard
    assert not out.exists() and len(list((tmp_path / "f.npz.parts").glob("shard-*.npz"))) == 2
    vfm, vlm = Toy(), Toy("toy:vlm", vlm=True, scale=2.0)
    _run(ds, out, vfm, vlm, shard_size=4)
    assert vfm.calls == vlm.calls == 3  # only the last shard was encoded
    got = load_features(out)
    for k in ("vfm_features", "vlm_features", "text_prototypes", "labels"):
        np.testing.assert_array_equal(getattr(got, k), getattr(ref, k))
    assert got.image_ids == ref.image_ids and got.meta["cache_key"] == ref.meta["cache_key"]
    assert not (tmp_path / "f.npz.parts").exists()


def test_stale_or_disabled_resume_discards_old_shards(tmp_path):
    out = tmp_path / "f.npz"

    def stop(i, done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(_dataset(), out, shard_size=4, on_shard=stop)
    vfm = Toy()
    _run(_dataset(), out, vfm, shard_size=4, resume=False)
    assert vfm.calls == 10
    with pytest.raises(KeyboardInterrupt):
        _run(_dataset(), tmp_path / "g.npz", shard_size=4, on_shard=stop)
    vfm = Toy()
    _run(_dataset(seed=3), tmp_path / "g.npz", vfm, shard_size=4)  # other images: the shard is not reused
    assert vfm.calls == 10


def _folder_with_a_bad_image(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    good = (root / "dog" / "2.png").read_bytes()
    (root / "dog" / "2.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "cat" / "9.jpg").write_bytes(b"not an image")
    return root


def test_unreadable_images_are_skipped_with_names(tmp_path):
    root = _folder_with_a_bad_image(tmp_path / "imgs")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable.*(cat/9\.jpg|dog/2\.png)"):
        path = _run(str(root), tmp_path / "f.npz")
    fs = load_features(path)
    assert fs.n_samples == 5 and "dog/2.png" not in fs.image_ids and "cat/9.jpg" not in fs.image_ids
    assert fs.classnames == ["cat", "dog"]
    assert fs.meta["skipped"]["count"] == 2
    assert {s["image_id"] for s in fs.meta["skipped"]["images"]} == {"dog/2.png", "cat/9.jpg"}


def test_unreadable_image_fails_when_asked(tmp_path):
    root = _folder_with_a_bad_image(tmp_path / "imgs")
    with pytest.raises(GPUAError, match=r"(cat/9\.jpg|dog/2\.png).*on_error='skip'"):
        _run(str(root), tmp_path / "f.npz", on_error="fail")


def test_float16_storage_and_safetensors(tmp_path):
    ds = _dataset()
    path = _run(ds, tmp_path / "f.npz", float16=True)
    with np.load(path) as raw:
        assert raw["vfm_features"].dtype == np.float16
    fs = load_features(path)
    ref = load_features(_run(ds, tmp_path / "g.safetensors"))
    assert fs.vfm_features.dtype == np.float32
    np.testing.assert_allclose(fs.vfm_features, ref.vfm_features, rtol=2e-3, atol=1e-3)


def test_unlabeled_dataset_and_classnames(tmp_path):
    ds = _dataset(labels=False)
    fs = load_features(_run(ds, tmp_path / "f.npz", classnames=["a", "b", "c"]))
    assert fs.labels is None and fs.classnames == ["a", "b", "c"]
    unnamed = ArrayImageDataset(ds.array(), None, None, name="x")
    with pytest.raises(GPUAError, match="classnames="):
        _run(unnamed, tmp_path / "g.npz")


def test_argument_errors(tmp_path):
    ds = _dataset()
    with pytest.raises(GPUAError, match="vision-only"):
        _run(ds, tmp_path / "f.npz", vlm=Toy("toy:v2"))
    with pytest.raises(GPUAError, match="on_error"):
        _run(ds, tmp_path / "f.npz", on_error="ignore")
    with pytest.raises(GPUAError, match=".npz or .safetensors"):
        _run(ds, tmp_path / "f.csv")
    with pytest.raises(GPUAError, match="shard_size"):
        _run(ds, tmp_path / "f.npz", shard_size=0)
    with pytest.raises(GPUAError, match="classnames has 2 names"):
        _run(ds, tmp_path / "f.npz", classnames=["a", "b"])


# -- command line ------------------------------------------------------------------------------
@pytest.fixture
def toy_specs():
    register_encoder("toy-extract:vfm", lambda device="cpu", cache_dir=None: Toy("toy-extract:vfm"), overwrite=True)
    register_encoder("toy-extract:vlm", lambda device="cpu", cache_dir=None: Toy("toy-extract:vlm", vlm=True, scale=2.0),
                     overwrite=True)
    return "toy-extract:vfm", "toy-extract:vlm"


def test_cli_extract(tmp_path, toy_specs, capsys):
    from gpua.cli import main

    ds = _dataset()
    data = tmp_path / "toy.npz"
    np.savez(data, images=ds.array(), labels=ds.labels, classnames=np.asarray(CLASSES))
    (tmp_path / "t.txt").write_text("a photo of a {}.\nart of the {}.\n")
    out = tmp_path / "feats.npz"
    argv = ["extract", "--vfm", toy_specs[0], "--vlm", toy_specs[1], "--data", str(data), "--templates",
            str(tmp_path / "t.txt"), "--out", str(out), "--batch-size", "4", "--float16", "--quiet"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    fs = load_features(out)
    assert fs.n_samples == 10 and fs.meta["templates"] == ["a photo of a {}.", "art of the {}."] and fs.meta["float16"]
    assert main(argv + ["--no-resume", "--on-error", "fail"]) == 0
    assert main(["extract", "--vfm", "nope:x", "--vlm", toy_specs[1], "--data", str(data), "--out", str(out)]) == 2
    assert "not known" in capsys.readouterr().err


@pytest.mark.slow
def test_offline_encoders_end_to_end(tmp_path):
    """DINOv2-S and the semantic stand-in on 6 CIFAR-10 images, with the dataset's own templates."""
    pytest.importorskip("onnxruntime")
    ds = load_dataset("cifar10-mini", split="test").subset(range(6))
    path = extract_features("offline:dinov2-s", "offline:semantic-lite0", ds, out=tmp_path / "c.npz", progress=False)
    fs = load_features(path)
    assert fs.vfm_features.shape == (6, 384) and fs.vlm_features.shape == (6, 1280) and fs.text_prototypes.shape == (10, 1280)
    assert len(fs.meta["templates"]) == 18 and fs.meta["vlm"]["closed_vocabulary"] is True
    assert json.loads(json.dumps(fs.meta))  # metadata is plain JSON


def test_one_class_is_refused_before_encoding(tmp_path):
    vfm, vlm = Toy(), Toy("toy:vlm", vlm=True, scale=2.0)
    rng = np.random.default_rng(0)
    ds = ArrayImageDataset(rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), np.zeros(4, int), CLASSES[:1], name="one")
    with pytest.raises(GPUAError, match="classnames name 1 class"):
        _run(ds, tmp_path / "f.npz", vfm, vlm)
    assert vfm.calls == vlm.calls == 0


# --- workers: images decoded and prepared in threads -------------------------------------------
class _Recording:
    """A dataset that records which threads decode its images."""

    def __init__(self, ds):
        import threading

        self.ds, self.threads, self._lock = ds, set(), threading.Lock()

    def __getattr__(self, name):
        return getattr(self.ds, name)

    def __len__(self):
        return len(self.ds)

    def load_image(self, i):
        import threading

        with self._lock:
            self.threads.add(threading.current_thread().name)
        return self.ds.load_image(i)


class _Wide(Toy):
    """A toy VLM with another preparation than the VFM's (16 px, bilinear): each encoder prepares its own."""

    def __init__(self):
        super().__init__("toy:wide", vlm=True)
        self.preprocess = ImagePreprocess(input_size=16, resize=20, interpolation="bilinear", mean=0.4, std=0.3)

    def _patches(self, pixels):
        return super()._patches(pixels[:, :, ::2, ::2])


@pytest.mark.parametrize("vlm", [None, "other preparation"])
def test_workers_give_the_same_features_as_one_thread(tmp_path, vlm):
    """Threads decode and prepare the images a batch ahead of the encoders; the rows, their order,
    the skipped images and the cache key are those of a run in one thread."""
    import threading

    root = _folder_with_a_bad_image(tmp_path / "imgs")
    runs = {}
    for workers in (1, 3):
        ds = _Recording(load_dataset(str(root)))
        with pytest.warns(UserWarning, match="skipped 2 unreadable"):
            path = _run(ds, tmp_path / f"w{workers}.npz", vlm=_Wide() if vlm else None, workers=workers, batch_size=2)
        runs[workers] = (load_features(path), ds.threads)
    (one, one_threads), (three, three_threads) = runs[1], runs[3]
    np.testing.assert_array_equal(one.vfm_features, three.vfm_features)
    np.testing.assert_array_equal(one.vlm_features, three.vlm_features)
    assert list(one.image_ids) == list(three.image_ids) and one.meta["skipped"] == three.meta["skipped"]
    assert one.meta["cache_key"] == three.meta["cache_key"]
    assert one_threads == {threading.current_thread().name}
    assert three_threads and all(t.startswith("gpua-images") for t in three_threads)
    assert not any(t.name.startswith("gpua-images") for t in threading.enumerate())  # the pool is shut down


def _planted_folder(root):
    """Three random 16x16 photos in each of the planted classes ``sky`` and ``grass``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("sky", "grass"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_workers_with_encoders_that_are_not_encoder_objects(tmp_path):
    """A registered factory may return any object with encode_images (the planted stand-ins):
    the threads decode, the encoder prepares."""
    root = _planted_folder(tmp_path / "imgs")
    feats = [load_features(extract_features("planted:vfm", "planted:vlm", str(root), templates=["a photo of {}."], out=tmp_path / f"p{w}.npz",
                                            workers=w, progress=False)) for w in (1, 2)]
    np.testing.assert_array_equal(feats[0].vfm_features, feats[1].vfm_features)
    np.testing.assert_array_equal(feats[0].vlm_features, feats[1].vlm_features)


def test_an_unreadable_image_fails_from_a_thread_as_from_one(tmp_path):
    root = _folder_with_a_bad_image(tmp_path / "imgs")
    with pytest.raises(GPUAError, match=r"(cat/9\.jpg|dog/2\.png).*on_error='skip'"):
        _run(str(root), tmp_path / "f.npz", on_error="fail", workers=4, batch_size=2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4", 1000])
def test_bad_workers_are_refused_before_any_work(tmp_path, bad):
    with pytest.raises(GPUAError, match=r"workers=.* must be an integer from 1 to 256"):
        _run(_dataset(), tmp_path / "f.npz", workers=bad)
    assert not (tmp_path / "f.npz").exists()


# -- interruption and concurrency -----------------------------------------------------------------
def test_two_runs_into_one_output_take_turns(tmp_path):
    """Was: the second run emptied the first one's parts folder (another cache key) while the first
    was still encoding into it: the first failed ('part 0 is missing', or 'damaged on disk'), or
    the second took the first one's text prototypes and stored them under its own key."""
    import threading

    out, other = tmp_path / "f.npz", ["apple", "banana", "cherry"]
    ref = load_features(_run(_dataset(), tmp_path / "ref.npz", classnames=other))
    first_part, go, errors = threading.Event(), threading.Event(), []

    def hold(i, done):  # the first run stops after its first part, holding the output
        first_part.set()
        assert go.wait(30)

    def run(**kw):
        try:
            _run(_dataset(), out, shard_size=4, **kw)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    a = threading.Thread(target=run, kwargs={"on_shard": hold})
    a.start()
    assert first_part.wait(30)
    with pytest.warns(UserWarning, match="another gpua run is writing .*f.npz.*; waiting for it to finish"):
        b = threading.Thread(target=run, kwargs={"classnames": other})
        b.start()
        b.join(1.0)
        assert b.is_alive()  # waiting for the first run
        assert len(list((tmp_path / "f.npz.parts").glob("shard-*.npz"))) == 1  # the first run's part is still there
        go.set()
        a.join(30)
        b.join(30)
    assert not errors
    got = load_features(out)  # the second run's features, whole: its own text prototypes
    assert got.classnames == other and got.meta["cache_key"] == ref.meta["cache_key"]
    np.testing.assert_array_equal(got.text_prototypes, ref.text_prototypes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz", "ref.npz"]  # no parts folder, no lock file left


@pytest.mark.parametrize("leftover", [[], [".manifest.json.gpua-0badc0de-1-abc.tmp"]])
def test_a_parts_folder_a_kill_left_without_its_manifest_is_replaced(tmp_path, leftover):
    """Was: a run killed between making ``<out>.parts`` and writing its manifest left a folder that
    every later run refused ('not a parts folder written by gpua extract')."""
    parts = tmp_path / "f.npz.parts"
    parts.mkdir()
    for name in leftover:
        (parts / name).write_bytes(b"")
    _run(_dataset(), tmp_path / "f.npz")
    assert load_features(tmp_path / "f.npz").n_samples == 10 and not parts.exists()


def test_a_parts_removal_killed_part_way_leaves_resumable_parts(tmp_path, interrupt, monkeypatch):
    """The manifest is removed last: a removal killed part way leaves a folder gpua still knows as its own."""
    from pathlib import Path

    from gpua.extract import _Parts

    out = tmp_path / "f.npz"
    interrupt(_run, _dataset(), out, shard_size=4, stop=lambda i, done: i == 1)
    unlink, calls = Path.unlink, []

    def killed_after_one(self, *a, **k):
        calls.append(self.name)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return unlink(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        _Parts.of(out).remove()
    monkeypatch.undo()
    assert calls[0] != "manifest.json" and (tmp_path / "f.npz.parts" / "manifest.json").is_file()
    _run(_dataset(), out, shard_size=4)  # was (rmtree's order): a folder without its manifest, refused
    assert load_features(out).n_samples == 10 and not (tmp_path / "f.npz.parts").exists()


def test_default_workers_thread_gpuas_datasets_not_ones_own(tmp_path, monkeypatch):
    """By default gpua's own datasets (a folder here) are decoded in threads; a dataset object of
    one's own, whose load_image may read through one shared handle, only when workers is given."""
    import threading

    import gpua.extract
    from gpua.data._datasets import FileImageDataset

    monkeypatch.setattr(gpua.extract, "default_workers", lambda: 3)
    seen = set()
    load = FileImageDataset.load_image
    monkeypatch.setattr(FileImageDataset, "load_image", lambda self, i: seen.add(threading.current_thread().name) or load(self, i))
    root = _folder_with_a_bad_image(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        _run(str(root), tmp_path / "a.npz")
    assert seen and all(t.startswith("gpua-images") for t in seen)
    own = _Recording(_dataset())
    _run(own, tmp_path / "b.npz")
    assert own.threads == {threading.current_thread().name}


class _Flipped(Toy):
    """An Encoder whose encode_images is its own (test-time augmentation: the mean over a flip)."""

    def encode_images(self, images, batch_size=64, progress=False):
        from gpua.encoders import as_image_list

        images = as_image_list(images)
        flipped = [im.transpose(0) for im in images]  # PIL.Image.FLIP_LEFT_RIGHT
        return (super().encode_images(images, batch_size) + super().encode_images(flipped, batch_size)) / 2


@pytest.mark.parametrize("workers", [1, 3])
def test_an_encoder_with_its_own_encode_images_gives_its_own_features(tmp_path, workers):
    """Was: extraction prepared the images and called encode_prepared (preprocess, then _embed),
    so an Encoder subclass that overrides encode_images silently lost what it adds there."""
    ds = _dataset()
    vfm = _Flipped()
    fs = load_features(_run(ds, tmp_path / "f.npz", vfm=vfm, workers=workers, batch_size=4))
    np.testing.assert_allclose(fs.vfm_features, vfm.encode_images(ds.array()), atol=1e-6)
    assert not np.allclose(fs.vfm_features, Toy().encode_images(ds.array()), atol=1e-3)


def test_default_workers_do_not_thread_a_subclass_with_its_own_load_image(tmp_path, monkeypatch):
    """A subclass of gpua's datasets with its own load_image (a zip or HDF5 handle) is a dataset of
    one's own: was decoded in threads by default, as isinstance(ds, ImageDataset) held."""
    import threading

    import gpua.extract

    class Own(ArrayImageDataset):
        def load_image(self, i):
            self.threads.add(threading.current_thread().name)
            return super().load_image(i)

    monkeypatch.setattr(gpua.extract, "default_workers", lambda: 3)
    base = _dataset()
    own = Own(base.array(), base.labels, CLASSES, name="toyset", split="train", image_ids=base.image_ids)
    own.threads = set()
    _run(own, tmp_path / "f.npz")
    assert own.threads == {threading.current_thread().name}


def test_a_parts_folder_another_run_is_writing_is_not_refused(tmp_path, monkeypatch):
    """Was: the check of ``<out>.parts`` before the output's lock listed the folder while another
    run saved a part (a temp file renamed) or removed it (files unlinked): a listed file gone by
    the time it was looked at made it "not a parts folder written by gpua extract", and the second
    run failed instead of waiting (seen about once in ten checks made while parts are written).
    It is judged again under the lock; a folder of one's own is still refused."""
    from gpua.extract import _Parts

    is_ours, calls = _Parts.is_ours, []

    def mid_write(self):  # the first look catches the other run's rename
        calls.append(1)
        return False if len(calls) == 1 else is_ours(self)

    out = tmp_path / "f.npz"
    parts = _Parts.of(out)
    parts.dir.mkdir()
    (parts.dir / "manifest.json").write_text(json.dumps({"cache_key": "another run's"}))
    monkeypatch.setattr(_Parts, "is_ours", mid_write)
    _run(_dataset(), out)
    assert load_features(out).n_samples == 10 and len(calls) >= 2
    monkeypatch.undo()
    own = tmp_path / "g.npz.parts"
    own.mkdir()
    (own / "notes.txt").write_text("mine")
    with pytest.raises(GPUAError, match="is not a parts folder written by gpua extract"):
        _run(_dataset(), tmp_path / "g.npz")
    assert (own / "notes.txt").read_text() == "mine"


def test_default_workers_on_a_cluster_are_one_per_process(tmp_path, monkeypatch, toy_specs):
    """With cluster=, each worker process decodes its own parts: by default no threads on top
    (the CPU count's threads in every process of a machine); workers= still sets them."""
    import gpua.extract

    seen = []

    def fake_cluster(*args, **kwargs):  # records what each worker process would be told, encodes nothing
        seen.append(args[-1])
        raise KeyboardInterrupt

    monkeypatch.setattr(gpua.extract, "_encode_on_cluster", fake_cluster)
    monkeypatch.setattr(gpua.extract, "default_workers", lambda: 5)
    for given, want in ((None, 1), (3, 3)):
        with pytest.raises(KeyboardInterrupt):
            extract_features(*toy_specs, _dataset(), out=tmp_path / f"c{given}.npz", cluster=1,
                             templates=["a {}."], progress=False, workers=given)
        assert seen[-1] == want


def test_an_extreme_aspect_ratio_is_prepared_from_its_crop_alone(monkeypatch):
    """Was: a 60000 x 1 strip resized whole (short side 256: 15.4M x 256 pixels, about 16 GB) before the crop."""
    import tracemalloc

    from PIL import Image

    import gpua.encoders._preprocess as pre

    prep = ImagePreprocess(input_size=224, resize=256)
    strip = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1, 60000, 3), dtype=np.uint8))
    tracemalloc.start()
    assert prep.transform_one(strip).shape == (3, 224, 224)
    assert tracemalloc.get_traced_memory()[1] < 50 * 2**20  # Pillow's buffers are traced: a whole resize would be GBs
    tracemalloc.stop()
    wide = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 20000, 3), dtype=np.uint8))
    from_the_crop = prep.transform_one(wide)  # 128,000 x 256 resized: over 64 crops, so the crop alone
    monkeypatch.setattr(pre, "_HUGE_RESIZE", 10**9)
    np.testing.assert_allclose(from_the_crop, prep.transform_one(wide), atol=1e-6)  # the same pixels as resize-then-crop


def test_an_image_that_cannot_be_prepared_is_skipped_with_its_name(tmp_path, monkeypatch):
    """Was: a MemoryError in one image's preparation ended the whole extraction with a traceback."""
    images = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)  # 255 nowhere
    images[2, 0, 0] = 255  # one image, marked
    ds = ArrayImageDataset(images, np.arange(6) % 3, CLASSES, name="toyset", split="train", image_ids=[f"img{i:03d}" for i in range(6)])
    real = ImagePreprocess.transform_one

    def fails_on_a_white_corner(self, image):
        if np.asarray(image)[0, 0, 0] == 255:
            raise MemoryError()
        return real(self, image)

    monkeypatch.setattr(ImagePreprocess, "transform_one", fails_on_a_white_corner)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 6: img002"):
        fs = load_features(_run(ds, tmp_path / "f.npz"))
    assert fs.n_samples == 5 and "img002" not in fs.image_ids
    assert "could not be prepared for the encoders (MemoryError" in fs.meta["skipped"]["images"][0]["error"]


def test_an_unreadable_images_message_is_kept_whole_in_a_deep_folder(tmp_path):
    """Was: the stored error was cut at 300 characters, before its fix ("...; it is truncated, corrupt or not")."""
    deep = tmp_path / ("Photos Library Exports " * 4).strip() / ("2023-08-14 Summer holiday in Brittany " * 3).strip()
    root = _folder_with_a_bad_image(deep)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        fs = load_features(_run(str(root), tmp_path / "f.npz"))
    errors = [s["error"] for s in fs.meta["skipped"]["images"]]
    assert all(len(e) > 300 and e.endswith("replace the file, or remove it.") for e in errors)


@pytest.mark.parametrize("on_error", ["skip", "fail"])
def test_an_image_an_encoder_refuses_is_named_and_the_batch_kept(tmp_path, on_error):
    """Was: a 1x1 photo beside others made the planted encoders refuse the whole batch ("images are
    1x1 pixels, smaller than one 4x4 patch"), naming no file and keeping none of the batch."""
    from PIL import Image

    root = _planted_folder(tmp_path / "imgs")
    Image.new("RGB", (1, 1)).save(root / "grass" / "tiny.png")
    run = dict(templates=["a photo of {}."], progress=False, batch_size=8, on_error=on_error)
    if on_error == "fail":
        with pytest.raises(GPUAError, match=r"image 'grass/tiny\.png' \(index \d\) could not be encoded: images are 1x1 pixels"):
            extract_features("planted:vfm", "planted:vlm", str(root), out=tmp_path / "f.npz", **run)
        return
    fs = load_features(extract_features("planted:vfm", "planted:vlm", str(root), out=tmp_path / "f.npz", **run))
    assert sorted(fs.image_ids) == sorted(f"{c}/{i}.png" for c in ("sky", "grass") for i in range(3))
    skipped = fs.meta["skipped"]["images"]
    assert [s["image_id"] for s in skipped] == ["grass/tiny.png"] and "smaller than one 4x4 patch" in skipped[0]["error"]


class AsciiToy(Toy):
    """A VLM whose tokenizer drops what it does not know, as an uncased WordPiece one maps emoji to [UNK]."""

    def _encode_text_batch(self, texts):
        return super()._encode_text_batch([t.encode("ascii", "ignore").decode() for t in texts])


def test_classes_the_vlm_reads_as_one_text_are_refused_by_name(tmp_path):
    """Was: '🐱' and '🐶' got one prototype, and every photo went to the first of them, with a warning
    at the fit naming "rows 0 and 1" only."""
    rng = np.random.default_rng(0)
    names = ["🐱", "🐶", "ship"]
    ds = ArrayImageDataset(rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), np.array([0, 1, 2] * 2), names, name="emoji")
    vlm, vfm = AsciiToy("toy:vlm", vlm=True, scale=2.0), Toy()
    with pytest.raises(GPUAError, match=r"encodes the prompts of the classes '🐱', '🐶' identically.*'🐱: cat'"):
        _run(ds, tmp_path / "f.npz", vfm=vfm, vlm=vlm)
    assert vfm.calls == 0  # refused before any image is encoded: the fix changes the key, and the parts would be lost
    fs = load_features(_run(ds, tmp_path / "f.npz", vlm=vlm, classnames={"🐱": ["cat"], "🐶": ["dog"], "ship": ["ship"]}))
    assert fs.classnames == names and fs.text_prototypes.shape == (3, 12)  # the fix the message gives


def test_parts_of_a_skipping_run_resumed_with_on_error_fail_fail(tmp_path):
    """Was: a run with on_error='skip' interrupted after its parts, resumed with on_error='fail', skipped
    the unreadable image anyway (a warning, exit 0), where a fresh 'fail' run stops on it."""
    root = _folder_with_a_bad_image(tmp_path / "imgs")

    def interrupted_after_the_last_part(i, done):
        if done == 7:  # every image: the parts are written, the output is not
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(str(root), tmp_path / "f.npz", on_error="skip", shard_size=2, on_shard=interrupted_after_the_last_part)
    assert (tmp_path / "f.npz.parts").is_dir() and not (tmp_path / "f.npz").exists()
    with pytest.raises(GPUAError, match=r"image '(cat/9\.jpg|dog/2\.png)' \(index \d\) could not be read or encoded: .*on_error='skip'"):
        _run(str(root), tmp_path / "f.npz", on_error="fail", shard_size=2)
    assert not (tmp_path / "f.npz").exists()


def test_the_fail_message_gives_the_fix_once(tmp_path):
    """Was: "...replace the file, or remove it.. Fix or remove the file, or pass on_error='skip' (--on-error skip)"."""
    root = _folder_with_a_bad_image(tmp_path / "imgs")
    with pytest.raises(GPUAError) as caught:
        _run(str(root), tmp_path / "f.npz", on_error="fail")
    text = str(caught.value)
    assert ".." not in text and text.count("remove") == 1 and "(--on-error skip)" not in text, text


def test_an_up_to_date_run_removes_what_a_kill_after_publishing_left(tmp_path, monkeypatch):
    """Was: killed after the output's rename, a run left `<out>.parts` (a second full copy) and, over
    a shard set, the hidden old set `.<out>.old`; later "up to date" runs kept both for ever."""
    import gpua.extract as extract_mod
    import gpua.features._shards as shards_mod

    ds = _dataset()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(extract_mod._Parts, "remove", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(ds, tmp_path / "f.npz", shard_size=4)
    monkeypatch.undo()
    assert (tmp_path / "f.npz").is_file() and (tmp_path / "f.npz.parts").is_dir()
    _run(ds, tmp_path / "f.npz", shard_size=4)  # up to date
    assert not (tmp_path / "f.npz.parts").exists()

    _run(ds, tmp_path / "set")  # a shard set, then another one over it, killed before the old one goes
    real, calls = shards_mod._remove_set, []

    def removed_then_killed(p):  # the writer clears .set.old before the swap, and is killed when removing it after
        calls.append(p.name)
        return killed() if calls.count(".set.old") == 2 else real(p)

    monkeypatch.setattr(shards_mod, "_remove_set", removed_then_killed)
    with pytest.raises(KeyboardInterrupt):
        _run(ds, tmp_path / "set", templates=["a sketch of a {}."])
    monkeypatch.undo()
    assert (tmp_path / ".set.old").is_dir()
    _run(ds, tmp_path / "set", templates=["a sketch of a {}."])  # up to date
    assert not (tmp_path / ".set.old").exists() and (tmp_path / "set" / "index.json").is_file()


def test_an_encoder_that_refuses_every_image_is_not_blamed_on_one(tmp_path):
    """Was: any encoder error was taken for the image's: a broken encoder's error said "image
    'cat/0.png' could not be encoded ... Fix or remove the file", or, skipping, encoded every image
    alone before "none of the images could be read"."""

    class Broken(Toy):
        def _embed(self, pixels):
            raise GPUAError("the encoder returned shape (1, 384), not its declared width 12")

    vfm = Broken()
    with pytest.raises(GPUAError, match=r"^the encoder returned shape \(1, 384\)"):
        _run(_dataset(), tmp_path / "f.npz", vfm=vfm, batch_size=4)


class _Fingerprinted(Toy):
    """A VFM whose metadata holds a weights fingerprint, with or without the ``changed`` field an
    earlier release did not record."""

    def __init__(self, changed=None):
        super().__init__()
        self.changed = changed

    def metadata(self):
        weights = {"path": "/models/w.pt", "bytes": 10, "mtime_ns": 1}
        return {**super().metadata(), "weights": weights if self.changed is None else {**weights, "changed": self.changed}}


def test_outputs_and_parts_of_the_release_before_changed_are_not_re_encoded(tmp_path):
    """Was (upgrade audit): the fingerprints' new ``changed`` field changed every real encoder's
    cache key, so each cached output was encoded again, and an interrupted run's parts were
    deleted without a word, though the features are bit-identical."""
    ds = _dataset()
    old = _Fingerprinted()  # as the release before wrote them
    _run(ds, tmp_path / "f.npz", vfm=old)
    new = _Fingerprinted(changed="c1")
    _run(ds, tmp_path / "f.npz", vfm=new)
    assert new.calls == 0  # up to date

    def stop_after_first(i, done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(ds, tmp_path / "g.npz", vfm=_Fingerprinted(), shard_size=4, on_shard=stop_after_first)
    resumed = _Fingerprinted(changed="c1")
    _run(ds, tmp_path / "g.npz", vfm=resumed, shard_size=4)
    assert resumed.calls == 6  # the first part (4 images) kept
    np.testing.assert_array_equal(load_features(tmp_path / "g.npz").vfm_features, load_features(tmp_path / "f.npz").vfm_features)

    with pytest.raises(KeyboardInterrupt):
        _run(ds, tmp_path / "h.npz", vfm=Toy(), shard_size=4, on_shard=stop_after_first)
    with pytest.warns(UserWarning, match=r"discarding the 1 finished part\(s\) in .*h\.npz\.parts.: they are an earlier run's"):
        _run(ds, tmp_path / "h.npz", vfm=Toy(), shard_size=4, templates=["a sketch of a {}."])
