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
  in a read-only transaction, fetched in chunks, at most ``[features] max_sql_source_rows``
  rows and ``sql_source_timeout_seconds`` (PostgreSQL: its statement timeout; SQLite: a
  progress handler's deadline), more refused. Checked by tokens
  (comments dropped, quoted identifiers unquoted, case folded; :func:`check_query`): no
  mlrig table, no function that runs SQL of its own or reaches the server (files,
  settings, sleep, signals, large objects, dblink; :data:`DENIED_FUNCTIONS`), no system
  catalog with secrets, no SQLite ``pragma_*``, no ``U&`` escapes or dollar quotes. On
  PostgreSQL the server's ``EXPLAIN (VERBOSE, FORMAT JSON)`` plan is checked too
  (:func:`check_plan`: the relations scanned, through views, and the functions called).
  Defence in depth: SQL sources are for trusted users (the query runs with the platform's
  database role).
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

_WORD = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*")
_DOLLAR = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")


def _refuse(text: str, **details: Any) -> ValidationError:
    msg = f"source.query: {text}"
    return ValidationError(msg, details={"field": "source.query", **details})


def _tokens(query: str, dialect: str) -> list[tuple[str, str]]:
    """The query's tokens, comments dropped: ``("word", lowercased)``, ``("ident",
    lowercased quoted identifier)``, ``("string", "")`` (contents never matter) and
    ``("symbol", char)``. ``dialect``: ``"postgresql"`` (``"..."`` identifiers, ``E'...'``
    strings with backslash escapes) or ``"sqlite"`` (``"..."``, ```...``` and ``[...]``
    identifiers, no escapes).

    Refused (the lexer and the database must never disagree on where code is): Unicode
    escapes (``U&'...'``, ``U&"..."``), dollar-quoted strings, a block comment inside a
    block comment (nested in PostgreSQL, not in SQLite), anything left open.
    """
    out: list[tuple[str, str]] = []
    pg = dialect != "sqlite"
    quotes = "'\"" if pg else "'\"`["
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
        elif query.startswith("--", i):
            end = query.find("\n", i)
            i = n if end < 0 else end + 1
        elif query.startswith("/*", i):
            end = query.find("*/", i + 2)
            if end < 0:
                raise _refuse("an unterminated /* comment", reason="unterminated")
            if "/*" in query[i + 2 : end]:
                raise _refuse("nested /* comments are not allowed", reason="nested_comment")
            i = end + 2
        elif c in quotes:
            close = {"'": "'", '"': '"', "`": "`", "[": "]"}[c]
            backslash = pg and c == "'" and out[-1:] == [("word", "e")] and query[i - 1] in "eE"
            if backslash:
                out.pop()  # E'...': the E is the string's prefix
            j = i + 1
            while True:
                if j >= n:
                    raise _refuse(f"an unterminated {c}...{close}", reason="unterminated")
                if backslash and query[j] == "\\":
                    j += 2
                    continue
                if query[j] == close:
                    if close != "]" and query.startswith(close * 2, j):
                        j += 2  # a doubled quote inside the quotes
                        continue
                    break
                j += 1
            if c == "'":
                out.append(("string", ""))
            else:
                out.append(("ident", query[i + 1 : j].replace(close * 2, close).lower()))
            i = j + 1
        elif c == "$" and _DOLLAR.match(query, i) and not query[i + 1 : i + 2].isdigit():
            raise _refuse(
                "dollar-quoted strings ($$...$$) are not allowed: use '...' strings",
                reason="dollar_quote",
            )
        elif c == "&" and out and out[-1] == ("word", "u") and query[i + 1 : i + 2] in ("'", '"'):
            raise _refuse(
                "Unicode escapes (U&\"...\" identifiers, U&'...' strings) are not allowed",
                reason="unicode_escape",
            )
        else:
            word = _WORD.match(query, i)
            if word:
                out.append(("word", word.group().lower()))
                i = word.end()
            else:
                out.append(("symbol", c))
                i += 1
    return out


def check_query(query: str | None, dialect: str | None = None) -> str:
    """``query`` if it is one ``SELECT`` (or ``WITH ... SELECT``) that names none of
    mlrig's own tables and calls none of the functions that run SQL of their own or
    reach the database server (:data:`DENIED_FUNCTIONS`, :func:`denied_function`).

    Names are compared as the database reads them: comments dropped, case folded, quoted
    identifiers unquoted; a name inside a string literal is data, never code (which is
    why the functions that would run a string as SQL are refused).

    ``dialect``: the platform database's (``"postgresql"``, ``"sqlite"``); None: the
    query must pass the rules of both.

    :raises ValidationError: anything else (422, field ``source.query``).
    """
    if not isinstance(query, str) or not query.strip():
        raise _refuse("a SELECT statement is required", reason="empty")
    if "\x00" in query:
        raise _refuse("NUL characters are not allowed", reason="nul")
    for each in (dialect,) if dialect in ("postgresql", "sqlite") else ("postgresql", "sqlite"):
        _check_tokens(_tokens(query, each))
    return query.strip().rstrip(";").rstrip()


def _check_tokens(tokens: list[tuple[str, str]]) -> None:
    while tokens and tokens[-1] == ("symbol", ";"):
        tokens.pop()
    if ("symbol", ";") in tokens:
        raise _refuse("exactly one SELECT statement is allowed (found ';')", reason="statements")
    if not tokens or tokens[0] not in (("word", "select"), ("word", "with")):
        msg = "only a read-only SELECT (or WITH ... SELECT) is allowed"
        raise _refuse(msg, reason="not_select")
    check_names(tokens)


def check_names(tokens: list[tuple[str, str]]) -> None:
    """Refuse mlrig's tables, the catalogs that hold secrets and the denied functions
    among ``tokens`` (words and quoted identifiers)."""
    names = [(i, v) for i, (k, v) in enumerate(tokens) if k in ("word", "ident")]
    own = sorted({v for _, v in names} & own_tables())
    if own:
        raise _refuse(
            f"mlrig's own tables cannot be read by a feature source ({', '.join(own)}); "
            "query your data tables",
            reason="own_table",
            tables=own,
        )
    calls = {v for i, v in names if i + 1 < len(tokens) and tokens[i + 1] == ("symbol", "(")}
    risky = sorted(
        {v for _, v in names if v in _DENIED_NAMES or v.startswith(_DENIED_NAME_PREFIXES)}
        | {v for v in calls if denied_function(v)}
    )
    if risky:
        raise _refuse(
            f"{', '.join(risky)} cannot be used by a feature source (functions that run "
            "SQL of their own, read server files or settings, sleep or signal, and the "
            "system catalogs are refused)",
            reason="denied_name",
            names=risky,
        )


def own_tables() -> set[str]:
    from mlrig.db.models import Base

    return {t.lower() for t in Base.metadata.tables} | {"alembic_version"}


#: functions refused by exact name (PostgreSQL, SQLite): dynamic SQL, server files,
#: settings, sleeping, signalling other sessions, large objects, remote databases
DENIED_FUNCTIONS = frozenset({
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
    "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema", "database_to_xml", "database_to_xmlschema",
    "database_to_xml_and_xmlschema", "schema_to_xml", "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema", "ts_stat", "ts_rewrite",
    "set_config", "current_setting", "pg_ls_dir", "pg_stat_file", "copy",
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_current_logfile", "pg_file_write", "pg_file_rename", "pg_file_unlink",
    "pg_logdir_ls", "pg_switch_wal", "pg_create_restore_point", "pg_promote",
    "pg_logical_emit_message", "pg_notify", "pg_import_system_collations",
    "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "zipfile",
})  # fmt: skip
#: name prefixes of refused functions
DENIED_PREFIXES = (
    "pg_sleep", "pg_read", "pg_ls_", "lo_", "dblink", "xpath", "pg_advisory",
    "pg_try_advisory", "pg_stat_reset", "pg_replication_", "pg_create_", "pg_drop_",
    "pg_backup", "pg_start_backup", "pg_stop_backup", "pg_wal_", "pg_xlog",
    "pg_stat_get_activity", "pg_stat_get_backend", "pg_logical_slot_",
)  # fmt: skip
#: names refused wherever they appear (catalogs with secrets or server details, SQLite's
#: schema table and table-valued pragmas)
_DENIED_NAMES = frozenset({
    "pg_authid", "pg_shadow", "pg_user_mapping", "pg_user_mappings", "pg_settings",
    "pg_file_settings", "pg_hba_file_rules", "pg_ident_file_mappings", "pg_config",
    "pg_stat_activity", "pg_stat_statements", "pg_largeobject", "pg_roles",
    "sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema",
    "sqlite_dbpage", "sqlite_dbstat", "dbstat",
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import",
    "lo_export", "lo_get", "dblink", "query_to_xml", "set_config", "current_setting",
})  # fmt: skip
_DENIED_NAME_PREFIXES = ("pragma_",)


def denied_function(name: str) -> bool:
    """Whether ``name`` (lowercased, unqualified) is a refused function."""
    return (
        name in DENIED_FUNCTIONS
        or name.startswith(DENIED_PREFIXES)
        or (name.endswith(("_to_xml", "_to_xmlschema", "_to_xml_and_xmlschema")))
    )


def check_plan(plan: Any) -> None:
    """Refuse a PostgreSQL ``EXPLAIN (VERBOSE, FORMAT JSON)`` plan that scans one of
    mlrig's tables or a refused catalog, or calls a refused function: the server's own
    parse, which sees through quoting, escapes and string tricks in names (not through
    SQL a function would build and run itself: those functions are refused by name)."""
    import json

    if isinstance(plan, (str, bytes)):
        plan = json.loads(plan)
    relations: set[str] = set()
    functions: set[str] = set()
    texts: list[str] = []
    modifies: list[bool] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "Relation Name" and isinstance(value, str):
                    relations.add(value.lower())
                elif key == "Function Name" and isinstance(value, str):
                    functions.add(value.lower())
                elif key == "Node Type" and value == "ModifyTable":
                    modifies.append(True)  # a data-modifying WITH
                elif isinstance(value, str) and key not in ("Node Type", "Alias", "Schema"):
                    texts.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, str):
                    texts.append(item)
                else:
                    walk(item)

    walk(plan)
    if modifies:  # refused by the read-only transaction too, with less clarity
        raise _refuse(
            "a feature source is a read-only query: it cannot insert, update or delete "
            "(found in the query's plan)",
            reason="read_only",
        )
    own = sorted(relations & own_tables())
    if own:
        raise _refuse(
            f"mlrig's own tables cannot be read by a feature source ({', '.join(own)}, "
            "found in the query's plan); query your data tables",
            reason="own_table",
            tables=own,
        )
    risky = sorted(
        {r for r in relations if r in _DENIED_NAMES or r.startswith(_DENIED_NAME_PREFIXES)}
        | {f for f in functions if denied_function(f)}
    )
    if risky:
        raise _refuse(
            f"{', '.join(risky)} cannot be used by a feature source (found in the query's plan)",
            reason="denied_name",
            names=risky,
        )
    for text in texts:  # deparsed expressions (Output, Filter, ...): the functions called
        try:
            tokens = _tokens(text, "postgresql")
        except ValidationError:
            continue  # not an expression (a strategy, a sort order...)
        calls = {
            v
            for i, (k, v) in enumerate(tokens)
            if k in ("word", "ident") and tokens[i + 1 : i + 2] == [("symbol", "(")]
        }
        risky = sorted(c for c in calls if denied_function(c))
        if risky:
            raise _refuse(
                f"{', '.join(risky)} cannot be used by a feature source (found in the "
                "query's plan)",
                reason="denied_name",
                names=risky,
            )


