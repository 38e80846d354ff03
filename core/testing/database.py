"""Database fixtures: the same test on SQLite and on PostgreSQL.

Load with ``pytest_plugins = ["mlrig.testing.database"]``. Fixtures:

- ``db_url``: a database URL, parametrised ``sqlite`` (a file in ``tmp_path``) and
  ``postgresql`` (a fresh database, marked ``postgres``); ids ``sqlite``/``postgresql``.
- ``pg_url``: a fresh, empty PostgreSQL database for this test, dropped afterwards.
- ``database``: a :class:`mlrig.db.Database` on ``db_url``, migrated to head.

The PostgreSQL server is ``--postgres-url`` (a URL of a database to connect to for
``CREATE DATABASE``, default ``postgresql://postgres@127.0.0.1:5432/postgres``). Deselect
its tests with ``-m "not postgres"``; when they are selected and the server cannot be
reached they fail, saying so, rather than skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mlrig.db import Database

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TEST_DATABASE_PREFIX = "mlrig_test_"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="PostgreSQL server for the postgres tests: a database URL to run CREATE "
        f"DATABASE from (default: {DEFAULT_POSTGRES_URL})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs the PostgreSQL server (--postgres-url)")


@pytest.fixture(scope="session")
def postgres_admin_url(pytestconfig: pytest.Config) -> str:
    """The URL of the PostgreSQL maintenance database; fails when the server is down."""
    import psycopg

    url = str(pytestconfig.getoption("--postgres-url"))
    try:
        psycopg.connect(_libpq(url), connect_timeout=5).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0]
        pytest.fail(
            f"PostgreSQL at {_hide_password(url)} is not reachable ({reason}); start it, "
            'pass --postgres-url, or deselect these tests with -m "not postgres"',
            pytrace=False,
        )
    return url


@pytest.fixture
def pg_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (dropped after it)."""
    from sqlalchemy.engine import make_url

    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    _admin(postgres_admin_url, f'CREATE DATABASE "{name}"')
    url = make_url(postgres_admin_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        drop_postgres_database(postgres_admin_url, name)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: an SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlrig.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """A :class:`~mlrig.db.Database` on ``db_url``, migrated to the newest revision."""
    from mlrig.db import Database, migrate

    db = Database(db_url, pool_size=5, max_overflow=10)
    try:
        migrate.upgrade(db)
        yield db
    finally:
        db.dispose()


def drop_postgres_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, ending the connections still open on it first."""
    _admin(
        admin_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}"')


def _admin(admin_url: str, sql: str, params: tuple[Any, ...] | None = None) -> None:
    import psycopg

    # CREATE/DROP DATABASE cannot run inside a transaction block.
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def _libpq(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://``) as a libpq connection string."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
