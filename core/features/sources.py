"""Where a feature view's rows come from, as a DuckDB relation.

Each source becomes a DuckDB view with the source's own columns plus two ordering
columns (:data:`FILE_COLUMN`, :data:`ORDER_COLUMN`: the file name and the row's position
in it, or the position in the query result or push log), which break the last ties
deterministically: of rows equal in keys, event and created timestamps, the one that
comes last in the source wins.

- ``file``: Parquet or CSV. A local path (or ``file://``) must pass the platform's dataset
  access rules (:mod:`mlrig.datasets.access`: under ``[datasets] allowed_roots``); DuckDB
  reads local Parquet itself (streamed, only the columns used), with file system access
  limited to that one path or folder. ``s3://`` (when ``s3`` is in ``[datasets]
  allowed_schemes``) is read through s3fs with the ``[storage.s3]`` connection options
  (endpoint, credentials, region), and ``artifact://KEY`` from the artifact store; both
  at most ``[datasets] max_bytes``. CSV is parsed by pyarrow everywhere (ISO 8601
  timestamps become timestamps, ``YYYY-MM-DD`` dates become dates).
- ``sql``: one read-only ``SELECT`` (or ``WITH ... SELECT``) on the platform database, run
  in a read-only transaction; mlrig's own tables may not be named.
- ``push``: the ``feature_push_rows`` of the view, in push order.

Nothing here is imported by ``import mlrig``: duckdb, pyarrow and pandas load on use.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrig.errors import MissingExtraError, MlrigError, NotFoundError, ValidationError
from mlrig.features.spec import FeatureViewSpec

if TYPE_CHECKING:
    from mlrig.platform import Platform

FILE_COLUMN = "__mlrig_file"
ORDER_COLUMN = "__mlrig_ord"
#: arrow types of pushed values by feature type (JSON values carry no finer type)
_PUSH_TYPES = {"numerical": "float64", "boolean": "bool_", "categorical": None, "text": "string"}


def require_extra() -> Any:
    """duckdb, or :class:`MissingExtraError` naming the extra."""
    try:
        import duckdb
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ModuleNotFoundError as exc:
        msg = f"the offline feature store needs: pip install 'mlrig[features]' ({exc.name} missing)"
        raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc
    return duckdb


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def connect() -> Any:
    """A fresh in-memory DuckDB connection with bounded memory (spills to a temp folder)."""
    duckdb = require_extra()
    import tempfile

    config = {
        "memory_limit": os.environ.get("MLRIG_DUCKDB_MEMORY", "2GB"),
        # spills go to the system's temp folder, never the server's working directory
        "temp_directory": os.path.join(tempfile.gettempdir(), "mlrig-duckdb"),
    }
    con = duckdb.connect(config=config)
    con.execute("SET TimeZone = 'UTC'")  # aware results come back in UTC
    return con


def lock_down(con: Any, *, paths: list[str], directories: list[str]) -> None:
    """No file system access for the connection but ``paths`` and ``directories`` (so a
    feature expression cannot read other files)."""
    if paths:
        con.execute(f"SET allowed_paths = [{', '.join(literal(p) for p in paths)}]")
    if directories:
        dirs = ", ".join(literal(d.rstrip("/") + "/") for d in directories)
        con.execute(f"SET allowed_directories = [{dirs}]")
    con.execute("SET enable_external_access = false")


def register_source(
    platform: Platform | None,
    con: Any,
    view: FeatureViewSpec,
    name: str,
    allowed: tuple[list[str], list[str]],
) -> None:
    """Create DuckDB view ``name`` over ``view``'s source (its columns + the ordering
    columns); the files it reads are added to ``allowed`` (paths, folders) for
    :func:`lock_down`, to call before any user expression runs."""
    source = view.source
    if source.kind == "file":
        try:
            _register_file(platform, con, view, name, allowed)
        except ValidationError as exc:  # the API names the field at fault
            if "field" in exc.details:
                raise
            raise type(exc)(exc.message, details={**exc.details, "field": "source.uri"}) from None
    elif source.kind == "sql":
        _register_arrow(con, name, _sql_table(platform, view))
    elif source.kind == "push":
        _register_arrow(con, name, _push_table(platform, view))
    else:  # pragma: no cover - the spec's Literal
        raise ValidationError(f"view {view.name!r}: unknown source kind {source.kind!r}")


def _register_arrow(con: Any, name: str, table: Any) -> None:
    import pyarrow as pa

    table = table.append_column(FILE_COLUMN, pa.array([""] * table.num_rows, pa.string()))
    table = table.append_column(ORDER_COLUMN, pa.array(range(table.num_rows), pa.int64()))
    con.register(f"{name}__arrow", table)
    con.execute(f"CREATE TEMP VIEW {quote(name)} AS SELECT * FROM {quote(name + '__arrow')}")


# --- files ------------------------------------------------------------------------------


def _format(view: FeatureViewSpec) -> str:
    source = view.source
    if source.format:
        return source.format
    uri = (source.uri or "").lower()
    return "csv" if uri.endswith((".csv", ".csv.gz")) else "parquet"


def _access(platform: Platform | None) -> Any:
    from mlrig.datasets.access import DatasetAccess

    if platform is None:  # in-process use without a platform: the local operator's files
        return DatasetAccess(artifacts=None, any_local_file=True)
    return platform.datasets


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition("://")
    return head.lower() if sep else ""


def _register_file(
    platform: Platform | None,
    con: Any,
    view: FeatureViewSpec,
    name: str,
    allowed: tuple[list[str], list[str]],
) -> None:
    uri = view.source.uri
    if not uri:
        raise ValidationError(f"view {view.name!r}: a file source needs a uri")
    access = _access(platform)
    access.check(uri)  # outside the allowed roots, a scheme not allowed: ValidationError
    scheme = _scheme(uri)
    fmt = _format(view)
    if scheme in ("", "file"):
        path = access._local_path(uri)  # resolved (symlinks, "..") and checked again
        _register_local(con, view, name, uri, Path(path), fmt, allowed)
        return
    raw = _read_remote(platform, access, view, uri, scheme)
    _register_arrow(con, name, _parse(view, uri, raw, fmt))


def _register_local(
    con: Any,
    view: FeatureViewSpec,
    name: str,
    uri: str,
    path: Path,
    fmt: str,
    allowed: tuple[list[str], list[str]],
) -> None:
    if not path.exists():
        msg = f"view {view.name!r}: source file {uri!r} not found"
        raise ValidationError(msg, details={"uri": uri, "reason": "not_found"})
    if fmt == "csv":
        if not path.is_file():
            msg = f"view {view.name!r}: source {uri!r} is not a regular file"
            raise ValidationError(msg, details={"uri": uri, "reason": "not_a_file"})
        _register_arrow(con, name, _parse(view, uri, path.read_bytes(), fmt))
        return
    if path.is_dir():
        pattern = str(path / "**" / "*.parquet")
        if not any(path.rglob("*.parquet")):
            msg = f"view {view.name!r}: source folder {uri!r} holds no .parquet files"
            raise ValidationError(msg, details={"uri": uri, "reason": "not_found"})
    elif path.is_file():
        pattern = str(path)
    else:
        msg = f"view {view.name!r}: source {uri!r} is not a regular file or folder"
        raise ValidationError(msg, details={"uri": uri, "reason": "not_a_file"})
    scan = (
        f"read_parquet({literal(pattern)}, filename = true, file_row_number = true, "
        "union_by_name = true)"
    )
    try:
        columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
    except Exception as exc:  # DuckDB's IOException, InvalidInputException...
        msg = f"view {view.name!r}: source {uri!r} is not a readable Parquet file ({_why(exc)})"
        raise ValidationError(msg, details={"uri": uri}) from None
    own = [c for c in columns if c not in ("filename", "file_row_number")]
    select = ", ".join(quote(c) for c in own)
    con.execute(
        f"CREATE TEMP VIEW {quote(name)} AS SELECT {select}, filename AS {FILE_COLUMN}, "
        f"file_row_number AS {ORDER_COLUMN} FROM {scan}"
    )
    if path.is_dir():
        allowed[1].append(str(path))
    else:
        allowed[0].append(str(path))


def _read_remote(
    platform: Platform | None, access: Any, view: FeatureViewSpec, uri: str, scheme: str
) -> bytes:
    if scheme not in ("s3", "s3a") or platform is None:
        try:
            return access.read(uri)  # artifact://, other fsspec schemes: access's own reader
        except NotFoundError:
            msg = f"view {view.name!r}: source file {uri!r} not found"
            raise ValidationError(msg, details={"uri": uri, "reason": "not_found"}) from None
    options = platform.settings.storage.backend_options("s3")
    try:
        import s3fs
    except ModuleNotFoundError as exc:
        msg = f"reading {uri!r} needs: pip install 'mlrig[s3]' ({exc.name} missing)"
        raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc
    secret = options.get("secret")
    fs = s3fs.S3FileSystem(
        key=options.get("key"),
        secret=getattr(secret, "get_secret_value", lambda: secret)() if secret else None,
        profile=options.get("profile"),
        endpoint_url=options.get("endpoint_url"),
        client_kwargs={"region_name": options["region"]} if options.get("region") else {},
        use_listings_cache=False,
        skip_instance_cache=True,
    )
    path = uri.split("://", 1)[1]
    try:
        info = fs.info(path)
        if info.get("type") != "file":
            msg = f"view {view.name!r}: source {uri!r} is not a file"
            raise ValidationError(msg, details={"uri": uri, "reason": "not_a_file"})
        if isinstance(info.get("size"), int):
            access._check_size(uri, info["size"])
        with fs.open(path, "rb") as handle:
            return access._capped(uri, handle)
    except MlrigError:
        raise
    except FileNotFoundError:
        msg = f"view {view.name!r}: source file {uri!r} not found"
        raise ValidationError(msg, details={"uri": uri, "reason": "not_found"}) from None
    except Exception as exc:  # the fsspec boundary: any backend's failure
        msg = f"view {view.name!r}: cannot read {uri!r} ({type(exc).__name__})"
        raise ValidationError(msg, details={"uri": uri}) from None


def _parse(view: FeatureViewSpec, uri: str, raw: bytes, fmt: str) -> Any:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if fmt == "csv":
            return pacsv.read_csv(io.BytesIO(raw))
        return pq.read_table(io.BytesIO(raw))
    except Exception as exc:  # pyarrow raises ArrowInvalid and others for a bad file
        msg = (
            f"view {view.name!r}: source {uri!r} is not a readable {fmt.upper()} file ({_why(exc)})"
        )
        raise ValidationError(msg, details={"uri": uri}) from None


def _why(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# --- SQL --------------------------------------------------------------------------------

_START = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


def check_query(query: str | None) -> str:
    """``query`` if it is one ``SELECT`` (or ``WITH ... SELECT``) that names none of
    mlrig's own tables.

    :raises ValidationError: anything else.
    """
    from mlrig.db.models import Base

    if not isinstance(query, str) or not query.strip():
        raise ValidationError("source query: a SELECT statement is required")
    body = _COMMENT.sub(" ", query).strip().rstrip(";").strip()
    if ";" in body:
        msg = "source query: exactly one SELECT statement is allowed (found ';')"
        raise ValidationError(msg, details={"field": "source.query"})
    if not _START.match(body):
        msg = "source query: only a read-only SELECT (or WITH ... SELECT) is allowed"
        raise ValidationError(msg, details={"field": "source.query"})
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", body.lower()))
    own = sorted(words & {t.lower() for t in Base.metadata.tables} | (words & {"alembic_version"}))
    if own:
        msg = (
            f"source query: mlrig's own tables cannot be read by a feature source "
            f"({', '.join(own)}); query your data tables"
        )
        raise ValidationError(msg, details={"field": "source.query", "tables": own})
    risky = sorted(words & _SERVER_FILES)
    if risky:
        msg = f"source query: {', '.join(risky)} cannot be used by a feature source"
        raise ValidationError(msg, details={"field": "source.query", "names": risky})
    return body


#: PostgreSQL functions and catalogs that reach the server's files or secrets
_SERVER_FILES = {
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import",
    "lo_get", "lo_export", "dblink", "pg_authid", "pg_shadow", "pg_user_mapping",
    "sqlite_master", "sqlite_schema", "load_extension", "readfile",
}  # fmt: skip


def _sql_table(platform: Platform | None, view: FeatureViewSpec) -> Any:
    import pyarrow as pa
    from sqlalchemy import text

    if platform is None:
        raise ValidationError(f"view {view.name!r}: a SQL source needs the platform database")
    query = check_query(view.source.query)
    db = platform.db
    with db.engine.connect() as conn:
        sqlite = db.dialect == "sqlite"
        try:
            if sqlite:
                conn.exec_driver_sql("PRAGMA query_only = ON")
            else:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.exec_driver_sql("SET LOCAL statement_timeout = '300s'")
            result = conn.execute(text(query))
            names = list(result.keys())
            rows = result.fetchall()
        except Exception as exc:  # the database's error: a bad query is the user's
            conn.rollback()
            msg = f"view {view.name!r}: the source query failed ({_why(exc)})"
            raise ValidationError(msg, details={"field": "source.query"}) from None
        finally:
            if sqlite:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA query_only = OFF")
    if len(set(names)) != len(names):
        msg = f"view {view.name!r}: the source query returns duplicate column names ({names})"
        raise ValidationError(msg, details={"field": "source.query"})
    columns = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    for name in (view.source.timestamp_field, view.source.created_timestamp_field):
        if name in columns:  # SQLite has no timestamp type: ISO 8601 text is parsed
            columns[name] = _iso_or_same(columns[name])
    arrays = []
    for values in columns.values():
        try:
            arrays.append(pa.array(values) if values else pa.nulls(0))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            msg = f"view {view.name!r}: the source query returns mixed types ({_why(exc)})"
            raise ValidationError(msg, details={"field": "source.query"}) from None
    return pa.table(dict(zip(names, arrays, strict=True)))


def _iso_or_same(values: list[Any]) -> list[Any]:
    from datetime import datetime

    if not any(isinstance(v, str) for v in values):
        return values
    try:
        parsed = [None if v is None else datetime.fromisoformat(v) for v in values]
    except (TypeError, ValueError):
        return values  # left as text: refused as a timestamp of the wrong type
    from mlrig.db.types import as_utc

    return [as_utc(v) for v in parsed]


# --- push -------------------------------------------------------------------------------


def _push_table(platform: Platform | None, view: FeatureViewSpec) -> Any:
    import pyarrow as pa
    from sqlalchemy import select

    from mlrig.db.models.features import FeaturePushRow
    from mlrig.db.types import as_utc

    keys = list(view.join_keys)
    ts, created = view.source.timestamp_field, view.source.created_timestamp_field
    value_names: list[str] = []
    for f in view.features:
        if f.expression is None and f.name not in value_names:
            value_names.append(f.name)
    data: dict[str, list[Any]] = {k: [] for k in keys}
    rows: list[Any] = []
    if platform is not None:
        with platform.db.session() as session:
            rows = list(
                session.execute(
                    select(
                        FeaturePushRow.entity_key,
                        FeaturePushRow.values,
                        FeaturePushRow.event_timestamp,
                        FeaturePushRow.created_timestamp,
                    )
                    .where(FeaturePushRow.view_name == view.name)
                    .order_by(FeaturePushRow.pushed_at, FeaturePushRow.id)
                )
            )
    for row in rows:
        for name in row.values:
            if name not in value_names and name not in keys:
                value_names.append(name)
    for name in value_names:
        data[name] = []
    stamps: list[Any] = []
    made: list[Any] = []
    for row in rows:
        for k in keys:
            data[k].append(row.entity_key.get(k))
        for name in value_names:
            data[name].append(row.values.get(name))
        stamps.append(as_utc(row.event_timestamp))
        made.append(as_utc(row.created_timestamp))
    arrays: dict[str, Any] = {}
    dtypes = {f.name: f.dtype for f in view.features}
    for name, values in data.items():
        wanted = _PUSH_TYPES.get(dtypes.get(name, ""))
        if wanted is not None:
            arrays[name] = pa.array(values, getattr(pa, wanted)())
        elif values:
            arrays[name] = pa.array(values)
        else:
            arrays[name] = pa.array([], pa.string())
    stamp_type = pa.timestamp("us", tz="UTC")
    arrays[ts] = pa.array(stamps, stamp_type)
    if created:
        arrays[created] = pa.array(made, stamp_type)
    return pa.table(arrays)


def append_push(platform: Platform, view: FeatureViewSpec, rows: list[dict[str, Any]]) -> int:
    """Store pushed rows (already checked against the view's schema) in
    ``feature_push_rows``; the count written."""
    from datetime import datetime, timedelta

    from mlrig.db.models.features import FeaturePushRow
    from mlrig.db.types import as_utc, utcnow

    keys = view.join_keys
    ts, created = view.source.timestamp_field, view.source.created_timestamp_field
    now = utcnow()
    records = []
    # rows of one push keep their order (the last of equal rows wins): a microsecond apart
    for i, row in enumerate(rows):
        stamp = row.get(ts)
        if not isinstance(stamp, datetime):
            msg = f"rows[{i}]: {ts!r} must be a timestamp"
            raise ValidationError(msg, details={"row": i, "column": ts})
        made = row.get(created) if created else None
        if made is not None and not isinstance(made, datetime):
            msg = f"rows[{i}]: {created!r} must be a timestamp"
            raise ValidationError(msg, details={"row": i, "column": created})
        skip = {*keys, ts, created}
        records.append(
            {
                "view_name": view.name,
                "entity_key": {k: row.get(k) for k in keys},
                "values": {k: v for k, v in row.items() if k not in skip},
                "event_timestamp": as_utc(stamp),
                "created_timestamp": as_utc(made),
                "pushed_at": now + timedelta(microseconds=i),
            }
        )
    if not records:
        return 0
    with platform.db.bulk_write_lock, platform.db.session() as session:
        session.add_all(FeaturePushRow(**r) for r in records)
    return len(records)
