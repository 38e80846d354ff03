"""Alembic migration environment of mlrig (run through :mod:`mlrig.db.migrate`)."""
