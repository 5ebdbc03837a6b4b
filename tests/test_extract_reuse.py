"""gpua.extract: rows of earlier extractions reused for unchanged image files (a photo added, a class file edited)."""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

pytest.importorskip("PIL")  # every test here writes photos

from PIL import Image  # noqa: E402

import gpua.extract as extract
from gpua._errors import GPUAError
from gpua.extract import extract_features
from gpua.features import ShardedFeatures, load_features

from test_extract import Toy

CLASSES = ["cat", "dog", "car"]


@pytest.fixture
def no_margin(monkeypatch):
    """Files written by the test a moment ago count as unchanged (the real margin is 10 s)."""
    monkeypatch.setattr(extract, "REUSE_MARGIN_NS", 0)


def _photo(path, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)


def _folder(root, n=6, flat=False):
    """Photos in class folders, or all in ``root`` (``flat``: any class names go with them)."""
    for i in range(n):
        _photo(root / ("" if flat else CLASSES[i % 3]) / f"p{i}.png", i)
    return root


def _run(folder, out, classnames=CLASSES, vfm=None, vlm=None, **kw):
    vfm = vfm or Toy()
    vlm = vlm or Toy("toy:vlm", vlm=True, scale=2.0)
    kw.setdefault("progress", False)
    path = extract_features(vfm, vlm, str(folder), classnames=classnames, templates=["a photo of a {}."], out=out, **kw)
    return path, vfm, vlm


def _same_as_fresh(path, folder, tmp_path, classnames=CLASSES):
    fresh, _, _ = _run(folder, tmp_path / "fresh" / "f.npz", classnames=classnames, resume=False)
    got, want = load_features(path), load_features(fresh)
    assert got.image_ids == want.image_ids
    np.testing.assert_allclose(got.vfm_features, want.vfm_features, atol=1e-6)
    np.testing.assert_allclose(got.vlm_features, want.vlm_features, atol=1e-6)
    np.testing.assert_array_equal(got.labels, want.labels)
    return got


def test_one_photo_added_encodes_that_photo_only(tmp_path, no_margin):
    folder = _folder(tmp_path / "photos")
    out = tmp_path / "cache" / "f.npz"
    _, vfm, _ = _run(folder, out)
    assert vfm.calls == 6
    _photo(folder / "dog" / "new.png", 99)
    _, vfm, vlm = _run(folder, out)
    assert vfm.calls == 1 and vlm.calls == 1  # was 7: the whole folder again
    got = _same_as_fresh(out, folder, tmp_path)
    assert got.n_samples == 7 and got.meta["reused"]["rows"] == 6


def test_an_edited_photo_is_encoded_again(tmp_path, no_margin):
    folder = _folder(tmp_path / "photos")
    out = tmp_path / "f.npz"
    _run(folder, out)
    time.sleep(0.01)
    _photo(folder / "cat" / "p0.png", 1234)  # new pixels under the old name
    _, vfm, _ = _run(folder, out)
    assert vfm.calls == 1
    _same_as_fresh(out, folder, tmp_path)


def test_a_new_class_file_reuses_every_photo_of_another_output(tmp_path, no_margin):
    folder = _folder(tmp_path / "photos", flat=True)
    first, _, _ = _run(folder, tmp_path / "a" / "three.npz")
    more = CLASSES + ["bird"]
    out, vfm, vlm = _run(folder, tmp_path / "b" / "four.npz", classnames=more, reuse=[first])
    assert vfm.calls == 0 and vlm.calls == 0
    got = _same_as_fresh(out, folder, tmp_path, classnames=more)
    assert got.text_prototypes.shape[0] == 4 and str(first) in got.meta["reused"]["from"][0]


def test_feature_files_beside_out_lend_their_rows(tmp_path, no_margin):
    # classify keeps one cache file per class file in one folder: the second class file encodes nothing.
    folder = _folder(tmp_path / "photos", flat=True)
    _run(folder, tmp_path / "cache" / "three.npz")
    _, vfm, _ = _run(folder, tmp_path / "cache" / "two.npz", classnames=["cat", "dog"])
    assert vfm.calls == 0


