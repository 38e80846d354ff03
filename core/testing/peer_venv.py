"""A peer project (MLflow, Optuna...) in a virtual environment of its own, for tests and
benchmarks that compare mlrig with it or check compatibility against it.

mlrig never imports its peers. A benchmark that runs one beside mlrig asks for its
environment, made the first time under ``~/.cache/mlrig-bench/NAME`` and reused
afterwards, and runs the peer's code with that environment's python::

    from mlrig.testing.peer_venv import peer_python, run_peer_script

    python = peer_python("optuna", ["optuna==5.0.0"])   # installs it the first time
    run_peer_script(python, "import optuna; print(optuna.__version__)")

The install is guarded by a file lock, so two processes that ask at once make the
environment once; a marker file written after a complete install names the requirements,
so a half-made or outdated environment is made again. :func:`pinned` adds scikit-learn
and numpy at the calling interpreter's versions (pickled models then move between the two
environments). :class:`PeerUnavailable` says the environment could not be made and
whether the package index was reachable. :mod:`mlrig.testing.mlflow_venv` is this for
the mlflow client.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "PeerUnavailable",
    "cache_root",
    "index_reachable",
    "peer_python",
    "pinned",
    "run_peer_script",
    "venv_ready",
]

#: seconds one ``pip install`` may take before it counts as failed
INSTALL_TIMEOUT = 1200
MARKER = ".mlrig-ready"


class PeerUnavailable(RuntimeError):
    """A peer's environment could not be made (``reachable``: was the index up)."""

    def __init__(self, message: str, *, reachable: bool) -> None:
        super().__init__(message)
        self.reachable = reachable


def cache_root() -> Path:
    """Where the peers' environments live: ``~/.cache/mlrig-bench``."""
    return Path.home() / ".cache" / "mlrig-bench"


def pinned(*requirements: str) -> list[str]:
    """``requirements`` plus scikit-learn and numpy at this interpreter's versions, where
    it has them."""
    pins = []
    for dist in ("scikit-learn", "numpy"):
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return [*requirements, *pins]


def venv_ready(venv: Path, requirements: Sequence[str]) -> bool:
    """Whether ``venv`` is a complete install of exactly ``requirements``."""
    marker = venv / MARKER
    if not (venv / "bin" / "python").exists() or not marker.exists():
        return False
    return marker.read_text().split("\n") == list(requirements)


def index_reachable(package: str, python: Path | str | None = None) -> bool:
    """Whether pip reaches its package index (asks it for ``package``'s versions)."""
    probe = [str(python or sys.executable), "-m", "pip", "index", "versions", package]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and package in done.stdout


def _project(requirement: str) -> str:
    """The distribution name of a requirement (``optuna==5.0.0`` -> ``optuna``)."""
    for sep in "=<>!~[; ":
        requirement = requirement.split(sep, 1)[0]
    return requirement


def peer_python(venv: Path | str, requirements: Sequence[str]) -> Path:
    """The python of a virtual environment holding ``requirements``; made the first time.

    ``venv`` is a folder (a :class:`~pathlib.Path`, or a string with a ``/``), or a bare
    name for a folder under :func:`cache_root`. Returns
    quickly when the environment is already complete; otherwise creates it (``python -m
    venv --clear``) and installs ``requirements`` with pip, under a file lock. Raises
    :class:`PeerUnavailable` when that fails, saying why.
    """
    if isinstance(venv, str) and os.sep not in venv:
        venv = cache_root() / venv
    venv = Path(venv)
    requirements = list(requirements)
    python = venv / "bin" / "python"
    if venv_ready(venv, requirements):
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f"{venv.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing it right now
        if not venv_ready(venv, requirements):
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
        raise PeerUnavailable(msg, reachable=True)
    command = [str(python), "-m", "pip", "install", "--quiet", *requirements]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        msg = f"pip install {' '.join(requirements)} took over {INSTALL_TIMEOUT} s"
        raise PeerUnavailable(
            msg, reachable=index_reachable(_project(requirements[0]), python)
        ) from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        msg = f"pip install {' '.join(requirements)} failed in {str(venv)!r}: {tail}"
        raise PeerUnavailable(msg, reachable=index_reachable(_project(requirements[0]), python))
    (venv / MARKER).write_text("\n".join(requirements))


def peer_env(python: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment for a peer's process: less ``MLFLOW_*``, ``MLRIG_*``,
    ``PYTHONPATH`` and ``VIRTUAL_ENV``, the venv's ``bin`` first on PATH, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLRIG_"))}
    base.pop("PYTHONPATH", None)
    base.pop("VIRTUAL_ENV", None)
    base["PATH"] = f"{python.parent}{os.pathsep}{base.get('PATH', '')}"
    base["PYTHONUNBUFFERED"] = "1"
    base.update(env or {})
    return base


def run_peer_script(
    python: Path,
    script: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (Python source) with a peer environment's ``python``; returns the
    finished process (stdout, stderr as text), raising ``AssertionError`` with both when
    it exits non-zero. The environment is :func:`peer_env`'s."""
    done = subprocess.run(
        [str(python), "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=peer_env(python, env),
        check=False,
    )
    if done.returncode != 0:
        msg = (
            f"the peer script exited {done.returncode}\n--- stdout\n{done.stdout}"
            f"\n--- stderr\n{done.stderr}"
        )
        raise AssertionError(msg)
    return done
