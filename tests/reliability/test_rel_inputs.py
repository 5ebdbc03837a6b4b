"""Damaged or absurd inputs end in one clear line (exit 2), never a traceback or a silent wrong result."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest

from gpua import GPUA, GPUAError, ModelFileError
from gpua._validation import ROW_NORM_RANGE, check_classnames, check_matrix, check_number
from gpua.cli import main
from gpua.features import ShardedFeatures, load_features, save_features, write_shards


def _one_line_error(argv, capsys, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"gpua {argv[0]}: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


# -- feature files ------------------------------------------------------------------------------
def test_truncated_safetensors_feature_file(files, tmp_path, capsys):
    fs = load_features(files["train"])
    path = save_features(tmp_path / "f.safetensors", fs)
    raw = path.read_bytes()
    for n in (0, 7, 100, len(raw) - 1):
        path.write_bytes(raw[:n])
        _one_line_error(["fit", "--train", str(path), "--out", str(tmp_path / "out.gpua")], capsys, "f.safetensors")
    assert not (tmp_path / "out.gpua").exists()


def _npy_member(shape, dtype="<f4") -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_headers_declaring_huge_arrays_are_refused_before_allocating(tmp_path, capsys):
    import zipfile

    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("vfm_features.npy", _npy_member((1 << 20, 1 << 20)) + b"\0" * 64)
    with pytest.raises(ModelFileError, match="declares an array of shape"):
        load_features(tmp_path / "huge.npz")
    body = json.dumps({"vfm_features": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}}).encode()
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 64)
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_features(tmp_path / "huge.safetensors")
    (tmp_path / "len.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    _one_line_error(["predict", "--model", str(tmp_path / "x.gpua"), "--features", str(tmp_path / "len.safetensors"),
                     "--out", str(tmp_path / "p.csv")], capsys)


def test_pickled_data_is_refused_without_suggesting_unsafe_loading(tmp_path, capsys):
    np.savez(tmp_path / "obj.npz", vfm_features=np.array([{"a": 1}, None], dtype=object))
    (tmp_path / "raw.npz").write_bytes(pickle.dumps({"vfm_features": np.ones((2, 2))}))
    for name in ("obj.npz", "raw.npz"):
        err = _one_line_error(["fit", "--train", str(tmp_path / name), "--out", str(tmp_path / "m.gpua")], capsys, name)
        assert "allow_pickle" not in err and "unsafe" not in err.lower()


def test_string_arrays_must_be_flat(tmp_path, rng):
    np.savez(tmp_path / "c.npz", vfm_features=rng.standard_normal((4, 3)), classnames=np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ModelFileError, match="'classnames' of shape \\(2, 2\\)"):
        load_features(tmp_path / "c.npz")
    with pytest.raises(GPUAError, match="flat list"):
        check_classnames(np.array([["a", "b"], ["c", "d"]]), 2)
    with pytest.raises(GPUAError, match="must hold strings"):
        check_classnames([1, 2], 2)


def test_a_flipped_exponent_bit_in_a_feature_file_is_caught(files, tmp_path):
    fs = load_features(files["train"])
    path = save_features(tmp_path / "f.safetensors", fs)
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    raw[8 + n + 3] ^= 0x40  # the exponent's top bit of the first float: 0.5 -> 1.7e38, still finite
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        load_features(path)


# -- shard sets ---------------------------------------------------------------------------------
@pytest.fixture
def shards(tmp_path, rng):
    Z, X = rng.standard_normal((60, 6)).astype(np.float32), rng.standard_normal((60, 4)).astype(np.float32)
    write_shards(tmp_path / "s", Z, X, rows_per_shard=20, dtype="float32", text_prototypes=rng.standard_normal((3, 4)))
    return tmp_path / "s"


def test_truncated_shard_is_named_before_the_fit(shards, tmp_path, capsys):
    f = shards / "shard-000001.vfm_features.npy"
    f.write_bytes(f.read_bytes()[:-40])
    _one_line_error(["fit", "--shards", str(shards), "--out", str(tmp_path / "m.gpua"), "--no-progress"], capsys,
                    "shard 1", "shard-000001.vfm_features.npy", "truncated")


@pytest.mark.parametrize("storage", ["npy", "safetensors"])
def test_truncated_shard_file_in_either_storage(tmp_path, rng, storage):
    write_shards(tmp_path / "s", rng.standard_normal((30, 6)), rng.standard_normal((30, 4)), rows_per_shard=10, storage=storage)
    f = sorted((tmp_path / "s").glob("shard-000002*"))[0]
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(ModelFileError, match="shard 2"):
        ShardedFeatures(tmp_path / "s")


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda ix: ix.pop("widths"), "widths='<missing>'"),
        (lambda ix: ix.update(widths={"vfm_features": "6", "vlm_features": 4}), "widths="),
        (lambda ix: ix.update(shard_rows="abc"), "shard_rows='abc'"),
        (lambda ix: ix.update(shard_rows=[20, -1, 20]), "shard_rows="),
        (lambda ix: ix.update(dtype=5), "dtype='5'"),
        (lambda ix: ix.pop("storage"), "storage="),
        (lambda ix: ix.update(labels="yes"), "labels='yes'"),
        (lambda ix: ix.update(classnames="abc"), "classnames='abc'"),
        (lambda ix: ix.update(meta=[1]), "meta="),
        (lambda ix: ix.update(format_version="x"), "format_version 'x'"),
    ],
)
def test_index_with_missing_or_mistyped_keys(shards, tmp_path, capsys, edit, needle):
    index = json.loads((shards / "index.json").read_text())
    index.pop("checksum")  # a hand-made or older index: the structure checks alone must catch it
    edit(index)
    (shards / "index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        ShardedFeatures(shards)
    _one_line_error(["fit", "--shards", str(shards), "--out", str(tmp_path / "m.gpua"), "--no-progress"], capsys, "index.json")


def test_index_listing_fewer_shards_than_exist_is_refused(shards):
    index = json.loads((shards / "index.json").read_text())
    index.pop("checksum")
    index["shard_rows"], index["n_samples"] = [20, 20], 40  # the third shard silently left out
    (shards / "index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match="lists 2 shard.*also holds shard 2"):
        ShardedFeatures(shards)


def test_user_files_beside_shards_are_never_deleted(shards, rng):
    (shards / "notes.txt").write_text("mine")
    Z, X = rng.standard_normal((10, 6)), rng.standard_normal((10, 4))
    with pytest.raises(GPUAError, match="holds other files"):
        write_shards(shards, Z, X, overwrite=True)  # a set holding a user's file is not replaced
    assert (shards / "notes.txt").read_text() == "mine"
    hidden = shards.parent / ".t.partial"  # nor is a user's folder that happens to have a writer's hidden name
    hidden.mkdir()
    (hidden / "notes.txt").write_text("mine too")
    with pytest.raises(GPUAError, match="did not write"):
        write_shards(shards.parent / "t", Z, X)
    assert (hidden / "notes.txt").read_text() == "mine too"


# -- numbers that silently gave wrong results ---------------------------------------------------
@pytest.mark.parametrize("power", [70, -70, 900])
def test_rows_float32_cannot_normalise_are_rescaled_exactly(small, power):
    """Entries near 1e21 or 1e-21 (or 1e271 in float64) once normalised to zero rows: one class for everything."""
    train, test = small
    Z = train.vfm_features.astype(np.float64)
    Zs = Z.copy()
    Zs[::3] *= 2.0**power  # exact: the same directions at an absurd scale
    if power < 300:
        Zs = Zs.astype(np.float32)
    kw = dict(refine=False, query="fused")
    a = GPUA(**kw).fit(Z, train.vlm_features, train.text_prototypes)
    b = GPUA(**kw).fit(Zs, train.vlm_features, train.text_prototypes)
    np.testing.assert_array_equal(a.pseudo_labels_, b.pseudo_labels_)
    Zt = test.vfm_features.astype(np.float64) * 2.0**power
    np.testing.assert_array_equal(b.predict(Zt if power > 300 else Zt.astype(np.float32), test.vlm_features),
                                  a.predict(test.vfm_features, test.vlm_features))
    assert len(np.unique(b.predict(Zt, test.vlm_features))) > 1


def test_raw_scale_rows_too_large_are_refused(rng):
    """Where rows are used at their own scale (calibration), float32-overflowing rows are refused."""
    X = rng.standard_normal((6, 4))
    X[2] *= 1e20
    with pytest.raises(GPUAError, match="features has 1 row.*too large.*row 2"):
        check_matrix(X, "features", allow_zero_rows=True)
    lo, hi = ROW_NORM_RANGE
    ok = rng.standard_normal((4, 5))
    ok[0] *= hi / 10 / np.linalg.norm(ok[0])
    ok[1] *= lo * 10 / np.linalg.norm(ok[1])
    np.testing.assert_array_equal(check_matrix(ok, "x"), ok.astype(np.float32))  # inside the range: as is
    tiny = np.full((2, 3), 1e-30)
    np.testing.assert_array_equal(check_matrix(tiny, "x", allow_zero_rows=True), tiny.astype(np.float32))


def test_float64_overflow_is_not_called_nan():
    with pytest.raises(GPUAError, match="too large") as e:
        check_matrix(np.full((2, 3), 1e300), "vlm_features", allow_zero_rows=True)
    assert "NaN" not in str(e.value)
    assert np.all(np.isfinite(check_matrix(np.full((2, 3), 1e300), "vlm_features")))  # normalised later: rescaled
    with pytest.raises(GPUAError, match="NaN or inf"):
        check_matrix(np.array([[np.inf, 1.0]]), "x")


def test_one_d_hint_covers_a_column():
    with pytest.raises(GPUAError, match=r"reshape\(1, -1\) if it is one row.*reshape\(-1, 1\) if it is one column"):
        check_matrix(np.ones(5), "x")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["longtail", "--weight-decay", "-1"], "--weight-decay=-1.0"),  # the flags as typed, checked before any file is read
        (["longtail", "--imbalance", "0.5"], "--imbalance=0.5 must be a finite number >= 1"),
        (["federated", "--lr", "nan"], "lr=nan"),
        (["federated", "--rounds", "0"], "rounds=0"),
        (["federated", "--local-epochs", "0"], "--local-epochs=0"),
        (["federated", "--alpha", "-1"], "alpha=-1.0"),
        (["federated", "--components", "0", "--share", "shape"], "--components=0"),
    ],
)
def test_calibrate_options_that_make_no_sense(files, capsys, args, needle):
    argv = ["calibrate", args[0], "--features", str(files["train"]), "--test", str(files["test"]), *args[1:]]
    _one_line_error(argv, capsys, needle)


def test_check_number():
    assert check_number(3, "n", integer=True, low=1) == 3
    assert check_number(np.float32(0.5), "x", low=0, high=1) == 0.5
    for bad in (True, "1", float("inf"), None):
        with pytest.raises(GPUAError, match="must be"):
            check_number(bad, "x")
    with pytest.raises(GPUAError, match=r"x=0 must be a finite number in \(0, inf\)"):
        check_number(0, "x", low=0, low_open=True)


# -- segmentation sidecar -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,needle",
    [
        ("{not json", "not readable JSON"),
        ("[1, 2]", "JSON list"),
        ('{"grid": "diagonal"}', "grid='diagonal'"),
        ('{"prompt_names": "sky"}', "prompt_names='sky'"),
        ('{"prompt_names": ["a", "b"], "class_of_prototype": [0]}', "2 prompt names but 1 class"),
        ('{"class_of_prototype": [0, -1]}', "class_of_prototype"),
        ('{"grid": "coarser", "evil": 1}', "unknown keys"),
    ],
)
def test_malformed_seg_sidecar(files, tmp_path, capsys, text, needle):
    model = tmp_path / "seg.gpua"
    model.write_bytes(files["model"].read_bytes())
    (tmp_path / "seg.gpua.seg.json").write_text(text)
    (tmp_path / "classes.txt").write_text("sky\ngrass\nroad\nwater\n")
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "imgs" / "x.png")
    argv = ["segment", "--model", str(model), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"),
            "--classnames", str(tmp_path / "classes.txt"), "--vfm", "planted:vfm", "--vlm", "planted:vlm", "--templates", "simple"]
    _one_line_error(argv, capsys, "seg.gpua.seg.json", needle)


def test_a_failing_write_is_one_line_and_leaves_no_temp(files, tmp_path, capsys, monkeypatch):
    import errno
    import os

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "p.csv"
    _one_line_error(["predict", "--model", str(files["model"]), "--features", str(files["test"]), "--out", str(out)], capsys,
                    "No space left on device", "p.csv")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".gpua-" in p.name]
    with pytest.raises(ModelFileError, match="is a folder, not a model file"):
        from gpua import load_model

        load_model(tmp_path)


def test_nan_in_a_feature_payload_is_named(files, tmp_path, capsys, rng):
    Z = rng.standard_normal((6, 12)).astype(np.float32)
    Z[4, 2] = np.nan
    np.savez(tmp_path / "nan.npz", vfm_features=Z, vlm_features=rng.standard_normal((6, 8)))  # hand-written: no checksum
    _one_line_error(["predict", "--model", str(files["model"]), "--features", str(tmp_path / "nan.npz"),
                     "--out", str(tmp_path / "p.csv")], capsys, "vfm_features", "NaN or inf", "row 4")
    assert not (tmp_path / "p.csv").exists()