def test_a_file_changed_just_before_the_earlier_run_is_encoded_again(tmp_path):
    # With the real margin, files written a moment before the first run are not trusted.
    folder = _folder(tmp_path / "photos")
    out = tmp_path / "f.npz"
    _run(folder, out)
    _photo(folder / "dog" / "new.png", 99)
    _, vfm, _ = _run(folder, out)
    assert vfm.calls == 7


def test_a_shard_set_lends_its_rows(tmp_path, no_margin):
    folder = _folder(tmp_path / "photos")
    shards, _, _ = _run(folder, tmp_path / "set")
    assert isinstance(ShardedFeatures(shards).image_ids(), list)
    _photo(folder / "car" / "new.png", 7)
    out, vfm, _ = _run(folder, tmp_path / "other" / "f.npz", reuse=[shards])
    assert vfm.calls == 1
    _same_as_fresh(out, folder, tmp_path)


@pytest.mark.parametrize("change, why", [
    ({"vfm": "other"}, "another VFM"),
    ({"float16": True}, "another precision"),
])
def test_an_output_that_cannot_lend_says_why(tmp_path, no_margin, change, why):
    folder = _folder(tmp_path / "photos")
    kw = {"vfm": Toy("toy:other")} if "vfm" in change else {"float16": True}
    first, _, _ = _run(folder, tmp_path / "a" / "f.npz", **kw)
    with pytest.warns(UserWarning, match=why):
        _, vfm, _ = _run(folder, tmp_path / "b" / "f.npz", reuse=[first])
    assert vfm.calls == 6


def test_an_output_of_the_release_before_lends_nothing(tmp_path, no_margin):
    from gpua.features import save_features

    folder = _folder(tmp_path / "photos")
    first, _, _ = _run(folder, tmp_path / "a" / "f.npz")
    fs = load_features(first)
    meta = {k: v for k, v in fs.meta.items() if k not in ("decode", "stat_time_ns")}
    old = tmp_path / "old" / "f.npz"
    old.parent.mkdir()
    save_features(old, vfm_features=fs.vfm_features, vlm_features=fs.vlm_features, text_prototypes=fs.text_prototypes,
                  labels=fs.labels, classnames=fs.classnames, image_ids=fs.image_ids, meta=meta)
    with pytest.warns(UserWarning, match="another gpua release"):
        _, vfm, _ = _run(folder, tmp_path / "b" / "f.npz", reuse=[old])
    assert vfm.calls == 6


def test_bad_reuse_arguments_are_refused_before_encoding(tmp_path):
    folder = _folder(tmp_path / "photos")
    with pytest.raises(GPUAError, match="reuse: .*does not exist"):
        _run(folder, tmp_path / "f.npz", reuse=[tmp_path / "nope.npz"])
    with pytest.raises(GPUAError, match="reuse holds 3"):
        _run(folder, tmp_path / "f.npz", reuse=[3])
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(GPUAError, match="resume=False"):
        _run(folder, tmp_path / "f.npz", reuse=[tmp_path / "x.npz"], resume=False)
    assert not (tmp_path / "f.npz").exists()


def test_no_resume_encodes_everything_again(tmp_path, no_margin):
    folder = _folder(tmp_path / "photos")
    out = tmp_path / "f.npz"
    _run(folder, out)
    _photo(folder / "dog" / "new.png", 99)
    _, vfm, _ = _run(folder, out, resume=False)
    assert vfm.calls == 7


def test_classify_with_an_edited_class_file_encodes_no_photo_again(photos, no_margin, monkeypatch):
    from gpua.classify import classify_folder

    encoded = []
    real = extract._encode_shard
    monkeypatch.setattr(extract, "_encode_shard", lambda vfm, vlm, ds, indices, *a, **k: encoded.append(len(indices)) or real(vfm, vlm, ds, indices, *a, **k))
    run = {"vfm": "planted:vfm", "vlm": "planted:vlm", "templates": "simple", "progress": False, "cache_dir": photos / "cache",
           "overrides": {"n_steps": 10, "self_learning": 0}}
    first = classify_folder(photos / "flat", photos / "classes.txt", **run)
    assert sum(encoded) == 15
    (photos / "fewer.txt").write_text("sky: sky, blue sky\ngrass\nroad\nwater\n")
    encoded.clear()
    second = classify_folder(photos / "flat", photos / "fewer.txt", **run)
    assert sum(encoded) == 0  # was 15: every photo encoded again for the other class file
    assert second.features != first.features and len(second.classnames) == 4
    np.testing.assert_allclose(load_features(second.features).vfm_features, load_features(first.features).vfm_features)
    encoded.clear()
    # The folder as another run's --pool: its own cache file, copied (was: encoded again); the photos' 15 are new.
    third = classify_folder(photos / "photos" / "test", photos / "classes.txt", pool=photos / "flat", **run)
    assert sum(encoded) == 15 and load_features(third.pool_features).meta["reused"]["rows"] == 15


