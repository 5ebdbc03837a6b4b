"""Helpers of the reliability tests: child processes killed at a chosen point, tree snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_child(code: str, *, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process that imports this worktree's gpua."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def kill_on(pattern: str, nth: int = 1) -> str:
    """Child-process prelude: SIGKILL this process at the ``nth`` ``os.replace`` whose destination matches ``pattern``.

    The kill lands exactly where a real crash would be worst: after the temp file or folder is
    complete, before (or between) the renames that publish it.
    """
    return textwrap.dedent(f"""
        import os, re, signal
        _real_replace, _seen = os.replace, [0]
        def _replace(src, dst, *a, **k):
            if re.search({pattern!r}, os.fspath(dst)):
                _seen[0] += 1
                if _seen[0] == {nth}:
                    os.kill(os.getpid(), signal.SIGKILL)
            return _real_replace(src, dst, *a, **k)
        os.replace = _replace
    """)


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) -> its bytes: what "unchanged" means."""
    path = Path(path)
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
