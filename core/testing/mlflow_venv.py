"""The real ``mlflow`` client in a virtual environment of its own, for tests and benchmarks.

mlrig never imports mlflow. Tests that check compatibility with it (the MLflow tracking
REST routes, ``mlrig import mlflow``) run the real client in a subprocess, from a virtual
environment made the first time under ``~/.cache/mlrig-bench/mlflow-client`` and reused
afterwards::

    from mlrig.testing.mlflow_venv import mlflow_python, run_mlflow_script

    python = mlflow_python()            # installs mlflow the first time (a few minutes)
    run_mlflow_script("import mlflow; print(mlflow.__version__)", env={...})

The install is guarded by a file lock, so two test processes that ask at once make the
environment once; a marker file written after a complete install names the requirements,
so a half-made or outdated environment is made again. scikit-learn and numpy are pinned to
the versions of the calling interpreter (when it has them), so pickled models move between
the two environments. :class:`MlflowUnavailable` says the environment could not be made;
:func:`mlflow_python_or_skip` turns that into a pytest skip only when the package index is
unreachable, and into a failure otherwise.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "MLFLOW_REQUIREMENT",
    "MlflowUnavailable",
    "default_venv",
    "index_reachable",
    "mlflow_python",
    "mlflow_python_or_skip",
    "run_mlflow_script",
]

#: the mlflow release the compatibility tests run (the full package: the client, the file
#: and SQLite stores and the model flavours; mlflow-skinny lacks the SQL store)
MLFLOW_REQUIREMENT = "mlflow==3.17.2"
#: seconds one ``pip install`` may take before it counts as failed
INSTALL_TIMEOUT = 1200
_MARKER = ".mlrig-ready"


class MlflowUnavailable(RuntimeError):
    """The mlflow client environment could not be made (``reachable``: was the index up)."""

    def __init__(self, message: str, *, reachable: bool) -> None:
        super().__init__(message)
        self.reachable = reachable


def default_venv() -> Path:
    """Where the environment lives: ``~/.cache/mlrig-bench/mlflow-client``."""
    return Path.home() / ".cache" / "mlrig-bench" / "mlflow-client"


def _pins() -> list[str]:
    """scikit-learn and numpy at this interpreter's versions, where it has them."""
    pins = []
    for dist in ("scikit-learn", "numpy"):
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def _requirements(requirement: str) -> list[str]:
    return [requirement, *_pins()]


def _ready(venv: Path, requirements: list[str]) -> bool:
    python = venv / "bin" / "python"
    marker = venv / _MARKER
    if not python.exists() or not marker.exists():
        return False
    return marker.read_text().split("\n") == requirements


def index_reachable(python: Path | str | None = None) -> bool:
    """Whether pip reaches its package index (asks it for mlflow's versions)."""
    probe = [str(python or sys.executable), "-m", "pip", "index", "versions", "mlflow"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "mlflow" in done.stdout


def mlflow_python(venv: Path | None = None, *, requirement: str = MLFLOW_REQUIREMENT) -> Path:
    """The python of a virtual environment with the real mlflow client; made the first time.

    ``venv`` defaults to :func:`default_venv`. Returns quickly when the environment is
    already complete; otherwise creates it (``python -m venv --clear``) and installs
    ``requirement`` (and the scikit-learn/numpy pins) with pip, under a file lock. Raises
    :class:`MlflowUnavailable` when that fails, saying why.
    """
    venv = venv or default_venv()
    requirements = _requirements(requirement)
    python = venv / "bin" / "python"
    if _ready(venv, requirements):
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f"{venv.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing it right now
        if _ready(venv, requirements):
            return python
        _install(venv, requirements)
    return python


def _install(venv: Path, requirements: list[str]) -> None:
    python = venv / "bin" / "python"
    base = getattr(sys, "_base_executable", sys.executable)
    print(f"installing {' '.join(requirements)} into {venv} (first time only)", file=sys.stderr)
    made = subprocess.run(
        [base, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        msg = f"cannot create the virtual environment {str(venv)!r}: {made.stderr.strip()}"
        raise MlflowUnavailable(msg, reachable=True)
    command = [str(python), "-m", "pip", "install", "--quiet", *requirements]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        msg = f"pip install {' '.join(requirements)} took over {INSTALL_TIMEOUT} s"
        raise MlflowUnavailable(msg, reachable=index_reachable(python)) from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        msg = f"pip install {' '.join(requirements)} failed in {str(venv)!r}: {tail}"
        raise MlflowUnavailable(msg, reachable=index_reachable(python))
    (venv / _MARKER).write_text("\n".join(requirements))


def mlflow_python_or_skip(venv: Path | None = None) -> Path:
    """:func:`mlflow_python` for a test: skips if the package index is unreachable, fails
    (with pip's reason) if the install broke for another reason."""
    import pytest

    try:
        return mlflow_python(venv)
    except MlflowUnavailable as exc:
        if not exc.reachable:
            pytest.skip(f"the real mlflow client cannot be installed (no package index): {exc}")
        pytest.fail(str(exc))
        raise  # pytest.fail raises; this keeps type checkers content


def run_mlflow_script(
    script: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    python: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python source) with the mlflow environment's python; returns the
    finished process (stdout, stderr as text), raising ``AssertionError`` with both when
    it exits non-zero. ``env`` is added to the caller's environment less its ``MLFLOW_*``,
    ``MLRIG_*``, ``PYTHONPATH`` and ``VIRTUAL_ENV``, with the venv's ``bin`` first on PATH."""
    python = python or mlflow_python()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLRIG_"))}
    base.pop("PYTHONPATH", None)
    base.pop("VIRTUAL_ENV", None)
    base["PATH"] = f"{python.parent}{os.pathsep}{base.get('PATH', '')}"
    base["PYTHONUNBUFFERED"] = "1"
    base.update(env or {})
    done = subprocess.run(
        [str(python), "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=base,
        check=False,
    )
    if done.returncode != 0:
        msg = (
            f"the mlflow script exited {done.returncode}\n--- stdout\n{done.stdout}"
            f"\n--- stderr\n{done.stderr}"
        )
        raise AssertionError(msg)
    return done