def test_cli_reuse_copies_rows_and_says_how_many(tmp_path, no_margin, capsys):
    from gpua.cli import main
    from gpua.encoders import register_encoder

    register_encoder("toy-reuse:vfm", lambda device="cpu", cache_dir=None: Toy("toy-reuse:vfm"), overwrite=True)
    register_encoder("toy-reuse:vlm", lambda device="cpu", cache_dir=None: Toy("toy-reuse:vlm", vlm=True, scale=2.0), overwrite=True)
    folder = _folder(tmp_path / "photos", flat=True)
    (tmp_path / "three.txt").write_text("cat\ndog\ncar\n")
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    base = ["extract", "--vfm", "toy-reuse:vfm", "--vlm", "toy-reuse:vlm", "--data", str(folder), "--templates", "simple", "--quiet"]
    first = tmp_path / "a" / "f.npz"
    assert main(base + ["--classnames", str(tmp_path / "three.txt"), "--out", str(first)]) == 0
    capsys.readouterr()
    out = tmp_path / "b" / "f.npz"
    assert main(base + ["--classnames", str(tmp_path / "two.txt"), "--out", str(out), "--reuse", str(first)]) == 0
    assert "6 of them copied from earlier outputs" in capsys.readouterr().out
    assert load_features(out).meta["reused"]["rows"] == 6
    assert main(base + ["--classnames", str(tmp_path / "two.txt"), "--out", str(tmp_path / "c.npz"), "--reuse",
                        str(tmp_path / "missing.npz")]) == 2
    assert "--reuse '" in capsys.readouterr().err


def test_a_file_edited_and_saved_with_its_meta_lends_nothing(tmp_path, no_margin):
    from gpua.features import save_features

    folder = _folder(tmp_path / "photos")
    first, _, _ = _run(folder, tmp_path / "a" / "f.npz")
    fs = load_features(first)
    assert isinstance(fs.meta["stat_time_ns"], int)
    edited = tmp_path / "edited" / "f.npz"
    edited.parent.mkdir()
    save_features(edited, vfm_features=fs.vfm_features * 2, vlm_features=fs.vlm_features, text_prototypes=fs.text_prototypes,
                  labels=fs.labels, classnames=fs.classnames, image_ids=fs.image_ids, meta=fs.meta)
    assert "stat_time_ns" not in load_features(edited).meta
    with pytest.warns(UserWarning, match="lends no features"):
        _, vfm, _ = _run(folder, tmp_path / "b" / "f.npz", reuse=[edited])
    assert vfm.calls == 6  # the doubled rows are not taken for encodings


