"""The head revision constant (used to check schemas without importing alembic)."""

from mlrig.db import migrate


def test_head_constant_matches_the_migration_scripts():
    assert migrate.head() == migrate.script_head()
