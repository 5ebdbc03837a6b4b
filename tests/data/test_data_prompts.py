"""Templates and text prototypes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpua._errors import GPUAError
from gpua.data.classnames import COOP_DATASETS
from gpua.data.prompts import (
    DATASET_TEMPLATES,
    OPENAI_IMAGENET_TEMPLATES,
    build_text_prototypes,
    fill_template,
    get_templates,
)


def test_openai_imagenet_templates():
    t = get_templates("openai_imagenet")
    assert len(t) == 80 == len(set(t)) and t == list(OPENAI_IMAGENET_TEMPLATES)
    assert t[0] == "a bad photo of a {}." and t[-1] == "a tattoo of the {}."
    assert all(x.count("{}") == 1 for x in t)


def test_named_and_dataset_templates():
    assert get_templates("simple") == ["a photo of a {}."]
    assert len(get_templates("imagenet_select")) == 7
    assert get_templates("oxford_pets") == ["a photo of a {}, a type of pet."]
    assert get_templates("OxfordPets") == get_templates("pets") == get_templates("oxford_pets")
    assert get_templates("DescribableTextures") == ["{} texture."]
    assert get_templates("eurosat") == ["a centered satellite photo of {}."]
    assert len(get_templates("cifar10-mini")) == 18
    assert set(COOP_DATASETS) <= set(DATASET_TEMPLATES)


def test_unknown_name():
    with pytest.raises(GPUAError, match="unknown template set 'fancy'.*openai_imagenet"):
        get_templates("fancy")
    with pytest.raises(GPUAError, match="does not exist"):
        get_templates("my_templates.txt")


def test_template_files(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("a photo of a {c}.\n\n  art of the {}.  \n")
    assert get_templates(txt) == ["a photo of a {}.", "art of the {}."]
    js = tmp_path / "t.json"
    js.write_text(json.dumps(["itap of a {c}.", "a {} in a video game."]))
    assert get_templates(str(js)) == ["itap of a {}.", "a {} in a video game."]
    assert get_templates(["x {c} y"]) == ["x {} y"]


def test_template_without_placeholder_is_an_error(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\na photo of something.\n")
    with pytest.raises(GPUAError, match=r"bad.txt.*template 1 'a photo of something.' has no class-name placeholder"):
        get_templates(bad)
    with pytest.raises(GPUAError, match="placeholder {name}"):
        get_templates(["a photo of a {name}."])
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(GPUAError, match="empty"):
        get_templates(tmp_path / "empty.txt")
    (tmp_path / "multi.json").write_text(json.dumps({"cifar10": ["a {c}"]}))
    with pytest.raises(GPUAError, match="JSON object"):
        get_templates(tmp_path / "multi.json")


def test_fill_template():
    assert fill_template("a photo of a {}, a type of pet.", "american_bulldog") == "a photo of a american bulldog, a type of pet."
    assert fill_template("{} texture.", "a_b", underscores_to_spaces=False) == "a_b texture."
    assert fill_template("a {} in {braces}", "x") == "a x in {braces}"


class FakeEncoder:
    """Deterministic text 'encoder' that records its calls."""

    def __init__(self, d: int = 8):
        self.d = d
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> np.ndarray:
        self.calls.append(list(prompts))
        out = np.empty((len(prompts), self.d), dtype=np.float32)
        for i, p in enumerate(prompts):
            seed = int.from_bytes(p.encode()[:8].ljust(8, b"_"), "little") ^ len(p)
            out[i] = np.random.default_rng(seed).normal(size=self.d) * (1 + len(p))  # not unit norm
        return out


def _reference(enc, names, temps):
    rows = []
    for c in names:
        e = enc([fill_template(t, c) for t in temps]).astype(np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(axis=0)
        rows.append(m / np.linalg.norm(m))
    return np.array(rows)


def test_prototypes_are_the_normalised_ensemble():
    names = ["cat", "american_bulldog", "sea lion"]
    temps = ["a photo of a {}.", "art of the {c}.", "itap of a {}."]
    enc = FakeEncoder()
    Y = build_text_prototypes(enc, names, temps, batch_size=4)
    assert Y.dtype == np.float32 and Y.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(Y, _reference(FakeEncoder(), names, ["a photo of a {}.", "art of the {}.", "itap of a {}."]), atol=1e-6)
    assert [len(c) for c in enc.calls] == [4, 4, 1]
    assert "a photo of a american bulldog." in sum(enc.calls, [])


def test_batch_size_does_not_change_prototypes():
    names = [f"class_{i}" for i in range(7)]
    temps = get_templates("imagenet_select")
    a = build_text_prototypes(FakeEncoder(), names, temps, batch_size=1)
    b = build_text_prototypes(FakeEncoder(), names, temps, batch_size=1000)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_torch_output_accepted():
    torch = pytest.importorskip("torch")
    enc = FakeEncoder()
    Y = build_text_prototypes(lambda p: torch.from_numpy(enc(p)), ["a", "b"], ["{}"])
    np.testing.assert_allclose(Y, build_text_prototypes(FakeEncoder(), ["a", "b"], ["{}"]), atol=1e-6)


def test_prototype_errors():
    enc = FakeEncoder()
    with pytest.raises(GPUAError, match="duplicate name 'cat'"):
        build_text_prototypes(enc, ["cat", "cat"], ["{}"])
    with pytest.raises(GPUAError, match="no class-name placeholder"):
        build_text_prototypes(enc, ["cat"], ["a photo"])
    with pytest.raises(GPUAError, match="2 rows but 3"):
        build_text_prototypes(lambda p: np.ones((2, 4)), ["a", "b", "c"], ["{}"])
    with pytest.raises(GPUAError, match="all-zero"):
        build_text_prototypes(lambda p: np.zeros((len(p), 4)), ["a"], ["{}"])
    with pytest.raises(GPUAError, match="cancel out"):
        build_text_prototypes(lambda p: np.array([[1.0, 0], [-1.0, 0]]), ["a"], ["x {}", "y {}"])
    with pytest.raises(GPUAError, match="batch_size"):
        build_text_prototypes(enc, ["a"], ["{}"], batch_size=0)


def test_one_default_for_every_command():
    from gpua.data.prompts import CIFAR_TEMPLATES, DEFAULT_TEMPLATES, resolve_templates

    assert DEFAULT_TEMPLATES == "auto"
    assert resolve_templates(None, "cifar10-mini") == resolve_templates("auto", "cifar10") == list(CIFAR_TEMPLATES)
    assert resolve_templates("auto", "oxford_pets") == ["a photo of a {}, a type of pet."]
    assert resolve_templates(None, "my_holiday_photos") == resolve_templates() == list(OPENAI_IMAGENET_TEMPLATES)
    assert resolve_templates("simple", "cifar10") == ["a photo of a {}."]


def test_synonyms_average_their_word_prototypes():
    rng = np.random.default_rng(0)
    table = {}

    def encode(prompts):
        return np.stack([table.setdefault(p, rng.normal(size=6)) for p in prompts])

    temps = ["a {}.", "the {}."]
    one = build_text_prototypes(encode, ["car", "automobile", "cat"], temps)
    both = build_text_prototypes(encode, ["automobile", "cat"], temps, synonyms=[["car", "automobile"], ["cat"]])
    want = one[0] + one[1]
    np.testing.assert_allclose(both[0], want / np.linalg.norm(want), atol=1e-6)
    np.testing.assert_allclose(both[1], one[2], atol=1e-6)
    with pytest.raises(GPUAError, match="synonyms has 1 entries for 2 classes"):
        build_text_prototypes(encode, ["automobile", "cat"], temps, synonyms=[["car"]])


def test_a_file_named_like_a_builtin_set_is_read_and_said(tmp_path, monkeypatch):
    """Was: a file `simple` (or `cifar10`) in the working folder replaced the built-in set without a word."""
    import warnings

    from gpua.data.classnames import resolve_classnames
    from gpua.data.prompts import get_templates

    monkeypatch.chdir(tmp_path)
    (tmp_path / "simple").write_text("a drawing of a {}.\n")
    (tmp_path / "cifar10").write_text("x\ny\n")
    with pytest.warns(UserWarning, match=r"templates='simple' reads the file 'simple' in the working folder, not the built-in "
                                         r"template set of that name; write ./simple to mean the file"):
        assert get_templates("simple") == ["a drawing of a {}."]
    with pytest.warns(UserWarning, match=r"classnames='cifar10' reads the file 'cifar10' in the working folder, not the built-in class list"):
        assert resolve_classnames("cifar10") == ["x", "y"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_templates("./simple") == ["a drawing of a {}."] and resolve_classnames("./cifar10") == ["x", "y"]


def test_a_repeated_template_is_kept_and_said(tmp_path):
    from gpua.data.prompts import get_templates

    path = tmp_path / "t.txt"
    path.write_text("a photo of a {}.\na sketch of a {}.\na photo of a {}.\n")
    with pytest.warns(UserWarning, match=r"lists 1 template\(s\) more than once \(first: 'a photo of a \{\}.'\); each copy counts"):
        assert get_templates(str(path)) == ["a photo of a {}.", "a sketch of a {}.", "a photo of a {}."]
