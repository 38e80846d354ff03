"""Importers: bring runs and models in from other tools (``mlrig import mlflow URI``).

:func:`open_mlflow` opens an MLflow store by its URI (a tracking server, a database, a
``mlruns/`` folder) as an :class:`~mlrig.importers.mlflow_records.MlflowSource`;
:class:`~mlrig.importers.mlflow_import.MlflowImporter` maps it onto the platform's
services. mlflow itself is never imported: its files and tables are read directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from mlrig.errors import ValidationError

if TYPE_CHECKING:
    from mlrig.importers.mlflow_records import MlflowSource

__all__ = ["open_mlflow"]

#: database URL schemes MLflow's SQL store takes (SQLAlchemy's, with drivers: ``+psycopg``)
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def open_mlflow(
    uri: str,
    *,
    artifacts_root: Path | None = None,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> MlflowSource:
    """The MLflow store ``uri`` names, ready to read.

    - ``http://host:5000``, ``https://...``: a tracking server (its REST API);
    - ``sqlite:///mlflow.db``, ``postgresql://...``, ``mysql://...``: a database store;
    - ``./mlruns``, ``file:///.../mlruns``: a file store; a path to a ``.db`` file is
      taken as SQLite.

    :raises ValidationError: nothing MLflow-like is there.
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+", 1)[0].lower()
    if scheme in ("http", "https"):
        from mlrig.importers.mlflow_rest import RestSource

        return RestSource(
            uri, token=token, username=username, password=password, artifacts_root=artifacts_root
        )
    if scheme in SQL_SCHEMES:
        from mlrig.importers.mlflow_sql import SqlStoreSource

        return SqlStoreSource(uri, artifacts_root=artifacts_root)
    if scheme == "file":
        path = Path(unquote(parsed.path))
    elif scheme and len(scheme) > 1:
        msg = (
            f"cannot import from {uri!r}: give an MLflow tracking server (http://...), a "
            "database (sqlite:///mlflow.db, postgresql://...) or a mlruns folder"
        )
        raise ValidationError(msg)
    else:
        path = Path(uri)
    if path.is_file():
        from mlrig.importers.mlflow_sql import SqlStoreSource

        return SqlStoreSource(f"sqlite:///{path.resolve()}", artifacts_root=artifacts_root)
    if not path.is_dir():
        msg = f"no MLflow store at {str(path)!r} (neither a mlruns folder nor a database file)"
        raise ValidationError(msg)
    if (
        not any((child / "meta.yaml").is_file() for child in path.iterdir())
        and not (path / "models").is_dir()
    ):
        msg = f"{str(path)!r} is not an MLflow file store (no <experiment>/meta.yaml in it)"
        raise ValidationError(msg)
    from mlrig.importers.mlflow_files import FileStoreSource

    return FileStoreSource(path.resolve(), artifacts_root=artifacts_root)
