"""Helpers the benchmark scripts share: percentiles, throwaway databases and the options
that choose them, server versions."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sqlite3
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASES = ("sqlite", "postgresql")


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """``--databases`` (comma-separated, default both) and ``--postgres-url``."""
    parser.add_argument("--databases", default=",".join(DATABASES), help="comma-separated")
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="PostgreSQL database to run CREATE DATABASE from",
    )


def chosen_databases(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The ``--databases`` asked for; an unknown one is a usage error."""
    kinds = [d for d in args.databases.split(",") if d]
    if unknown := set(kinds) - set(DATABASES):
        parser.error(f"unknown database {sorted(unknown)}: use sqlite and/or postgresql")
    return kinds


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
    with postgres_database(admin_url, "mlrig_bench_") as url:
        migrate.upgrade(url)
        yield url


@contextlib.contextmanager
def postgres_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database next to ``admin_url`` (its SQLAlchemy URL), named
    ``prefix`` plus random hex, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    from mlrig.testing.database import drop_postgres_database

    name = f"{prefix}{uuid.uuid4().hex[:12]}"
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
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        drop_postgres_database(admin_url, name)


def server_version(db: Any) -> str:
    """``SQLite 3.x`` or ``PostgreSQL 15.x`` of a :class:`mlrig.db.Database`."""
    if db.dialect == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    from sqlalchemy import text

    with db.session() as session:
        return f"PostgreSQL {str(session.scalar(text('SHOW server_version'))).split()[0]}"


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by process ``root`` and its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grown = {root}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        grown = bool(children)
        tree |= children
    return sum(used.get(pid, 0.0) for pid in tree)


def settle(
    root: int, *, quiet_cpu_s: float = 0.05, limit_s: float = 60, interval_s: float = 1.0
) -> None:
    """Wait until the process tree of ``root`` is idle (under ``quiet_cpu_s`` of CPU per
    ``interval_s``), at most ``limit_s``: servers go on starting workers, job runners and
    consumers after their health check first answers (MLflow, BentoML, a second replica),
    and timed load should not share the CPU with that."""
    deadline = time.monotonic() + limit_s
    last = tree_cpu_seconds(root)
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        now = tree_cpu_seconds(root)
        if now - last < quiet_cpu_s:
            return
        last = now
