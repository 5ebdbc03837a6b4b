"""A core install (no extras) runs the tests it can and skips the rest, naming what to install.

Each test here starts a separate pytest with ``GPUA_TEST_BLOCK`` set (tests/conftest.py), so that
the optional packages do not import there, as if only ``pip install gpua`` had been run. Those
inner runs never include this file, so nothing recurses.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

#: A few files covering each way a test meets a missing package: a module-level importorskip
#: (segment/test_seg_io.py, encoders/test_enc_open_clip.py), a MissingDependencyError raised
#: inside a test (test_demo.py, test_extract.py), an import in a fixture (test_extract.py's
#: photos), tests that fake a missing package themselves (test_optional.py), and core tests that
#: must all still pass (test_procrustes.py).
FILES = [
    "tests/test_optional.py",
    "tests/test_demo.py",
    "tests/test_extract.py",
    "tests/segment/test_seg_io.py",
    "tests/encoders/test_enc_open_clip.py",
    "tests/test_procrustes.py",
]


def _env(block: str | None) -> dict[str, str]:
    """This process's environment for a child pytest, with ``block`` instead of any outer block."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "GPUA_TEST_BLOCK", "_GPUA_TEST_BLOCK", "COV_CORE_"))}
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and "gpua-test-block-" not in p]
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    else:
        env.pop("PYTHONPATH", None)
    if block:
        env["GPUA_TEST_BLOCK"] = block
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _pytest(args, *, cwd: Path, block: str | None, junit: Path) -> tuple[subprocess.CompletedProcess, dict[str, tuple[str, str]]]:
    """Run pytest in a child process; returns it and {test id: (outcome, skip reason or message)}."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}", *args],
        cwd=cwd, env=_env(block), capture_output=True, text=True, timeout=240,
    )
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, text = child.tag, child.get("message", "")
                if text == "collection skipped":  # a module-level skip: the text is (path, line, "Skipped: reason")
                    text = ast.literal_eval(child.text)[2].removeprefix("Skipped: ")
                break
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = (outcome, text)
    return proc, outcomes


def test_the_core_install_skips_what_needs_an_extra_and_runs_the_rest(tmp_path):
    proc, outcomes = _pytest(FILES, cwd=ROOT, block="all", junit=tmp_path / "core.xml")
    report = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    failed = {k: v for k, v in outcomes.items() if v[0] in ("failure", "error")}
    assert not failed, report
    skipped = {k: v[1] for k, v in outcomes.items() if v[0] == "skipped"}
    # every file but the core one skips something; each skip names the package and its extra
    for name in ("test_optional", "test_demo", "test_extract", "test_seg_io", "test_enc_open_clip"):
        assert any(name in k for k in skipped), (name, report)
    assert any("test_optional" in k and v[0] == "passed" for k, v in outcomes.items()), report
    for test, reason in skipped.items():
        if "CUDA" not in reason:
            assert reason.startswith("needs ") and "pip install 'gpua[" in reason, (test, reason)
    assert "needs pillow: pip install 'gpua[encoders]'" in "\n".join(skipped.values())
    assert "needs matplotlib: pip install 'gpua[plots]'" in "\n".join(skipped.values())
    core = {k: v for k, v in outcomes.items() if "test_procrustes" in k}
    assert core and all(v[0] == "passed" for v in core.values()), core


HOOK_TESTS = '''
import subprocess
import sys

import pytest

from gpua._optional import import_optional


@pytest.fixture
def imgviz_in_a_fixture():
    import imgviz

    return imgviz


def test_raised():
    import_optional("imgviz", "writing label PNGs")


def test_in_a_fixture(imgviz_in_a_fixture):
    pass


def test_caught_then_failed():
    """As a command line does: the error is printed, the command exits 2, the test's assert fails."""
    try:
        import_optional("imgviz", "writing label PNGs")
    except ImportError as exc:
        print(exc)
    assert False


def test_a_child_process_does_not_import_it_either():
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('imgviz') is not None)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_an_installed_package_faked_missing_still_fails(monkeypatch):
    pytest.importorskip("numpy")
    monkeypatch.setitem(sys.modules, "sklearn", None)  # sklearn is not blocked: its error is a bug here
    import_optional("sklearn", "the demo's embedding plot")


def test_an_ordinary_failure():
    assert 1 == 2
'''


def _hook_project(tmp_path: Path) -> Path:
    """tests/conftest.py and :data:`HOOK_TESTS` in a folder of their own."""
    tmp_path.mkdir()
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "test_hook.py").write_text(textwrap.dedent(HOOK_TESTS))
    return tmp_path


def test_a_missing_package_makes_a_skip_and_nothing_else_does(tmp_path):
    project = _hook_project(tmp_path / "p")
    proc, outcomes = _pytest(["--rootdir", str(project), "test_hook.py"], cwd=project, block="imgviz",
                             junit=tmp_path / "blocked.xml")
    got = {k.rpartition("::")[2]: v for k, v in outcomes.items()}
    report = proc.stdout[-4000:]
    for name in ("test_raised", "test_in_a_fixture", "test_caught_then_failed"):
        outcome, reason = got[name]
        assert outcome == "skipped" and reason.startswith("needs imgviz: pip install 'gpua[seg]'"), (name, report)
    assert got["test_a_child_process_does_not_import_it_either"][0] == "passed", report
    assert got["test_an_installed_package_faked_missing_still_fails"][0] == "failure", report
    assert got["test_an_ordinary_failure"][0] == "failure", report


def test_with_the_package_installed_nothing_is_skipped(tmp_path):
    pytest.importorskip("imgviz")
    project = _hook_project(tmp_path / "p")
    proc, outcomes = _pytest(["--rootdir", str(project), "test_hook.py"], cwd=project, block=None,
                             junit=tmp_path / "full.xml")
    got = {k.rpartition("::")[2]: v[0] for k, v in outcomes.items()}
    assert got == {
        "test_raised": "passed",
        "test_in_a_fixture": "passed",
        "test_caught_then_failed": "failure",
        "test_a_child_process_does_not_import_it_either": "failure",
        "test_an_installed_package_faked_missing_still_fails": "failure",
        "test_an_ordinary_failure": "failure",
    }, proc.stdout[-4000:]
