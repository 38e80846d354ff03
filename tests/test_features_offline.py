"""The offline store's point-in-time joins against a brute-force oracle.

Seeded random sources with many rows per key, ties in event time, late corrections (same
event time, later created time), created times missing, null values, TTL expiry exactly
at the boundary, multi-column keys, several views in one call; entity frames with
duplicate rows, unknown keys and rows before any data. The oracle is a plain Python loop
over every source row for every entity row, written from the documented rules only.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("duckdb")
pa = pytest.importorskip("pyarrow")

from mlrig.errors import ValidationError  # noqa: E402
from mlrig.features import offline  # noqa: E402
from mlrig.features.spec import (  # noqa: E402
    EntitySpec,
    FeatureSpec,
    FeatureViewSpec,
    OnDemandViewSpec,
    SourceSpec,
)

BASE = datetime(2024, 3, 1, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
DRIVER = EntitySpec("driver", ("driver_id",))
STORE = EntitySpec("store", ("store", "region"))


# --- seeded data ------------------------------------------------------------------------


def driver_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Few keys, hour-grained times (ties), corrections, missing created times, nulls."""
    rows = []
    for _ in range(n):
        ts = BASE + rng.randint(0, 60) * HOUR
        created = None if rng.random() < 0.2 else ts + rng.randint(0, 5) * HOUR
        rows.append(
            {
                "driver_id": rng.randint(1, 8),
                "ts": ts,
                "created": created,
                "conv_rate": None if rng.random() < 0.1 else round(rng.random(), 3),
                "trips": rng.randint(0, 50),
                "city": rng.choice(["paris", "oslo", "lima"]),
            }
        )
        if rng.random() < 0.25:  # a late correction of the same event
            fixed = dict(rows[-1])
            fixed["created"] = (created or ts) + rng.randint(0, 3) * HOUR  # may tie again
            fixed["conv_rate"] = round(rng.random(), 3)
            fixed["trips"] = rng.randint(0, 50)
            rows.append(fixed)
    return rows


def store_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """A two-column key, no created time: ties broken by file order."""
    rows = []
    for _ in range(n):
        rows.append(
            {
                "store": rng.choice(["a", "b", "c"]),
                "region": rng.randint(1, 3),
                "event_timestamp": BASE + rng.randint(0, 30) * 2 * HOUR,
                "sales": rng.randint(0, 1000),
                "open": rng.random() < 0.5,
            }
        )
    return rows


