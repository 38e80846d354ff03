"""Small datasets bundled with mlrig, for the quickstart, examples and tests.

Each is a CSV file next to this module, written once from the copies scikit-learn ships:

- ``iris``: 150 rows; ``sepal_length, sepal_width, petal_length, petal_width`` (cm) and
  ``species`` (int 0-2: setosa, versicolor, virginica). Classification.
- ``diabetes``: 442 rows; ``age, sex, bmi, bp, s1 .. s6`` (unscaled) and ``target``
  (disease progression one year after baseline). Regression.

:func:`path` needs nothing; :func:`load` needs pandas (``pip install 'mlrig[sklearn]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlrig.errors import MissingExtraError, NotFoundError

if TYPE_CHECKING:
    import pandas

__all__ = ["TARGETS", "load", "names", "path", "target"]

_HERE = Path(__file__).parent

#: dataset name -> its target column
TARGETS: dict[str, str] = {"iris": "species", "diabetes": "target"}


def names() -> list[str]:
    """The names of the bundled datasets."""
    return sorted(TARGETS)


def path(name: str) -> Path:
    """The CSV file of bundled dataset ``name``."""
    if name not in TARGETS:
        msg = f"no bundled dataset {name!r}; bundled: {', '.join(names())}"
        raise NotFoundError(msg)
    return _HERE / f"{name}.csv"


def target(name: str) -> str:
    """The name of the target column of bundled dataset ``name``."""
    path(name)  # validates the name
    return TARGETS[name]


def load(name: str) -> pandas.DataFrame:
    """Bundled dataset ``name`` as a pandas DataFrame (features and target column)."""
    csv = path(name)
    try:
        import pandas
    except ModuleNotFoundError as exc:
        msg = f"mlrig.datasets.load needs pandas: pip install 'mlrig[sklearn]' ({exc.name} missing)"
        raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc
    return pandas.read_csv(csv)
