"""Fuzzing every file reader: a damaged file loads equal to the original, or fails with a GPUAError.

For each format gpua reads, a small original is written, then damaged in seeded ways: cut to a
random length (a truncated copy), and single bits flipped at random positions (bad storage or
transfer), in a random file of the set. Reading the damaged copy must give exactly what the
original gives (a flip in bytes nobody reads, such as a zip timestamp) or raise a
:class:`GPUAError`: never another exception, never different data. Files with checksums make
"different data" detectable; class-name and template files are plain text a user writes (no
checksum), so for them any list of strings is a valid reading and the property is "a list of
non-empty strings, or a GPUAError".

Bounded: ``N_CUTS + N_FLIPS`` damaged copies per format, a few seconds for the whole module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from gpua import GPUA, GPUAError
from gpua.features import ShardedFeatures, load_features, save_features, write_shards

# Larger runs: GPUA_FUZZ_CUTS=200 GPUA_FUZZ_FLIPS=2000 GPUA_FUZZ_SEED=1 pytest tests/reliability/test_rel_fuzz.py
N_CUTS = int(os.environ.get("GPUA_FUZZ_CUTS", 12))
N_FLIPS = int(os.environ.get("GPUA_FUZZ_FLIPS", 48))
SEED = int(os.environ.get("GPUA_FUZZ_SEED", 0))


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested loader results (arrays: dtype, shape and bits)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    if isinstance(b, torch.Tensor):
        b = b.detach().cpu().numpy()
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# -- the formats: (write an original into a folder) -> (files to damage, reader) -------------------
def _arrays(rng, n=24):
    return dict(
        vfm_features=rng.standard_normal((n, 6)).astype(np.float32),
        vlm_features=rng.standard_normal((n, 4)).astype(np.float32),
        text_prototypes=rng.standard_normal((3, 4)).astype(np.float32),
        labels=rng.integers(0, 3, n),
        classnames=["cat", "dog", "car"],
        image_ids=[f"img{i}" for i in range(n)],
    )


def _read_features(path: Path):
    fs = load_features(path)
    return [fs.vfm_features, fs.vlm_features, fs.text_prototypes, fs.labels, fs.classnames, fs.image_ids, fs.meta]


def feature_file(suffix: str) -> Callable:
    def make(d: Path, rng):
        path = save_features(d / f"f{suffix}", meta={"source": "fuzz"}, **_arrays(rng))
        return [path], lambda: _read_features(path)

    return make


def hand_written_npz(d: Path, rng):
    """An npz written with plain np.savez (no gpua checksum): the zip CRC-32 still guards it."""
    a = _arrays(rng)
    np.savez(d / "h.npz", **{k: np.asarray(v) for k, v in a.items()})
    return [d / "h.npz"], lambda: _read_features(d / "h.npz")


def shard_set(storage: str) -> Callable:
    def make(d: Path, rng):
        a = _arrays(rng)
        write_shards(d / "s", a["vfm_features"], a["vlm_features"], a["labels"], image_ids=a["image_ids"], rows_per_shard=10,
                     dtype="float16", storage=storage, text_prototypes=a["text_prototypes"], classnames=a["classnames"],
                     meta={"source": "fuzz"})

        def read():
            s = ShardedFeatures(d / "s")
            return [s.read("vfm_features", 0, s.n_samples), s.take("vlm_features", np.arange(s.n_samples)[::-1]), s.labels(),
                    s.image_ids(), s.text_prototypes(), s.classnames, s.meta, s.shard_rows]

        return sorted((d / "s").iterdir()), read

    return make


def model_file(d: Path, rng):
    from gpua import load_model
    from gpua.synthetic import make_planted

    data = make_planted(n_samples=60, n_classes=3, d_vfm=6, d_vlm=4, d_latent=2, random_state=2)
    m = GPUA(refine=False, center=True, retrieval="csls").fit(data.vfm_features, data.vlm_features, data.text_prototypes,
                                                            classnames=["a", "b", "c"])
    m.provenance_ = {"templates": ["a photo of a {}."], "cache_key": "f" * 64}
    m.save(d / "m.gpua")

    def read():
        back = load_model(d / "m.gpua")
        return [back.get_params(), back.classnames_, back.history_, back.provenance_,
                *(getattr(back, n) for n in type(back)._schema.tensors)]

    return [d / "m.gpua"], read


def seg_sidecar(d: Path, rng):
    from gpua.cli.segment import _read_sidecar, _save_model
    from gpua.synthetic import make_planted

    data = make_planted(n_samples=30, n_classes=3, d_vfm=6, d_vlm=4, d_latent=2, random_state=3)
    m = GPUA(query="vfm", refine=False).fit(data.vfm_features, data.vlm_features, data.text_prototypes)
    meta = {"classnames": ["sky", "road", "sea"], "prompt_names": ["sky", "road", "sea", "ocean"], "class_of_prototype": [0, 1, 2, 2],
            "templates": "simple", "vfm": "planted:vfm", "vlm": "planted:vlm", "grid": "coarser", "patches_per_image": 64,
            "seed": 0, "n_images": 16}
    _save_model(m, str(d / "m.gpua"), meta)
    side = d / "m.gpua.seg.json"
    return [side], lambda: _read_sidecar(side)


def checkpoint(d: Path, rng, pending_projection: bool = False):
    from gpua.stream._checkpoint import Checkpoint

    ck = Checkpoint(d / "ck", "fingerprint-of-this-fit")
    k, q = 3, 5
    ck.extra["vfm_mean"] = torch.randn(4)
    meta = {"round": 2, "converged": False, "done": False, "history": [{"round": 1, "plan_change": 0.25}], "passes": 9}
    extra = {}
    if pending_projection:  # UCM done, plan_ridge's projection pass not yet run
        meta.update(done=True, projected=False)
        extra = dict(plan_query=torch.randn(k, q).double(), plan_mass=torch.rand(k).double())
    ck.save(meta, centres=torch.randn(k, q), centres_next=torch.randn(k, q), centres_final=torch.randn(k, q), g=torch.randn(k).double(),
            labels=torch.randint(0, k, (20,)), confidence=torch.rand(20), cross_covariance=torch.randn(q, 4).double(), **extra)
    return [ck.file], lambda: Checkpoint(d / "ck", "fingerprint-of-this-fit").load()


def text_file(kind: str) -> Callable:
    def make(d: Path, rng):
        if kind == "classnames":
            from gpua.data.classnames import load_classnames as read

            (d / "c.txt").write_text("tench\ngoldfish\ngreat white shark\n", encoding="utf-8")
            return [d / "c.txt"], lambda: read(d / "c.txt")
        from gpua.data.prompts import get_templates

        (d / "t.json").write_text(json.dumps(["a photo of a {}.", "itap of a {}."]), encoding="utf-8")
        return [d / "t.json"], lambda: get_templates(d / "t.json")

    return make


FORMATS = {
    "features.npz": feature_file(".npz"),
    "features.safetensors": feature_file(".safetensors"),
    "hand-written.npz": hand_written_npz,
    "shards-npy": shard_set("npy"),
    "shards-safetensors": shard_set("safetensors"),
    "model.gpua": model_file,
    "sidecar.seg.json": seg_sidecar,
    "checkpoint": checkpoint,
    "checkpoint_pending_projection": lambda d, rng: checkpoint(d, rng, pending_projection=True),
    "classnames.txt": text_file("classnames"),
    "templates.json": text_file("templates"),
}
TEXT = {"classnames.txt", "templates.json"}


def fuzz(fmt: str, folder: Path, n_cuts: int, n_flips: int, seed: int = 0) -> dict[str, int]:
    """Damage the files of format ``fmt`` ``n_cuts + n_flips`` times; count reads equal to the original and refusals.

    Fails (pytest.fail / AssertionError) on any other exception or on different data.
    """
    rng = np.random.default_rng(sum(map(ord, fmt)) + seed)  # seeded per format: failures reproduce
    targets, read = FORMATS[fmt](folder, rng)
    original = read()
    pristine = {p: p.read_bytes() for p in targets}
    outcomes = {"equal": 0, "refused": 0}
    for trial in range(n_cuts + n_flips):
        path = targets[int(rng.integers(len(targets)))]
        raw = bytearray(pristine[path])
        if trial < n_cuts:
            damaged = bytes(raw[: int(rng.integers(0, len(raw)))])
            how = f"cut to {len(damaged)} of {len(raw)} bytes"
        else:
            pos, bit = int(rng.integers(len(raw))), int(rng.integers(8))
            raw[pos] ^= 1 << bit
            damaged = bytes(raw)
            how = f"bit {bit} of byte {pos} flipped"
        path.write_bytes(damaged)
        try:
            got = read()
        except GPUAError:
            outcomes["refused"] += 1
        except Exception as exc:  # pragma: no cover - the failure this test exists to catch
            pytest.fail(f"{fmt}: {path.name} {how}: {type(exc).__name__}: {exc}")
        else:
            if fmt in TEXT:
                assert isinstance(got, list) and all(isinstance(s, str) and s for s in got), (fmt, how)
            else:
                assert _same(got, original), f"{fmt}: {path.name} {how} loaded different data"
            outcomes["equal"] += 1
        finally:
            path.write_bytes(pristine[path])
    assert _same(read(), original)  # the pristine files still read as before
    return outcomes


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_damaged_files_load_equal_or_fail_clearly(tmp_path, fmt):
    outcomes = fuzz(fmt, tmp_path, N_CUTS, N_FLIPS, SEED)
    assert outcomes["refused"] >= N_CUTS // 2  # damage was really done (cuts are nearly always refused)
