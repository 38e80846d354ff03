"""Online reads: typed entity keys in, the latest live feature values out.

:func:`read_online` is on the prediction path of feature-backed deployments: it makes one
store call per feature view, whatever the number of entities, and imports no pandas
unless an on-demand view is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from mlrig.contracts.online_store import EntityKey, OnlineRow, ViewRead, read_views
from mlrig.errors import ValidationError
from mlrig.features.spec import FeatureViewSpec, OnDemandViewSpec

if TYPE_CHECKING:
    from mlrig.contracts.online_store import OnlineStore

AnyView = FeatureViewSpec | OnDemandViewSpec
Requests = Sequence[tuple[AnyView, Sequence[str]]]
Resolver = Callable[[Sequence[str]], Sequence[tuple[AnyView, Sequence[str]]]]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def encode_key_value(value: Any) -> str:
    """One join-key value as the online store keeps it: integers (also integral floats and
    numpy integers) as their decimal digits, strings as they are, booleans ``true``/``false``,
    dates and datetimes in ISO 8601 (datetimes in UTC).

    :raises ValidationError: a missing (``None``/NaN) or unsupported key value.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        if not math.isfinite(value):
            msg = f"an entity key value is missing or not finite ({value!r})"
            raise ValidationError(msg)
        if value == int(value):
            return str(int(value))
        return repr(float(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if value is None:
        msg = "an entity key value is missing (null)"
        raise ValidationError(msg)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return encode_key_value(item())
    msg = f"entity key values must be integers or strings, got {type(value).__name__} {value!r}"
    raise ValidationError(msg)


def encode_key(values: Sequence[Any]) -> EntityKey:
    """A typed key (one value per join key, in the view's order) as an online-store key."""
    return tuple(encode_key_value(v) for v in values)


def newest_per_key(rows: Sequence[OnlineRow]) -> dict[EntityKey, OnlineRow]:
    """Of ``rows``, the newest per key by (event, created timestamp); a later row wins a
    tie. Stores use it to write one row per key per batch."""
    best: dict[EntityKey, OnlineRow] = {}
    for row in rows:
        held = best.get(row.key)
        if held is None or _order(row) >= _order(held):
            best[row.key] = row
    return best


def _order(row: OnlineRow) -> tuple[datetime, datetime]:
    event = row.event_timestamp
    created = row.created_timestamp or _EPOCH
    if event.tzinfo is None:
        event = event.replace(tzinfo=timezone.utc)
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return (event, created)


def row_keys(view: FeatureViewSpec, entity_rows: Sequence[Mapping[str, Any]]) -> list[EntityKey]:
    """Each entity row's key for ``view``.

    :raises ValidationError: a row without one of the view's join keys.
    """
    join_keys = view.join_keys
    keys: list[EntityKey] = []
    for i, row in enumerate(entity_rows):
        try:
            keys.append(tuple(encode_key_value(row[k]) for k in join_keys))
        except KeyError as exc:
            msg = (
                f"entity row {i} has no value for join key {exc.args[0]!r} of feature view "
                f"{view.name!r} (its join keys: {', '.join(join_keys)})"
            )
            raise ValidationError(msg, details={"row": i, "join_keys": list(join_keys)}) from None
        except ValidationError as exc:
            msg = f"entity row {i}, feature view {view.name!r}: {exc.message}"
            raise ValidationError(msg, details={"row": i}) from None
    return keys


def read_online(
    store: OnlineStore,
    requests: Requests,
    entity_rows: Sequence[Mapping[str, Any]],
    *,
    now: datetime | None = None,
    request_data: Sequence[Mapping[str, Any]] | None = None,
    resolve: Resolver | None = None,
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """The asked features of every entity row from the online store.

    :param requests: (view, feature names) pairs, as ``FeatureService.resolve`` returns;
        a view may be an :class:`OnDemandViewSpec` (computed after the fetch).
    :param entity_rows: one mapping per entity: the join-key values (typed), and the
        request fields of on-demand views.
    :param now: the time TTLs are measured from (default: now).
    :param request_data: per row, request fields for on-demand views (over the row's own).
    :param resolve: turns on-demand inputs (feature references) into (view, names) pairs,
        for inputs not asked for themselves (fetched, not returned).
    One store call per view, or one in all where the store reads many views at once
    (:class:`~mlrig.contracts.online_store.ReadsManyViews`).

    :returns: per row a dict feature name -> value (``None`` where missing), and per row
        the names of the features that were missing (unknown key, expired, or null from an
        on-demand function).
    :raises ValidationError: a row without a join key, more request rows than entities.
    """
    now = now or datetime.now(timezone.utc)
    n = len(entity_rows)
    values: list[dict[str, Any]] = [{} for _ in range(n)]
    missing: list[list[str]] = [[] for _ in range(n)]
    on_demand: list[tuple[OnDemandViewSpec, Sequence[str]]] = []

    encoded: dict[tuple[str, ...], list[EntityKey]] = {}

    def fetch(parts: Sequence[tuple[FeatureViewSpec, Sequence[str], bool]]) -> None:
        """Read ``parts`` (view, names, whether missing values are reported): one store
        call for all of them where the store reads many views at once, else one per view."""
        reads = _view_reads(parts, entity_rows, encoded)
        _merge(parts, read_views(store, reads, now), values, missing)

    stored: list[tuple[FeatureViewSpec, Sequence[str], bool]] = []
    for view, names in requests:
        if isinstance(view, OnDemandViewSpec):
            on_demand.append((view, names))
        else:
            stored.append((view, names, True))
    if stored:
        fetch(stored)
    if not on_demand:
        return values, missing
    if request_data is not None and len(request_data) != n:
        msg = f"request_data has {len(request_data)} rows for {n} entity rows"
        raise ValidationError(msg)
    asked = {name for view, names in requests for name in names}
    hidden = _fetch_inputs(on_demand, values, asked, resolve, fetch)
    _apply_on_demand(on_demand, entity_rows, request_data, values, missing)
    if hidden:
        for row in values:
            for name in hidden:
                row.pop(name, None)
    return values, missing


def has_on_demand(requests: Requests) -> bool:
    """Whether ``requests`` ask for an on-demand view (user code, run after the fetch)."""
    return any(isinstance(view, OnDemandViewSpec) for view, _ in requests)


async def read_online_async(
    store: OnlineStore,
    requests: Requests,
    entity_rows: Sequence[Mapping[str, Any]],
    *,
    now: datetime | None = None,
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """:func:`read_online` through the store's :meth:`~OnlineStore.aread_many`, for an
    event loop: stored views only (an on-demand view runs user code, which may block).

    :raises ValidationError: a row without a join key, or an on-demand view asked for.
    """
    now = now or datetime.now(timezone.utc)
    parts: list[tuple[FeatureViewSpec, Sequence[str], bool]] = []
    for view, names in requests:
        if isinstance(view, OnDemandViewSpec):
            msg = f"on-demand view {view.name!r} cannot be read on an event loop"
            raise ValidationError(msg, details={"view": view.name})
        parts.append((view, names, True))
    n = len(entity_rows)
    values: list[dict[str, Any]] = [{} for _ in range(n)]
    missing: list[list[str]] = [[] for _ in range(n)]
    if parts:
        reads = _view_reads(parts, entity_rows, {})
        _merge(parts, await store.aread_many(reads, now=now), values, missing)
    return values, missing


def _view_reads(
    parts: Sequence[tuple[FeatureViewSpec, Sequence[str], bool]],
    entity_rows: Sequence[Mapping[str, Any]],
    encoded: dict[tuple[str, ...], list[EntityKey]],
) -> list[ViewRead]:
    """One :class:`ViewRead` per part; views on the same entities share one key list
    (``encoded``, per join keys), which stores may send once."""
    reads = []
    for view, names, _ in parts:
        keys = encoded.get(view.join_keys)
        if keys is None:
            keys = encoded[view.join_keys] = row_keys(view, entity_rows)
        reads.append(ViewRead(view.name, keys, list(names), view.ttl_seconds))
    return reads


def _merge(
    parts: Sequence[tuple[FeatureViewSpec, Sequence[str], bool]],
    results: Sequence[Sequence[dict[str, Any] | None]],
    values: list[dict[str, Any]],
    missing: list[list[str]],
) -> None:
    """Fold the store's per-part results into the rows' values (``None`` where a key has
    no live row, its names then listed as missing where the part reports them)."""
    for (_, names, report), found in zip(parts, results, strict=True):
        for i, row in enumerate(found):
            if row is None:
                out = values[i]
                for name in names:
                    out[name] = None
                if report:
                    missing[i].extend(names)
            else:
                values[i].update(row)


def _fetch_inputs(
    on_demand: Sequence[tuple[OnDemandViewSpec, Sequence[str]]],
    values: list[dict[str, Any]],
    asked: set[str],
    resolve: Resolver | None,
    fetch: Callable[..., None],
) -> set[str]:
    """Fetch the on-demand views' inputs nobody asked for; their names (to drop after)."""
    have = set(values[0]) if values else set(asked)
    needed = [
        ref
        for view, _ in on_demand
        for ref in view.inputs
        if ref.rpartition(":")[2] not in have and ref.rpartition(":")[2] not in asked
    ]
    if not needed or not values:
        return set()
    if resolve is None:
        msg = (
            f"on-demand features need the inputs {', '.join(sorted(set(needed)))}; "
            "ask for them too or pass resolve="
        )
        raise ValidationError(msg)
    hidden: set[str] = set()
    parts: list[tuple[FeatureViewSpec, Sequence[str], bool]] = []
    for view, names in resolve(sorted(set(needed))):
        if isinstance(view, OnDemandViewSpec):
            msg = f"on-demand view inputs must be stored features, not {view.name!r}'s"
            raise ValidationError(msg)
        parts.append((view, names, False))
        hidden.update(names)
    fetch(parts)
    return hidden


def _apply_on_demand(
    on_demand: Sequence[tuple[OnDemandViewSpec, Sequence[str]]],
    entity_rows: Sequence[Mapping[str, Any]],
    request_data: Sequence[Mapping[str, Any]] | None,
    values: list[dict[str, Any]],
    missing: list[list[str]],
) -> None:
    import pandas as pd

    from mlrig.features.ondemand import apply_on_demand

    for view, names in on_demand:
        columns: dict[str, list[Any]] = {}
        for ref in view.inputs:
            name = ref.rpartition(":")[2]
            columns[name] = [row.get(name) for row in values]
        for field_name in view.request_fields:
            column = []
            for i, row in enumerate(entity_rows):
                extra = request_data[i] if request_data is not None else {}
                if field_name in extra:
                    column.append(extra[field_name])
                elif field_name in row:
                    column.append(row[field_name])
                else:
                    msg = (
                        f"entity row {i} has no request field {field_name!r} that on-demand "
                        f"view {view.name!r} needs"
                    )
                    raise ValidationError(msg, details={"row": i, "field": field_name})
            columns[field_name] = column
        frame = apply_on_demand(view, pd.DataFrame(columns, index=range(len(values))))
        for name in names:
            column = frame[name].tolist()
            for i, value in enumerate(column):
                value = _plain(value)
                values[i][name] = value
                if value is None:
                    missing[i].append(name)


def _plain(value: Any) -> Any:
    """A pandas/numpy cell as a JSON-able Python value (NaN/NaT -> ``None``)."""
    item = getattr(value, "item", None)
    if callable(item):
        value = item()
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NaT or value is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return value
