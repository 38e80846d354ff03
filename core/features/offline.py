"""The offline feature store: point-in-time-correct training sets with DuckDB.

Every view's source (:mod:`mlrig.features.sources`: Parquet or CSV files, a SQL query on
the platform database, pushed rows) becomes a DuckDB relation; feature expressions are
DuckDB SQL over the source's columns.

Point-in-time semantics (:func:`historical_features`), for each entity row with
timestamp ``t`` and each view:

- the source rows with the same join key values (all of them, typed: ``1`` is not ``"1"``)
  and ``event_ts <= t`` are candidates; a row from after ``t`` is never used;
- with a TTL, only ``event_ts >= t - ttl`` (both ends inclusive, like the online stores,
  which expire a value once it is *older* than ``now - ttl``);
- the latest ``event_ts`` wins; among rows with that same ``event_ts`` the greatest
  created timestamp wins (a late correction), a missing created timestamp counting as
  older than any; rows still tied: the last in the source (file order, query result
  order, push order) wins;
- no candidate: the features are null (NaN for numbers).

Time: every timestamp is compared as a UTC instant at microsecond precision. Time-zone
aware values are converted to UTC; naive values (the entity frame's or the source's) are
taken as UTC. Dates are midnight UTC. Source timestamp columns must be typed timestamps
or dates (CSV: ISO 8601 text is parsed as timestamps when the file is read); the entity
frame's timestamp column may be datetimes or ISO 8601 strings.

Rows of the entity frame are kept as they are: same rows (duplicates too), same order,
same index and columns, plus one column per feature.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from mlrig.errors import ValidationError
from mlrig.features.sources import (
    FILE_COLUMN,
    ORDER_COLUMN,
    connect,
    literal,
    lock_down,
    quote,
    register_source,
    require_extra,
)
from mlrig.features.sources import append_push as _append_push
from mlrig.features.spec import FeatureSpec, FeatureViewSpec, OnDemandViewSpec

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from mlrig.platform import Platform

__all__ = ["append_push", "historical_features", "read_window", "validate_source"]

_TS = "__mlrig_ts"
_CTS = "__mlrig_cts"
_ROW = "__mlrig_row"
_INTEGERS = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}  # fmt: skip
_FLOATS = {"FLOAT", "DOUBLE", "REAL"}
_STRINGS = {"VARCHAR"}
#: the DuckDB types each feature type accepts (DECIMAL(p,s) and ENUM by prefix)
_FITS: dict[str, tuple[set[str], tuple[str, ...]]] = {
    "numerical": (_INTEGERS | _FLOATS, ("DECIMAL",)),
    "boolean": ({"BOOLEAN"}, ()),
    "categorical": (_STRINGS | _INTEGERS | {"BOOLEAN"}, ("ENUM",)),
    "text": (_STRINGS, ("ENUM",)),
}
_EXPECTED = {
    "numerical": "a number (integer, float or decimal)",
    "boolean": "a boolean",
    "categorical": "a string, integer or boolean",
    "text": "a string",
}


@dataclass
class _Prepared:
    """One view's source in a connection: the computed relation's SQL."""

    con: Any
    view: FeatureViewSpec
    source: str  # the registered source view
    columns: dict[str, str]  # source column -> DuckDB type
    ts_sql: str
    cts_sql: str


# --- public -----------------------------------------------------------------------------


def validate_source(platform: Platform | None, view: FeatureViewSpec) -> None:
    """Check ``view``'s source against its definition without reading all of it.

    :raises ValidationError: a missing file or folder, a path outside the allowed roots,
        a missing column, a timestamp column that is not a timestamp or date, a feature
        expression DuckDB rejects, a feature whose computed type does not fit its type.
    """
    con = connect()
    try:
        prepared = _prepare(platform, con, [view])[0]
        for feature in view.features:
            _feature_type(con, prepared, feature)
    finally:
        con.close()


def historical_features(
    platform: Platform | None,
    entity_df: pd.DataFrame,
    requests: Sequence[tuple[FeatureViewSpec | OnDemandViewSpec, Sequence[str]]],
    *,
    timestamp_column: str = "event_timestamp",
) -> pd.DataFrame:
    """A point-in-time-correct training set (see the module's docstring).

    :param entity_df: the join key columns of every requested view and
        ``timestamp_column``; other columns are kept as they are.
    :param requests: ``(view, feature names)`` pairs; names may be ``view:name``.
        On-demand views are applied after the join, over the frame built so far (their
        inputs must be requested too, or be columns of ``entity_df``).
    :returns: ``entity_df``'s rows in order, its index and columns, plus the features.
    :raises ValidationError: a missing column, a timestamp that cannot be read, a feature
        name that clashes with a column of ``entity_df``, a source that fails.
    """
    require_extra()
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if not isinstance(entity_df, pd.DataFrame):
        raise ValidationError("entity_df must be a pandas DataFrame")
    batch: list[tuple[FeatureViewSpec, list[str]]] = []
    on_demand: list[tuple[OnDemandViewSpec, list[str]]] = []
    for spec, names in requests:
        plain = [_plain(spec.name, n) for n in names]
        if isinstance(spec, OnDemandViewSpec):
            on_demand.append((spec, plain))
        else:
            for name in plain:
                try:
                    spec.feature(name)
                except KeyError:
                    msg = f"view {spec.name!r} has no feature {name!r}"
                    raise ValidationError(msg, details={"feature": name}) from None
            batch.append((spec, plain))
    columns = [str(c) for c in entity_df.columns]
    if timestamp_column not in columns:
        msg = f"entity_df has no timestamp column {timestamp_column!r} (columns: {columns})"
        raise ValidationError(msg, details={"column": timestamp_column})
    keys: list[str] = []
    for spec, _ in batch:
        for key in spec.join_keys:
            if key not in columns:
                msg = f"entity_df has no column {key!r}, a join key of view {spec.name!r}"
                raise ValidationError(msg, details={"column": key, "view": spec.name})
            if key not in keys:
                keys.append(key)
    wanted = [n for _, names in batch for n in names] + [n for _, names in on_demand for n in names]
    clash = sorted(set(wanted) & set(columns))
    if clash:
        msg = f"features {clash} clash with columns of entity_df; rename those columns"
        raise ValidationError(msg, details={"columns": clash})
    doubled = sorted({n for n in wanted if wanted.count(n) > 1})
    if doubled:
        raise ValidationError(f"features requested twice: {doubled}", details={"features": doubled})

    out = entity_df.copy(deep=False)
    if batch:
        stamps = _entity_timestamps(entity_df[timestamp_column], timestamp_column)
        arrays = {k: _arrow_column(entity_df[k], k) for k in keys}
        arrays[_TS] = stamps
        arrays[_ROW] = pa.array(np.arange(len(entity_df), dtype=np.int64))
        entities = pa.table(arrays)
        span = _span(stamps)
        con = connect()
        try:
            prepared = _prepare(platform, con, [spec for spec, _ in batch])
            con.register("__mlrig_entity", entities)
            fetched: dict[str, Any] = {}
            for (_spec, names), prep in zip(batch, prepared, strict=True):
                table = _join(con, prep, names, span)
                for name in names:
                    fetched[name] = table.column(name).to_pandas().set_axis(entity_df.index)
        finally:
            con.close()
        # one concat, not a column at a time (a frame of hundreds of features stays whole)
        out = pd.concat([out, pd.DataFrame(fetched, index=entity_df.index)], axis=1)
    if on_demand:
        from mlrig.features.ondemand import apply_on_demand

        for spec, names in on_demand:
            absent = [n for n in (*spec.inputs, *spec.request_fields) if n not in out.columns]
            if absent:
                msg = (
                    f"on-demand view {spec.name!r} needs {absent}: request its input "
                    "features or add the request fields as columns of entity_df"
                )
                raise ValidationError(msg, details={"view": spec.name, "missing": absent})
            computed = apply_on_demand(spec, out)
            for name in names:
                out[name] = computed[name].to_numpy()
    return out


def read_window(
    platform: Platform | None,
    view: FeatureViewSpec,
    start: datetime | None,
    end: datetime | None,
) -> pa.Table:
    """Per entity key, the latest row with ``start <= event_ts < end`` (ties as in
    :func:`historical_features`), for materialisation.

    :returns: columns: the join keys, ``event_timestamp`` and ``created_timestamp``
        (timestamps, UTC; the latter null without a created-timestamp field), then one
        column per feature (expressions applied).
    """
    require_extra()
    con = connect()
    try:
        prep = _prepare(platform, con, [view])[0]
        where = [f"{_TS} IS NOT NULL"]
        if start is not None:
            where.append(f"{_TS} >= {_stamp_literal(start)}")
        if end is not None:
            where.append(f"{_TS} < {_stamp_literal(end)}")
        keys = ", ".join(quote(k) for k in view.join_keys)
        feats = ", ".join(f"{quote(f.name)}" for f in view.features)
        sql = (
            f"SELECT {keys}, timezone('UTC', {_TS}) AS event_timestamp, "
            f"timezone('UTC', {_CTS}) AS created_timestamp{', ' + feats if feats else ''} "
            f"FROM ({_computed(prep, [f.name for f in view.features])}) "
            f"WHERE {' AND '.join(where)} "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {_TS} DESC, "
            f"{_CTS} DESC NULLS LAST, {FILE_COLUMN} DESC, {ORDER_COLUMN} DESC) = 1"
        )
        return _run(con, view, sql)
    finally:
        con.close()


def append_push(platform: Platform, view: FeatureViewSpec, rows: list[dict[str, Any]]) -> int:
    """Store pushed rows in ``feature_push_rows`` (the offline history of a push-source
    view; training sets and materialisation read them); the number written."""
    return _append_push(platform, view, rows)


# --- preparing sources ------------------------------------------------------------------


def _prepare(
    platform: Platform | None, con: Any, views: Sequence[FeatureViewSpec]
) -> list[_Prepared]:
    allowed: tuple[list[str], list[str]] = ([], [])
    names = []
    for i, view in enumerate(views):
        name = f"__mlrig_src{i}"
        register_source(platform, con, view, name, allowed)
        names.append(name)
    lock_down(con, paths=allowed[0], directories=allowed[1])
    prepared = []
    for view, name in zip(views, names, strict=True):
        rows = con.execute(f"DESCRIBE SELECT * FROM {quote(name)}").fetchall()
        columns = {r[0]: str(r[1]) for r in rows}
        for key in view.join_keys:
            _need(view, columns, key, "join key")
        source = view.source
        ts_sql = _ts_sql(view, columns, source.timestamp_field, "event-timestamp")
        if source.created_timestamp_field:
            cts_sql = _ts_sql(view, columns, source.created_timestamp_field, "created-timestamp")
        else:
            cts_sql = "CAST(NULL AS TIMESTAMP)"
        taken = set(view.join_keys)
        for feature in view.features:
            if feature.name in taken:
                msg = f"view {view.name!r}: feature {feature.name!r} has a join key's name"
                raise ValidationError(msg, details={"feature": feature.name})
        prepared.append(_Prepared(con, view, name, columns, ts_sql, cts_sql))
    return prepared


def _need(view: FeatureViewSpec, columns: dict[str, str], column: str, what: str) -> str:
    if column not in columns:
        shown = [c for c in columns if c not in (FILE_COLUMN, ORDER_COLUMN)]
        msg = (
            f"view {view.name!r}: the {what} column {column!r} is not in the source "
            f"{_where(view)} (columns: {', '.join(shown) or 'none'})"
        )
        field = {
            view.source.timestamp_field: "source.timestamp_field",
            view.source.created_timestamp_field: "source.created_timestamp_field",
        }.get(column, "entities" if column in view.join_keys else "features")
        details = {"column": column, "reason": "missing_column", "field": field}
        raise ValidationError(msg, details=details)
    return columns[column]


def _where(view: FeatureViewSpec) -> str:
    source = view.source
    if source.kind == "file":
        return repr(source.uri)
    return "query" if source.kind == "sql" else "(pushed rows)"


def _ts_sql(view: FeatureViewSpec, columns: dict[str, str], column: str, what: str) -> str:
    kind = _need(view, columns, column, what).upper()
    col = quote(column)
    if kind in ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"):
        return f"timezone('UTC', {col})"
    if kind.startswith("TIMESTAMP") or kind == "DATE":
        return f"CAST({col} AS TIMESTAMP)"
    if kind == '"NULL"' or kind == "NULL":  # an empty query result: no type known
        return "CAST(NULL AS TIMESTAMP)"
    msg = (
        f"view {view.name!r}: the {what} column {column!r} of {_where(view)} is {kind}, "
        "expected a timestamp or date (store it typed; ISO 8601 text is accepted in CSV "
        "files only)"
    )
    field = "source.timestamp_field"
    if what != "event-timestamp":
        field = "source.created_timestamp_field"
    details = {"column": column, "type": kind, "reason": "wrong_type", "field": field}
    raise ValidationError(msg, details=details)


def _wrapped(feature: FeatureSpec) -> str:
    """The feature's SQL in parentheses, on lines of its own: a trailing ``--`` comment
    ends with its line and cannot swallow the SQL mlrig writes after it."""
    return f"(\n{feature.sql}\n)"


def _check_expression(con: Any, view: FeatureViewSpec, feature: FeatureSpec) -> None:
    """One scalar expression over the source row: the parsed ``SELECT (expr) AS x FROM t``
    must be one statement with exactly one select-list entry over the base table ``t``
    (no second statement, no subquery, no other FROM item, join, table function, set
    operation, WHERE/GROUP BY/..., no ``*`` or ``COLUMNS(...)``)."""
    sql = f"SELECT {_wrapped(feature)} AS x FROM t"
    bad = None
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    except Exception as exc:  # a DuckDB parser error
        bad = str(exc)
    else:
        if tree.get("error"):
            bad = tree.get("error_message") or "syntax error"
        else:
            bad = _not_one_expression(tree)
    if bad:
        msg = f"view {view.name!r}: feature {feature.name!r} expression {feature.sql!r}: {bad}"
        details = {"feature": feature.name, "reason": "bad_expression", "field": "features"}
        raise ValidationError(msg, details=details)


_ONE = "one scalar expression over the source's columns is allowed"


def _not_one_expression(tree: dict[str, Any]) -> str | None:
    """Why the parsed tree is not ``SELECT (one expression) AS x FROM t``, or None."""
    statements = tree.get("statements") or []
    if len(statements) != 1:
        return f"{_ONE} (found {len(statements)} statements)"
    node = statements[0].get("node") or {}
    if node.get("type") != "SELECT_NODE":
        return f"{_ONE} (no UNION, INTERSECT, EXCEPT or other set operations)"
    if len(node.get("select_list") or []) != 1:
        return f"{_ONE} (found {len(node.get('select_list') or [])} select-list entries)"
    base = node.get("from_table") or {}
    if (
        base.get("type") != "BASE_TABLE"
        or base.get("table_name") != "t"
        or base.get("schema_name")
        or base.get("catalog_name")
        or base.get("sample")
        or base.get("at_clause")
    ):
        return f"{_ONE} (no FROM clause, joins or table functions of its own)"
    extra = [
        k
        for k in ("where_clause", "group_expressions", "group_sets", "having", "sample", "qualify")
        if node.get(k)
    ]
    if (
        extra
        or node.get("modifiers")
        or (node.get("cte_map") or {}).get("map")
        or node.get("aggregate_handling", "STANDARD_HANDLING") != "STANDARD_HANDLING"
    ):
        return f"{_ONE} (no WHERE, GROUP BY, HAVING, QUALIFY, ORDER BY, LIMIT or WITH)"
    text = json.dumps(node["select_list"])
    if '"SUBQUERY"' in text:
        return f"{_ONE} (no subqueries)"
    if '"class": "STAR"' in text:
        return f"{_ONE} (no * or COLUMNS(...))"
    return None


def _feature_type(con: Any, prep: _Prepared, feature: FeatureSpec) -> str:
    view = prep.view
    _check_expression(con, view, feature)
    if feature.expression is None:
        _need(view, prep.columns, feature.name, f"feature {feature.name!r}'s")
    try:
        rows = con.execute(
            f"DESCRIBE SELECT {_wrapped(feature)} AS x FROM {quote(prep.source)}"
        ).fetchall()
    except Exception as exc:  # DuckDB's BinderException, ParserException...
        msg = (
            f"view {view.name!r}: feature {feature.name!r} expression {feature.sql!r} is "
            f"rejected by DuckDB: {' '.join(str(exc).split())[:300]}"
        )
        raise ValidationError(
            msg, details={"feature": feature.name, "reason": "bad_expression", "field": "features"}
        ) from None
    kind = str(rows[0][1]).upper()
    exact, prefixes = _FITS[feature.dtype]
    if kind in ('"NULL"', "NULL") or kind in exact or kind.startswith(prefixes):
        return kind
    msg = (
        f"view {view.name!r}: feature {feature.name!r} is declared {feature.dtype} but "
        f"computes {kind}; expected {_EXPECTED[feature.dtype]}"
    )
    raise ValidationError(
        msg,
        details={
            "feature": feature.name,
            "type": kind,
            "reason": "wrong_type",
            "field": "features",
        },
    )


def _computed(prep: _Prepared, names: Sequence[str], *, narrow: bool = False) -> str:
    """The source with normalised timestamps and the named features computed
    (``narrow``: only the features and the row's position)."""
    view = prep.view
    parts = []
    if not narrow:
        parts += [quote(k) for k in view.join_keys]
        parts += [f"{prep.ts_sql} AS {_TS}", f"{prep.cts_sql} AS {_CTS}"]
    for name in names:
        feature = view.feature(name)
        if feature.expression is None:
            _need(view, prep.columns, name, f"feature {name!r}'s")
        else:
            _check_expression(prep.con, view, feature)
        parts.append(f"{_wrapped(feature)} AS {quote(name)}")
    parts += [FILE_COLUMN, ORDER_COLUMN]
    return f"SELECT {', '.join(parts)} FROM {quote(prep.source)}"


# --- the join ---------------------------------------------------------------------------


def _span(stamps: pa.Array) -> tuple[datetime, datetime] | None:
    """The first and last entity timestamps (naive UTC), None without rows."""
    import pyarrow.compute as pc

    if len(stamps) == 0:
        return None
    bounds = pc.min_max(stamps)
    return bounds["min"].as_py(), bounds["max"].as_py()


def _join(
    con: Any, prep: _Prepared, names: Sequence[str], span: tuple[datetime, datetime] | None
) -> pa.Table:
    """One view's features for every entity row, in entity row order; source rows
    outside ``span`` (less the TTL) cannot match and are skipped before the join."""
    view = prep.view
    keys = view.join_keys
    on = " AND ".join(f"e.{quote(k)} = f.{quote(k)}" for k in keys)
    on += f" AND e.{_TS} >= f.{_TS}"
    # the newest of equal (keys, event_ts): created_ts, then the last in the source
    where = f"{_TS} IS NOT NULL"
    if span is not None:
        where += f" AND {_TS} <= {_stamp_literal(span[1])}"
        if view.ttl_seconds is not None:
            earliest = span[0] - timedelta(seconds=float(view.ttl_seconds))
            where += f" AND {_TS} >= {_stamp_literal(earliest)}"
    # 1. which source row each entity row gets, on narrow rows (keys, times, position):
    # the newest of equal (keys, event_ts) first (created_ts, then the last in the source)
    latest = (
        f"SELECT * FROM ({_computed(prep, [])}) WHERE {where} "
        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(quote(k) for k in keys)}, {_TS} "
        f"ORDER BY {_CTS} DESC NULLS LAST, {FILE_COLUMN} DESC, {ORDER_COLUMN} DESC) = 1"
    )
    fresh = "TRUE"
    if view.ttl_seconds is not None:
        micros = round(float(view.ttl_seconds) * 1_000_000)
        fresh = f"f.{_TS} >= e.{_TS} - to_microseconds({micros})"
    matched = (
        f"SELECT e.{_ROW}, CASE WHEN {fresh} THEN f.{FILE_COLUMN} END AS {FILE_COLUMN}, "
        f"CASE WHEN {fresh} THEN f.{ORDER_COLUMN} END AS {ORDER_COLUMN} "
        f"FROM __mlrig_entity e ASOF LEFT JOIN ({latest}) f ON {on}"
    )
    # 2. the features of those rows, computed once per matched source row
    values = _computed(prep, names, narrow=True)
    picks = ", ".join(f"s.{quote(n)}" for n in names)
    sql = (
        f"SELECT {picks} FROM ({matched}) m LEFT JOIN ({values}) s "
        f"ON m.{FILE_COLUMN} = s.{FILE_COLUMN} AND m.{ORDER_COLUMN} = s.{ORDER_COLUMN} "
        f"ORDER BY m.{_ROW}"
    )
    return _run(con, view, sql)


def _run(con: Any, view: FeatureViewSpec, sql: str) -> pa.Table:
    try:
        return con.sql(sql).to_arrow_table()
    except Exception as exc:  # DuckDB's errors: a type mismatch, a failing expression
        text = " ".join(str(exc).split())[:400]
        msg = f"view {view.name!r}: reading the source failed: {text}"
        raise ValidationError(msg, details={"view": view.name}) from None


# --- entity frame -----------------------------------------------------------------------


def _plain(view: str, name: str) -> str:
    head, sep, tail = name.partition(":")
    return tail if sep and head == view else name


def _arrow_column(series: pd.Series, name: str) -> pa.Array:
    import pyarrow as pa

    try:
        return pa.Array.from_pandas(series)  # zero copy for numbers, arrow-backed strings
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        msg = f"entity_df column {name!r} has mixed types ({type(exc).__name__}); use one type"
        raise ValidationError(msg, details={"column": name}) from None


def _entity_timestamps(series: pd.Series, name: str) -> pa.Array:
    """The timestamps as a naive UTC microsecond arrow array."""
    import pandas as pd
    import pyarrow as pa

    if isinstance(series.dtype, pd.DatetimeTZDtype):
        values = series.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(series.dtype):
        values = series
    else:
        try:
            values = pd.to_datetime(series, utc=True, format="ISO8601").dt.tz_localize(None)
        except (ValueError, TypeError) as exc:
            msg = (
                f"entity_df column {name!r} must hold timestamps (datetimes or ISO 8601 "
                f"strings): {exc}"
            )
            raise ValidationError(msg, details={"column": name}) from None
    nulls = int(values.isna().sum())
    if nulls:
        msg = f"entity_df column {name!r} has {nulls} missing timestamps"
        raise ValidationError(msg, details={"column": name, "nulls": nulls})
    array = pa.Array.from_pandas(values)
    return array.cast(pa.timestamp("us"), safe=False)


def _stamp_literal(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return f"TIMESTAMP {literal(value.isoformat(sep=' '))}"
