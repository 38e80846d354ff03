"""pytest plugin: tests marked ``gpu`` are skipped, with a reason, where no CUDA GPU is.

Load it with ``pytest_plugins = ["mlrig.testing.gpu"]``; then ``@pytest.mark.gpu`` on a
test (or class, or module) means "needs a CUDA GPU". The check looks for the NVIDIA
driver (``/proc/driver/nvidia/gpus`` or ``nvidia-smi -L``) and imports no framework;
a test that also needs a framework's CUDA support (onnxruntime's CUDA provider, say)
checks that itself and skips with its own reason.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

SKIP_REASON = "needs a CUDA GPU"


@lru_cache(maxsize=1)
def cuda_gpu_present() -> bool:
    """Whether an NVIDIA GPU and its driver are visible to this process."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"gpu: {SKIP_REASON}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda_gpu_present():
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def cuda_gpu() -> None:
    """Skip the test (reason: needs a CUDA GPU) where no CUDA GPU is present."""
    if not cuda_gpu_present():
        pytest.skip(SKIP_REASON)
