"""Materialisation: a window of a feature view's offline rows into the online store.

Incremental from the view's watermark (``feature_views.materialized_until``): a run reads,
per entity key, the latest row with ``start <= event_timestamp < end`` (the offline
store's :func:`~mlrig.features.offline.read_window`), writes it to the online store in
batches (newest wins there, so rerunning a window is harmless), records per-feature
statistics of the window (``feature_statistics``) and only then moves the watermark to
``end``. A run that fails leaves the watermark where it was.

Runs inside an engine job (the ``features-materialize`` trainer) or directly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mlrig.contracts.online_store import OnlineRow
from mlrig.errors import NotFoundError, ValidationError
from mlrig.features.online import encode_key_value
from mlrig.features.spec import FeatureViewSpec, OnDemandViewSpec

if TYPE_CHECKING:
    from mlrig.platform import Platform

#: rows per online-store write
BATCH_ROWS = 10_000

Progress = Callable[[int, int], None]
WindowReader = Callable[[Any, FeatureViewSpec, "datetime | None", datetime], Any]


def parse_time(value: Any, *, name: str) -> datetime | None:
    """An ISO-8601 string (or datetime) as an aware UTC datetime; naive means UTC.

    :raises ValidationError: not a time.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            msg = f"{name} must be an ISO-8601 time like 2026-01-31T12:00:00Z, got {value!r}"
            raise ValidationError(msg) from None
    else:
        msg = f"{name} must be an ISO-8601 time string, got {type(value).__name__} {value!r}"
        raise ValidationError(msg)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def watermark(platform: Platform, view: str) -> datetime | None:
    """The view's ``materialized_until`` (``None``: never materialised).

    :raises NotFoundError: no such view.
    """
    from sqlalchemy import select

    from mlrig.db.models import FeatureView

    with platform.db.session() as session:
        found = session.execute(
            select(FeatureView.id, FeatureView.materialized_until).where(FeatureView.name == view)
        ).first()
    if found is None:
        msg = f"no feature view {view!r}"
        raise NotFoundError(msg)
    return found[1]


def _view(platform: Platform, view: FeatureViewSpec | str) -> FeatureViewSpec:
    spec = platform.features.view_spec(view) if isinstance(view, str) else view
    if isinstance(spec, OnDemandViewSpec):
        msg = f"feature view {spec.name!r} is on-demand: it is computed at read time, not stored"
        raise ValidationError(msg)
    if not spec.online:
        msg = f"feature view {spec.name!r} is not online (online = false): nothing to materialise"
        raise ValidationError(msg)
    return spec


def _default_reader(platform: Any, view: FeatureViewSpec, start: Any, end: datetime) -> Any:
    from mlrig.features.offline import read_window

    return read_window(platform, view, start, end)


def rows_of(view: FeatureViewSpec, table: Any, offset: int, length: int) -> list[OnlineRow]:
    """Online rows of ``table``'s rows ``offset .. offset + length``."""
    part = table.slice(offset, length)
    names = [f.name for f in view.features]
    keys = list(
        zip(
            *[[encode_key_value(v) for v in part.column(k).to_pylist()] for k in view.join_keys],
            strict=True,
        )
    )
    events = part.column("event_timestamp").to_pylist()
    created = (
        part.column("created_timestamp").to_pylist()
        if "created_timestamp" in part.column_names
        else [None] * len(events)
    )
    columns = [part.column(n).to_pylist() for n in names]
    out = []
    for i, values in enumerate(zip(*columns, strict=True)):
        event = events[i]
        if event is None:
            continue
        out.append(
            OnlineRow(
                key=keys[i],
                values=dict(zip(names, values, strict=True)),
                event_timestamp=event,
                created_timestamp=created[i],
            )
        )
    return out


def materialize_view(
    platform: Platform,
    view: FeatureViewSpec | str,
    *,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    progress: Progress | None = None,
    job_id: uuid.UUID | str | None = None,
    batch_rows: int = BATCH_ROWS,
    reader: WindowReader | None = None,
) -> dict[str, Any]:
    """Materialise ``view``'s rows with ``start <= event_timestamp < end``.

    :param start: default: the watermark (``None`` there: from the beginning).
    :param end: default: now.
    :param progress: called with (rows written so far, rows in the window) after each batch.
    :param job_id: the engine job, recorded with the statistics.
    :param reader: stands in for the offline store's ``read_window`` (tests).
    :returns: ``{"view", "start", "end", "rows", "written", "seconds", "rows_per_s",
        "watermark"}`` (times in ISO 8601).
    :raises ValidationError: ``end`` before ``start``, an on-demand or offline-only view,
        a source the offline store refuses.
    :raises NotFoundError: no such view.
    """
    spec = _view(platform, view)
    current = watermark(platform, spec.name)
    start_at = parse_time(start, name="start")
    end_at = parse_time(end, name="end") or datetime.now(timezone.utc)
    if start_at is None:
        start_at = current
    if start_at is not None and end_at < start_at:
        msg = (
            f"end ({end_at.isoformat()}) is before start ({start_at.isoformat()}) for "
            f"feature view {spec.name!r}"
        )
        window = {"start": start_at.isoformat(), "end": end_at.isoformat()}
        raise ValidationError(msg, details=window)
    began = time.perf_counter()
    table = (reader or _default_reader)(platform, spec, start_at, end_at)
    total = table.num_rows
    store = platform.online_store
    written = 0
    for offset in range(0, total, batch_rows):
        rows = rows_of(spec, table, offset, batch_rows)
        written += store.write(spec.name, rows, ttl_seconds=spec.ttl_seconds)
        if progress is not None:
            progress(min(offset + batch_rows, total), total)
    from mlrig.features.stats import table_statistics

    stats = table_statistics(table, {f.name: f.dtype for f in spec.features})
    new_mark = _record(platform, spec, stats, start_at, end_at, job_id)
    seconds = time.perf_counter() - began
    return {
        "view": spec.name,
        "start": start_at.isoformat() if start_at else None,
        "end": end_at.isoformat(),
        "rows": total,
        "written": written,
        "seconds": round(seconds, 3),
        "rows_per_s": round(total / seconds, 1) if seconds > 0 else None,
        "watermark": new_mark.isoformat() if new_mark else None,
    }


def _record(
    platform: Platform,
    spec: FeatureViewSpec,
    stats: dict[str, dict[str, Any]],
    start: datetime | None,
    end: datetime,
    job_id: uuid.UUID | str | None,
) -> datetime | None:
    """Statistics rows and the watermark, in one transaction, after the writes."""
    from sqlalchemy import select

    from mlrig.db.models import FeatureStatistics, FeatureView
    from mlrig.db.types import as_utc, utcnow

    job = uuid.UUID(str(job_id)) if job_id else None
    now = utcnow()
    with platform.db.session() as session:
        platform.db.begin_write(session)
        query = select(FeatureView).where(FeatureView.name == spec.name)
        if platform.db.dialect == "postgresql":
            query = query.with_for_update()
        row = session.execute(query).scalar_one_or_none()
        if row is None:
            msg = f"feature view {spec.name!r} was deleted while it was materialised"
            raise NotFoundError(msg)
        mark = as_utc(row.materialized_until)
        if mark is None or end > mark:
            row.materialized_until = end
            mark = end
        for name, values in stats.items():
            session.add(
                FeatureStatistics(
                    view_name=spec.name,
                    feature_name=name,
                    computed_at=now,
                    job_id=job,
                    window_start=start,
                    window_end=end,
                    stats=values,
                )
            )
    return mark
