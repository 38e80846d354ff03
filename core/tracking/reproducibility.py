"""What a tracked run records about where it ran, under the keys the engine uses
(:func:`mlrig.engine.runner.record_reproducibility`): ``seed``, ``python``, ``platform``,
``packages``, ``git_commit``, plus ``git_dirty``, ``command`` and ``seed_source``.

Everything is best effort: no git, no repository, a package without a distribution each
leaves its key empty instead of failing the run.
"""

from __future__ import annotations

import platform as pyplatform
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["capture", "git_state", "imported_packages", "seed_generators"]

#: import names whose distribution is named otherwise (the common ones)
_DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "PyYAML",
    "PIL": "Pillow",
    "cv2": "opencv-python",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "jwt": "PyJWT",
    "attr": "attrs",
    "google.protobuf": "protobuf",
    "lightning_fabric": "lightning",
    "pytorch_lightning": "lightning",
    "tf_keras": "tf-keras",
}
_SEED_LIMIT = 2**32


def imported_packages() -> dict[str, str]:
    """``{distribution: version}`` of the top-level modules imported so far that come
    from an installed distribution (the standard library has none)."""
    stdlib = sys.stdlib_module_names
    found: dict[str, str] = {}
    for module in list(sys.modules):
        if "." in module or module.startswith("_") or module in stdlib:
            continue
        name = _DISTRIBUTIONS.get(module, module)
        try:
            found[name] = metadata.version(name)
        except (metadata.PackageNotFoundError, ValueError):
            continue
    return dict(sorted(found.items()))


def _script_dir() -> Path:
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    return Path(file).resolve().parent if file else Path.cwd()


def git_state(folder: Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git repository holding ``folder`` (default: the running
    script's folder); ``(None, None)`` without git or a repository."""
    where = str(folder or _script_dir())
    try:
        commit = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


def seed_generators(seed: int) -> None:
    """Seed Python's and NumPy's global generators (and torch's when imported)."""
    from mlrig.engine.runner import seed_everything

    seed_everything(seed)


def capture(*, seed: int | None = None) -> dict[str, Any]:
    """The reproducibility record of a run starting now; ``seed`` given or drawn."""
    commit, dirty = git_state()
    drawn = seed is None
    if drawn:
        seed = random.SystemRandom().randrange(_SEED_LIMIT)
    return {
        "seed": seed,
        "seed_source": "drawn" if drawn else "given",
        "python": pyplatform.python_version(),
        "platform": pyplatform.platform(),
        "packages": imported_packages(),
        "git_commit": commit,
        "git_dirty": dirty,
        "command": list(sys.argv),
    }
