"""`gpua fit` flags that were ignored, provenance from the wrong VLM, and up-to-date extractions that
ignored their options: each test failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.cli import main
from gpua.features import save_features
from gpua.synthetic import make_planted


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A feature file and the same rows as a shard set (meta naming the encoders)."""
    from gpua.stream import write_shards

    root = tmp_path_factory.mktemp("fit_flags")
    d = make_planted(300, 5, 16, 8, 4, random_state=0)
    meta = {"vfm": {"spec": "toy:vfm"}, "vlm": {"spec": "toy:vlm"}}
    save_features(root / "train.npz", vfm_features=d.vfm_features, vlm_features=d.vlm_features, text_prototypes=d.text_prototypes,
                  labels=d.labels, meta=meta)
    write_shards(root / "sh", d.vfm_features, d.vlm_features, d.labels, text_prototypes=d.text_prototypes, meta=meta,
                 dtype="float32")
    return root, d


FAST = ["--param", "n_steps=10", "--param", "self_learning=0", "--no-progress"]


@pytest.mark.parametrize("flags", [["--checkpoint", "ck"], ["--max-memory", "0"], ["--cluster", "local"], ["--prototypes", "train.npz"]])
def test_streaming_flags_with_train_are_refused(data, flags, capsys):
    root, _ = data
    flags = [str(root / f) if f in ("ck", "train.npz") else f for f in flags]
    assert main(["fit", "--train", str(root / "train.npz"), "--out", str(root / "m.gpua"), *flags, *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]} applies to a streamed fit of a shard set (--shards DIR)" in err  # was: ignored, fit in memory
    assert not (root / "ck").exists() and not (root / "m.gpua").exists()


def test_train_and_shards_together_are_refused(data, capsys):
    root, _ = data
    argv = ["fit", "--train", str(root / "train.npz"), "--shards", str(root / "sh"), "--out", str(root / "m.gpua"), *FAST]
    assert main(argv) == 2  # was: fitted the shards, --train ignored
    assert "give --train FILE or --shards DIR, not both" in capsys.readouterr().err


@pytest.mark.parametrize("where, message", [("train.npz", "is a file; a feature file is fitted with --train"),
                                            ("nowhere", "does not exist")])
def test_shards_that_are_not_a_set_are_named(data, where, message, capsys):
    root, _ = data
    assert main(["fit", "--shards", str(root / where), "--out", str(root / "m.gpua"), *FAST]) == 2
    assert message in capsys.readouterr().err  # was: "has no index.json" for both


def test_prototypes_of_another_vlm_are_refused_and_provenance_keeps_the_shards(data, capsys):
    from gpua import load_model

    root, d = data
    save_features(root / "other.npz", text_prototypes=d.text_prototypes, meta={"vlm": {"spec": "open_clip:ViT-L-14/openai"}})
    argv = ["fit", "--shards", str(root / "sh"), "--out", str(root / "m.gpua"), *FAST]
    assert main([*argv, "--prototypes", str(root / "other.npz")]) == 2  # was: fitted, model recorded ViT-L-14
    assert "encoded by open_clip:ViT-L-14/openai but the shards' image features by toy:vlm" in capsys.readouterr().err
    save_features(root / "same.npz", text_prototypes=d.text_prototypes, meta={"vlm": {"spec": "toy:vlm"}, "templates": ["a {}."]})
    assert main([*argv, "--prototypes", str(root / "same.npz")]) == 0
    from gpua.report import encoders_of

    model = load_model(str(root / "m.gpua"))
    # the scale the streamed fit chose for the probability column, in its summary
    assert f"probabilities at softmax scale {model.proba_scale_:.3g}, chosen on the pool" in capsys.readouterr().out
    prov = model.provenance_
    assert encoders_of(prov)[1] == "toy:vlm" and prov["templates"] == ["a {}."]


def test_a_federated_client_given_a_shard_set_is_named():
    from gpua import GPUA
    from gpua.stream import ShardedFeatures, fit_federated

    class FakeShards(ShardedFeatures):  # only its type matters: refused before any read
        def __init__(self):
            pass

        n_shards = 1

    d = make_planted(60, 3, 8, 4, 2, random_state=0)
    with pytest.raises(GPUAError, match=r"clients\[0\] holds a shard set"):
        fit_federated(GPUA(), [(FakeShards(), d.vlm_features)], d.text_prototypes)


