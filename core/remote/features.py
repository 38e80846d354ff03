"""The feature store of a server (``/api/ml/entities``, ``/feature-views``, ``/features``),
with the signatures of :class:`mlrig.features.service.FeatureService` and its views.

The server decides what the token may see: ``can_read_pii`` is ignored here (a reader
without ``read_pii`` gets masked values whatever it asks). Training sets go over the JSON
route in chunks of :data:`TRAINING_CHUNK` rows and come back as one DataFrame.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mlrig.remote import RemoteService, params, segment

if TYPE_CHECKING:
    import pandas as pd

    from mlrig.security import Principal

#: entity rows per training-set request (the route's limit)
TRAINING_CHUNK = 10_000
#: entity rows per online request
ONLINE_CHUNK = 1000

Request = Callable[..., Any]


def historical_over_rest(
    request: Request,
    entity_df: pd.DataFrame,
    features: Sequence[str],
    *,
    timestamp_column: str = "event_timestamp",
) -> pd.DataFrame:
    """``POST /features/training-set`` over ``entity_df`` in chunks; one DataFrame back,
    the entity rows' order kept, the timestamp column as UTC datetimes."""
    import pandas as pd

    frame = entity_df.copy()
    frame[timestamp_column] = pd.to_datetime(frame[timestamp_column], utc=True)
    parts = []
    for start in range(0, len(frame), TRAINING_CHUNK):
        chunk = frame.iloc[start : start + TRAINING_CHUNK]
        rows = [{k: _plain(v) for k, v in row.items()} for row in chunk.to_dict(orient="records")]
        answer = request(
            "POST",
            "/features/training-set",
            json={
                "features": list(features),
                "entities": rows,
                "timestamp_column": timestamp_column,
            },
        )
        part = pd.DataFrame.from_records(answer["rows"], columns=answer["columns"])
        parts.append(part)
    if not parts:
        return frame
    out = pd.concat(parts, ignore_index=True)
    out[timestamp_column] = pd.to_datetime(out[timestamp_column], utc=True)
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    item = getattr(value, "item", None)
    if callable(item):
        value = item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


class RemoteFeatures(RemoteService):
    """Entities, feature views, features and their values on a server."""

    attribute = "features"

    def create_entity(self, body: Mapping[str, Any], *, actor: Principal | None = None) -> Any:
        return self.http.request("POST", "/entities", json=dict(body))

    def list_entities(self, *, limit: int = 100, offset: int = 0) -> Any:
        query = params(limit=limit, offset=offset or None)
        return self.http.request("GET", "/entities", params=query)["items"]

    def get_entity(self, name: str) -> Any:
        return self.http.request("GET", f"/entities/{segment(name)}")

    def create_view(self, body: Mapping[str, Any], *, actor: Principal | None = None) -> Any:
        return self.http.request("POST", "/feature-views", json=dict(body))

    def list_views(
        self,
        *,
        kind: str | None = None,
        entity: str | None = None,
        tag: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Any:
        query = params(kind=kind, entity=entity, tag=tag, limit=limit, offset=offset or None)
        return self.http.request("GET", "/feature-views", params=query)["items"]

    def get_view(self, name: str) -> Any:
        return self.http.request("GET", f"/feature-views/{segment(name)}")

    def update_view(
        self, name: str, body: Mapping[str, Any], *, actor: Principal | None = None
    ) -> Any:
        definition = {k: v for k, v in body.items() if k != "name"}  # the path names it
        return self.http.request("PUT", f"/feature-views/{segment(name)}", json=definition)

    def create_feature(self, body: Mapping[str, Any], *, actor: Principal | None = None) -> Any:
        return self.http.request("POST", "/features", json=dict(body))

    def list_features(
        self,
        *,
        type: str | None = None,
        source: str | None = None,
        tag: str | None = None,
        entity: str | None = None,
        view: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Any:
        query = params(
            type=type,
            source=source,
            tag=tag,
            entity=entity,
            view=view,
            limit=limit,
            offset=offset or None,
        )
        return self.http.request("GET", "/features", params=query)["items"]

    def get_feature(self, ref: str) -> Any:
        return self.http.request("GET", f"/features/{segment(ref)}")

    def update_feature(
        self, ref: str, body: Mapping[str, Any], *, actor: Principal | None = None
    ) -> Any:
        return self.http.request("PUT", f"/features/{segment(ref)}", json=dict(body))

    def feature_history(self, ref: str) -> Any:
        return self.http.request("GET", f"/features/{segment(ref)}/history")

    def get_online_features(
        self,
        features: Sequence[str],
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        request_data: Sequence[Mapping[str, Any]] | None = None,
        can_read_pii: bool = True,
        actor: Principal | None = None,
    ) -> Any:
        out: dict[str, Any] = {"features": [], "results": [], "missing": []}
        rows = [dict(r) for r in entity_rows]
        for start in range(0, max(len(rows), 1), ONLINE_CHUNK):
            body: dict[str, Any] = {
                "features": list(features),
                "entities": rows[start : start + ONLINE_CHUNK],
            }
            if request_data is not None:
                body["request_data"] = [dict(r) for r in request_data[start : start + ONLINE_CHUNK]]
            answer = self.http.request("POST", "/features/batch", json=body)
            out["features"] = answer["features"]
            out["results"] += answer["results"]
            out["missing"] += answer["missing"]
        return out

    def feature_values(
        self,
        ref: str,
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        as_of: datetime | None = None,
        can_read_pii: bool = True,
        actor: Principal | None = None,
    ) -> Any:
        from mlrig.features.definitions import key_text

        query: dict[str, Any] = {"key": [key_text(r) for r in entity_rows]}
        if as_of is not None:
            query["as_of"] = _iso(as_of)
        return self.http.request("GET", f"/features/{segment(ref)}/values", params=query)

    def get_historical_features(
        self,
        entity_df: pd.DataFrame,
        features: Sequence[str],
        *,
        timestamp_column: str = "event_timestamp",
        can_read_pii: bool = True,
        actor: Principal | None = None,
    ) -> pd.DataFrame:
        return historical_over_rest(
            self.http.request, entity_df, features, timestamp_column=timestamp_column
        )

    def push(
        self, view: str, rows: Sequence[Mapping[str, Any]], *, actor: Principal | None = None
    ) -> Any:
        body = {"rows": [{k: _plain(v) for k, v in r.items()} for r in rows]}
        return self.http.request("POST", f"/feature-views/{segment(view)}/push", json=body)

    def materialize(
        self,
        view: str,
        *,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        actor: Principal | None = None,
        wait: bool = False,
    ) -> Any:
        body = params(start=_iso(start), end=_iso(end))
        return self.http.request("POST", f"/feature-views/{segment(view)}/materialize", json=body)

    def statistics(self, view: str, *, can_read_pii: bool = True) -> Any:
        return self.http.request("GET", f"/feature-views/{segment(view)}/statistics")
