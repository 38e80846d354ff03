"""mlrig.testing.peer_venv: a peer's environment is reused only when complete and made for
exactly the requirements asked; nothing here installs anything (a ready environment is
faked with a marker, an unready one with a failing venv maker)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mlrig.testing import mlflow_venv, peer_venv


def fake_ready(venv: Path, requirements: list[str]) -> Path:
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / peer_venv.MARKER).write_text("\n".join(requirements))
    return venv / "bin" / "python"


def test_ready_only_when_complete_and_for_the_same_requirements(tmp_path):
    venv = tmp_path / "optuna"
    assert not peer_venv.venv_ready(venv, ["optuna==5.0.0"])
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    assert not peer_venv.venv_ready(venv, ["optuna==5.0.0"]), "no marker: a half-made install"
    (venv / peer_venv.MARKER).write_text("optuna==4.0.0")
    assert not peer_venv.venv_ready(venv, ["optuna==5.0.0"]), "outdated"
    (venv / peer_venv.MARKER).write_text("optuna==5.0.0")
    assert peer_venv.venv_ready(venv, ["optuna==5.0.0"])
    assert not peer_venv.venv_ready(venv, ["optuna==5.0.0", "numpy==2.0.0"])


def test_a_ready_environment_is_returned_without_installing(tmp_path, monkeypatch):
    def no_install(*_args, **_kwargs):
        raise AssertionError("installed again")

    monkeypatch.setattr(peer_venv, "_install", no_install)
    python = fake_ready(tmp_path / "peer", ["optuna==5.0.0"])
    assert peer_venv.peer_python(tmp_path / "peer", ["optuna==5.0.0"]) == python
    # a bare name is a folder under the cache root
    monkeypatch.setattr(peer_venv, "cache_root", lambda: tmp_path)
    assert peer_venv.peer_python("peer", ["optuna==5.0.0"]) == python
    # mlflow_venv is the same machinery, with the scikit-learn/numpy pins
    pinned = peer_venv.pinned(mlflow_venv.MLFLOW_REQUIREMENT)
    assert pinned[0] == mlflow_venv.MLFLOW_REQUIREMENT
    assert [p.split("==")[0] for p in pinned[1:]] == ["scikit-learn", "numpy"]
    mlflow = fake_ready(tmp_path / "mlflow", pinned)
    assert mlflow_venv.mlflow_python(tmp_path / "mlflow") == mlflow


def test_a_failed_install_says_why(tmp_path, monkeypatch):
    """The venv maker fails (``false`` stands in for the interpreter): the error names the
    folder, and mlflow_venv raises its own error class, a PeerUnavailable."""
    monkeypatch.setattr(sys, "_base_executable", "/bin/false", raising=False)
    with pytest.raises(peer_venv.PeerUnavailable) as caught:
        peer_venv.peer_python(tmp_path / "venv", ["optuna==5.0.0"])
    assert "cannot create the virtual environment" in str(caught.value)
    assert str(tmp_path / "venv") in str(caught.value) and caught.value.reachable is True
    assert not peer_venv.venv_ready(tmp_path / "venv", ["optuna==5.0.0"])
    with pytest.raises(mlflow_venv.MlflowUnavailable) as mlflow_caught:
        mlflow_venv.mlflow_python(tmp_path / "mlflow")
    assert isinstance(mlflow_caught.value, peer_venv.PeerUnavailable)


def test_run_peer_script_cleans_the_environment_and_reports_failures(monkeypatch):
    monkeypatch.setenv("MLRIG_URL", "http://example.invalid")
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    python = Path(sys.executable)
    script = "import os; print(os.environ.get('MLRIG_URL'), os.environ.get('PYTHONPATH'))"
    done = peer_venv.run_peer_script(python, script, env={"EXTRA": "1"})
    assert done.stdout.split() == ["None", "None"]
    with pytest.raises(AssertionError, match="exited 3"):
        peer_venv.run_peer_script(python, "import sys; print('out'); sys.exit(3)")
