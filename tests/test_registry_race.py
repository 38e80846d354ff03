"""Version numbers under concurrent registrations, and what a failed registration leaves,
on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from mlrig.artifacts import ArtifactStore
from mlrig.db.models import MLModel, RegisteredModel
from mlrig.errors import NotFoundError, StorageError
from mlrig.plugins.storage_local import LocalStorage
from mlrig.registry.service import ModelRegistry
from mlrig.security import Principal
from mlrig.testing.fixtures import make_platform

ACTOR = Principal(name="racer", role="developer")


def _all_at_once(count: int, call: Callable[[int, threading.Barrier], None]) -> list[BaseException]:
    """Run ``call(i, barrier)`` in ``count`` threads that pass the barrier together; the
    exceptions they raised (none, when the race is handled)."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            call(i, start)
        except BaseException as exc:  # reported by the caller, with the others
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def _numbers(platform: Any, name: str) -> list[int]:
    return sorted(int(v["version"]) for v in platform.registry.iter_versions(name))


def test_twenty_threads_register_into_one_new_model(db_platform: Any) -> None:
    """The quickstart case: everyone creates the model and registers at the same moment."""

    def register(i: int, start: threading.Barrier) -> None:
        start.wait()
        db_platform.registry.create_version(
            "racy", files={"model.bin": f"weights {i}".encode()}, actor=ACTOR, create_model=True
        )

    assert _all_at_once(20, register) == []
    assert _numbers(db_platform, "racy") == list(range(1, 21))
    # every version kept its own bytes
    _info, stream = db_platform.registry.open_artifact("racy", "20", "model.bin")
    with stream:
        assert stream.read().startswith(b"weights ")


def _register_from_process(home: str, url: str, barrier: Any, count: int) -> None:
    platform = make_platform(Path(home), database={"url": url})
    try:
        barrier.wait()
        for i in range(count):
            platform.registry.create_version(
                "multi", files={"model.bin": f"{i}".encode()}, actor=ACTOR, create_model=True
            )
    finally:
        platform.close()