def entity_frame(rng: random.Random, n: int, *, aware: bool) -> Any:
    rows = []
    for _ in range(n):
        ts = BASE + rng.randint(-10, 80) * HOUR  # some before any data, some after all
        rows.append(
            {
                "driver_id": rng.randint(0, 9),  # 0 and 9: no data at all
                "store": rng.choice(["a", "b", "c", "z"]),
                "region": rng.randint(1, 4),
                "event_timestamp": ts if aware else ts.replace(tzinfo=None),
                "label": rng.random(),
            }
        )
    rows += [dict(r) for r in rng.sample(rows, n // 5)]  # duplicate rows
    rng.shuffle(rows)
    return pd.DataFrame(rows)


def write(rows: list[dict[str, Any]], path: Path) -> Path:
    pd.DataFrame(rows).to_parquet(path)
    return path


def driver_view(uri: Path, *, ttl: int | None = 24 * 3600) -> FeatureViewSpec:
    return FeatureViewSpec(
        name="driver_stats",
        entities=(DRIVER,),
        source=SourceSpec(
            kind="file",
            uri=str(uri),
            format="parquet",
            timestamp_field="ts",
            created_timestamp_field="created",
        ),
        features=(
            FeatureSpec("conv_rate", "numerical"),
            FeatureSpec("trips", "numerical"),
            FeatureSpec("trips_x2", "numerical", expression="trips * 2 + 1"),
            FeatureSpec("city", "categorical"),
        ),
        ttl_seconds=ttl,
    )


def store_view(uri: Path, fmt: str = "parquet") -> FeatureViewSpec:
    return FeatureViewSpec(
        name="store_stats",
        entities=(STORE,),
        source=SourceSpec(kind="file", uri=str(uri), format=fmt),  # type: ignore[arg-type]
        features=(FeatureSpec("sales", "numerical"), FeatureSpec("open", "boolean")),
    )


# --- the oracle -------------------------------------------------------------------------


def utc(value: Any) -> datetime:
    value = pd.Timestamp(value).to_pydatetime()
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def oracle(
    entity: Any,
    view: FeatureViewSpec,
    rows: list[dict[str, Any]],
    compute: dict[str, Any],
) -> dict[str, list[Any]]:
    """For each entity row: every source row with the same keys, event time at or before
    the row's and (TTL) at or after the row's minus the TTL; the greatest (event time,
    has a created time, created time, position in the file) wins."""
    ts_field = view.source.timestamp_field
    cts_field = view.source.created_timestamp_field
    ttl = None if view.ttl_seconds is None else timedelta(seconds=view.ttl_seconds)
    out: dict[str, list[Any]] = {name: [] for name in compute}
    for _, entity_row in entity.iterrows():
        t = utc(entity_row["event_timestamp"])
        best = None
        best_rank = None
        for position, row in enumerate(rows):
            if any(row[k] != entity_row[k] for k in view.join_keys):
                continue
            ts = utc(row[ts_field])
            if ts > t or (ttl is not None and ts < t - ttl):
                continue
            created = row.get(cts_field) if cts_field else None
            rank = (ts, created is not None, created or ts, position)
            if best_rank is None or rank > best_rank:
                best, best_rank = row, rank
        for name, fn in compute.items():
            out[name].append(None if best is None else fn(best))
    return out


def plain(values: Any) -> list[Any]:
    """Values comparable with ==: NaN/None/NA -> None, numpy scalars -> Python."""
    out = []
    for v in list(values):
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif hasattr(v, "item"):
            out.append(v.item())
        else:
            out.append(v)
    return out


DRIVER_COMPUTE = {
    "conv_rate": lambda r: r["conv_rate"],
    "trips": lambda r: r["trips"],
    "trips_x2": lambda r: r["trips"] * 2 + 1,
    "city": lambda r: r["city"],
}
STORE_COMPUTE = {"sales": lambda r: r["sales"], "open": lambda r: r["open"]}


# --- against the oracle -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_training_sets_match_the_oracle(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    drivers = driver_rows(rng, 250)
    stores = store_rows(rng, 150)
    dview = driver_view(
        write(drivers, tmp_path / "drivers.parquet"), ttl=[None, 24 * 3600][seed % 2]
    )
    sview = store_view(write(stores, tmp_path / "stores.parquet"))
    entity = entity_frame(rng, 200, aware=seed % 3 != 0)
    names = list(DRIVER_COMPUTE)
    got = offline.historical_features(
        None, entity, [(dview, names), (sview, ["store_stats:sales", "open"])]
    )
    # the frame's rows, order, index and columns are kept
    assert len(got) == len(entity)
    assert got.index.equals(entity.index)
    assert list(got.columns) == [*entity.columns, *names, "sales", "open"]
    pd.testing.assert_frame_equal(got[list(entity.columns)], entity)
    want = oracle(entity, dview, drivers, DRIVER_COMPUTE) | oracle(
        entity, sview, stores, STORE_COMPUTE
    )
    for name, values in want.items():
        assert plain(got[name]) == values, name
    # the data really exercises the rules
    assert any(v is None for v in want["trips"]) and any(v is not None for v in want["trips"])
    assert any(v is not None for v in want["sales"])


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_the_ttl_boundary_is_inclusive(tmp_path: Path, seed: int) -> None:
    """Entity times exactly ttl after an event: still valid; a microsecond more: expired."""
    rng = random.Random(seed)
    drivers = driver_rows(rng, 80)
    view = driver_view(write(drivers, tmp_path / "d.parquet"), ttl=6 * 3600)
    rows = []
    for row in rng.sample(drivers, 30):
        edge = row["ts"] + 6 * HOUR
        rows.append({"driver_id": row["driver_id"], "event_timestamp": edge})
        rows.append(
            {"driver_id": row["driver_id"], "event_timestamp": edge + timedelta(microseconds=1)}
        )
    entity = pd.DataFrame(rows)
    got = offline.historical_features(None, entity, [(view, ["trips"])])
    assert (
        plain(got["trips"])
        == oracle(entity, view, drivers, {"trips": DRIVER_COMPUTE["trips"]})["trips"]
    )
    exact = got["trips"].iloc[0::2]
    assert exact.notna().all()  # exactly at the TTL: valid (like the online stores)


def test_read_window_matches_the_oracle(tmp_path: Path) -> None:
    rng = random.Random(7)
    drivers = driver_rows(rng, 300)
    view = driver_view(write(drivers, tmp_path / "d.parquet"))
    start, end = BASE + 10 * HOUR, BASE + 40 * HOUR
    table = offline.read_window(None, view, start, end)
    assert table.column_names == [
        "driver_id",
        "event_timestamp",
        "created_timestamp",
        "conv_rate",
        "trips",
        "trips_x2",
        "city",
    ]
    assert str(table.schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"
    got = {r["driver_id"]: r for r in table.to_pylist()}
    for key in range(1, 9):
        inside = [
            (r["ts"], r["created"] is not None, r["created"] or r["ts"], i, r)
            for i, r in enumerate(drivers)
            if r["driver_id"] == key and start <= r["ts"] < end
        ]
        if not inside:
            assert key not in got
            continue
        best = max(inside, key=lambda x: x[:4])[4]
        row = got[key]
        assert row["event_timestamp"] == best["ts"]
        assert row["created_timestamp"] == best["created"]
        assert row["trips"] == best["trips"] and row["trips_x2"] == best["trips"] * 2 + 1
        assert row["conv_rate"] == best["conv_rate"]
    assert len(got) == len({r["driver_id"] for r in drivers if start <= r["ts"] < end})


def test_csv_source_gives_the_same_training_set(tmp_path: Path) -> None:
    rng = random.Random(3)
    stores = store_rows(rng, 120)
    frame = pd.DataFrame(stores)
    frame.to_parquet(tmp_path / "s.parquet")
    frame.assign(event_timestamp=frame["event_timestamp"].map(lambda t: t.isoformat())).to_csv(
        tmp_path / "s.csv", index=False
    )
    entity = entity_frame(rng, 100, aware=True)
    from_parquet = offline.historical_features(
        None, entity, [(store_view(tmp_path / "s.parquet"), ["sales", "open"])]
    )
    from_csv = offline.historical_features(
        None, entity, [(store_view(tmp_path / "s.csv", "csv"), ["sales", "open"])]
    )
    assert plain(from_csv["sales"]) == plain(from_parquet["sales"])
    assert plain(from_csv["open"]) == plain(from_parquet["open"])
    assert (
        plain(from_csv["sales"])
        == oracle(entity, store_view(tmp_path / "s.csv"), stores, STORE_COMPUTE)["sales"]
    )


# --- time zones -------------------------------------------------------------------------


def test_time_zones_naive_aware_and_iso_strings_agree(tmp_path: Path) -> None:
    rng = random.Random(5)
    drivers = driver_rows(rng, 150)
    view = driver_view(write(drivers, tmp_path / "d.parquet"))
    aware = entity_frame(rng, 80, aware=True)[["driver_id", "event_timestamp"]]
    naive = aware.assign(event_timestamp=aware["event_timestamp"].dt.tz_localize(None))
    tokyo = aware.assign(event_timestamp=aware["event_timestamp"].dt.tz_convert("Asia/Tokyo"))
    iso = aware.assign(
        event_timestamp=aware["event_timestamp"]
        .dt.tz_convert("America/Lima")
        .map(lambda t: t.isoformat())
    )
    results = [
        plain(offline.historical_features(None, f, [(view, ["trips"])])["trips"])
        for f in (aware, naive, tokyo, iso)
    ]
    assert results[0] == results[1] == results[2] == results[3]
    assert results[0] == oracle(aware, view, drivers, {"trips": DRIVER_COMPUTE["trips"]})["trips"]


def test_a_naive_source_is_taken_as_utc(tmp_path: Path) -> None:
    naive = pd.DataFrame(
        {"driver_id": [1], "ts": [datetime(2024, 1, 1, 12)], "trips": [5]}
    )  # 12:00 UTC
    naive.to_parquet(tmp_path / "n.parquet")
    view = FeatureViewSpec(
        "n",
        (DRIVER,),
        SourceSpec("file", "ts", uri=str(tmp_path / "n.parquet")),
        (FeatureSpec("trips", "numerical"),),
    )
    at = pd.DataFrame(
        {
            "driver_id": [1, 1],
            "event_timestamp": pd.to_datetime(
                ["2024-01-01T12:59:00+01:00", "2024-01-01T13:00:00+01:00"]
            ),
        }
    )
    got = offline.historical_features(None, at, [(view, ["trips"])])
    assert plain(got["trips"]) == [None, 5]  # 11:59 UTC is before, 12:00 UTC is at


# --- on-demand and errors ---------------------------------------------------------------


def double_trips(frame: Any) -> Any:
    return pd.DataFrame({"trips_plus": frame["trips"] + frame["bonus"]})


def test_on_demand_views_are_applied_after_the_join(tmp_path: Path) -> None:
    rng = random.Random(1)
    drivers = driver_rows(rng, 100)
    view = driver_view(write(drivers, tmp_path / "d.parquet"), ttl=None)
    entity = entity_frame(rng, 50, aware=True).assign(bonus=10)
    spec = OnDemandViewSpec(
        name="plus",
        function=f"{__name__}:double_trips",
        inputs=("trips",),
        features=(FeatureSpec("trips_plus", "numerical"),),
        request_fields={"bonus": "numerical"},
    )
    got = offline.historical_features(None, entity, [(view, ["trips"]), (spec, ["trips_plus"])])
    expected = [None if v is None else v + 10 for v in plain(got["trips"])]
    assert plain(got["trips_plus"]) == expected


def test_bad_entity_frames_are_refused(tmp_path: Path) -> None:
    view = driver_view(write(driver_rows(random.Random(0), 10), tmp_path / "d.parquet"))
    ok = pd.DataFrame({"driver_id": [1], "event_timestamp": [BASE]})
    with pytest.raises(ValidationError, match="no column 'driver_id'"):
        offline.historical_features(None, ok.drop(columns="driver_id"), [(view, ["trips"])])
    with pytest.raises(ValidationError, match="no timestamp column 'when'"):
        offline.historical_features(None, ok, [(view, ["trips"])], timestamp_column="when")
    with pytest.raises(ValidationError, match="must hold timestamps"):
        offline.historical_features(
            None, ok.assign(event_timestamp=["yesterday"]), [(view, ["trips"])]
        )
    with pytest.raises(ValidationError, match="missing timestamps"):
        offline.historical_features(None, ok.assign(event_timestamp=[None]), [(view, ["trips"])])
    with pytest.raises(ValidationError, match="clash"):
        offline.historical_features(None, ok.assign(trips=1), [(view, ["trips"])])
    with pytest.raises(ValidationError, match="no feature 'nope'"):
        offline.historical_features(None, ok, [(view, ["nope"])])


def test_an_empty_entity_frame_gives_an_empty_training_set(tmp_path: Path) -> None:
    view = driver_view(write(driver_rows(random.Random(0), 10), tmp_path / "d.parquet"))
    empty = pd.DataFrame(
        {
            "driver_id": pd.Series([], dtype="int64"),
            "event_timestamp": pd.Series([], dtype="datetime64[us, UTC]"),
        }
    )
    got = offline.historical_features(None, empty, [(view, ["trips", "city"])])
    assert list(got.columns) == ["driver_id", "event_timestamp", "trips", "city"]
    assert len(got) == 0


def test_a_key_of_another_type_is_a_clear_error(tmp_path: Path) -> None:
    view = driver_view(write(driver_rows(random.Random(0), 10), tmp_path / "d.parquet"))
    frame = pd.DataFrame({"driver_id": ["x"], "event_timestamp": [BASE]})
    with pytest.raises(ValidationError, match="driver_stats"):
        offline.historical_features(None, frame, [(view, ["trips"])])


def test_a_folder_of_parquet_files_is_one_source(tmp_path: Path) -> None:
    rng = random.Random(4)
    rows = driver_rows(rng, 120)
    folder = tmp_path / "parts"
    folder.mkdir()
    write(rows[:60], folder / "part-0.parquet")
    write(rows[60:], folder / "part-1.parquet")  # later file: wins full ties
    view = replace(driver_view(folder), ttl_seconds=None)
    entity = entity_frame(rng, 80, aware=True)
    got = offline.historical_features(None, entity, [(view, ["trips", "conv_rate"])])
    want = oracle(entity, view, rows, DRIVER_COMPUTE)
    assert plain(got["trips"]) == want["trips"]
    assert plain(got["conv_rate"]) == want["conv_rate"]


def test_importing_the_offline_store_loads_no_heavy_module() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mlrig.features.offline, mlrig.features.sources; "
        "print(sorted({'duckdb', 'pandas', 'pyarrow'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_duplicate_index_and_other_columns_are_kept(tmp_path: Path) -> None:
    rng = random.Random(9)
    drivers = driver_rows(rng, 60)
    view = driver_view(write(drivers, tmp_path / "d.parquet"), ttl=None)
    entity = entity_frame(rng, 30, aware=True)
    entity.index = ["same"] * 10 + list(range(len(entity) - 10))
    got = offline.historical_features(None, entity, [(view, ["trips"])])
    assert list(got.index) == list(entity.index)
    assert plain(got["label"]) == plain(entity["label"])
    assert (
        plain(got["trips"])
        == oracle(entity, view, drivers, {"trips": DRIVER_COMPUTE["trips"]})["trips"]
    )


# --- expressions: one scalar over the source row (review findings 2 and 8) -------------


def with_expression(view: FeatureViewSpec, expression: str) -> FeatureViewSpec:
    feature = FeatureSpec("computed", "numerical", expression=expression)
    return replace(view, features=(*view.features, feature))


def test_an_expression_with_a_trailing_line_comment_is_computed(tmp_path: Path) -> None:
    rows = driver_rows(random.Random(5), 30)
    view = with_expression(driver_view(write(rows, tmp_path / "d.parquet")), "trips * 2 -- x2")
    offline.validate_source(None, view)
    frame = pd.DataFrame({"driver_id": [r["driver_id"] for r in rows]}).assign(
        event_timestamp=BASE + timedelta(days=400)
    )
    got = offline.historical_features(
        None,
        frame,
        [(view, ["trips", "computed"])],
    )
    pairs = [(t, c) for t, c in zip(plain(got["trips"]), plain(got["computed"]), strict=True)]
    assert pairs and all(c == t * 2 for t, c in pairs if t is not None)
    window = offline.read_window(None, view, None, None).to_pylist()
    assert window and all(r["computed"] == r["trips"] * 2 for r in window)


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ('trips) AS x FROM "__mlrig_src0" --', "syntax error"),  # its own FROM, comment
        ("trips) AS x FROM read_csv('/etc/passwd') --", "syntax error"),
        ("trips), (1", "found 2 select-list entries"),
        ("1) AS y FROM t UNION SELECT (1", "set operations"),
        ("trips) AS y FROM t WHERE (true", "syntax error"),
        ("COLUMNS('.*')", r"no \* or COLUMNS"),
        ("(SELECT 1)", "no subqueries"),
        ("trips); SELECT (1", "statements"),
    ],
)
def test_an_expression_that_is_not_one_scalar_is_refused(
    tmp_path: Path, expression: str, why: str
) -> None:
    rows = driver_rows(random.Random(6), 10)
    view = with_expression(driver_view(write(rows, tmp_path / "d.parquet")), expression)
    with pytest.raises(ValidationError, match=why) as info:
        offline.validate_source(None, view)
    assert info.value.details["reason"] == "bad_expression"
    assert info.value.details["feature"] == "computed"


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT (a) AS x FROM t JOIN u ON true", "no FROM clause, joins"),
        ("SELECT (a) AS x FROM read_csv('f.csv')", "no FROM clause, joins"),
        ("SELECT (a) AS x FROM s.t", "no FROM clause, joins"),
        ("SELECT (a) AS x FROM u", "no FROM clause, joins"),
        ("SELECT (a) AS x", "no FROM clause, joins"),
        ("SELECT (a) AS x FROM t WHERE b", "no WHERE"),
        ("SELECT (a) AS x FROM t LIMIT 1", "no WHERE"),
        ("WITH c AS (SELECT 1) SELECT (a) AS x FROM t", "no WHERE"),
        ("SELECT (a) AS x FROM t UNION ALL SELECT 1", "set operations"),
        ("SELECT (a) AS x FROM t; SELECT 1", "2 statements"),
    ],
)
def test_the_parsed_tree_must_be_one_select_item_over_the_base_table(sql: str, why: str) -> None:
    import json

    from mlrig.features.sources import connect

    con = connect()
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
        assert not tree.get("error"), tree
        assert why in (offline._not_one_expression(tree) or "")
        good = "SELECT (\na * 2\n) AS x FROM t"
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [good]).fetchall()[0][0])
        assert offline._not_one_expression(tree) is None
    finally:
        con.close()
