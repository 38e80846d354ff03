"""Alembic environment: run by :mod:`mlrig.db.migrate`, which passes an open connection
in ``config.attributes["connection"]`` (and a progress callback). Run by the ``alembic``
command instead, it connects to ``sqlalchemy.url`` through :class:`mlrig.db.Database`, so
the driver and the SQLite pragmas are the same as at run time."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from mlrig.db.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    callback = config.attributes.get("on_version_apply")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: autogenerate emits batch (copy-and-move) ops.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        on_version_apply=[callback] if callback else (),
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    from mlrig.db.engine import Database

    db = Database(config.get_main_option("sqlalchemy.url") or "")
    try:
        with db.engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        db.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
