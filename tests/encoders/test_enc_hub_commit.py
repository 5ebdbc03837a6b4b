"""timm and open_clip hub weights record the commit of the cached snapshot they were loaded from.

The weights part of an encoder's metadata (hence of feature-cache keys) named a timm hub model by
its architecture, tag and ``hf_hub_id``, an open_clip one by its tag or ``hf-hub:`` name: when the
repository was updated (a new snapshot in the hub cache, ``refs/main`` moved to it) the key stayed
the same and the features of the old weights were served for the new ones. Local checkpoints and
folders keep their file fingerprints.

Each test builds huggingface_hub's cache layout offline under the ``cache_dir`` the encoder is
given (``<cache_dir>/timm`` or ``<cache_dir>/open_clip``), with two snapshots of tiny random
weights: ``models--org--name/snapshots/<commit>/<files>`` and ``refs/main`` naming one of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from gpua import GPUAError
from gpua.encoders import create_encoder
from gpua.encoders._registry import file_fingerprint

A, B = "a" * 40, "b" * 40
TIMM_TAG = "test_vit.r160_in1k"  # one of timm's tiny test models, with hf_hub_id "timm/test_vit.r160_in1k"


def _fake_hub(hub_cache: Path, repo_id: str, write_snapshot: Callable[[Path, int], None]) -> Path:
    """Snapshots ``A`` and ``B`` of ``repo_id`` in ``hub_cache`` (``write_snapshot(folder, seed)``), ``refs/main`` at ``A``.

    Returns the repository's folder (``models--org--name``).
    """
    from huggingface_hub.file_download import repo_folder_name

    repo = hub_cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    for seed, commit in enumerate((A, B)):
        folder = repo / "snapshots" / commit
        folder.mkdir(parents=True)
        write_snapshot(folder, seed)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(A)
    return repo


def _embedding(enc) -> np.ndarray:
    H, W = enc.preprocess.input_size
    return enc.encode_images([np.full((H, W, 3), 128, np.uint8)])


# --------------------------------------------------------------------------- timm

def _timm_snapshot(folder: Path, seed: int) -> None:
    """What timm's ``push_to_hf_hub`` uploads for the tag: ``config.json`` and ``model.safetensors``."""
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    save_for_hf(timm.create_model(TIMM_TAG, pretrained=False), folder, safe_serialization=True)


@pytest.fixture
def timm_hub(tmp_path):
    """``(cache_dir, repository folder)`` of a fake hub cache holding ``timm/test_vit.r160_in1k``."""
    timm = pytest.importorskip("timm")
    if TIMM_TAG not in timm.list_pretrained("test_*"):
        pytest.skip(f"this timm has no {TIMM_TAG}")
    return tmp_path, _fake_hub(tmp_path / "timm", f"timm/{TIMM_TAG}", _timm_snapshot)


def test_timm_hub_tag_records_the_snapshot_commit(timm_hub):
    """``timm:test_vit.r160_in1k`` recorded ``{architecture, tag, hf_hub_id}``: the same after the
    repository moved on to new weights. A local checkpoint, even the cached file itself, keeps
    its file fingerprint."""
    cache, repo = timm_hub
    old = create_encoder(f"timm:{TIMM_TAG}", cache_dir=cache)
    assert old.metadata()["weights"] == {"architecture": "test_vit", "tag": "r160_in1k",
                                         "hf_hub_id": f"timm/{TIMM_TAG}", "commit": A}
    (repo / "refs" / "main").write_text(B)  # the repository, updated
    new = create_encoder(f"timm:{TIMM_TAG}", cache_dir=cache)
    assert new.metadata()["weights"]["commit"] == B
    assert not np.allclose(_embedding(old), _embedding(new))  # the commit follows the weights timm loaded

    ckpt = repo / "snapshots" / A / "model.safetensors"
    local = create_encoder(f"timm:test_vit//{ckpt}", cache_dir=cache).metadata()["weights"]
    assert local == {"checkpoint": file_fingerprint(ckpt)}


@pytest.mark.parametrize("pinned", [False, True])
def test_timm_hf_hub_spec_records_the_snapshot_commit(timm_hub, pinned):
    """``timm:hf-hub:org/repo`` (and ``...@<commit>``, which stays at its commit); a local
    folder of the same files keeps its folder fingerprint."""
    cache, repo = timm_hub
    spec = f"timm:hf-hub:timm/{TIMM_TAG}" + (f"@{A}" if pinned else "")
    assert create_encoder(spec, cache_dir=cache).metadata()["weights"]["commit"] == A
    (repo / "refs" / "main").write_text(B)
    assert create_encoder(spec, cache_dir=cache).metadata()["weights"]["commit"] == (A if pinned else B)

    folder = repo / "snapshots" / B
    assert create_encoder(f"timm:{folder}", cache_dir=cache).metadata()["weights"] == {"folder": file_fingerprint(folder)}


@pytest.mark.parametrize("cached", ["foreign", "damaged"])
def test_timm_hub_weights_that_do_not_fit_are_refused(tmp_path, cached):
    """Another architecture's weights in the cache (``foreign``): timm created the model with
    ``num_classes=0``, which loads with ``strict=False``, so every backbone weight stayed at
    random with an INFO log line and the encoder was made without a word. A cut-short file
    (``damaged``) was reported as missing, with advice to download the weights elsewhere."""
    timm = pytest.importorskip("timm")
    if TIMM_TAG not in timm.list_pretrained("test_*"):
        pytest.skip(f"this timm has no {TIMM_TAG}")
    from timm.models import save_for_hf

    def snapshot(folder: Path, seed: int) -> None:
        if cached == "foreign":
            save_for_hf(timm.create_model("test_efficientnet", pretrained=False), folder, safe_serialization=True)
        else:
            _timm_snapshot(folder, seed)
            (folder / "model.safetensors").write_bytes(b"\0" * 100)

    _fake_hub(tmp_path / "timm", f"timm/{TIMM_TAG}", snapshot)
    with pytest.raises(GPUAError, match=rf"cached timm weights .* damaged .* delete the folder models--timm--{TIMM_TAG}"):
        create_encoder(f"timm:{TIMM_TAG}", cache_dir=tmp_path)


