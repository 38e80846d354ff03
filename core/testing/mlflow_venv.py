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

import subprocess
from collections.abc import Mapping
from pathlib import Path

from mlrig.testing import peer_venv

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


class MlflowUnavailable(peer_venv.PeerUnavailable):
    """The mlflow client environment could not be made (``reachable``: was the index up)."""


def default_venv() -> Path:
    """Where the environment lives: ``~/.cache/mlrig-bench/mlflow-client``."""
    return peer_venv.cache_root() / "mlflow-client"


def index_reachable(python: Path | str | None = None) -> bool:
    """Whether pip reaches its package index (asks it for mlflow's versions)."""
    return peer_venv.index_reachable("mlflow", python)


def mlflow_python(venv: Path | None = None, *, requirement: str = MLFLOW_REQUIREMENT) -> Path:
    """The python of a virtual environment with the real mlflow client; made the first time.

    ``venv`` defaults to :func:`default_venv`. Returns quickly when the environment is
    already complete; otherwise creates it and installs ``requirement`` (and the
    scikit-learn/numpy pins) with pip, under a file lock
    (:func:`mlrig.testing.peer_venv.peer_python`). Raises :class:`MlflowUnavailable` when
    that fails, saying why.
    """
    try:
        return peer_venv.peer_python(venv or default_venv(), peer_venv.pinned(requirement))
    except peer_venv.PeerUnavailable as exc:
        raise MlflowUnavailable(str(exc), reachable=exc.reachable) from None


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
    return peer_venv.run_peer_script(
        python or mlflow_python(), script, env=env, cwd=cwd, timeout=timeout
    )
