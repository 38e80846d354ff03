"""The ORM models on both databases: JSON, UUID keys, aware datetimes, constraints,
cascades, transactions and concurrent sessions."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from mlrig.db import Database
from mlrig.db.models import (
    MLModel,
    ModelArtifact,
    RegisteredModel,
    TrainingExperiment,
    TrainingMetric,
    User,
)


def add_version(db: Database, name: str = "iris", version: str = "1", **fields: object) -> MLModel:
    """A registered model with one version, committed."""
    with db.session() as session:
        group = session.scalar(select(RegisteredModel).where(RegisteredModel.name == name))
        if group is None:
            group = RegisteredModel(name=name)
            session.add(group)
            session.flush()
        row = MLModel(name=name, version=version, registered_model_id=group.id, **fields)
        session.add(row)
    return row


def count(db: Database, model: type) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_json_columns_round_trip(database: Database) -> None:
    params = {"C": 0.5, "layers": [64, 32], "nested": {"ok": True, "none": None}, "é": "ü"}
    datasets = [{"uri": "s3://bucket/train.csv", "hash": "sha256:" + "a" * 64}]
    row = add_version(
        database,
        params=params,
        metrics={"accuracy": 0.973},
        datasets=datasets,
        tags={"team": "vision"},
        signature=None,
    )
    with database.session() as session:
        loaded = session.get(MLModel, row.id)
        assert loaded is not None
        assert loaded.params == params
        assert loaded.metrics == {"accuracy": 0.973}
        assert loaded.datasets == datasets
        assert loaded.requirements == []  # the default
        assert loaded.signature is None
        # None is SQL NULL (not JSON 'null'), so IS NULL finds it on both databases
        assert session.scalar(select(func.count()).where(MLModel.signature.is_(None))) == 1


def test_uuid_keys(database: Database) -> None:
    row = add_version(database)
    assert isinstance(row.id, uuid.UUID)
    with database.session() as session:
        loaded = session.get(MLModel, row.id)
        assert loaded is not None
        assert loaded.id == row.id
        assert isinstance(loaded.registered_model_id, uuid.UUID)
        assert session.scalar(select(MLModel.name).where(MLModel.id == row.id)) == "iris"
        assert session.get(MLModel, uuid.uuid4()) is None


def test_datetimes_come_back_aware_utc(database: Database) -> None:
    paris = timezone(timedelta(hours=2))
    queued = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=paris)
    with database.session() as session:
        exp = TrainingExperiment(name="run", queued_at=queued)
        session.add(exp)
    with database.session() as session:
        loaded = session.get(TrainingExperiment, exp.id)
        assert loaded is not None
        assert loaded.queued_at == queued
        assert loaded.queued_at.utcoffset() == timedelta(0)
        assert loaded.queued_at.hour == 12
        assert loaded.created_at.tzinfo is not None
        assert abs(loaded.created_at - datetime.now(timezone.utc)) < timedelta(minutes=1)
        # comparisons in SQL use the same instant
        later = queued + timedelta(seconds=1)
        found = select(TrainingExperiment.id).where(TrainingExperiment.queued_at < later)
        assert session.scalar(found) == exp.id


def test_naive_datetimes_are_refused(database: Database) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        with database.session() as session:
            session.add(TrainingExperiment(name="run", queued_at=datetime(2024, 1, 1)))
    assert count(database, TrainingExperiment) == 0


def test_raw_inserts_get_server_defaults(database: Database) -> None:
    """Rows inserted without id or timestamps (bulk ingest, SQL) get them from the server."""
    with database.session() as session:
        session.execute(text("INSERT INTO training_experiments (name) VALUES ('raw')"))
        row = session.execute(
            select(
                TrainingExperiment.id,
                TrainingExperiment.created_at,
                TrainingExperiment.status,
                TrainingExperiment.priority,
                TrainingExperiment.configuration,
            )
        ).one()
    assert isinstance(row.id, uuid.UUID)
    assert row.created_at.tzinfo is not None
    assert abs(row.created_at - datetime.now(timezone.utc)) < timedelta(minutes=1)
    assert (row.status, row.priority, row.configuration) == ("created", 0, {})


def test_metric_values_keep_their_precision(database: Database) -> None:
    with database.session() as session:
        exp = TrainingExperiment(name="run")
        session.add(exp)
        session.flush()
        session.execute(
            insert(TrainingMetric),
            [
                {
                    "experiment_id": exp.id,
                    "step": s,
                    "metric_name": "loss",
                    "metric_value": 1 / (s + 3),
                    "metric_type": "train",
                }
                for s in range(100)
            ],
        )
    with database.session() as session:
        values = session.scalars(
            select(TrainingMetric.metric_value)
            .where(TrainingMetric.experiment_id == exp.id, TrainingMetric.metric_name == "loss")
            .order_by(TrainingMetric.step)
        ).all()
    assert len(values) == 100
    assert all(isinstance(v, float) for v in values)
    assert values[0] == pytest.approx(1 / 3, abs=1e-10)


def test_unique_violation_raises_and_leaves_no_row(database: Database) -> None:
    add_version(database, version="1")
    with pytest.raises(IntegrityError):
        with database.session() as session:
            session.add(User(name="bystander"))  # same transaction: rolled back too
            group = session.scalar(select(RegisteredModel))
            session.add(MLModel(name="iris", version="1", registered_model_id=group.id))
    assert count(database, MLModel) == 1
    assert count(database, User) == 0
    add_version(database, version="2")  # the session and the pool are still usable
    assert count(database, MLModel) == 2


def test_check_constraints(database: Database) -> None:
    with pytest.raises(IntegrityError):
        with database.session() as session:
            session.add(User(name="eve", role="superuser"))
    with pytest.raises(IntegrityError):
        add_version(database, stage="prod")
    assert count(database, User) == 0


def test_deleting_a_model_deletes_its_artifacts(database: Database) -> None:
    keep = add_version(database, version="1")
    gone = add_version(database, version="2")
    with database.session() as session:
        for row, n in ((keep, 1), (gone, 3)):
            for i in range(n):
                session.add(
                    ModelArtifact(
                        model_id=row.id,
                        artifact_type="model",
                        storage_path=f"{row.id}/{i}",
                        file_size=10,
                        checksum="0" * 64,
                        metadata_={"i": i},
                    )
                )
    assert count(database, ModelArtifact) == 4
    with database.session() as session:
        # a plain DELETE: the database's ON DELETE CASCADE does it, not the ORM
        session.execute(delete(MLModel).where(MLModel.id == gone.id))
    with database.session() as session:
        left = session.scalars(select(ModelArtifact.model_id)).all()
    assert left == [keep.id]


def test_deleting_a_registered_model_deletes_its_versions(database: Database) -> None:
    row = add_version(database)
    with database.session() as session:
        session.add(ModelArtifact(model_id=row.id, artifact_type="model", storage_path="k"))
    with database.session() as session:
        session.execute(delete(RegisteredModel).where(RegisteredModel.name == "iris"))
    assert count(database, MLModel) == 0
    assert count(database, ModelArtifact) == 0


def test_session_rolls_back_on_error(database: Database) -> None:
    with pytest.raises(RuntimeError):
        with database.session() as session:
            session.add(User(name="ghost"))
            session.flush()
            raise RuntimeError("boom")
    assert count(database, User) == 0


def test_values_stay_readable_after_commit(database: Database) -> None:
    with database.session() as session:
        user = User(name="ada", role="admin")
        session.add(user)
    # expire_on_commit=False: no reload (and no DetachedInstanceError) after the session
    assert (user.name, user.role, user.disabled) == ("ada", "admin", False)


def test_concurrent_sessions_from_threads(database: Database) -> None:
    """Many threads, each with its own sessions, reading and writing at once."""
    with database.session() as session:
        exp = TrainingExperiment(name="busy")
        session.add(exp)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(20):
                with database.session() as session:
                    # read, then write in the same transaction
                    session.scalar(select(func.count()).select_from(TrainingMetric))
                    session.add(
                        TrainingMetric(
                            experiment_id=exp.id,
                            step=i,
                            metric_name=f"w{n}",
                            metric_value=i,
                        )
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert count(database, TrainingMetric) == 8 * 20


def test_check_reports_the_schema(database: Database) -> None:
    from mlrig.db import migrate

    facts = database.check()
    assert facts["dialect"] == database.dialect in ("sqlite", "postgresql")
    assert facts["revision"] == facts["head"] == migrate.head()
    assert facts["schema_current"] is True
    assert "password" not in facts["url"]


def test_sqlite_connections_have_the_pragmas(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert db.engine.pool.size() == 10  # a real pool for a threaded server
    finally:
        db.dispose()
    assert sqlite3.connect(tmp_path / "p.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_postgresql_urls_use_psycopg() -> None:
    db = Database("postgresql://u:secret@db.example/mlrig")
    assert db.url.drivername == "postgresql+psycopg"
    assert "secret" not in db.display_url and "secret" not in repr(db)
    db.dispose()