# --------------------------------------------------------------------------- open_clip

def _open_clip_snapshot(folder: Path, seed: int, weights_name: str = "open_clip_pytorch_model.bin") -> None:
    """What open_clip's ``push_to_hf_hub`` uploads: ``open_clip_config.json`` and the weights."""
    import open_clip
    from tiny_models import TINY

    torch.manual_seed(seed)
    torch.save(open_clip.create_model("gpua-tiny-vit").state_dict(), folder / weights_name)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))


def test_open_clip_hf_hub_spec_records_the_snapshot_commit(tmp_path, tiny_ckpt):
    """``open_clip:hf-hub:org/repo`` recorded ``{"tag": "hf-hub:org/repo"}`` whatever the snapshot.
    (Its tokenizer was looked up in huggingface_hub's default cache instead of ``cache_dir``: an
    error offline.) Local checkpoints and folders keep their fingerprints."""
    repo = _fake_hub(tmp_path / "open_clip", "org/tiny", _open_clip_snapshot)
    old = create_encoder("open_clip:hf-hub:org/tiny", cache_dir=tmp_path)
    assert old.metadata()["weights"] == {"tag": "hf-hub:org/tiny", "commit": A}
    (repo / "refs" / "main").write_text(B)
    new = create_encoder("open_clip:hf-hub:org/tiny", cache_dir=tmp_path)
    assert new.metadata()["weights"] == {"tag": "hf-hub:org/tiny", "commit": B}
    assert not np.allclose(_embedding(old), _embedding(new))

    folder = repo / "snapshots" / A
    assert create_encoder(f"open_clip:{folder}", cache_dir=tmp_path).metadata()["weights"] == {"checkpoint": file_fingerprint(folder)}
    local = create_encoder(f"open_clip:gpua-tiny-vit/{tiny_ckpt}", cache_dir=tmp_path).metadata()["weights"]
    assert local == {"checkpoint": file_fingerprint(tiny_ckpt)}


@pytest.mark.parametrize("hf_hub, weights_name", [("org/tiny/", "open_clip_pytorch_model.bin"), ("org/tiny/tiny.bin", "tiny.bin")])
def test_open_clip_hub_tag_records_the_snapshot_commit(tmp_path, tiny_ckpt, monkeypatch, hf_hub, weights_name):
    """A pretrained tag whose config has an ``hf_hub`` entry (``"org/repo/"``: the default weights
    file; ``"org/repo/FILE"``: that file) recorded only ``{"tag": TAG}``."""
    import open_clip.pretrained

    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "gpua-tiny-vit", {"hub": {"url": "", "hf_hub": hf_hub}})
    repo = _fake_hub(tmp_path / "open_clip", "org/tiny", lambda folder, seed: _open_clip_snapshot(folder, seed, weights_name))
    assert create_encoder("open_clip:gpua-tiny-vit/hub", cache_dir=tmp_path).metadata()["weights"] == {"tag": "hub", "commit": A}
    (repo / "refs" / "main").write_text(B)
    assert create_encoder("open_clip:gpua-tiny-vit/hub", cache_dir=tmp_path).metadata()["weights"] == {"tag": "hub", "commit": B}


# --------------------------------------------------------------------------- what a hub or folder model lacks

@pytest.mark.parametrize("where", ["hub", "folder"])
def test_open_clip_model_without_weights_is_refused(tmp_path, where):
    """An ``open_clip_config.json`` without its weights file (a half-finished download or copy):
    open_clip built the model with random weights and only logged "Model initialized randomly",
    so every feature extracted from it was noise, without an error."""
    def config_only(folder: Path, seed: int) -> None:
        _open_clip_snapshot(folder, seed)
        (folder / "open_clip_pytorch_model.bin").unlink()

    repo = _fake_hub(tmp_path / "open_clip", "org/tiny", config_only)
    spec = "open_clip:hf-hub:org/tiny" if where == "hub" else f"open_clip:{repo / 'snapshots' / A}"
    with pytest.raises(GPUAError, match=r"open_clip weights for .open_clip:.*tiny"):
        create_encoder(spec, cache_dir=tmp_path)


def test_open_clip_tokenizer_not_in_the_cache_is_a_clear_error(tmp_path, tiny_ckpt, monkeypatch):
    """A model whose config names a Hugging Face tokenizer (``text_cfg.hf_tokenizer_name``, as
    SigLIP models do) that is not in the cache: transformers' ``ValueError: Couldn't instantiate
    the backend tokenizer`` came out of ``create_encoder`` as a traceback from deep inside."""
    import open_clip
    from tiny_models import TINY

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save(open_clip.create_model("gpua-tiny-vit").state_dict(), folder / "open_clip_pytorch_model.bin")
    cfg = {**TINY, "text_cfg": {**TINY["text_cfg"], "hf_tokenizer_name": "org/absent-tokenizer"}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    with pytest.raises(GPUAError, match=r"text tokenizer of 'open_clip:.*hf_tokenizer_name.*HF_HUB_OFFLINE is set.*local folder"):
        create_encoder(f"open_clip:{folder}", cache_dir=tmp_path)
