"""Which online reads a server may run on its event loop (``reads_locally``): only small
reads of local files that run no user code and write nothing. (The HTTP answers of both
ways are compared in ``test_api_fastpath.py``: on SQLite its fast route reads on the loop,
with fast routes off FastAPI's route reads in a thread.)"""

from __future__ import annotations

import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlrig.features.service import LOCAL_READ_MAX_VALUES
from mlrig.security import Principal
from mlrig.testing.fixtures import make_platform

pytest.importorskip("duckdb")

ACTOR = Principal(name="admin", role="admin")
STAMP = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def features_platform(tmp_path: Path, db_url: str, database, monkeypatch):
    module = tmp_path / "local_reads_odfv.py"
    module.write_text(
        textwrap.dedent(
            """
            def double(frame):
                return frame.assign(twice=frame["visits"] * 2)[["twice"]]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    platform = make_platform(tmp_path / "home", database={"url": db_url})
    service = platform.features
    service.create_entity({"name": "customer", "join_keys": ["customer_id"]}, actor=ACTOR)
    service.create_view(
        {
            "name": "profile",
            "entities": ["customer"],
            "source": {"kind": "push"},
            "features": [
                {"name": "visits", "type": "numerical"},
                {"name": "email", "type": "text", "tags": ["pii"]},
            ],
        },
        actor=ACTOR,
    )
    service.create_view(
        {
            "name": "derived",
            "kind": "on_demand",
            "function": "local_reads_odfv:double",
            "inputs": ["profile:visits"],
            "features": [{"name": "twice", "type": "numerical"}],
        },
        actor=ACTOR,
    )
    rows = [{"customer_id": 1, "event_timestamp": STAMP, "visits": 4, "email": "a@x.org"}]
    service.push("profile", rows, actor=ACTOR)
    yield platform
    platform.close()
    sys.modules.pop("local_reads_odfv", None)


def test_only_small_plain_reads_of_a_local_store_run_on_the_loop(features_platform, db_url):
    service = features_platform.features
    local = db_url.startswith("sqlite")
    # SQLite database and store: a small read of stored features
    assert service.reads_locally(["visits"], 1, can_read_pii=True) is local
    assert service.reads_locally(["visits"], LOCAL_READ_MAX_VALUES, can_read_pii=True) is local
    # too many values, an unknown name (the full call answers it), user code
    assert not service.reads_locally(["visits"], LOCAL_READ_MAX_VALUES + 1, can_read_pii=True)
    assert not service.reads_locally(["nope"], 1, can_read_pii=True)
    assert not service.reads_locally(["derived:twice"], 1, can_read_pii=True)
    # a PII read by a reader allowed to see it is audited: a database write
    assert not service.reads_locally(["visits", "email"], 1, can_read_pii=True)
    # masked for a reader without the permission: once the mask's key is known
    assert not service.reads_locally(["email"], 1, can_read_pii=False)
    masked = service.get_online_features(["email"], [{"customer_id": 1}], can_read_pii=False)
    assert masked["results"][0]["email"] not in (None, "a@x.org")
    assert service.reads_locally(["email"], 1, can_read_pii=False) is local


def test_a_network_store_reads_off_the_loop(tmp_path: Path):
    import uuid

    prefix = f"mlrig-test-{uuid.uuid4().hex[:8]}:"
    redis = {"url": "redis://127.0.0.1:6379/0", "prefix": prefix}
    platform = make_platform(tmp_path / "home", features={"backend": "redis", "redis": redis})
    try:
        platform.features.create_entity(
            {"name": "customer", "join_keys": ["customer_id"]}, actor=ACTOR
        )
        platform.features.create_view(
            {
                "name": "profile",
                "entities": ["customer"],
                "source": {"kind": "push"},
                "features": [{"name": "visits", "type": "numerical"}],
            },
            actor=ACTOR,
        )
        assert platform.online_store.local_reads is False
        assert not platform.features.reads_locally(["visits"], 1, can_read_pii=True)
    finally:
        platform.online_store.delete_view("profile")
        platform.close()


class _CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting the calls handed to a thread."""

    calls = 0

    def submit(self, fn, /, *args, **kwargs):
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


def _on_a_loop(service, *calls):
    """Run ``get_online_features_async`` for each (features, kwargs) on one new loop with a
    counting default executor: per call, its answer and how many thread hops it made."""
    import asyncio

    async def main():
        executor = _CountingExecutor(2)
        asyncio.get_running_loop().set_default_executor(executor)
        out = []
        for features, kwargs in calls:
            before = executor.calls
            answer = await service.get_online_features_async(
                features, [{"customer_id": 1}, {"customer_id": 9}], **kwargs
            )
            out.append((answer, executor.calls - before))
        return out

    return asyncio.run(main())


def test_async_reads_answer_as_the_blocking_ones(features_platform, db_url):
    """``get_online_features_async`` gives ``get_online_features``'s answer; PostgreSQL
    reads plain and masked features on the loop (no thread), and hands to a thread what
    would block it: a PII read to audit, an on-demand view, definitions not checked
    within the last second. SQLite's store has no async driver: always a thread."""
    service = features_platform.features
    network = db_url.startswith("postgresql")
    rows = [{"customer_id": 1}, {"customer_id": 9}]
    cases = [
        (["visits"], {}),
        (["email"], {"can_read_pii": False}),
        (["visits", "email"], {"can_read_pii": True}),
        (["derived:twice"], {}),
    ]
    expected = [service.get_online_features(f, rows, **kw) for f, kw in cases]
    assert expected[0]["results"] == [{"visits": 4}, {"visits": None}]
    assert expected[0]["missing"] == [[], ["visits"]]
    assert expected[3]["results"][0] == {"twice": 8}
    got = _on_a_loop(service, *cases)
    assert [answer for answer, _ in got] == expected
    assert [hops for _, hops in got] == ([0, 0, 1, 1] if network else [1, 1, 1, 1])
    # the audited read wrote its audit row on both ways
    audit = features_platform.audit.query(action="features.read_pii")
    assert len(audit) == 2
    # definitions last checked over a second ago: one read in a thread checks them again
    service._checked_at -= 60
    got = _on_a_loop(service, (["visits"], {}), (["visits"], {}))
    assert [answer for answer, _ in got] == [expected[0]] * 2
    assert [hops for _, hops in got] == ([1, 0] if network else [1, 1])