def test_up_to_date_extraction_says_what_its_options_cannot_change(tmp_path):
    from test_extract import _dataset, _folder_with_a_bad_image, _run

    ds = _dataset(n=10)
    out = _run(ds, tmp_path / "sh", format="shards", rows_per_shard=4)
    with pytest.warns(UserWarning, match=r"already holds these features \(4 rows per shard, npy\); rows_per_shard=3 "
                                         r"\(--rows-per-shard\) applies when") as rec:
        assert _run(ds, tmp_path / "sh", format="shards", rows_per_shard=3) == out  # was: "up to date", layout silently kept
    assert "shard_storage" not in str(rec[0].message)  # unchanged: not named (it was)
    root = _folder_with_a_bad_image(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        _run(str(root), tmp_path / "f.npz")
    with pytest.raises(GPUAError, match=r"on_error='fail', but the up-to-date features .* skipping 2 unreadable"):
        _run(str(root), tmp_path / "f.npz", on_error="fail")  # was: returned the skipped set as up to date


def test_a_part_damaged_on_disk_is_redone_alone(tmp_path, interrupt):
    import zipfile

    from test_extract import Toy, _dataset, _run

    from gpua.features import load_features

    ds = _dataset(n=11)
    ref = load_features(_run(ds, tmp_path / "ref.npz", shard_size=4))
    out = tmp_path / "f.npz"
    interrupt(_run, ds, out, shard_size=4, stop=lambda i, done: done == 11)  # killed with every part written
    part = tmp_path / "f.npz.parts" / "shard-000001.npz"
    with zipfile.ZipFile(part) as z:
        info = z.getinfo("vfm.npy")
    raw = bytearray(part.read_bytes())
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_start + info.compress_size - 1] ^= 0xFF  # one byte of the features: the summary still reads
    part.write_bytes(bytes(raw))
    with pytest.raises(GPUAError, match=r"part 1 .* \(4 images\) was damaged on disk and has been removed"):
        _run(ds, out, shard_size=4)  # was: "delete that folder and run again", every part redone
    assert not part.exists() and len(list((tmp_path / "f.npz.parts").glob("shard-*.npz"))) == 2
    vfm, vlm = Toy(), Toy("toy:vlm", vlm=True, scale=2.0)
    _run(ds, out, vfm, vlm, shard_size=4)
    assert vfm.calls == vlm.calls == 4  # that part alone
    np.testing.assert_array_equal(load_features(out).vfm_features, ref.vfm_features)


def test_extract_names_its_flags_when_out_is_the_data(tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    for c in ("cat", "dog"):
        (photos / c).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / c / "a.png")
    argv = ["extract", "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--data", str(photos), "--out", str(photos), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--data" in err and "dataset" not in err  # was: "out ... is the same path as dataset ..."
    assert (photos / "cat" / "a.png").is_file()


def test_prototypes_of_another_width_or_without_names_are_said_with_the_flag(data, tmp_path, capsys):
    from gpua.stream import write_shards

    _, d = data
    write_shards(tmp_path / "sh", d.vfm_features, d.vlm_features, text_prototypes=d.text_prototypes, dtype="float32",
                 classnames=[f"c{k}" for k in range(5)])
    argv = ["fit", "--shards", str(tmp_path / "sh"), "--out", str(tmp_path / "m.gpua"), *FAST]
    save_features(tmp_path / "wide.npz", text_prototypes=np.hstack([d.text_prototypes, d.text_prototypes]))
    assert main([*argv, "--prototypes", str(tmp_path / "wide.npz")]) == 2  # was: "text_prototypes has width ... vlm_features"
    assert "--prototypes" in capsys.readouterr().err
    save_features(tmp_path / "unnamed.npz", text_prototypes=d.text_prototypes[::-1].copy())
    assert main([*argv, "--prototypes", str(tmp_path / "unnamed.npz")]) == 2  # was: the set's names put on reversed rows
    assert "names no classes" in capsys.readouterr().err
    save_features(tmp_path / "same.npz", text_prototypes=d.text_prototypes)
    assert main([*argv, "--prototypes", str(tmp_path / "same.npz")]) == 0  # the set's own rows: its names fit them
    capsys.readouterr()


def test_an_interrupted_fit_says_what_its_checkpoint_holds(data, capsys, monkeypatch):
    """Was: "with --checkpoint, the UCM rounds done are saved there" when no round had finished and
    no checkpoint folder existed."""
    import gpua.stream as stream

    root, _ = data

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stream, "fit_streaming", interrupted)
    argv = ["fit", "--shards", str(root / "sh"), "--out", str(root / "m.gpua"), *FAST]
    assert main([*argv, "--checkpoint", str(root / "ck_none")]) == 130
    assert "no UCM round had finished, so --checkpoint" in capsys.readouterr().err
    (root / "ck_some").mkdir()
    assert main([*argv, "--checkpoint", str(root / "ck_some")]) == 130
    assert "the UCM rounds done are saved there" in capsys.readouterr().err
    assert main(argv) == 130
    assert "pass --checkpoint FOLDER" in capsys.readouterr().err
    assert main(["fit", "--train", str(root / "train.npz"), "--out", str(root / "m.gpua"), *FAST]) in (0, 130)
    assert "--checkpoint" not in capsys.readouterr().err  # an in-memory fit has no checkpoint to offer