@pytest.mark.parametrize("kind", ["file", "shards"])
def test_a_damaged_output_lends_nothing_and_says_so(tmp_path, no_margin, kind):
    folder = _folder(tmp_path / "photos")
    first, _, _ = _run(folder, tmp_path / "a" / ("f.npz" if kind == "file" else "set"))
    victim = first if kind == "file" else sorted(first.glob("shard-*vfm*"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the features
    victim.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"lends no features .*(cannot be read|not a feature output).*\); it is ignored\."):
        out, vfm, _ = _run(folder, tmp_path / "b" / "f.npz", reuse=[first])
    assert vfm.calls == 6
    _same_as_fresh(out, folder, tmp_path)


def test_on_a_cluster_only_parts_with_new_photos_are_sent(tmp_path, no_margin, monkeypatch):
    from gpua.encoders import register_encoder

    register_encoder("toy-reuse:vfm", lambda device="cpu", cache_dir=None: Toy("toy-reuse:vfm"), overwrite=True)
    register_encoder("toy-reuse:vlm", lambda device="cpu", cache_dir=None: Toy("toy-reuse:vlm", vlm=True, scale=2.0), overwrite=True)
    sent = []

    def fake_cluster(cluster, timeout, todo, ranges, ds, specs, metadata, device, cache_dir, batch_size, on_error, parts, key,
                     part_done, workers):  # a worker's job, done here: encode each part sent
        vfm, vlm = Toy("toy-reuse:vfm"), Toy("toy-reuse:vlm", vlm=True, scale=2.0)
        ids = [str(ds.image_id(i)) for i in range(len(ds))]
        for i in todo:
            sent.append(i)
            parts.save(i, extract._encode_shard(vfm, vlm, ds, ranges[i], ids, batch_size, on_error, None))
            part_done(i)

    monkeypatch.setattr(extract, "_encode_on_cluster", fake_cluster)
    folder = _folder(tmp_path / "photos")  # cat/p0 p3, dog/p1 p4, car/p2 p5: listed car, cat, dog
    out = tmp_path / "f.npz"
    specs = ("toy-reuse:vfm", "toy-reuse:vlm")
    extract_features(*specs, str(folder), classnames=CLASSES, templates=["a photo of a {}."], out=out, progress=False, shard_size=2)
    _photo(folder / "dog" / "z.png", 99)  # the last of 7: part 3 alone holds it
    extract_features(*specs, str(folder), classnames=CLASSES, templates=["a photo of a {}."], out=out, progress=False, shard_size=2,
                     cluster=1)
    assert sent == [3]
    fs = load_features(out)
    assert fs.n_samples == 7 and fs.meta["reused"]["rows"] == 6
    want = {i: z for i, z in zip(fs.image_ids, Toy().encode_images([np.asarray(Image.open(folder / i).convert("RGB")) for i in fs.image_ids]))}
    np.testing.assert_allclose(fs.vfm_features, np.stack([want[i] for i in fs.image_ids]), atol=1e-6)


class CountingToy(Toy):
    """The toy VLM, counting the prompts it encodes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts: list[str] = []

    def _encode_text_batch(self, texts):
        self.prompts.extend(texts)
        return super()._encode_text_batch(texts)


def test_a_class_added_encodes_that_class_s_prompts_only(tmp_path, no_margin):
    folder = _folder(tmp_path / "photos", flat=True)
    first = tmp_path / "cache" / "three.npz"
    _run(folder, first, vlm=CountingToy("toy:vlm", vlm=True, scale=2.0))
    vlm = CountingToy("toy:vlm", vlm=True, scale=2.0)
    more = ["cat", "bird", "dog", "car"]  # one class added, in the middle: rows follow the names, not the positions
    out, _, _ = _run(folder, tmp_path / "cache" / "four.npz", classnames=more, vlm=vlm)
    assert vlm.prompts == ["a photo of a bird."]  # was: every class's prompts again
    fresh, _, _ = _run(folder, tmp_path / "fresh" / "four.npz", classnames=more, resume=False)
    np.testing.assert_allclose(load_features(out).text_prototypes, load_features(fresh).text_prototypes, atol=1e-6)
    reused = load_features(out).meta["reused"]
    assert reused["prototypes"] == 3 and reused["from"] == [f"{first} (3 prototypes)", f"{first} (6 rows)"]
    other = CountingToy("toy:vlm", vlm=True, scale=2.0)  # other templates: every class's prompts are new
    extract_features(Toy(), other, str(folder), classnames=more, templates=["art of a {}."], out=tmp_path / "cache" / "art.npz",
                     progress=False)
    assert sorted(other.prompts) == sorted(f"art of a {c}." for c in more)


def test_prompt_words_decide_which_prototype_is_lent(tmp_path, no_margin):
    folder = _folder(tmp_path / "photos", flat=True)
    (tmp_path / "a.txt").write_text("cat\ndog\ncar: car, automobile\n")
    (tmp_path / "b.txt").write_text("cat\ndog: dog, puppy\ncar: car, automobile\n")
    _run(folder, tmp_path / "cache" / "a.npz", classnames=str(tmp_path / "a.txt"))
    vlm = CountingToy("toy:vlm", vlm=True, scale=2.0)
    out, _, _ = _run(folder, tmp_path / "cache" / "b.npz", classnames=str(tmp_path / "b.txt"), vlm=vlm)
    assert sorted(vlm.prompts) == ["a photo of a dog.", "a photo of a puppy."]  # dog's words changed; car's did not
    fresh, _, _ = _run(folder, tmp_path / "fresh" / "b.npz", classnames=str(tmp_path / "b.txt"), resume=False)
    np.testing.assert_allclose(load_features(out).text_prototypes, load_features(fresh).text_prototypes, atol=1e-6)


# -- an interrupted run's parts lend their rows (were discarded, or left unread beside)


def test_an_interrupted_run_s_parts_lend_to_a_run_with_other_inputs(tmp_path, no_margin, interrupt, capsys):
    """Was: "discarding the 2 finished part(s)": a class file fixed after Ctrl-C encoded every photo again."""
    folder = _folder(tmp_path / "photos", n=9, flat=True)
    out = tmp_path / "f.npz"
    interrupt(_run, folder, out, shard_size=2, stop=lambda i, done: i == 1)  # 4 of 9 photos encoded
    assert sorted(p.name for p in (tmp_path / "f.npz.parts").glob("shard-*")) == ["shard-000000.npz", "shard-000001.npz"]
    other = ["cat", "dog", "bird"]
    capsys.readouterr()
    vlm = CountingToy("toy:vlm", vlm=True, scale=2.0)
    path, vfm, _ = _run(folder, out, classnames=other, shard_size=2, progress=True, vlm=vlm)
    assert vfm.calls == 5 and vlm.prompts == ["a photo of a bird."]  # was 9, and every class's prompts
    assert "reusing the features of 4 of 9 images and the text prototypes of 2 of 3 classes from earlier outputs: " \
        in capsys.readouterr().out
    got = _same_as_fresh(path, folder, tmp_path, classnames=other)
    parts = tmp_path / "f.npz.parts"
    assert got.meta["reused"] == {"rows": 4, "prototypes": 2, "from": [f"{parts} (2 prototypes)", f"{parts} (4 rows)"]}
    fresh = load_features(tmp_path / "fresh" / "f.npz")
    np.testing.assert_allclose(got.text_prototypes, fresh.text_prototypes, atol=1e-6)
    assert not (tmp_path / "f.npz.parts").exists()  # the set-aside parts go with the folder once the output is written


def test_set_aside_parts_survive_a_second_interruption_and_a_changed_photo_is_not_lent(tmp_path, no_margin, interrupt):
    folder = _folder(tmp_path / "photos", n=9, flat=True)
    out = tmp_path / "f.npz"
    interrupt(_run, folder, out, shard_size=2, stop=lambda i, done: i == 1)
    interrupt(_run, folder, out, classnames=["cat", "dog", "bird"], shard_size=2, stop=lambda i, done: i == 0)
    names = sorted(p.name for p in (tmp_path / "f.npz.parts").iterdir())
    assert "lend-1.json" in names and "lend-1-000001.npz" in names and "shard-000000.npz" in names
    time.sleep(0.01)
    _photo(folder / "p1.png", 77)  # in the first run's first part: its row is stale now
    path, vfm, _ = _run(folder, out, classnames=["cow", "dog", "bird"], shard_size=2)
    assert vfm.calls == 9 - 3  # p0, p2, p3 lent (the second run's part 0 holds p0, p1; the first's p0..p3); p1 encoded
    _same_as_fresh(path, folder, tmp_path, classnames=["cow", "dog", "bird"])
    assert not (tmp_path / "f.npz.parts").exists()


def test_parts_of_another_output_beside_lend_and_are_left_alone(tmp_path, no_margin, interrupt):
    """classify with another class file writes another cache file: the first one's interrupted parts lend."""
    folder = _folder(tmp_path / "photos", n=9, flat=True)
    interrupt(_run, folder, tmp_path / "cache" / "a.npz", shard_size=2, stop=lambda i, done: i == 2)  # 6 of 9
    before = sorted(p.name for p in (tmp_path / "cache" / "a.npz.parts").iterdir())
    vlm = CountingToy("toy:vlm", vlm=True, scale=2.0)
    path, vfm, _ = _run(folder, tmp_path / "cache" / "b.npz", classnames=["cat", "dog", "bird"], shard_size=2, vlm=vlm)
    assert vfm.calls == 3 and vlm.prompts == ["a photo of a bird."]
    _same_as_fresh(path, folder, tmp_path, classnames=["cat", "dog", "bird"])
    assert sorted(p.name for p in (tmp_path / "cache" / "a.npz.parts").iterdir()) == before  # still resumable
    path, vfm, _ = _run(folder, tmp_path / "cache" / "a.npz", shard_size=2)
    assert vfm.calls == 0  # resumed 6, and the finished b.npz lent the other 3


def test_parts_named_with_reuse_lend_and_a_folder_of_an_earlier_release_is_discarded_with_a_warning(tmp_path, no_margin, interrupt):
    folder = _folder(tmp_path / "photos", n=5, flat=True)
    interrupt(_run, folder, tmp_path / "x" / "a.npz", shard_size=2, stop=lambda i, done: i == 0)
    path, vfm, _ = _run(folder, tmp_path / "y" / "b.npz", reuse=[tmp_path / "x" / "a.npz.parts"], shard_size=2)
    assert vfm.calls == 3
    # A manifest without the lend record (an earlier release's): its parts are discarded, as before, and said so.
    out = tmp_path / "z" / "c.npz"
    interrupt(_run, folder, out, shard_size=2, stop=lambda i, done: i == 0)
    manifest = out.parent / "c.npz.parts" / "manifest.json"
    m = json.loads(manifest.read_text())
    del m["lend"]
    manifest.write_text(json.dumps(m))
    with pytest.warns(UserWarning, match=r"discarding the 1 finished part\(s\).*cannot lend rows"):
        _, vfm, _ = _run(folder, out, classnames=["cat", "dog", "bird"], shard_size=2)
    assert vfm.calls == 5


def test_a_folder_killed_while_setting_aside_is_still_gpuas(tmp_path, no_margin, interrupt):
    """Between emptying the folder and writing the new manifest only set-aside parts are left: not refused."""
    folder = _folder(tmp_path / "photos", n=5, flat=True)
    out = tmp_path / "f.npz"
    interrupt(_run, folder, out, shard_size=2, stop=lambda i, done: i == 0)
    parts = extract._Parts.of(out)
    parts._set_aside(parts.manifest()["lend"], sorted(parts.dir.glob("shard-*.npz")))
    parts.remove(keep_lent=True)
    assert sorted(p.name for p in parts.dir.iterdir()) == ["lend-1-000000.npz", "lend-1-text.npy", "lend-1.json"] and parts.is_ours()
    path, vfm, _ = _run(folder, out, classnames=["cat", "dog", "bird"], shard_size=2)
    assert vfm.calls == 3 and not parts.dir.exists()


def test_a_shard_set_s_interrupted_parts_lend_too(tmp_path, no_margin, interrupt):
    folder = _folder(tmp_path / "photos", n=7, flat=True)
    out = tmp_path / "feats"
    interrupt(_run, folder, out, format="shards", shard_size=3, stop=lambda i, done: i == 0)
    path, vfm, _ = _run(folder, out, classnames=["cat", "dog", "bird"], format="shards", shard_size=3)
    assert vfm.calls == 4
    sf = ShardedFeatures(path)
    assert sf.meta["reused"]["rows"] == 3 and not (tmp_path / "feats.parts").exists()
    fresh, _, _ = _run(folder, tmp_path / "fresh.npz", classnames=["cat", "dog", "bird"], resume=False)
    np.testing.assert_allclose(sf.take("vfm_features", np.arange(7)).numpy(), load_features(fresh).vfm_features, atol=1e-6)


def test_reuse_of_an_array_data_set_says_it_lends_nothing(tmp_path):
    """Was: `--reuse` of a cifar10-mini feature file encoded every image again without a word (rows are lent by
    image file, and a data set of pixel arrays has none), where the README promises a warning."""
    from gpua.data import ArrayImageDataset

    rng = np.random.default_rng(0)
    ds = ArrayImageDataset(rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), np.arange(6) % 3, CLASSES, name="arrays")
    def run(out, **kw):
        vfm = Toy()
        extract_features(vfm, Toy("toy:vlm", vlm=True, scale=2.0), ds, templates=["a photo of a {}."], out=out, progress=False, **kw)
        return vfm

    run(tmp_path / "a" / "f.npz")
    with pytest.warns(UserWarning, match=r"lends no features \(this data set's images are not files"):
        vfm = run(tmp_path / "b" / "f.npz", reuse=[tmp_path / "a" / "f.npz"])
    assert vfm.calls == 6
