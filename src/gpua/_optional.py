"""Optional dependencies: imported where a feature first needs them, named with their install command.

gpua's core (the fits, feature files, the command line's parsing) needs numpy, scipy, torch, POT,
safetensors, tqdm and platformdirs only. Reading images, the model back ends, segmentation's
PNGs, plots and Dask clusters need packages of the extras in ``pyproject.toml``; a user who
installed ``gpua`` without them gets one :class:`MissingDependencyError` naming the feature and the
``pip`` command, not a ``ModuleNotFoundError`` from deep inside (the command line prints it as
one line).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ._errors import GPUAError, MissingDependencyError

__all__ = ["OPTIONAL_DEPENDENCIES", "import_optional"]

#: top-level module -> (the PyPI distribution that provides it, the gpua extra that installs it)
OPTIONAL_DEPENDENCIES: dict[str, tuple[str, str]] = {
    "PIL": ("pillow", "encoders"),
    "onnx": ("onnx", "encoders"),
    "onnxruntime": ("onnxruntime", "encoders"),
    "transformers": ("transformers", "encoders"),
    "open_clip": ("open-clip-torch", "encoders"),
    "timm": ("timm", "encoders"),
    "imgviz": ("imgviz", "seg"),
    "matplotlib": ("matplotlib", "plots"),
    "sklearn": ("scikit-learn", "plots"),
    "distributed": ("dask[distributed]", "dist"),
    "efficientnet_lite_pytorch": ("efficientnet-lite-pytorch", "offline"),
    "pillow_heif": ("pillow-heif", "heif"),
}


#: The environment variables a package reads as it is imported (a bad value stops the import).
_SETTINGS_PREFIX = {"matplotlib": "MPL"}


def import_optional(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"PIL.Image"``), or say which package ``purpose`` needs and how to install it.

    Parameters
    ----------
    module : str
        Dotted module name; its top-level package must be a key of :data:`OPTIONAL_DEPENDENCIES`.
    purpose : str
        What needs it, as the start of a sentence: ``"writing label PNGs"``.

    Returns
    -------
    module : types.ModuleType

    Raises
    ------
    MissingDependencyError
        The import failed; the message names the distribution, the extra and the reason
        (a package that is installed but broken shows its own import error there).
    """
    distribution, extra = OPTIONAL_DEPENDENCIES[module.partition(".")[0]]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs {distribution}, which does not import here ({exc}); install it with "
            f"pip install '{distribution}' or pip install 'gpua[{extra}]'."
        ) from exc
    except Exception as exc:  # installed, but its import fails on its settings (MPLBACKEND=typo): was a traceback
        top = module.partition(".")[0]
        setting = [k for k in os.environ if k.upper().startswith(_SETTINGS_PREFIX.get(top, "\0"))]
        hint = (f"check {', '.join(f'{k}={os.environ[k]!r}' for k in setting)} in the environment (unset it, or set a "
                "valid value)" if setting else f"reinstall it (pip install --force-reinstall '{distribution}')")
        raise GPUAError(f"{purpose} needs {distribution}, which is installed but fails to import here "
                        f"({type(exc).__name__}: {exc}); {hint}.") from exc