#: rows fetched from a SQL source's cursor at a time (memory stays bounded while fetching)
_SQL_CHUNK_ROWS = 10_000
#: SQLite virtual machine steps between two checks of a SQL source's deadline
_SQLITE_PROGRESS_STEPS = 10_000


def _sql_limits(platform: Platform) -> tuple[int, float]:
    """``[features] max_sql_source_rows`` and ``sql_source_timeout_seconds``."""
    section = getattr(getattr(platform, "settings", None), "features", None)
    rows = int(getattr(section, "max_sql_source_rows", None) or 1_000_000)
    seconds = float(getattr(section, "sql_source_timeout_seconds", None) or 300.0)
    return rows, seconds


def _sql_table(platform: Platform | None, view: FeatureViewSpec) -> Any:
    import time

    import pyarrow as pa
    from sqlalchemy import text

    if platform is None:
        raise ValidationError(f"view {view.name!r}: a SQL source needs the platform database")
    db = platform.db
    query = check_query(view.source.query, db.dialect)
    max_rows, seconds = _sql_limits(platform)
    too_many = ValidationError(
        f"view {view.name!r}: source.query returns more than {max_rows} rows "
        "([features] max_sql_source_rows)",
        details={"field": "source.query", "limit": "max_sql_source_rows", "max_rows": max_rows},
    )
    too_long = ValidationError(
        f"view {view.name!r}: source.query ran for more than {seconds:g} s "
        "([features] sql_source_timeout_seconds)",
        details={
            "field": "source.query",
            "limit": "sql_source_timeout_seconds",
            "seconds": seconds,
        },
    )
    deadline = time.monotonic() + seconds
    expired = False

    def _progress() -> int:  # SQLite: a non-zero answer interrupts the statement
        nonlocal expired
        expired = time.monotonic() > deadline
        return 1 if expired else 0

    chunks: list[Any] = []
    names: list[str] = []
    with db.engine.connect() as conn:
        sqlite = db.dialect == "sqlite"
        raw = conn.connection.dbapi_connection if sqlite else None
        handler = raw is not None and hasattr(raw, "set_progress_handler")
        try:
            if sqlite:
                conn.exec_driver_sql("PRAGMA query_only = ON")
                if handler:
                    raw.set_progress_handler(_progress, _SQLITE_PROGRESS_STEPS)
            else:
                ms = max(1, int(seconds * 1000))
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = '{ms}ms'")
                conn.exec_driver_sql("SET LOCAL standard_conforming_strings = on")
                check_plan(conn.execute(text("EXPLAIN (VERBOSE, FORMAT JSON) " + query)).scalar())
            # a server-side cursor on PostgreSQL: the rows come as they are fetched
            result = conn.execution_options(stream_results=True).execute(text(query))
            names = list(result.keys())
            if len(set(names)) != len(names):
                msg = (
                    f"view {view.name!r}: the source query returns duplicate column names ({names})"
                )
                raise ValidationError(msg, details={"field": "source.query"})
            count = 0
            while True:
                rows = result.fetchmany(_SQL_CHUNK_ROWS)
                if not rows:
                    break
                count += len(rows)
                if count > max_rows:
                    raise too_many
                if time.monotonic() > deadline:
                    raise too_long
                chunks.append(_sql_chunk(view, names, rows))
            result.close()
        except ValidationError:
            conn.rollback()
            raise
        except Exception as exc:  # the database's error: a bad query is the user's
            conn.rollback()
            if expired or _is_statement_timeout(exc):
                raise too_long from None
            msg = f"view {view.name!r}: the source query failed ({_why(exc)})"
            raise ValidationError(msg, details={"field": "source.query"}) from None
        finally:
            if sqlite:
                if handler:
                    raw.set_progress_handler(None, 0)
                conn.rollback()
                conn.exec_driver_sql("PRAGMA query_only = OFF")
    if not chunks:
        return pa.table({n: pa.nulls(0) for n in names})
    try:
        return pa.concat_tables(chunks, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # chunks of different types
        msg = f"view {view.name!r}: the source query returns mixed types ({_why(exc)})"
        raise ValidationError(msg, details={"field": "source.query"}) from None


def _is_statement_timeout(exc: Exception) -> bool:
    """PostgreSQL's ``query_canceled`` (SQLSTATE 57014) from ``statement_timeout``."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code == "57014" and "statement timeout" in str(orig)


def _sql_chunk(view: FeatureViewSpec, names: list[str], rows: list[Any]) -> Any:
    """One fetched chunk of a SQL source's rows as an Arrow table."""
    import pyarrow as pa

    columns = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    for name in (view.source.timestamp_field, view.source.created_timestamp_field):
        if name in columns:  # SQLite has no timestamp type: ISO 8601 text is parsed
            columns[name] = _iso_or_same(columns[name])
    arrays = []
    for values in columns.values():
        try:
            arrays.append(pa.array(values))
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
