"""The database layer: engine and sessions (:class:`Database`), the ORM models
(:mod:`mlrig.db.models`), portable column types (:mod:`mlrig.db.types`) and the
migrations (:mod:`mlrig.db.migrate`)."""

from mlrig.db.engine import Database

__all__ = ["Database"]
