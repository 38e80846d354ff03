"""The bundled online stores against the contract suite: ``sql`` on SQLite and on
PostgreSQL (the platform database's ``feature_online_values``), and ``redis`` on
127.0.0.1:6379 (a unique key prefix per test, deleted after)."""

import uuid

import pytest

from mlrig.contracts.online_store import OnlineRow, OnlineStoreError
from mlrig.db import Database
from mlrig.plugins.online_redis import RedisOnlineStore
from mlrig.plugins.online_sql import SqlOnlineStore
from mlrig.testing.fixtures import make_platform
from mlrig.testing.online_store import OnlineStoreContract, at, row

REDIS_URL = "redis://127.0.0.1:6379/0"


class TestSqlOnlineStore(OnlineStoreContract):
    @pytest.fixture
    def online_store(self, database):
        store = SqlOnlineStore.from_options({"batch_size": 700}, where="features.sql")
        store.bind_database(database)
        yield store
        store.close()

    @pytest.fixture
    def broken_online_store(self, tmp_path):
        db = Database(f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated: no table
        store = SqlOnlineStore.from_options({}, where="features.sql")
        store.bind_database(db)
        yield store
        db.dispose()


def _delete_prefix(prefix):
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.unlink(*keys)
    client.close()
    return len(keys)


class TestRedisOnlineStore(OnlineStoreContract):
    @pytest.fixture
    def online_store(self):
        prefix = f"mlrig-test:{uuid.uuid4().hex[:12]}:"
        store = RedisOnlineStore.from_options(
            {"url": REDIS_URL, "prefix": prefix, "batch_size": 300}, where="features.redis"
        )
        yield store
        store.close()
        _delete_prefix(prefix)

    @pytest.fixture
    def broken_online_store(self):
        store = RedisOnlineStore.from_options(
            {"url": "redis://:hunter2@127.0.0.1:1/0", "socket_timeout": 1}, where="features.redis"
        )
        yield store
        store.close()


def test_redis_down_names_the_url_without_the_password():
    store = RedisOnlineStore.from_options(
        {"url": "redis://:hunter2@127.0.0.1:1/0", "socket_timeout": 1}, where="features.redis"
    )
    with pytest.raises(OnlineStoreError, match=r"redis://\*\*\*@127\.0\.0\.1:1/0") as info:
        store.read("v", [("k",)], ["a"], ttl_seconds=None, now=at(0))
    assert "hunter2" not in str(info.value)
    assert "is Redis running there?" in str(info.value)


def test_sql_store_without_its_table_says_to_upgrade(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    store = SqlOnlineStore.from_options({}, where="features.sql")
    store.bind_database(db)
    try:
        with pytest.raises(OnlineStoreError, match="mlrig db upgrade"):
            store.write("v", [row("k", 0, a=1)])
    finally:
        db.dispose()


def test_redis_sets_an_expiry_from_the_ttl_hint():
    from datetime import datetime, timezone

    import redis

    prefix = f"mlrig-test:{uuid.uuid4().hex[:12]}:"
    store = RedisOnlineStore.from_options(
        {"url": REDIS_URL, "prefix": prefix, "expire_margin_seconds": 60}, where="features.redis"
    )
    try:
        now = datetime.now(timezone.utc)
        one = [OnlineRow(key=("k",), values={"a": 1}, event_timestamp=now)]
        store.write("v", one, ttl_seconds=600)
        store.write("w", one)
        client = redis.Redis.from_url(REDIS_URL)
        ttl_v = client.ttl(prefix + 'v:["k"]')
        ttl_w = client.ttl(prefix + 'w:["k"]')
        client.close()
        assert 600 < ttl_v <= 660
        assert ttl_w == -1  # no TTL, no expiry
    finally:
        store.close()
        _delete_prefix(prefix)


def test_platform_loads_the_configured_store(tmp_path):
    sql_platform = make_platform(tmp_path / "a")
    try:
        store = sql_platform.online_store
        assert isinstance(store, SqlOnlineStore)
        assert store.check()["table"] == "feature_online_values"
        store.write("v", [row("k", 0, a=1)])
        assert store.read("v", [("k",)], ["a"], ttl_seconds=None, now=at(1)) == [{"a": 1}]
    finally:
        sql_platform.close()
    prefix = f"mlrig-test:{uuid.uuid4().hex[:12]}:"
    redis_platform = make_platform(
        tmp_path / "b", features={"backend": "redis", "redis": {"url": REDIS_URL, "prefix": prefix}}
    )
    try:
        store = redis_platform.online_store
        assert isinstance(store, RedisOnlineStore)
        assert store.check()["prefix"] == prefix
    finally:
        redis_platform.close()
        _delete_prefix(prefix)


@pytest.mark.postgres
def test_sql_store_on_postgresql_looks_up_keys_of_a_view_loaded_right_after_another(pg_url):
    """A second view bulk-loaded within seconds of the first is analysed too: with
    statistics that had never seen it, the planner walked every row of the view for a
    one-key read (6-9 ms instead of 0.3 ms)."""
    from datetime import datetime, timedelta, timezone

    from mlrig.db import migrate
    from mlrig.plugins.online_sql import _read_sql

    db = Database(pg_url, pool_size=2, max_overflow=2)
    migrate.upgrade(db)
    store = SqlOnlineStore.from_options({}, where="features.sql")
    store.bind_database(db)
    try:
        base = datetime(2026, 1, 1, tzinfo=timezone.utc)
        for view in ("first", "second"):
            rows = [OnlineRow((str(k),), {"x": float(k)}, base) for k in range(5000)]
            assert store.write(view, rows) == 5000
        sql = _read_sql("postgresql", 0, 0, None)
        with db.engine.connect() as conn:
            params = {"v0": "second", "k0": ['["42"]']}
            plan = conn.exec_driver_sql(f"EXPLAIN {sql}", params).scalars().all()
        conditions = " ".join(line for line in plan if "Index Cond" in line)
        assert "entity_key" in conditions, plan
        # the read pool runs generic plans: the plan that serves every read looks keys up too
        prepared = sql.replace("%(v0)s", "$1").replace("%(k0)s", "$2")
        with store._reads.connect() as conn:
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_generic_plan"
            conn.exec_driver_sql(f"PREPARE read_one(text, text[]) AS {prepared}")
            generic = (
                conn.exec_driver_sql("EXPLAIN EXECUTE read_one('second', '{\"[\\\"42\\\"]\"}')")
                .scalars()
                .all()
            )
            conn.exec_driver_sql("DEALLOCATE read_one")
        conditions = " ".join(line for line in generic if "Index Cond" in line)
        assert "entity_key" in conditions and "$2" in conditions, generic
        found = store.read(
            "second", [("42",), ("nope",)], ["x"], ttl_seconds=None, now=base + timedelta(seconds=1)
        )
        assert found == [{"x": 42.0}, None]
    finally:
        store.close()
        db.dispose()


@pytest.mark.postgres
def test_sql_store_read_survives_the_server_closing_its_pooled_connections(pg_url):
    """The read pool has no pre-ping: a connection the server closed is dropped from the
    pool and the read runs once more on a new one; the next read works too. When the
    server refuses every connection, the read fails with a clear OnlineStoreError."""
    from datetime import datetime, timezone

    import psycopg

    from mlrig.db import migrate

    db = Database(pg_url, pool_size=2, max_overflow=2)
    migrate.upgrade(db)
    store = SqlOnlineStore.from_options({}, where="features.sql")
    store.bind_database(db)
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    name = db.url.database
    admin = str(pg_url).replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    try:
        assert store.write("v", [OnlineRow(("1",), {"x": 1.0}, base)]) == 1
        assert store.read("v", [("1",)], ["x"], ttl_seconds=None, now=base) == [{"x": 1.0}]
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()[0]
            assert killed >= 1
            assert store.read("v", [("1",)], ["x"], ttl_seconds=None, now=base) == [{"x": 1.0}]
            assert store.read("v", [("1",)], ["x"], ttl_seconds=None, now=base) == [{"x": 1.0}]
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                with pytest.raises(OnlineStoreError, match="could not read view 'v'"):
                    store.read("v", [("1",)], ["x"], ttl_seconds=None, now=base)
            finally:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        store.close()
        db.dispose()


def test_sql_store_async_read_survives_the_server_closing_its_connections(pg_url):
    """The same on the event loop: ``aread_many`` replaces an async connection the server
    closed and reads once more; a server refusing connections gives OnlineStoreError."""
    import asyncio
    from datetime import datetime, timezone

    import psycopg

    from mlrig.contracts.online_store import ViewRead
    from mlrig.db import migrate

    db = Database(pg_url, pool_size=2, max_overflow=2)
    migrate.upgrade(db)
    store = SqlOnlineStore.from_options({}, where="features.sql")
    store.bind_database(db)
    assert store.async_reads
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    name = db.url.database
    admin = str(pg_url).replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    read = [ViewRead("v", [("1",)], ["x"])]

    def kill_sessions(conn):
        return conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()[0]

    async def scenario(conn):
        assert await store.aread_many(read, now=base) == [[{"x": 1.0}]]
        assert kill_sessions(conn) >= 1
        assert await store.aread_many(read, now=base) == [[{"x": 1.0}]]
        assert await store.aread_many(read, now=base) == [[{"x": 1.0}]]
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            kill_sessions(conn)
            with pytest.raises(OnlineStoreError, match="could not read view 'v'"):
                await store.aread_many(read, now=base)
        finally:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    try:
        assert store.write("v", [OnlineRow(("1",), {"x": 1.0}, base)]) == 1
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            asyncio.run(scenario(conn))
    finally:
        store.close()
        db.dispose()
