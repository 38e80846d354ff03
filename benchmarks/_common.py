"""Helpers the benchmark scripts share: percentiles, a throwaway database, versions."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import statistics
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile (``pct`` in 0-100) of a non-empty list."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(ms: list[float]) -> dict[str, float]:
    """p50, p99 and mean of durations in milliseconds."""
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


@contextlib.contextmanager
def fresh_database(kind: str, folder: Path, admin_url: str) -> Iterator[str]:
    """An empty, migrated database of ``kind`` (``sqlite`` in ``folder``, or a new
    PostgreSQL database next to ``admin_url``); a PostgreSQL one is dropped afterwards."""
    from mlrig.db import migrate

    if kind == "sqlite":
        folder.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{folder / 'mlrig.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    from mlrig.testing.database import drop_postgres_database

    name = f"mlrig_bench_{uuid.uuid4().hex[:12]}"
    libpq = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        msg = (
            f"cannot create a database on {make_url(admin_url).render_as_string()}: "
            f"{str(exc).strip().splitlines()[0]}; pass --postgres-url or --databases sqlite"
        )
        raise SystemExit(msg) from None
    try:
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        migrate.upgrade(url)
        yield url
    finally:
        drop_postgres_database(admin_url, name)


def server_version(db: Any) -> str:
    """``SQLite 3.x`` or ``PostgreSQL 15.x`` of a :class:`mlrig.db.Database`."""
    if db.dialect == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    from sqlalchemy import text

    with db.session() as session:
        return f"PostgreSQL {str(session.scalar(text('SHOW server_version'))).split()[0]}"
