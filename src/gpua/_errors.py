"""Exceptions and warnings raised by gpua.

Every error a user can cause is a :class:`GPUAError`, a subclass of :class:`ValueError`, whose
message names the offending argument and says how to fix it.
"""

import os
import sys
import warnings

__all__ = ["GPUAError", "NotFittedError", "ModelFileError", "MissingDependencyError", "ConvergenceWarning", "warn_user"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class GPUAError(ValueError):
    """Bad input to gpua: the message names the argument and the fix."""


class NotFittedError(GPUAError, AttributeError):
    """A method that needs a fitted model was called before ``fit``."""


class ModelFileError(GPUAError):
    """A model or feature file is missing, corrupt, truncated or from a newer gpua."""


class MissingDependencyError(GPUAError, ImportError):
    """A feature needs an optional package that is not installed (or does not import).

    The message names the package and the ``pip install 'gpua[extra]'`` that provides it. Also an
    :class:`ImportError`, so code that already catches import failures keeps working.
    """


class NoReadableImageError(GPUAError):
    """Not one image of a source could be decoded (``gpua.extract.extract_features``).

    A caller that reads several sources (``gpua classify``: the photos and the pool) catches it to
    say which source it was.
    """


class LongTailCountsError(GPUAError):
    """A class has too few samples for its place in a long-tail profile (``gpua.calibrate``).

    ``gpua calibrate longtail`` catches it to add that the counts were taken after its hold-out.
    """


class ConvergenceWarning(UserWarning):
    """An iterative step stopped at its cap before its tolerance (as in scikit-learn and POT).

    The message names the parameter to raise (``sinkhorn_max_iter``, ``max_outer``...). Turn it
    into an error with ``warnings.simplefilter("error", gpua.ConvergenceWarning)``.
    """


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """:func:`warnings.warn` pointing at the first caller outside gpua: the user's line, however deep
    gpua's own calls go (a fit's driver, its stages, a second fit), where a fixed ``stacklevel``
    would point inside gpua as soon as a call is added between."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
