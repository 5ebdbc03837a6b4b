"""The ``>>>`` examples in gpua's docstrings run, and hold, as part of the suite."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gpua


def _modules() -> list[str]:
    names = ["gpua"]
    for info in pkgutil.walk_packages(gpua.__path__, prefix="gpua."):
        names.append(info.name)
    return sorted(names)


def _with_examples(name: str) -> bool:
    """Modules whose source holds a ``>>>`` (import the others only if they have one)."""
    spec = importlib.util.find_spec(name)
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py"):
        return False
    with open(origin, encoding="utf-8") as fh:
        return ">>>" in fh.read()


MODULES = [m for m in _modules() if _with_examples(m)]


def test_the_main_public_functions_have_examples():
    for name in ("gpua.estimator", "gpua.params", "gpua.fitting", "gpua.refinement"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name) if t.examples]
    assert tests, f"{name} has '>>>' in its source but no example was found"
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see the output above)"


def test_no_module_has_an_invalid_escape_sequence():
    """A docstring with LaTeX (``\\mathrm``) in a plain string compiles with a SyntaxWarning, an
    error under ``-W error`` and in later Pythons: each must be a raw string."""
    import warnings
    from pathlib import Path

    root = Path(gpua.__file__).parent
    for path in sorted(root.rglob("*.py")):
        with warnings.catch_warnings():
            warnings.simplefilter("error", SyntaxWarning)
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
