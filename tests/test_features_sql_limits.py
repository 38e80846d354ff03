"""A SQL source's limits (finding 14): at most ``[features] max_sql_source_rows`` rows,
fetched in chunks, and at most ``sql_source_timeout_seconds`` of running time (SQLite: a
progress handler's deadline, removed after the query; PostgreSQL: statement_timeout and
the same deadline while fetching); either is a ValidationError (422) naming source.query
and the setting, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from mlrig.errors import ValidationError
from mlrig.features import offline
from mlrig.features.spec import EntitySpec, FeatureSpec, FeatureViewSpec, SourceSpec
from mlrig.testing.fixtures import make_platform

DRIVER = EntitySpec("driver", ("driver_id",))
COLUMNS = "x AS driver_id, CURRENT_TIMESTAMP AS event_timestamp, 1.0 AS trips"
#: rows without end, streamed (PostgreSQL's generate_series in FROM would be materialised
#: by the server first: stopped by the time limit instead)
_CTE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
ENDLESS = {
    "sqlite": f"{_CTE}SELECT {COLUMNS} FROM c",
    "postgresql": f"{_CTE}SELECT {COLUMNS} FROM c",
}
#: no row before a long computation (an aggregate over 10**9 rows)
SLOW = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000000000) "
    "SELECT max(x) AS driver_id, CURRENT_TIMESTAMP AS event_timestamp, 1.0 AS trips FROM c",
    "postgresql": "SELECT max(x) AS driver_id, CURRENT_TIMESTAMP AS event_timestamp, "
    "1.0 AS trips FROM generate_series(1, 1000000000) AS g(x)",
}


def sql_view(query: str) -> FeatureViewSpec:
    source = SourceSpec("sql", query=query)
    return FeatureViewSpec("drivers", (DRIVER,), source, (FeatureSpec("trips", "numerical"),))


def _limited(root: Path, db_url: str, timeout_seconds: float) -> Any:
    features = {"max_sql_source_rows": 25_000, "sql_source_timeout_seconds": timeout_seconds}
    return make_platform(root, database={"url": db_url}, features=features)


@pytest.fixture
def limited(tmp_path: Path, db_url: str, database: Any) -> Any:
    """A 25,000-row cap and a 1 s time limit."""
    plat = _limited(tmp_path / "limited", db_url, 1.0)
    yield plat
    plat.close()


@pytest.fixture
def row_capped(tmp_path: Path, db_url: str, database: Any) -> Any:
    """The same row cap with a time limit a loaded CI machine cannot reach first (fetching
    25,000 rows took over 1 s there, and the time limit answered instead of the cap)."""
    plat = _limited(tmp_path / "row-capped", db_url, 60.0)
    yield plat
    plat.close()


def test_a_source_over_the_row_cap_is_refused_while_fetching(row_capped: Any) -> None:
    started = time.monotonic()
    with pytest.raises(ValidationError) as caught:
        offline.validate_source(row_capped, sql_view(ENDLESS[row_capped.db.dialect]))
    # stopped by the cap while streaming, long before the time limit
    assert time.monotonic() - started < 30
    err = caught.value
    assert "source.query returns more than 25000 rows" in err.message
    assert "max_sql_source_rows" in err.message
    assert err.details["field"] == "source.query"
    assert err.details["limit"] == "max_sql_source_rows"


def test_a_source_at_the_row_cap_is_read_whole(row_capped: Any) -> None:
    # 25 000 rows: three chunks of the fetch, one table of the right types
    query = {
        "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 25000) "
        f"SELECT {COLUMNS} FROM c",
        "postgresql": f"SELECT {COLUMNS} FROM generate_series(1, 25000) AS g(x)",
    }[row_capped.db.dialect]
    from mlrig.features.sources import _sql_table

    table = _sql_table(row_capped, sql_view(query))
    assert table.num_rows == 25_000
    assert table.column("driver_id").to_pylist()[-1] == 25_000
    assert str(table.schema.field("event_timestamp").type).startswith("timestamp")


def test_a_slow_source_is_stopped_at_the_time_limit(limited: Any) -> None:
    started = time.monotonic()
    with pytest.raises(ValidationError) as caught:
        offline.validate_source(limited, sql_view(SLOW[limited.db.dialect]))
    assert time.monotonic() - started < 10
    err = caught.value
    assert "source.query ran for more than 1 s" in err.message
    assert "sql_source_timeout_seconds" in err.message
    assert err.details == {
        "field": "source.query",
        "limit": "sql_source_timeout_seconds",
        "seconds": 1.0,
    }
    # the deadline was the query's only: the connection runs long statements again
    with limited.db.engine.connect() as conn:
        if limited.db.dialect == "sqlite":
            raw = conn.connection.dbapi_connection
            raw.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                "LIMIT 3000000) SELECT max(x) FROM c"
            ).fetchall()
            conn.exec_driver_sql("CREATE TABLE after_limit (x INTEGER)")
        else:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"


def test_the_limits_are_settings() -> None:
    from mlrig.config import FeaturesSection

    section = FeaturesSection()
    assert section.max_sql_source_rows == 1_000_000
    assert section.sql_source_timeout_seconds == 300.0
    with pytest.raises(ValueError):
        FeaturesSection(max_sql_source_rows=0)
    with pytest.raises(ValueError):
        FeaturesSection(sql_source_timeout_seconds=0)
