"""Alembic migration environment of mlrig (run through :mod:`mlrig.db.migrate`)."""

#: The newest migration's revision: update it with every new migration script.
HEAD_REVISION = "0010"
