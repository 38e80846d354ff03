"""The schema: migrations create the platform spec's tables exactly, `mlrig db` drives them,
and the schema policy (SQLite upgrades itself, PostgreSQL must be current) holds."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, inspect, text

from mlrig.db import Database, migrate
from mlrig.db.models import SPEC_TABLES, Base
from mlrig.errors import SchemaOutOfDateError

# The platform spec's DDL, verbatim ("Database Schema" and "Indexes for Performance" of
# spec/000_9ef8b3e782357c42.txt). It references a users table it does not define: a
# stub stands in. The catalog of a database built from it is what ours must match.
SPEC_DDL = """
CREATE TABLE users (id UUID PRIMARY KEY);

CREATE TABLE ml_models (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL,
    version VARCHAR(100) NOT NULL,
    description TEXT,
    framework VARCHAR(100),
    model_type VARCHAR(100),
    created_by UUID REFERENCES users(id),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    UNIQUE(name, version)
);
CREATE TABLE model_artifacts (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    model_id UUID REFERENCES ml_models(id) ON DELETE CASCADE,
    artifact_type VARCHAR(100) NOT NULL,
    storage_path TEXT NOT NULL,
    file_size BIGINT,
    checksum VARCHAR(255),
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE TABLE training_experiments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL,
    description TEXT,
    model_id UUID REFERENCES ml_models(id),
    status VARCHAR(50) DEFAULT 'created',
    configuration JSONB DEFAULT '{}',
    hyperparameters JSONB DEFAULT '{}',
    created_by UUID REFERENCES users(id),
    started_at TIMESTAMP WITH TIME ZONE,
    completed_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE TABLE training_metrics (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    experiment_id UUID REFERENCES training_experiments(id) ON DELETE CASCADE,
    epoch INTEGER,
    step INTEGER,
    metric_name VARCHAR(100) NOT NULL,
    metric_value DECIMAL(20,10),
    metric_type VARCHAR(50),
    recorded_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE TABLE model_deployments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL,
    model_id UUID REFERENCES ml_models(id),
    version VARCHAR(100) NOT NULL,
    endpoint_url TEXT,
    deployment_config JSONB DEFAULT '{}',
    status VARCHAR(50) DEFAULT 'pending',
    environment VARCHAR(100),
    resources JSONB DEFAULT '{}',
    created_by UUID REFERENCES users(id),
    deployed_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE TABLE ab_test_experiments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL,
    description TEXT,
    status VARCHAR(50) DEFAULT 'draft',
    traffic_split JSONB DEFAULT '{}',
    control_model_id UUID REFERENCES model_deployments(id),
    treatment_models JSONB DEFAULT '[]',
    success_metrics JSONB DEFAULT '[]',
    configuration JSONB DEFAULT '{}',
    started_at TIMESTAMP WITH TIME ZONE,
    ended_at TIMESTAMP WITH TIME ZONE,
    created_by UUID REFERENCES users(id),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE TABLE feature_definitions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL UNIQUE,
    description TEXT,
    feature_type VARCHAR(100) NOT NULL,
    data_source VARCHAR(255),
    transformation_logic TEXT,
    tags JSONB DEFAULT '[]',
    schema_definition JSONB DEFAULT '{}',
    created_by UUID REFERENCES users(id),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE TABLE model_performance_metrics (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    deployment_id UUID REFERENCES model_deployments(id) ON DELETE CASCADE,
    metric_name VARCHAR(100) NOT NULL,
    metric_value DECIMAL(20,10),
    metric_metadata JSONB DEFAULT '{}',
    recorded_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE TABLE inference_requests (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    deployment_id UUID REFERENCES model_deployments(id),
    request_id VARCHAR(255),
    input_features JSONB,
    prediction JSONB,
    confidence_score DECIMAL(5,4),
    latency_ms INTEGER,
    ab_test_id UUID REFERENCES ab_test_experiments(id),
    user_id UUID,
    timestamp TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE TABLE automl_jobs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL,
    task_type VARCHAR(100) NOT NULL,
    dataset_config JSONB DEFAULT '{}',
    target_column VARCHAR(255),
    optimization_metric VARCHAR(100),
    time_budget_minutes INTEGER DEFAULT 60,
    status VARCHAR(50) DEFAULT 'queued',
    best_model_id UUID REFERENCES ml_models(id),
    results JSONB DEFAULT '{}',
    created_by UUID REFERENCES users(id),
    started_at TIMESTAMP WITH TIME ZONE,
    completed_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE INDEX idx_ml_models_name_version ON ml_models(name, version);
CREATE INDEX idx_ml_models_created_at ON ml_models(created_at DESC);
CREATE INDEX idx_ml_models_framework ON ml_models(framework);
CREATE INDEX idx_training_experiments_model_id ON training_experiments(model_id);
CREATE INDEX idx_training_experiments_status ON training_experiments(status);
CREATE INDEX idx_training_metrics_experiment_epoch ON training_metrics(experiment_id, epoch);
CREATE INDEX idx_model_deployments_model_version ON model_deployments(model_id, version);
CREATE INDEX idx_model_deployments_status_env ON model_deployments(status, environment);
CREATE INDEX idx_model_performance_deployment_time
    ON model_performance_metrics(deployment_id, recorded_at DESC);
CREATE INDEX idx_inference_requests_deployment_time
    ON inference_requests(deployment_id, timestamp DESC);
CREATE INDEX idx_ab_test_experiments_status ON ab_test_experiments(status);
CREATE INDEX idx_inference_requests_ab_test ON inference_requests(ab_test_id, timestamp);
CREATE INDEX idx_feature_definitions_name ON feature_definitions(name);
CREATE INDEX idx_feature_definitions_type ON feature_definitions(feature_type);
CREATE INDEX idx_automl_jobs_status ON automl_jobs(status);
CREATE INDEX idx_automl_jobs_created_at ON automl_jobs(created_at DESC);
"""

# spec index -> (table, columns as PostgreSQL prints them)
SPEC_INDEXES = {
    "idx_ml_models_name_version": ("ml_models", "(name, version)"),
    "idx_ml_models_created_at": ("ml_models", "(created_at DESC)"),
    "idx_ml_models_framework": ("ml_models", "(framework)"),
    "idx_training_experiments_model_id": ("training_experiments", "(model_id)"),
    "idx_training_experiments_status": ("training_experiments", "(status)"),
    "idx_training_metrics_experiment_epoch": ("training_metrics", "(experiment_id, epoch)"),
    "idx_model_deployments_model_version": ("model_deployments", "(model_id, version)"),
    "idx_model_deployments_status_env": ("model_deployments", "(status, environment)"),
    "idx_model_performance_deployment_time": (
        "model_performance_metrics",
        "(deployment_id, recorded_at DESC)",
    ),
    "idx_inference_requests_deployment_time": (
        "inference_requests",
        '(deployment_id, "timestamp" DESC)',
    ),
    "idx_ab_test_experiments_status": ("ab_test_experiments", "(status)"),
    "idx_inference_requests_ab_test": ("inference_requests", '(ab_test_id, "timestamp")'),
    "idx_feature_definitions_name": ("feature_definitions", "(name)"),
    "idx_feature_definitions_type": ("feature_definitions", "(feature_type)"),
    "idx_automl_jobs_status": ("automl_jobs", "(status)"),
    "idx_automl_jobs_created_at": ("automl_jobs", "(created_at DESC)"),
}

COLUMNS_SQL = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
"""


# --- helpers ---------------------------------------------------------------------------


def run_cli(args: list[str], config: Path, *, input: str | None = None) -> Result:
    """``mlrig --config CONFIG ARGS...`` through the real click entry point."""
    from mlrig.cli.context import CliState
    from mlrig.cli.db import db
    from mlrig.cli.main import cli

    # main.py registers "db" among the built-in commands; adding it here keeps this test
    # independent of the other built-in command modules being importable.
    if "db" not in cli.commands:
        cli.add_command(db, name="db")
    return CliRunner().invoke(
        cli, ["--config", str(config), *args], obj=CliState(), input=input, catch_exceptions=False
    )


def write_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "mlrig.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    return config


def catalog(url: str) -> dict[str, Any]:
    """What PostgreSQL's catalog says about the public schema."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            columns = {(r[0], r[1]): r[2:] for r in conn.execute(text(COLUMNS_SQL))}
            indexes = {
                r[0]: (r[1], r[2])
                for r in conn.execute(
                    text(
                        "SELECT indexname, tablename, indexdef FROM pg_indexes "
                        "WHERE schemaname = 'public'"
                    )
                )
            }
            insp = inspect(conn)
            tables = set(insp.get_table_names())
            uniques = {
                t: {tuple(u["column_names"]) for u in insp.get_unique_constraints(t)}
                for t in tables
            }
            fks = {
                t: {
                    (
                        tuple(f["constrained_columns"]),
                        f["referred_table"],
                        f["options"].get("ondelete"),
                    )
                    for f in insp.get_foreign_keys(t)
                }
                for t in tables
            }
    finally:
        engine.dispose()
    return {
        "tables": tables,
        "columns": columns,
        "indexes": indexes,
        "uniques": uniques,
        "fks": fks,
    }


@pytest.fixture
def upgraded_pg(pg_url: str, tmp_path: Path) -> str:
    """A fresh PostgreSQL database migrated with `mlrig db upgrade`."""
    result = run_cli(["db", "upgrade"], write_config(tmp_path, pg_url))
    assert result.exit_code == 0, result.output
    assert f"applied {migrate.head()}" in result.output
    assert f"schema is at {migrate.head()} (head)" in result.output
    return pg_url


# --- `mlrig db upgrade` on PostgreSQL ---------------------------------------------------


@pytest.mark.postgres
def test_cli_upgrade_creates_the_spec_tables(upgraded_pg: str) -> None:
    tables = catalog(upgraded_pg)["tables"]
    assert set(SPEC_TABLES) <= tables
    assert len(SPEC_TABLES) == 10
    platform_tables = {
        "users",
        "api_tokens",
        "audit_log",
        "registered_models",
        "model_aliases",
        "approval_requests",
        "model_evaluations",
        "experiment_events",
    }
    assert platform_tables <= tables
    assert tables == {*Base.metadata.tables, "alembic_version"}


@pytest.mark.postgres
def test_spec_indexes_are_on_the_spec_columns(upgraded_pg: str) -> None:
    indexes = catalog(upgraded_pg)["indexes"]
    wrong = {}
    for name, (table, columns) in SPEC_INDEXES.items():
        found = indexes.get(name)
        expected = f"CREATE INDEX {name} ON public.{table} USING btree {columns}"
        if found != (table, expected):
            wrong[name] = found
    assert not wrong, f"spec indexes missing or different: {wrong}"
    # the training engine's claim query and the metric history have their own indexes
    assert indexes["ix_training_experiments_claim"][1].endswith(
        "(status, priority DESC, queued_at)"
    )
    assert indexes["ix_training_metrics_experiment_name_step"][1].endswith(
        "(experiment_id, metric_name, step)"
    )


@pytest.mark.postgres
def test_unique_name_version_and_cascades(upgraded_pg: str) -> None:
    found = catalog(upgraded_pg)
    assert ("name", "version") in found["uniques"]["ml_models"]
    assert ("name",) in found["uniques"]["feature_definitions"]
    assert (("model_id",), "ml_models", "CASCADE") in found["fks"]["model_artifacts"]
    assert (("experiment_id",), "training_experiments", "CASCADE") in found["fks"][
        "training_metrics"
    ]
    assert (("deployment_id",), "model_deployments", "CASCADE") in found["fks"][
        "model_performance_metrics"
    ]
    # and no cascade where the spec has none: deleting a deployment keeps its requests
    assert (("deployment_id",), "model_deployments", None) in found["fks"]["inference_requests"]


@pytest.mark.postgres
def test_spec_tables_match_the_spec_ddl(
    upgraded_pg: str, pg_url: str, postgres_admin_url: str
) -> None:
    """Every column, type, NOT NULL, default, index, unique and foreign key of the spec's
    own DDL is in the migrated schema (which may add columns and indexes)."""
    import psycopg

    from mlrig.testing.database import _admin, drop_postgres_database

    name = "mlrig_test_specddl_" + pg_url.rsplit("_", 1)[-1]
    _admin(postgres_admin_url, f'CREATE DATABASE "{name}"')
    try:
        spec_url = pg_url.rsplit("/", 1)[0] + f"/{name}"
        with psycopg.connect(spec_url, autocommit=True) as conn:
            conn.execute(SPEC_DDL)  # type: ignore[arg-type]
        spec, ours = catalog(spec_url), catalog(upgraded_pg)
    finally:
        drop_postgres_database(postgres_admin_url, name)

    for table in SPEC_TABLES:
        for (t, column), facts in spec["columns"].items():
            if t == table:
                assert ours["columns"].get((t, column)) == facts, f"{t}.{column}"
        assert spec["uniques"][table] <= ours["uniques"][table], table
        assert spec["fks"][table] <= ours["fks"][table], table
    spec_indexes = {k: v for k, v in spec["indexes"].items() if k.startswith("idx_")}
    assert len(spec_indexes) == len(SPEC_INDEXES) == 16
    for name, definition in spec_indexes.items():
        assert ours["indexes"].get(name) == definition, name


@pytest.mark.postgres
def test_cli_downgrade_base_leaves_only_alembic_version(upgraded_pg: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, upgraded_pg)
    result = run_cli(["db", "downgrade", "base", "--yes"], config)
    assert result.exit_code == 0, result.output
    assert f"reverted {migrate.head()}" in result.output
    assert catalog(upgraded_pg)["tables"] == {"alembic_version"}
    current = run_cli(["db", "current", "--json"], config)
    assert '"current": null' in current.output
    # and back up again: downgrade() really dropped everything upgrade() creates
    again = run_cli(["db", "upgrade"], config)
    assert again.exit_code == 0, again.output
    assert set(SPEC_TABLES) <= catalog(upgraded_pg)["tables"]


def test_cli_downgrade_asks_before_dropping(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    result = run_cli(["db", "downgrade", "-1"], write_config(tmp_path, url), input="n\n")
    assert result.exit_code != 0
    assert migrate.current(url) == migrate.head()
    result = run_cli(["db", "downgrade", "-1", "-y"], write_config(tmp_path, url))
    assert result.exit_code == 0, result.output
    revisions = migrate.revisions()
    assert migrate.current(url) == (revisions[-2] if len(revisions) > 1 else None)


# --- the migration and the models agree -------------------------------------------------


def test_migration_matches_the_models(database: Database) -> None:
    """The hand-written migration creates exactly what the ORM models describe."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with database.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []
        insp = inspect(conn)
        for table in Base.metadata.sorted_tables:
            found = {
                *(c["name"] for c in insp.get_check_constraints(table.name)),
                *(c["name"] for c in insp.get_unique_constraints(table.name)),
                *(c["name"] for c in insp.get_foreign_keys(table.name)),
                *(c["name"] for c in insp.get_indexes(table.name)),
            }
            expected = {c.name for c in table.constraints if c.name != f"pk_{table.name}"}
            expected |= {i.name for i in table.indexes}
            assert found == expected, table.name


def test_constraint_names_fit_postgres() -> None:
    # PostgreSQL silently truncates identifiers past 63 bytes; later migrations could
    # then not find a constraint by its name.
    names = [c.name for t in Base.metadata.tables.values() for c in (*t.constraints, *t.indexes)]
    assert all(isinstance(n, str) and len(n) <= 63 for n in names)
    assert len(names) == len(set(names))


# --- the schema policy ------------------------------------------------------------------


def test_sqlite_upgrades_itself_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlrig.config import load_settings
    from mlrig.db.models import User

    monkeypatch.chdir(tmp_path)
    settings = load_settings(overrides={"database": {"url": "sqlite:///data/deep/mlrig.db"}})
    db = Database.from_settings(settings)
    try:
        assert (tmp_path / "data" / "deep" / "mlrig.db").is_file()
        assert db.schema_revision() == migrate.head()
        assert set(SPEC_TABLES) <= set(inspect(db.engine).get_table_names())
        with db.session() as session:
            session.add(User(name="ada", role="admin"))
    finally:
        db.dispose()
    again = Database.from_settings(settings)  # already current: keeps the data
    try:
        with again.session() as session:
            assert [u.name for u in session.query(User)] == ["ada"]
        assert again.check()["schema_current"] is True
    finally:
        again.dispose()


def test_sqlite_first_use_from_many_threads_migrates_once(tmp_path: Path) -> None:
    from mlrig.config import load_settings

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = load_settings(overrides={"database": {"url": url}})
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def first_use() -> None:
        try:
            start.wait()
            Database.from_settings(settings).dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_use) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
            (migrate.head(),)
        ]
    engine.dispose()


@pytest.mark.postgres
def test_postgres_behind_head_is_refused(pg_url: str) -> None:
    from mlrig.config import load_settings

    settings = load_settings(overrides={"database": {"url": pg_url}})
    with pytest.raises(SchemaOutOfDateError) as caught:
        Database.from_settings(settings)
    message = caught.value.message
    assert "run `mlrig db upgrade`" in message
    assert "empty" in message
    assert repr(migrate.head()) in message
    assert caught.value.details == {"current": None, "expected": migrate.head()}
    # refused, not migrated behind the operator's back
    assert migrate.current(pg_url) is None
    migrate.upgrade(pg_url)
    Database.from_settings(settings).dispose()  # current now: accepted


@pytest.mark.postgres
def test_postgres_schema_from_a_newer_mlrig_is_refused(pg_url: str) -> None:
    from mlrig.config import load_settings

    migrate.upgrade(pg_url)
    db = Database(pg_url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    db.dispose()
    settings = load_settings(overrides={"database": {"url": pg_url}})
    with pytest.raises(SchemaOutOfDateError, match="'9999', which this mlrig does not know"):
        Database.from_settings(settings)


def test_sqlite_schema_from_a_newer_mlrig_is_not_touched(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    migrate.upgrade(url)
    db = Database(url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaOutOfDateError, match="upgrade mlrig"):
        db.ensure_schema()
    db.dispose()
    assert migrate.current(url) == "9999"


# --- `mlrig db current` -----------------------------------------------------------------


def test_cli_current_does_not_upgrade_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = run_cli(["db", "current"], write_config(tmp_path, url))
    assert result.exit_code == 0, result.output
    assert "none (empty database)" in result.output
    assert "run `mlrig db upgrade`" in result.output
    assert migrate.current(url) is None


@pytest.mark.postgres
def test_cli_current_json(upgraded_pg: str, tmp_path: Path) -> None:
    import json

    result = run_cli(["db", "current", "--json"], write_config(tmp_path, upgraded_pg))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["current"] == data["head"] == migrate.head()
    assert data["up_to_date"] is True
    assert data["dialect"] == "postgresql"


def test_cli_unreachable_database_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "postgresql://nobody@127.0.0.1:1/none")
    result = run_cli(["db", "upgrade"], config)
    assert result.exit_code == 1
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: cannot connect to database postgresql+psycopg://")
    assert "Traceback" not in result.output


def test_cli_unknown_revision_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    result = run_cli(["db", "upgrade", "nope"], write_config(tmp_path, url))
    assert result.exit_code == 1
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith("Error: Can't locate revision identified by 'nope'")
    )


def _twins_at_0002(url: str) -> None:
    """A database at revision 0002 holding two experiments named ``twin`` (ids a..., b...)."""
    migrate.upgrade(url, "0002")
    engine = create_engine(url)
    with engine.begin() as conn:
        for ident in ("a" * 32, "b" * 32):
            conn.execute(
                text(
                    "INSERT INTO training_experiments (id, name, status, resources, "
                    "reproducibility) VALUES (:id, 'twin', 'created', '{}', '{}')"
                ),
                {"id": ident},
            )
    engine.dispose()


def test_upgrade_to_unique_experiment_names_stops_on_duplicates(tmp_path: Path) -> None:
    """0003 adds a unique index on experiment names; duplicates already there (from the
    race it closes) stop it with their names, and nothing is changed."""
    from mlrig.errors import ConflictError

    url = f"sqlite:///{tmp_path / 'dupes.db'}"
    _twins_at_0002(url)
    engine = create_engine(url)
    with pytest.raises(ConflictError, match=r"'twin' \(2x\); rename all but one"):
        migrate.upgrade(url)
    assert migrate.current(url) == "0002"
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE training_experiments SET name = 'twin-2' WHERE id = :id"), {"id": "b" * 32}
        )
    assert migrate.upgrade(url) == migrate.head()
    engine.dispose()


def _audit_rows(url: str) -> list[tuple[str, str, str | None, str]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT action, outcome, resource_id, details FROM audit_log ORDER BY at")
        ).all()
    engine.dispose()
    return [tuple(row) for row in rows]


def test_db_migrations_are_in_the_audit_log(tmp_path: Path) -> None:
    """upgrade and downgrade are CLI actions that change the database: audited, with the
    revisions before and after, and a failed one with its reason."""
    import json

    url = f"sqlite:///{tmp_path / 'audited.db'}"
    config = write_config(tmp_path, url)
    _twins_at_0002(url)  # duplicates stop 0003 (see the test above)
    failed = run_cli(["db", "upgrade"], config)
    assert failed.exit_code != 0 and "rename all but one" in failed.output
    with create_engine(url).begin() as conn:
        conn.execute(text("DELETE FROM training_experiments WHERE id = :id"), {"id": "b" * 32})
    assert run_cli(["db", "upgrade"], config).exit_code == 0
    assert run_cli(["db", "upgrade"], config).exit_code == 0  # nothing to do: not recorded
    assert run_cli(["db", "downgrade", "-1", "--yes"], config).exit_code == 0
    rows = _audit_rows(url)
    previous = migrate.revisions()[-2]  # where `downgrade -1` goes from head
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("db_upgrade", "failure", "0002"),
        ("db_upgrade", "success", migrate.head()),
        ("db_downgrade", "success", previous),
    ]
    details = [r[3] if isinstance(r[3], dict) else json.loads(r[3]) for r in rows]
    assert details[0]["from"] == "0002" and "twin" in details[0]["error"]
    assert details[1] == {"from": "0002", "to": migrate.head()}
    assert details[2] == {"from": migrate.head(), "to": previous}


def test_connections_racing_to_open_a_new_sqlite_database_all_get_wal(tmp_path: Path) -> None:
    """The first connections to a new file race to switch it to WAL; the losers used to
    get "database is locked" at once (no busy handler for that), failing a first use."""
    import sqlite3

    from mlrig.db.engine import _enter_wal_mode

    failures: list[str] = []
    for trial in range(30):
        path = tmp_path / f"race-{trial}.db"
        start = threading.Barrier(8)

        def connect(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
                try:
                    _enter_wal_mode(conn.cursor())
                    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                    if mode != "wal":
                        failures.append(f"journal_mode {mode}")
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=connect) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
