"""Package discovery for the folder-to-package mapping in pyproject.toml.

pyproject.toml maps ``core/`` -> ``mlrig``, ``api/`` -> ``mlrig.api``, ``cli/`` ->
``mlrig.cli`` and ``plugins/`` -> ``mlrig.plugins`` (setuptools ``package-dir``).
setuptools' automatic discovery cannot rename folders, so this lists the packages
under each mapped folder; everything else lives in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup

FOLDERS = {"core": "mlrig", "api": "mlrig.api", "cli": "mlrig.cli", "plugins": "mlrig.plugins"}


def _packages() -> list[str]:
    here = Path(__file__).parent
    found = []
    for folder, package in FOLDERS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(here / folder).parts
            found.append(".".join((package, *relative)))
    return found


setup(packages=_packages())
