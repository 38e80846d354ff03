"""The offline store's sources: Parquet and CSV files (local, S3 on moto), a SQL query on
the platform database (SQLite and PostgreSQL), pushed rows; and bad input, each a
ValidationError that names the file or column and what is expected."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("duckdb")
pytest.importorskip("pyarrow")

from mlrig.errors import ValidationError  # noqa: E402
from mlrig.features import offline  # noqa: E402
from mlrig.features.spec import EntitySpec, FeatureSpec, FeatureViewSpec, SourceSpec  # noqa: E402
from mlrig.testing.fixtures import make_platform  # noqa: E402

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
H = timedelta(hours=1)
DRIVER = EntitySpec("driver", ("driver_id",))
FEATURES = (
    FeatureSpec("trips", "numerical"),
    FeatureSpec("rating", "numerical", expression="round(score / 2.0, 2)"),
    FeatureSpec("city", "categorical"),
)


def source_frame() -> Any:
    return pd.DataFrame(
        {
            "driver_id": [1, 1, 2, 2],
            "event_timestamp": [T0, T0 + 2 * H, T0, T0],
            "created": [T0, T0 + 2 * H, T0, T0 + H],  # driver 2: a correction
            "trips": [3, 4, 7, 8],
            "score": [9.0, 8.0, 6.0, 5.0],
            "city": ["oslo", "lima", "rome", "nice"],
        }
    )


ENTITIES = pd.DataFrame(
    {
        "driver_id": [1, 2, 1, 3, 1],
        "event_timestamp": [T0 + H, T0 + H, T0 + 3 * H, T0, T0 - H],
    }
)
EXPECTED = {
    "trips": [3, 8, 4, None, None],
    "rating": [4.5, 2.5, 4.0, None, None],
    "city": ["oslo", "nice", "lima", None, None],
}


def view_over(source: SourceSpec, **extra: Any) -> FeatureViewSpec:
    return FeatureViewSpec("drivers", (DRIVER,), source, FEATURES, **extra)


def file_view(uri: str, fmt: str = "parquet") -> FeatureViewSpec:
    return view_over(SourceSpec("file", uri=uri, format=fmt, created_timestamp_field="created"))  # type: ignore[arg-type]


def values(frame: Any, name: str) -> list[Any]:
    return [None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in frame[name]]


def check(frame: Any) -> None:
    for name, want in EXPECTED.items():
        assert values(frame, name) == want, name


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


@pytest.fixture
def plat(tmp_path: Path, data: Path) -> Any:
    platform = make_platform(tmp_path / "home", datasets={"allowed_roots": [str(data)]})
    yield platform
    platform.close()


# --- files ------------------------------------------------------------------------------


def test_parquet_source(plat: Any, data: Path) -> None:
    source_frame().to_parquet(data / "d.parquet")
    view = file_view(str(data / "d.parquet"))
    offline.validate_source(plat, view)
    check(offline.historical_features(plat, ENTITIES, [(view, list(EXPECTED))]))


def test_csv_source_with_iso_timestamps(plat: Any, data: Path) -> None:
    frame = source_frame()
    for col in ("event_timestamp", "created"):
        frame[col] = frame[col].map(lambda t: t.isoformat())
    frame.to_csv(data / "d.csv", index=False)
    view = file_view(str(data / "d.csv"), "csv")
    offline.validate_source(plat, view)
    check(offline.historical_features(plat, ENTITIES, [(view, list(EXPECTED))]))


def test_relative_paths_start_at_the_config_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "feats").mkdir(parents=True)
    source_frame().to_parquet(home / "feats" / "d.parquet")
    platform = make_platform(home, datasets={"allowed_roots": ["feats"]})
    try:
        view = file_view("feats/d.parquet")
        check(offline.historical_features(platform, ENTITIES, [(view, list(EXPECTED))]))
    finally:
        platform.close()


# --- bad input --------------------------------------------------------------------------


def test_a_missing_file_is_named(plat: Any, data: Path) -> None:
    with pytest.raises(ValidationError, match=r"source file '.*nope\.parquet' not found"):
        offline.validate_source(plat, file_view(str(data / "nope.parquet")))


def test_a_path_outside_the_allowed_roots_is_refused(plat: Any, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.parquet"
    source_frame().to_parquet(outside)
    with pytest.raises(ValidationError, match="outside the folders the server may read") as err:
        offline.validate_source(plat, file_view(str(outside)))
    assert err.value.details["reason"] == "outside_allowed_roots"
    with pytest.raises(ValidationError, match="outside"):
        offline.historical_features(plat, ENTITIES, [(file_view(str(outside)), ["trips"])])


def test_a_symlink_out_of_the_roots_is_refused(plat: Any, data: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.parquet"
    source_frame().to_parquet(outside)
    (data / "link.parquet").symlink_to(outside)
    with pytest.raises(ValidationError, match="outside"):
        offline.validate_source(plat, file_view(str(data / "link.parquet")))


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("driver_id", "join key column 'driver_id' is not in the source"),
        ("event_timestamp", "event-timestamp column 'event_timestamp' is not in the source"),
        ("created", "created-timestamp column 'created' is not in the source"),
        ("city", "feature 'city''s column 'city' is not in the source"),
        ("score", "feature 'rating' expression .* rejected by DuckDB.*score"),
    ],
)
def test_a_missing_column_is_named(plat: Any, data: Path, drop: str, message: str) -> None:
    source_frame().drop(columns=drop).to_parquet(data / "d.parquet")
    with pytest.raises(ValidationError, match=message):
        offline.validate_source(plat, file_view(str(data / "d.parquet")))


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("event_timestamp", "2024-05-01T00:00:00", "VARCHAR"),  # text in Parquet: refused
        ("event_timestamp", 1714521600, "BIGINT"),
        ("created", 1.5, "DOUBLE"),
    ],
)
def test_a_timestamp_column_of_the_wrong_type(
    plat: Any, data: Path, column: str, value: Any, shown: str
) -> None:
    source_frame().assign(**{column: value}).to_parquet(data / "d.parquet")
    with pytest.raises(ValidationError, match=f"'{column}' .* is {shown}, expected a timestamp"):
        offline.validate_source(plat, file_view(str(data / "d.parquet")))


def test_csv_timestamps_that_are_not_iso_8601_are_refused(plat: Any, data: Path) -> None:
    source_frame().assign(event_timestamp="last tuesday").to_csv(data / "d.csv", index=False)
    with pytest.raises(ValidationError, match=r"'event_timestamp' .* is VARCHAR, expected"):
        offline.validate_source(plat, file_view(str(data / "d.csv"), "csv"))


def test_dates_are_accepted_as_midnight_utc(plat: Any, data: Path) -> None:
    frame = source_frame().assign(event_timestamp=lambda f: f["event_timestamp"].dt.date)
    frame.to_parquet(data / "d.parquet")
    offline.validate_source(plat, file_view(str(data / "d.parquet")))


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        (FeatureSpec("trips", "boolean"), "declared boolean but computes BIGINT"),
        (FeatureSpec("city", "numerical"), "declared numerical but computes VARCHAR"),
        (FeatureSpec("x", "numerical", expression="trips +"), "expression 'trips \\+'"),
        (FeatureSpec("x", "numerical", expression="nope * 2"), "rejected by DuckDB.*nope"),
        (FeatureSpec("x", "text", expression="(SELECT 'a')"), "no subqueries"),
        (
            FeatureSpec("x", "text", expression="(SELECT content FROM read_text('/etc/hostname'))"),
            "no subqueries",
        ),
    ],
)
def test_bad_features_are_refused(
    plat: Any, data: Path, feature: FeatureSpec, message: str
) -> None:
    source_frame().to_parquet(data / "d.parquet")
    view = replace(file_view(str(data / "d.parquet")), features=(feature,))
    with pytest.raises(ValidationError, match=message):
        offline.validate_source(plat, view)


def test_expressions_cannot_read_other_files(plat: Any, data: Path, tmp_path: Path) -> None:
    """Even if an expression got past the checks, the connection reads no other file."""
    from mlrig.features import sources

    source_frame().to_parquet(data / "d.parquet")
    con = sources.connect()
    allowed: tuple[list[str], list[str]] = ([], [])
    sources.register_source(plat, con, file_view(str(data / "d.parquet")), "s", allowed)
    sources.lock_down(con, paths=allowed[0], directories=allowed[1])
    assert con.execute("SELECT count(*) FROM s").fetchall() == [(4,)]
    (tmp_path / "other.csv").write_text("a\n1\n")
    with pytest.raises(Exception, match=r"(?i)permission|disabled"):
        con.execute(f"SELECT * FROM read_csv('{tmp_path / 'other.csv'}')").fetchall()
    con.close()


def test_an_unreadable_file_is_a_validation_error(plat: Any, data: Path) -> None:
    (data / "d.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValidationError, match="not a readable Parquet file"):
        offline.validate_source(plat, file_view(str(data / "d.parquet")))


# --- S3 ---------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_source_through_the_storage_settings(tmp_path: Path, s3_bucket: Any) -> None:
    import io

    buffer = io.BytesIO()
    source_frame().to_parquet(buffer)
    s3_bucket.client().put_object(Bucket=s3_bucket.name, Key="f/d.parquet", Body=buffer.getvalue())
    csv = source_frame().to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S%z")
    s3_bucket.client().put_object(Bucket=s3_bucket.name, Key="f/d.csv", Body=csv.encode())
    platform = make_platform(
        tmp_path / "home",
        storage={"s3": s3_bucket.options()},
        datasets={"allowed_schemes": ["s3"]},
    )
    try:
        view = file_view(f"s3://{s3_bucket.name}/f/d.parquet")
        offline.validate_source(platform, view)
        check(offline.historical_features(platform, ENTITIES, [(view, list(EXPECTED))]))
        csv_view = file_view(f"s3://{s3_bucket.name}/f/d.csv", "csv")
        check(offline.historical_features(platform, ENTITIES, [(csv_view, list(EXPECTED))]))
        with pytest.raises(ValidationError, match=r"source file 's3://.*/f/missing.parquet' not"):
            offline.validate_source(platform, file_view(f"s3://{s3_bucket.name}/f/missing.parquet"))
    finally:
        platform.close()
    closed = make_platform(tmp_path / "home2", storage={"s3": s3_bucket.options()})
    try:  # s3 not in [datasets] allowed_schemes
        with pytest.raises(ValidationError, match="scheme 's3://' is not allowed"):
            offline.validate_source(closed, file_view(f"s3://{s3_bucket.name}/f/d.parquet"))
    finally:
        closed.close()


# --- SQL --------------------------------------------------------------------------------


def sql_view(query: str) -> FeatureViewSpec:
    return view_over(SourceSpec("sql", query=query, created_timestamp_field="created"))


def test_sql_source_on_the_platform_database(db_platform: Any) -> None:
    from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table

    meta = MetaData()
    table = Table(
        "driver_src",
        meta,
        Column("driver_id", Integer),
        Column("event_timestamp", DateTime(timezone=True)),
        Column("created", DateTime(timezone=True)),
        Column("trips", Integer),
        Column("score", Float),
        Column("city", String(20)),
    )
    meta.create_all(db_platform.db.engine)
    with db_platform.db.engine.begin() as conn:
        conn.execute(table.insert(), source_frame().to_dict("records"))
    view = sql_view(
        "SELECT driver_id, event_timestamp, created, trips, score, city FROM driver_src"
    )
    offline.validate_source(db_platform, view)
    check(offline.historical_features(db_platform, ENTITIES, [(view, list(EXPECTED))]))
    window = offline.read_window(db_platform, view, None, None).to_pylist()
    assert {r["driver_id"]: r["trips"] for r in window} == {1: 4, 2: 8}
    # a data-modifying query is refused and changes nothing
    if db_platform.db.dialect == "postgresql":
        sneaky = "WITH gone AS (DELETE FROM driver_src RETURNING *) SELECT * FROM gone"
        with pytest.raises(ValidationError, match=r"(?i)read-only"):
            offline.validate_source(db_platform, sql_view(sneaky))
    with db_platform.db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM driver_src").scalar() == 4
    # an empty result is not an error
    offline.validate_source(db_platform, sql_view("SELECT * FROM driver_src WHERE trips < 0"))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("DELETE FROM driver_src", "only a read-only SELECT"),
        ("SELECT 1; DROP TABLE driver_src", "exactly one SELECT"),
        ("SELECT * FROM users", "mlrig's own tables cannot be read.*users"),
        ("SELECT token_hash FROM api_tokens", "api_tokens"),
        ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
        ("SELECT * FROM no_such_table", "the source query failed"),
        ("SELECT 1 AS driver_id", "event-timestamp column 'event_timestamp' is not in"),
        ("", "a SELECT statement is required"),
    ],
)
def test_bad_sql_sources_are_refused(plat: Any, query: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        offline.validate_source(plat, sql_view(query))


def test_sqlite_is_writable_again_after_a_source_query(plat: Any) -> None:
    offline.validate_source(
        plat,
        sql_view(
            "SELECT 1 AS driver_id, CURRENT_TIMESTAMP AS event_timestamp, "
            "CURRENT_TIMESTAMP AS created, 3 AS trips, 2.5 AS score, 'oslo' AS city"
        ),
    )
    with pytest.raises(ValidationError):  # ran, failed on the missing timestamp column
        offline.validate_source(plat, sql_view("SELECT 1 AS driver_id"))
    with plat.db.engine.begin() as conn:  # the pooled connection is not left query_only
        conn.exec_driver_sql("CREATE TABLE after_query (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO after_query VALUES (1)")


# --- push -------------------------------------------------------------------------------


def push_view(**extra: Any) -> FeatureViewSpec:
    return FeatureViewSpec(
        "pushed",
        (DRIVER,),
        SourceSpec("push", created_timestamp_field="created"),
        (FeatureSpec("trips", "numerical"), FeatureSpec("city", "categorical")),
        **extra,
    )


def test_pushed_rows_are_the_offline_history(db_platform: Any) -> None:
    view = push_view()
    offline.validate_source(db_platform, view)  # nothing pushed yet: fine
    empty = offline.historical_features(db_platform, ENTITIES, [(view, ["trips"])])
    assert empty["trips"].isna().all()
    rows = [
        {"driver_id": 1, "event_timestamp": T0, "created": T0, "trips": 3, "city": "oslo"},
        {"driver_id": 2, "event_timestamp": T0, "created": T0 + H, "trips": 8, "city": "nice"},
        {"driver_id": 2, "event_timestamp": T0, "created": T0, "trips": 7, "city": "rome"},
    ]
    assert offline.append_push(db_platform, view, rows) == 3
    later = [
        {
            "driver_id": 1,
            "event_timestamp": T0 + 2 * H,
            "created": None,
            "trips": 4,
            "city": "lima",
        },
        # same event, same (missing) created time as the row above: the later push wins
        {"driver_id": 1, "event_timestamp": T0 + 2 * H, "created": None, "trips": 5, "city": "x"},
    ]
    assert offline.append_push(db_platform, view, later) == 2
    got = offline.historical_features(db_platform, ENTITIES, [(view, ["trips", "city"])])
    assert values(got, "trips") == [3, 8, 5, None, None]
    assert values(got, "city") == ["oslo", "nice", "x", None, None]
    window = offline.read_window(db_platform, view, T0, T0 + H).to_pylist()
    assert sorted((r["driver_id"], r["trips"]) for r in window) == [(1, 3), (2, 8)]
    # another view's pushes are not mixed in
    other = replace(view, name="other")
    assert (
        offline.historical_features(db_platform, ENTITIES, [(other, ["trips"])])["trips"]
        .isna()
        .all()
    )


def test_a_push_row_without_a_timestamp_is_refused(platform: Any) -> None:
    with pytest.raises(ValidationError, match="'event_timestamp' must be a timestamp"):
        offline.append_push(platform, push_view(), [{"driver_id": 1, "trips": 3}])


# --- artifact store ---------------------------------------------------------------------


def test_artifact_store_source(plat: Any) -> None:
    import io

    buffer = io.BytesIO()
    source_frame().to_parquet(buffer)
    plat.artifacts.put("features/d.parquet", buffer.getvalue())
    view = file_view("artifact://features/d.parquet")
    offline.validate_source(plat, view)
    check(offline.historical_features(plat, ENTITIES, [(view, list(EXPECTED))]))
    window = offline.read_window(plat, view, None, None).to_pylist()
    assert {r["driver_id"]: r["trips"] for r in window} == {1: 4, 2: 8}
    with pytest.raises(ValidationError, match=r"'artifact://features/missing\.parquet' not found"):
        offline.validate_source(plat, file_view("artifact://features/missing.parquet"))


# --- SQL: what the check sees through (review finding 1) --------------------------------

LEAKS = [
    # dynamic SQL: the table name is built at run time
    (
        "SELECT query_to_xml('select * from ' || chr(117) || 'sers', true, false, '')",
        "query_to_xml",
    ),
    ("SELECT pg_catalog . query_to_xml ('x', true, false, '')", "query_to_xml"),
    ("SELECT \"QUERY_TO_XML\"('x', true, false, '')", "query_to_xml"),
    ("SELECT query_to_xml/* hidden */('x', true, false, '')", "query_to_xml"),
    ("SELECT query_to_xml --\n('x', true, false, '')", "query_to_xml"),
    ("SELECT table_to_xml('users', true, false, '')", "table_to_xml"),
    ("SELECT schema_to_xml_and_xmlschema('public', true, false, '')", "schema_to_xml"),
    ("SELECT xpath('/a', x) FROM t", "xpath"),
    ("SELECT ts_stat('select 1')", "ts_stat"),
    # identifiers and strings the database unescapes
    ('SELECT name FROM U&"\\0075sers"', "Unicode escapes"),
    ("SELECT name FROM u&'x'", "Unicode escapes"),
    ("SELECT $$select 1$$", "dollar-quoted"),
    ("SELECT $q$select 1$q$", "dollar-quoted"),
    # the server's files, settings, time and other sessions
    ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
    ("SELECT pg_read_binary_file('/etc/passwd')", "pg_read_binary_file"),
    ("SELECT * FROM pg_ls_dir('.')", "pg_ls_dir"),
    ("SELECT current_setting('data_directory')", "current_setting"),
    ("SELECT * FROM t, LATERAL set_config('role', 'x', true)", "set_config"),
    ("SELECT pg_sleep(300)", "pg_sleep"),
    ("SELECT pg_sleep_for('5 minutes')", "pg_sleep_for"),
    ("SELECT lo_import('/etc/passwd')", "lo_import"),
    ("SELECT * FROM dblink('host=x', 'select 1')", "dblink"),
    ("SELECT pg_terminate_backend(1)", "pg_terminate_backend"),
    ("SELECT pg_reload_conf()", "pg_reload_conf"),
    ("SELECT name, setting FROM pg_settings", "pg_settings"),
    ("SELECT * FROM pragma_database_list", "pragma_database_list"),
    ('SELECT * FROM "sqlite_master"', "sqlite_master"),
    ("SELECT * FROM [users]", "users"),
    # the lexer and the database agree on where strings and comments end
    ("SELECT E'\\'', pg_sleep(1) --'", "pg_sleep"),
    ("SELECT 1 /* /* */, pg_sleep(1) */", "nested"),
    ("SELECT 1 /* open", "unterminated"),
    ("SELECT 'open", "unterminated"),
    ("SELECT 1; SELECT 2", "exactly one SELECT"),
]


@pytest.mark.parametrize(("query", "named"), LEAKS)
def test_sql_source_tricks_are_refused_by_name(query: str, named: str) -> None:
    from mlrig.features.sources import check_query

    with pytest.raises(ValidationError, match=named) as info:
        check_query(query)
    assert info.value.message.startswith("source.query: ")
    assert info.value.details["field"] == "source.query"


@pytest.mark.parametrize(
    "query",
    [
        "SELECT driver_id, trips FROM driver_src",
        "SELECT driver_id FROM driver_src WHERE city = 'users; pg_sleep(1) -- '",
        'SELECT "my col" FROM driver_src -- the users of the app',
        "SELECT a /* a comment */ FROM driver_src;",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "SELECT lower(city), arr[1] FROM driver_src",
    ],
)
def test_ordinary_queries_pass_the_check(query: str) -> None:
    from mlrig.features.sources import check_query

    assert check_query(query).startswith(("SELECT", "WITH"))


def test_the_plan_check_refuses_mlrig_tables_and_denied_functions() -> None:
    from mlrig.features.sources import check_plan

    scan = {"Plan": {"Node Type": "Seq Scan", "Relation Name": "USERS", "Output": ["name"]}}
    with pytest.raises(ValidationError, match="users, found in the query's plan"):
        check_plan([scan])
    call = {"Plan": {"Node Type": "Result", "Output": ["pg_catalog.current_setting('x'::text)"]}}
    with pytest.raises(ValidationError, match="current_setting"):
        check_plan(json.dumps([call]))  # the driver may hand the plan back as text
    function = {"Plan": {"Node Type": "Function Scan", "Function Name": "pg_ls_dir"}}
    with pytest.raises(ValidationError, match="pg_ls_dir"):
        check_plan([function])
    fine = {"Plan": {"Node Type": "Seq Scan", "Relation Name": "driver_src", "Output": ["a"]}}
    check_plan([fine])


def test_sql_source_cannot_reach_mlrig_tables_through_a_view(db_platform: Any) -> None:
    """On PostgreSQL the server's own plan is checked: a view over ``users`` is refused."""
    with db_platform.db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW people AS SELECT * FROM users")
    try:
        query = "SELECT 1 AS driver_id, now() AS event_timestamp, now() AS created FROM people"
        if db_platform.db.dialect == "postgresql":
            with pytest.raises(ValidationError, match="users, found in the query's plan"):
                offline.validate_source(db_platform, sql_view(query))
        for query, named in LEAKS[:3]:
            with pytest.raises(ValidationError, match=named):
                offline.validate_source(db_platform, sql_view(query))
    finally:
        with db_platform.db.engine.begin() as conn:
            conn.exec_driver_sql("DROP VIEW people")
