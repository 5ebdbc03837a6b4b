"""Optional dependencies: a feature whose package is missing says which package and extra to install."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from gpua import GPUAError, MissingDependencyError
from gpua._optional import OPTIONAL_DEPENDENCIES, import_optional


def _uninstall(monkeypatch, module: str) -> None:
    """Make ``import module`` (and its submodules) fail as if the package were not installed."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")] + [module]:
        monkeypatch.setitem(sys.modules, name, None)


def test_an_installed_package_is_returned():
    pil_image = import_optional("PIL.Image", "reading images")
    assert pil_image.__name__ == "PIL.Image" and hasattr(pil_image, "open")


def test_the_error_names_the_feature_the_package_and_the_extra(monkeypatch):
    _uninstall(monkeypatch, "imgviz")
    with pytest.raises(MissingDependencyError) as info:
        import_optional("imgviz", "writing label PNGs")
    message = str(info.value)
    assert message.startswith("writing label PNGs needs imgviz")
    assert "pip install 'imgviz'" in message and "pip install 'gpua[seg]'" in message
    # one GPUAError for the command line, and still an ImportError for code that catches those
    assert isinstance(info.value, GPUAError) and isinstance(info.value, ImportError)


def test_every_extra_named_exists_in_pyproject():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (distribution, extra) in OPTIONAL_DEPENDENCIES.items():
        names = [req.split(">")[0].split("=")[0].split("[")[0] for req in extras[extra]]
        assert distribution.split("[")[0] in names, (module, distribution, extra)


def _write_label(tmp_path):
    from gpua.segment.io import write_label_png

    write_label_png(tmp_path / "mask.png", np.zeros((2, 2), np.int64))


def _read_image(tmp_path):
    from gpua.data import open_image

    open_image(tmp_path / "missing.png")


def _confusion_plot(tmp_path):
    from gpua.report import plot_confusion_matrix

    plot_confusion_matrix(tmp_path / "c.png", {"classnames": ["a", "b"], "rows_true_columns_predicted": [[1, 0], [0, 1]]})


def _encoder(spec):
    def create(tmp_path):
        from gpua.encoders import create_encoder

        create_encoder(spec)

    return create


def _onnx_encoder(tmp_path):
    from gpua.encoders._onnx import OnnxEncoder

    OnnxEncoder("onnx:x", tmp_path / "x.onnx", input="pixels", output="features")


def _cluster(tmp_path):
    from gpua.stream import connect

    connect("local")


def _demo_plot(tmp_path):
    from gpua.demo import embedding_plot

    embedding_plot(tmp_path / "e.png", [("x", np.eye(4))], np.arange(4), ["a", "b", "c", "d"])


@pytest.mark.parametrize(
    "module, extra, use",
    [
        ("imgviz", "seg", _write_label),
        ("PIL", "encoders", _read_image),
        ("matplotlib", "plots", _confusion_plot),
        ("sklearn", "plots", _demo_plot),
        ("timm", "encoders", _encoder("timm:vit_tiny_patch16_224")),
        ("transformers", "encoders", _encoder("hf:openai/clip-vit-base-patch32")),
        ("open_clip", "encoders", _encoder("open_clip:ViT-B-32")),
        ("onnxruntime", "encoders", _onnx_encoder),
        ("distributed", "dist", _cluster),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_feature_names_its_missing_package(monkeypatch, tmp_path, module, extra, use):
    _uninstall(monkeypatch, module)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'gpua\[{extra}\]'"):
        use(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_segment_command_says_it_before_loading_a_model(monkeypatch, tmp_path, capsys):
    from PIL import Image

    from gpua.cli import main

    (tmp_path / "photos").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
    (tmp_path / "classes.txt").write_text("sky\ngrass\n")
    _uninstall(monkeypatch, "imgviz")
    monkeypatch.setattr("gpua.cli.segment._segmenter", lambda *a, **k: pytest.fail("a model was loaded first"))
    argv = ["segment", "--zero-shot", "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "masks"),
            "--classnames", str(tmp_path / "classes.txt"), "--vfm", "planted:vfm", "--vlm", "planted:vlm"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpua segment: error: gpua segment (its masks' palette and overlays) needs imgviz" in err
    assert "pip install 'gpua[seg]'" in err and not (tmp_path / "masks").exists()


def test_a_package_whose_import_fails_on_its_settings_names_the_setting(monkeypatch):
    """Was: MPLBACKEND=typo gave matplotlib's ValueError traceback from deep inside its import."""
    import importlib

    from gpua._errors import GPUAError, MissingDependencyError
    from gpua._optional import import_optional

    def broken(name):
        raise ValueError("Key backend: 'typo' is not a valid value for backend")

    monkeypatch.setattr(importlib, "import_module", broken)
    monkeypatch.setenv("MPLBACKEND", "typo")
    with pytest.raises(GPUAError, match=r"the plot needs matplotlib, which is installed but fails to import here \(ValueError: "
                                        r"Key backend.*\); check MPLBACKEND='typo' in the environment") as caught:
        import_optional("matplotlib.figure", "the plot")
    assert not isinstance(caught.value, MissingDependencyError)  # installed: not a missing package
    monkeypatch.delenv("MPLBACKEND")
    with pytest.raises(GPUAError, match=r"fails to import here .*; reinstall it"):
        import_optional("matplotlib.figure", "the plot")
