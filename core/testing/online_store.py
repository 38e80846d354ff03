"""The online store contract suite.

An online store plugin passes the contract by mixing :class:`OnlineStoreContract` into a
test class that provides an ``online_store`` fixture (a fresh, empty store per test), and
optionally ``broken_online_store`` (the store pointed at a server that is not there)::

    import pytest
    from mlrig.testing.online_store import OnlineStoreContract

    class TestMyStore(OnlineStoreContract):
        @pytest.fixture
        def online_store(self):
            store = MyStore.from_options({"url": "..."}, where="features.mine")
            yield store
            store.close()

The suite checks what :mod:`mlrig.contracts.online_store` documents: newest wins (by
event, then created timestamp, also within one batch and across threads), TTL expiry
(an expired row is missing, never stale), unknown keys, the order of results, several
views (and ``read_many`` where a store has it), reads on an event loop (``aread_many``,
on two loops one after the other), multi-part keys, ``None`` values,
concurrent writers and readers, ``delete_view``, and ``check``. The class needs no pytest plugin.
"""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from mlrig.contracts.online_store import (
    OnlineRow,
    OnlineStore,
    OnlineStoreError,
    ReadsManyViews,
    ViewRead,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    """``T0`` plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def row(key: str | tuple[str, ...], event: float, created: float | None = None, **values: Any):
    """An :class:`OnlineRow` at ``T0 + event`` seconds (``created`` likewise)."""
    return OnlineRow(
        key=(key,) if isinstance(key, str) else key,
        values=values,
        event_timestamp=at(event),
        created_timestamp=None if created is None else at(created),
    )


class OnlineStoreContract:
    """Tests every :class:`~mlrig.contracts.online_store.OnlineStore` must pass.

    Subclasses provide ``online_store`` (fresh and empty for each test) and may provide
    ``broken_online_store`` (whose ``check()`` and reads must raise
    :class:`~mlrig.contracts.online_store.OnlineStoreError`).
    """

    #: threads of the concurrency tests
    threads: int = 8

    @pytest.fixture
    def broken_online_store(self) -> OnlineStore:
        """Override: this store pointed at a server that cannot work."""
        pytest.skip("no broken_online_store fixture: the error translation is not checked")

    def _read(self, store: OnlineStore, view: str, keys: list[Any], features: list[str], **kw):
        keys = [(k,) if isinstance(k, str) else k for k in keys]
        kw.setdefault("ttl_seconds", None)
        kw.setdefault("now", at(10))
        return store.read(view, keys, features, **kw)

    # --- basics -------------------------------------------------------------------------

    def test_round_trip_and_feature_subset(self, online_store: OnlineStore) -> None:
        written = online_store.write(
            "v", [row("1", 0, a=1.5, b="x", c=True), row("2", 0, a=-2, b=None, c=False)]
        )
        assert written == 2
        assert self._read(online_store, "v", ["1", "2"], ["a", "b", "c"]) == [
            {"a": 1.5, "b": "x", "c": True},
            {"a": -2, "b": None, "c": False},
        ]
        assert self._read(online_store, "v", ["2", "1"], ["c"]) == [{"c": False}, {"c": True}]

    def test_none_values_are_stored_missing_values(self, online_store: OnlineStore) -> None:
        online_store.write("v", [row("1", 0, a=None, b=2)])
        got = self._read(online_store, "v", ["1"], ["a", "b"])
        assert got == [{"a": None, "b": 2}]  # a live row: a dict, not None

    def test_unknown_feature_of_a_live_row_is_none(self, online_store: OnlineStore) -> None:
        online_store.write("v", [row("1", 0, a=1)])
        assert self._read(online_store, "v", ["1"], ["a", "zz"]) == [{"a": 1, "zz": None}]

    def test_unknown_keys_and_order(self, online_store: OnlineStore) -> None:
        online_store.write("v", [row(str(i), 0, a=i) for i in range(0, 20, 2)])
        keys = ["18", "nope", "0", "3", "4", "0", ""]
        got = self._read(online_store, "v", keys, ["a"])
        assert got == [{"a": 18}, None, {"a": 0}, None, {"a": 4}, {"a": 0}, None]
        assert self._read(online_store, "v", [], ["a"]) == []
        assert self._read(online_store, "never-written", ["0"], ["a"]) == [None]

    def test_many_keys_in_one_read(self, online_store: OnlineStore) -> None:
        online_store.write("v", [row(str(i), 0, a=i, b=str(i)) for i in range(1500)])
        keys = [str(i) for i in range(1499, -1, -3)] + ["missing"]
        got = self._read(online_store, "v", keys, ["b", "a"])
        assert got[:-1] == [{"a": int(k), "b": k} for k in keys[:-1]]
        assert got[-1] is None

    def test_multi_part_and_odd_keys(self, online_store: OnlineStore) -> None:
        keys = [("a", "b"), ("a:b", ""), ("a", "b:"), ("ü ñ", '"q"'), ("*", "?"), ("[x]", "\\")]
        online_store.write("v", [row(k, 0, i=i) for i, k in enumerate(keys)])
        assert self._read(online_store, "v", keys, ["i"]) == [{"i": i} for i in range(len(keys))]
        assert self._read(online_store, "v", [("a",), ("a", "b", "")], ["i"]) == [None, None]

    def test_empty_write(self, online_store: OnlineStore) -> None:
        assert online_store.write("v", []) == 0

    # --- newest wins --------------------------------------------------------------------

    def test_newest_event_wins(self, online_store: OnlineStore) -> None:
        assert online_store.write("v", [row("k", 5, a="new")]) == 1
        assert online_store.write("v", [row("k", 4, a="old")]) == 0
        assert self._read(online_store, "v", ["k"], ["a"]) == [{"a": "new"}]
        assert online_store.write("v", [row("k", 6, a="newer")]) == 1
        assert self._read(online_store, "v", ["k"], ["a"]) == [{"a": "newer"}]

    def test_created_timestamp_breaks_ties(self, online_store: OnlineStore) -> None:
        online_store.write("v", [row("k", 5, created=10, a="corrected")])
        assert online_store.write("v", [row("k", 5, created=9, a="first")]) == 0
        assert online_store.write("v", [row("k", 5, a="no created")]) == 0
        assert self._read(online_store, "v", ["k"], ["a"]) == [{"a": "corrected"}]
        assert online_store.write("v", [row("k", 5, created=11, a="again")]) == 1
        assert self._read(online_store, "v", ["k"], ["a"]) == [{"a": "again"}]

    def test_a_rewrite_of_the_same_row_is_idempotent(self, online_store: OnlineStore) -> None:
        rows = [row(str(i), 3, created=4, a=i) for i in range(10)]
        online_store.write("v", rows)
        online_store.write("v", rows)  # a rerun of the same window
        assert self._read(online_store, "v", ["0", "9"], ["a"]) == [{"a": 0}, {"a": 9}]

    def test_newest_wins_within_one_batch(self, online_store: OnlineStore) -> None:
        batch = [row("k", 2, a=2), row("k", 7, a=7), row("k", 1, a=1), row("j", 0, a="j")]
        assert online_store.write("v", batch) == 2
        assert self._read(online_store, "v", ["k", "j"], ["a"]) == [{"a": 7}, {"a": "j"}]

    def test_mixed_batch_counts_only_what_won(self, online_store: OnlineStore) -> None:
        online_store.write("v", [row("a", 5, x=1), row("b", 5, x=1)])
        written = online_store.write("v", [row("a", 4, x=2), row("b", 6, x=2), row("c", 0, x=2)])
        assert written == 2
        got = self._read(online_store, "v", ["a", "b", "c"], ["x"])
        assert got == [{"x": 1}, {"x": 2}, {"x": 2}]

    # --- TTL ----------------------------------------------------------------------------

    def test_ttl_expired_is_missing_never_stale(self, online_store: OnlineStore) -> None:
        online_store.write("v", [row("old", 0, a="old"), row("fresh", 95, a="fresh")])
        got = self._read(online_store, "v", ["old", "fresh"], ["a"], ttl_seconds=10, now=at(100))
        assert got == [None, {"a": "fresh"}]
        # the boundary: exactly ttl old is still live
        got = self._read(online_store, "v", ["fresh"], ["a"], ttl_seconds=5, now=at(100))
        assert got == [{"a": "fresh"}]
        got = self._read(online_store, "v", ["fresh"], ["a"], ttl_seconds=4.5, now=at(100))
        assert got == [None]
        # no TTL: never expires
        got = self._read(online_store, "v", ["old"], ["a"], ttl_seconds=None, now=at(10**8))
        assert got == [{"a": "old"}]

    def test_an_expired_row_does_not_come_back_through_an_older_write(
        self, online_store: OnlineStore
    ) -> None:
        """After the newest row expired, writing an older one must not make it readable
        (whether the store dropped the expired row, as the hint allows, or kept it)."""
        online_store.write("v", [row("k", 50, a="newest")], ttl_seconds=10)
        online_store.write("v", [row("k", 40, a="older")], ttl_seconds=10)
        got = self._read(online_store, "v", ["k"], ["a"], ttl_seconds=10, now=at(70))
        assert got == [None]
        online_store.write("v", [row("j", 50, a="newest")])
        online_store.write("v", [row("j", 40, a="older")])
        got = self._read(online_store, "v", ["j"], ["a"], ttl_seconds=10, now=at(55))
        assert got == [{"a": "newest"}]
        got = self._read(online_store, "v", ["j"], ["a"], ttl_seconds=10, now=at(70))
        assert got == [None]

    def test_ttl_hint_on_write_keeps_live_rows(self, online_store: OnlineStore) -> None:
        now = datetime.now(timezone.utc)
        online_store.write(
            "v",
            [OnlineRow(key=("k",), values={"a": 1}, event_timestamp=now)],
            ttl_seconds=3600,
        )
        got = online_store.read("v", [("k",)], ["a"], ttl_seconds=3600, now=now)
        assert got == [{"a": 1}]

    def test_naive_and_other_zone_timestamps_are_utc_instants(
        self, online_store: OnlineStore
    ) -> None:
        plus2 = timezone(timedelta(hours=2))
        online_store.write(
            "v",
            [OnlineRow(key=("k",), values={"a": 1}, event_timestamp=at(0).astimezone(plus2))],
        )
        older = OnlineRow(key=("k",), values={"a": 0}, event_timestamp=at(-1).astimezone(plus2))
        assert online_store.write("v", [older]) == 0
        got = self._read(online_store, "v", ["k"], ["a"], ttl_seconds=10, now=at(10))
        assert got == [{"a": 1}]
        got = self._read(online_store, "v", ["k"], ["a"], ttl_seconds=10, now=at(11))
        assert got == [None]

    # --- views --------------------------------------------------------------------------

    def test_views_are_separate(self, online_store: OnlineStore) -> None:
        online_store.write("v1", [row("k", 0, a="one")])
        online_store.write("v2", [row("k", 5, a="two")])
        online_store.write("v1_more", [row("k", 9, a="three")])
        assert self._read(online_store, "v1", ["k"], ["a"]) == [{"a": "one"}]
        assert self._read(online_store, "v2", ["k"], ["a"]) == [{"a": "two"}]
        # an older row of v1 is not compared with v2's
        assert online_store.write("v1", [row("k", 1, a="one-b")]) == 1

    def test_delete_view(self, online_store: OnlineStore) -> None:
        online_store.write("gone", [row(str(i), 0, a=i) for i in range(2500)])
        online_store.write("gone_not", [row("1", 0, a="kept")])
        online_store.write("kept", [row("1", 0, a="kept")])
        online_store.delete_view("gone")
        assert self._read(online_store, "gone", ["1", "2499"], ["a"]) == [None, None]
        assert self._read(online_store, "kept", ["1"], ["a"]) == [{"a": "kept"}]
        assert self._read(online_store, "gone_not", ["1"], ["a"]) == [{"a": "kept"}]
        online_store.delete_view("gone")  # nothing left: not an error
        online_store.delete_view("never-was")
        # an older row may be written again after a delete
        assert online_store.write("gone", [row("1", -100, a="back")]) == 1

    def test_read_many_views_at_once(self, online_store: OnlineStore) -> None:
        """Where the store reads several views in one call (ReadsManyViews), each part
        answers exactly as its own read would, TTL per view."""
        if not isinstance(online_store, ReadsManyViews):
            pytest.skip("the store reads one view per call (no read_many)")
        online_store.write("a", [row("1", 0, x=1), row("2", 95, x=2)])
        online_store.write("b", [row("1", 0, y="b1"), row(("1", "z"), 0, y="pair")])
        reads = [
            ViewRead("a", [("2",), ("1",), ("9",), ("2",)], ["x"], 10),
            ViewRead("b", [("1",), ("2",)], ["y"], None),
            ViewRead("empty", [], ["x"], None),
            ViewRead("a", [("1",)], ["x", "nope"], None),
        ]
        got = online_store.read_many(reads, now=at(100))
        assert got == [
            [{"x": 2}, None, None, {"x": 2}],
            [{"y": "b1"}, None],
            [],
            [{"x": 1, "nope": None}],
        ]
        for part, answer in zip(reads, got, strict=True):
            alone = online_store.read(
                part.view, part.keys, part.features, ttl_seconds=part.ttl_seconds, now=at(100)
            )
            assert alone == answer
        got[0][0]["x"] = "changed"  # results are the caller's to keep
        assert got[0][3] == {"x": 2}
        shared = [("1",), ("2",)]  # one key list for two views (views of one entity)
        got = online_store.read_many(
            [ViewRead("a", shared, ["x"], None), ViewRead("b", shared, ["y"], None)], now=at(100)
        )
        assert got == [[{"x": 1}, {"x": 2}], [{"y": "b1"}, None]]
        # one key list under two TTLs, one of them shared by two views
        got = online_store.read_many(
            [
                ViewRead("a", shared, ["x"], 10),
                ViewRead("b", shared, ["y"], 10),
                ViewRead("a", shared, ["x"], None),
            ],
            now=at(100),
        )
        assert got == [[None, {"x": 2}], [None, None], [{"x": 1}, {"x": 2}]]

    # --- on an event loop ---------------------------------------------------------------

    def test_async_reads_answer_as_the_blocking_ones(self, online_store: OnlineStore) -> None:
        """``aread_many`` (native where ``async_reads``, else the default in a thread)
        gives what ``read`` gives per part, on one loop and then on a new one (a store's
        async connections belong to the loop they were made on)."""
        import asyncio

        online_store.write("a", [row("1", 0, x=1), row("2", 95, x=2)])
        online_store.write("b", [row("1", 0, y="b1")])
        shared = [("2",), ("1",), ("9",), ("2",)]
        reads = [
            ViewRead("a", shared, ["x"], 10),
            ViewRead("b", shared, ["y"], None),
            ViewRead("empty", [], ["x"], None),
            ViewRead("a", [("1",)], ["x", "nope"], None),
        ]
        expected = [
            online_store.read(p.view, p.keys, p.features, ttl_seconds=p.ttl_seconds, now=at(100))
            for p in reads
        ]
        assert expected[0] == [{"x": 2}, None, None, {"x": 2}]

        async def many_at_once() -> list[Any]:
            return await asyncio.gather(
                *(online_store.aread_many(reads, now=at(100)) for _ in range(self.threads))
            )

        for _ in range(2):  # a second asyncio.run is a new loop
            assert asyncio.run(many_at_once()) == [expected] * self.threads
        assert asyncio.run(online_store.aread_many([ViewRead("a", [], ["x"])], now=T0)) == [[]]

    # --- threads ------------------------------------------------------------------------

    def test_concurrent_writers_newest_wins(self, online_store: OnlineStore) -> None:
        """Threads write the same keys with interleaved timestamps: the greatest wins."""
        keys = [str(i) for i in range(20)]
        events = list(range(self.threads * 5))
        random.Random(3).shuffle(events)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for event in events[n :: self.threads]:
                    online_store.write("v", [row(k, event, a=event) for k in keys])
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(self.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        top = max(events)
        assert self._read(online_store, "v", keys, ["a"], now=at(top)) == [{"a": top}] * 20

    def test_concurrent_readers_and_writers(self, online_store: OnlineStore) -> None:
        online_store.write("v", [row(str(i), 0, a=0) for i in range(50)])
        errors: list[BaseException] = []
        stop = threading.Event()

        def reader() -> None:
            try:
                while not stop.is_set():
                    got = self._read(online_store, "v", [str(i) for i in range(50)], ["a"])
                    assert all(g is not None for g in got)
                    values = [g["a"] for g in got]
                    assert all(isinstance(v, int) for v in values)
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=reader) for _ in range(self.threads // 2)]
        for thread in readers:
            thread.start()
        try:
            for event in range(1, 21):
                online_store.write("v", [row(str(i), event, a=event) for i in range(50)])
        finally:
            stop.set()
            for thread in readers:
                thread.join()
        assert errors == []
        got = self._read(online_store, "v", ["0", "49"], ["a"], now=at(20))
        assert got == [{"a": 20}, {"a": 20}]

    # --- probing and errors -------------------------------------------------------------

    def test_check(self, online_store: OnlineStore) -> None:
        import json

        facts = online_store.check()
        json.dumps(facts)
        assert "password" not in json.dumps(facts).lower()

    def test_broken_store_raises_a_clear_error(self, broken_online_store: OnlineStore) -> None:
        with pytest.raises(OnlineStoreError):
            broken_online_store.check()
        with pytest.raises(OnlineStoreError):
            broken_online_store.read("v", [("k",)], ["a"], ttl_seconds=None, now=T0)
        with pytest.raises(OnlineStoreError):
            broken_online_store.write("v", [row("k", 0, a=1)])
        import asyncio

        with pytest.raises(OnlineStoreError):
            asyncio.run(broken_online_store.aread_many([ViewRead("v", [("k",)], ["a"])], now=T0))


__all__ = ["T0", "OnlineStoreContract", "at", "row"]