def test_four_processes_register_five_versions_each(
    db_platform: Any, db_url: str, tmp_path: Path
) -> None:
    """Separate processes meet at the database only (SQLite's file lock, PostgreSQL's row
    lock), not at an in-process lock."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    home = str(tmp_path / "home")  # the same artifact root as db_platform
    procs = [
        ctx.Process(target=_register_from_process, args=(home, db_url, barrier, 5))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert _numbers(db_platform, "multi") == list(range(1, 21))


def test_automatic_numbers_continue_after_a_chosen_number(db_platform: Any) -> None:
    registry = db_platform.registry
    files = {"m.bin": b"x"}
    registry.create_version("chosen", files=files, actor=ACTOR, create_model=True)
    registry.create_version("chosen", files=files, actor=ACTOR, version="7")
    registry.create_version("chosen", files=files, actor=ACTOR, version="beta")
    assert registry.create_version("chosen", files=files, actor=ACTOR)["version"] == "8"


def test_numbers_of_deleted_versions_are_not_reused(db_platform: Any) -> None:
    registry = db_platform.registry
    files = {"m.bin": b"x"}
    registry.create_version("gone", files=files, actor=ACTOR, create_model=True)
    registry.create_version("gone", files=files, actor=ACTOR)
    registry.delete_version("gone", "2", actor=Principal(name="ops", role="deployer"))
    assert registry.create_version("gone", files=files, actor=ACTOR)["version"] == "3"


# --- a failed registration leaves nothing ------------------------------------------------


def _rows(platform: Any, name: str) -> tuple[int, int]:
    from sqlalchemy import func, select

    with platform.db.session() as session:
        models = session.scalar(
            select(func.count()).select_from(RegisteredModel).where(RegisteredModel.name == name)
        )
        versions = session.scalar(
            select(func.count()).select_from(MLModel).where(MLModel.name == name)
        )
    return models, versions


def test_a_failed_first_registration_leaves_no_model(db_platform: Any) -> None:
    """The model is created first; a registration failing after that removes it again."""
    registry = db_platform.registry
    with pytest.raises(NotFoundError, match="no version or alias 'nope'"):
        registry.create_version(
            "orphan",
            files={"m.bin": b"x"},
            actor=ACTOR,
            create_model=True,
            parent_version="nope",
        )
    with pytest.raises(NotFoundError, match="no experiment"):
        registry.create_version(
            "orphan",
            files={"m.bin": b"x"},
            actor=ACTOR,
            create_model=True,
            source_experiment_id="not-an-experiment",
        )
    assert _rows(db_platform, "orphan") == (0, 0)
    with pytest.raises(NotFoundError):
        registry.get_model("orphan")
    # the name is free: a later registration creates the model
    assert (
        registry.create_version("orphan", files={"m.bin": b"x"}, actor=ACTOR, create_model=True)[
            "version"
        ]
        == "1"
    )


class FullDiskStorage(LocalStorage):
    """Local storage on a disk that fills up after the first object: the second write
    fails midway, as a full disk or a lost connection would."""

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self.writes = 0

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        self.writes += 1
        with super().open_write(key) as handle:
            yield handle
            if self.writes > 1:
                msg = f"cannot write {key!r}: no space left on device"
                raise StorageError(msg)


def test_a_storage_failure_leaves_no_model_and_no_object(db_platform: Any, tmp_path: Path) -> None:
    storage = FullDiskStorage(LocalStorage.Options(root=str(tmp_path / "full")))
    registry = ModelRegistry(db_platform.db, ArtifactStore(storage), db_platform.hooks)
    with pytest.raises(StorageError, match="no space left"):
        registry.create_version(
            "half",
            files={"a.bin": b"a" * 10_000, "b.bin": b"b"},
            actor=ACTOR,
            create_model=True,
        )
    assert storage.writes == 2  # the first object was written, then removed again
    assert list(storage.list("")) == []
    assert _rows(db_platform, "half") == (0, 0)


class VanishingModelStorage(LocalStorage):
    """Local storage that runs ``during_upload`` on the first write: the moment another
    registration, which created the model and failed, removes it again."""

    during_upload: Any = None

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        if self.during_upload is not None:
            action, self.during_upload = self.during_upload, None
            action()
        with super().open_write(key) as handle:
            yield handle


def test_a_model_removed_by_a_failed_creator_is_recreated_under_the_same_id(
    db_platform: Any, tmp_path: Path
) -> None:
    """Registration B found the model that A had just created; A failed and removed it
    while B uploaded. B, which asked for create_model too, puts the same row back (its
    artifacts are stored under that model's id) instead of failing."""
    storage = VanishingModelStorage(LocalStorage.Options(root=str(tmp_path / "vanish")))
    registry = ModelRegistry(db_platform.db, ArtifactStore(storage), db_platform.hooks)
    model_id = uuid.UUID(registry.create_model(name="fleeting", actor=ACTOR)["id"])
    storage.during_upload = lambda: registry._drop_if_empty(model_id)
    version = registry.create_version(
        "fleeting", files={"m.bin": b"x"}, actor=ACTOR, create_model=True
    )
    assert version["version"] == "1" and version["model_id"] == str(model_id)
    assert registry.get_model("fleeting")["id"] == str(model_id)
    _info, stream = registry.open_artifact("fleeting", "1", "m.bin")
    with stream:
        assert stream.read() == b"x"
    # without create_model, the registration says what happened and leaves no object
    plain = uuid.UUID(registry.create_model(name="plain", actor=ACTOR)["id"])
    storage.during_upload = lambda: registry._drop_if_empty(plain)
    with pytest.raises(NotFoundError, match="deleted while the version was being registered"):
        registry.create_version("plain", files={"m.bin": b"x"}, actor=ACTOR)
    assert list(storage.list(f"models/{plain}/")) == []


def test_a_failure_does_not_remove_a_model_that_existed(db_platform: Any) -> None:
    registry = db_platform.registry
    registry.create_model(name="kept", actor=ACTOR)
    with pytest.raises(NotFoundError):
        registry.create_version(
            "kept", files={"m.bin": b"x"}, actor=ACTOR, create_model=True, parent_version="9"
        )
    assert _rows(db_platform, "kept") == (1, 0)


# --- migration 0004 ---------------------------------------------------------------------


def test_migration_0004_starts_each_counter_after_the_highest_number(
    db_url: str, tmp_path: Path
) -> None:
    """A database from before the counter: each model's counter starts at its highest
    numeric version (names such as 'v9' are not numbers); downgrade removes the column."""
    from sqlalchemy import create_engine, text

    from mlrig.db import migrate

    migrate.upgrade(db_url, "0003")
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    models = {"a" * 32: ["1", "2", "10", "v99"], "b" * 32: ["beta"], "c" * 32: []}
    with engine.begin() as conn:
        for model_id, versions in models.items():
            conn.execute(
                text("INSERT INTO registered_models (id, name, tags) VALUES (:id, :name, '{}')"),
                {"id": model_id, "name": f"m-{model_id[0]}"},
            )
            for version in versions:
                conn.execute(
                    text(
                        "INSERT INTO ml_models (id, name, version, registered_model_id, tags, "
                        "params, metrics, requirements, datasets) "
                        "VALUES (:id, :name, :v, :model, '{}', '{}', '{}', '[]', '[]')"
                    ),
                    {
                        "id": uuid.uuid4().hex,
                        "name": f"m-{model_id[0]}",
                        "v": version,
                        "model": model_id,
                    },
                )
    migrate.upgrade(db_url)
    with engine.connect() as conn:
        counters = dict(
            conn.execute(text("SELECT name, last_version FROM registered_models")).all()
        )
    assert counters == {"m-a": 10, "m-b": 0, "m-c": 0}
    platform = make_platform(tmp_path / "after", database={"url": db_url})
    try:
        added = platform.registry.create_version("m-a", files={"m": b"x"}, actor=ACTOR)
        assert added["version"] == "11"
    finally:
        platform.close()
    migrate.downgrade(db_url, "0003")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM ml_models")).scalar() == 6
    engine.dispose()


def test_twenty_concurrent_uploads_over_rest(db_platform: Any) -> None:
    """The same race through a real server (uvicorn): 20 clients upload into one model."""
    from mlrig.api import create_app
    from mlrig.testing.fixtures import serve

    db_platform.security.create_user(name="uploader", role="developer")
    token = db_platform.security.create_token(user="uploader")["token"]
    with serve(create_app(db_platform)) as live_server:
        _upload_twenty(live_server, token)


def _upload_twenty(live_server: str, token: str) -> None:
    import mlrig

    with mlrig.Client(live_server, token=token) as client:
        client.create_model("served")

    def upload(i: int, start: threading.Barrier) -> None:
        with mlrig.Client(live_server, token=token) as client:
            start.wait()
            client.register_version("served", {"model.bin": f"{i}".encode()})

    assert _all_at_once(20, upload) == []
    with mlrig.Client(live_server, token=token) as client:
        numbers = sorted(int(v["version"]) for v in client.list_versions("served"))
    assert numbers == list(range(1, 21))
