"""The feature store: ``/api/ml/features``, ``/api/ml/entities``, ``/api/ml/feature-views``.

- entities: ``POST/GET /entities``, ``GET /entities/{name}``;
- feature views (groups of features over one source, or on-demand): ``POST/GET
  /feature-views``, ``GET/PUT /feature-views/{name}``, ``POST .../{name}/push`` (rows of a
  push source), ``POST .../{name}/materialize`` (202: the queued materialisation
  experiment), ``GET .../{name}/statistics``;
- features: ``POST/GET /features``, ``GET/PUT /features/{name}``, ``GET
  /features/{name}/history``, ``GET /features/{name}/values?key=customer_id:42`` (online;
  ``as_of=`` for an offline point lookup), ``POST /features/batch`` (many features x many
  entities), ``POST /features/training-set`` (point-in-time rows as JSON).

A feature ``{name}`` is ``name`` or ``view:name``. Values of features tagged ``pii`` are
masked for a reader without the ``read_pii`` permission (``[features] pii_mask``); clear
reads are audited. The views are :class:`mlrig.features.service.FeatureService`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status
from pydantic import Field, StrictInt, StrictStr
from starlette.convertors import Convertor, register_url_convertor

from mlrig.api.deps import PlatformDep
from mlrig.api.fastpath import fast_route, json_body, orjson_response
from mlrig.api.middleware import online_read
from mlrig.api.openapi import errors
from mlrig.api.pagination import offset_page
from mlrig.api.schemas import Experiment, Out, Page, Timestamp
from mlrig.api.security import Reader, Writer
from mlrig.api.types import (
    Cursor,
    Description,
    InputModel,
    JsonObject,
    Offset,
    UtcDatetime,
    whole_number,
)
from mlrig.features import definitions as d
from mlrig.features.service import MAX_PUSH_ROWS, MAX_TRAINING_ROWS
from mlrig.features.spec import FEATURE_TYPES
from mlrig.security import Permission, Principal
from mlrig.validation import MAX_PARAM_REPEATS

router = APIRouter(tags=["features"])


class _FeatureInPath(Convertor[str]):
    """``{name:feature}``: any segment but the names of the routes beside it
    (``/features/batch``, ``/features/training-set``), so that ``PUT /features/batch`` is
    405 (the path has only POST), not an update of a feature called ``batch``."""

    regex = r"(?!(?:batch|training-set)(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("feature", _FeatureInPath())

# --- bodies -----------------------------------------------------------------------------

Name = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=d.NAME_PATTERN, description="A column-safe name."),
]
#: ``name`` or ``view:name``
REF_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}(:[A-Za-z_][A-Za-z0-9_]{0,127})?$"
Ref = Annotated[
    str, Field(min_length=1, max_length=257, pattern=REF_PATTERN, description="name or view:name")
]
FeatureType = Literal["numerical", "categorical", "boolean", "text"]
Tag = Annotated[str, Field(min_length=1, max_length=d.MAX_TAG_LENGTH, pattern=d.TAG_PATTERN)]
Tags = Annotated[list[Tag], Field(max_length=d.MAX_TAGS, description='e.g. ["pii"]')]
Expression = Annotated[
    str,
    Field(
        min_length=1,
        max_length=d.MAX_EXPRESSION_LENGTH,
        description="A DuckDB SQL expression over the source's columns (default: the column "
        "of the feature's name).",
    ),
]
#: a feature in a path: ``name`` or ``view:name``
FeaturePath = Annotated[str, Path(min_length=1, max_length=257, pattern=REF_PATTERN)]
#: one entity in ``?key=``: ``join_key:value[,join_key:value...]``
KEY_PATTERN = (
    r"^[A-Za-z_][A-Za-z0-9_]{0,127}:[^,\u0000]*(,[A-Za-z_][A-Za-z0-9_]{0,127}:[^,\u0000]*)*$"
)
KeyValue = StrictInt | Annotated[StrictStr, Field(max_length=1000, pattern=r"^[^\u0000]*$")]
EntityRow = Annotated[
    dict[Name, KeyValue],
    Field(min_length=1, max_length=d.MAX_JOIN_KEYS * d.MAX_ENTITIES_PER_VIEW),
]


class FeatureIn(InputModel):
    """One feature of a view."""

    name: Name
    type: FeatureType
    expression: Expression | None = None
    description: Description | None = None
    tags: Tags = Field(default_factory=list)


class FeatureCreate(FeatureIn):
    """A feature added to an existing view."""

    view: Name = Field(description="The feature view it joins.")


class FeatureUpdate(InputModel):
    """The fields to change (the others are kept). A type change is refused (409) while a
    deployment uses the feature."""

    type: FeatureType | None = None
    expression: Expression | None = None
    description: Description | None = None
    tags: Tags | None = None


class SourceIn(InputModel):
    kind: Literal["file", "sql", "push"]
    uri: Annotated[str, Field(min_length=1, max_length=d.MAX_URI_LENGTH)] | None = Field(
        default=None, description="file: a path or fsspec URL (s3:// through [storage])."
    )
    format: Literal["parquet", "csv"] | None = Field(
        default=None, description="file: default from the uri's suffix."
    )
    query: Annotated[str, Field(min_length=1, max_length=d.MAX_QUERY_LENGTH)] | None = Field(
        default=None, description="sql: one SELECT on the platform database."
    )
    timestamp_field: Name = "event_timestamp"
    created_timestamp_field: Name | None = None


class EntityCreate(InputModel):
    name: Name
    join_keys: list[Name] = Field(min_length=1, max_length=d.MAX_JOIN_KEYS)
    description: Description | None = None


class ViewCreate(InputModel):
    """A batch view (``entities``, ``source``) or an on-demand one (``kind: on_demand``,
    ``function``, ``inputs``, ``request_fields``), with its features."""

    name: Name
    kind: Literal["batch", "on_demand"] = "batch"
    entities: list[Name] | None = Field(default=None, max_length=d.MAX_ENTITIES_PER_VIEW)
    source: SourceIn | None = None
    features: list[FeatureIn] = Field(min_length=1, max_length=d.MAX_FEATURES_PER_VIEW)
    ttl_seconds: whole_number(ge=1, le=d.MAX_TTL_SECONDS) | None = None  # type: ignore[valid-type]
    online: bool | None = None
    tags: Tags | None = None
    description: Description | None = None
    function: Annotated[str, Field(max_length=1024, pattern=d.FUNCTION_PATTERN)] | None = Field(
        default=None, description="on_demand: package.module:function"
    )
    inputs: list[Ref] | None = Field(default=None, max_length=d.MAX_FEATURES_PER_VIEW)
    request_fields: dict[Name, FeatureType] | None = Field(
        default=None, max_length=d.MAX_FEATURES_PER_VIEW
    )


class ViewUpdate(ViewCreate):
    """The whole definition, as at creation, without the name (views are not renamed)."""

    name: None = Field(default=None, exclude=True)  # type: ignore[assignment]


class OnlineRequest(InputModel):
    features: list[Ref] = Field(min_length=1, max_length=1000)
    entities: list[EntityRow] = Field(
        min_length=1, max_length=100_000, description="One object of join key -> value per entity."
    )
    request_data: list[JsonObject] | None = Field(
        default=None, description="On-demand views' request fields, one object per entity."
    )


class TrainingSetRequest(InputModel):
    features: list[Ref] = Field(min_length=1, max_length=1000)
    entities: list[JsonObject] = Field(
        min_length=1,
        max_length=MAX_TRAINING_ROWS,
        description="Rows of join keys and the event time (ISO 8601; no offset: UTC).",
    )
    timestamp_column: Name = "event_timestamp"


class PushRequest(InputModel):
    rows: list[JsonObject] = Field(min_length=1, max_length=MAX_PUSH_ROWS)


class MaterializeRequest(InputModel):
    start: UtcDatetime | None = Field(default=None, description="Default: the watermark.")
    end: UtcDatetime | None = Field(default=None, description="Default: now, at run time.")


# --- answers ----------------------------------------------------------------------------


class Entity(Out):
    name: str
    join_keys: list[str]
    description: str
    created_by: str | None
    created_at: Timestamp
    updated_at: Timestamp


class Feature(Out):
    name: str
    view: str | None
    type: FeatureType
    expression: str | None
    description: str
    tags: list[str]
    pii: bool
    entities: list[str]
    join_keys: list[str]
    data_source: str | None
    version: int
    created_by: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None


class FeatureViewOut(Out):
    name: str
    kind: Literal["batch", "on_demand"]
    entities: list[str]
    join_keys: list[str]
    source: dict[str, Any] | None
    ttl_seconds: int | None
    online: bool
    tags: list[str]
    description: str
    function: str | None
    inputs: list[str]
    request_fields: dict[str, str]
    features: list[Feature]
    version: int
    materialized_until: Timestamp | None
    created_by: str | None
    created_at: Timestamp
    updated_at: Timestamp


class HistoryEntry(Out):
    version: int
    view: str
    change: Literal["created", "updated"]
    definition: dict[str, Any]
    changed_by: str | None
    changed_at: Timestamp


class FeatureHistory(Out):
    feature: str
    versions: list[HistoryEntry]


class OnlineFeatures(Out):
    """Per entity row (in order): the values, and which features were missing (an unknown
    key or an expired value: null in ``results``, not an error)."""

    features: list[str]
    entities: list[dict[str, Any]]
    results: list[dict[str, Any]]
    missing: list[list[str]]


class TrainingSet(Out):
    features: list[str]
    columns: list[str]
    rows: list[dict[str, Any]]


class PushResult(Out):
    view: str
    rows: int
    offline: int
    online: int


class FeatureStatisticsEntry(Out):
    feature: str
    computed_at: Timestamp
    job_id: str | None
    window_start: Timestamp | None
    window_end: Timestamp | None
    stats: dict[str, Any]


class ViewStatistics(Out):
    view: str
    features: list[FeatureStatisticsEntry]


def _pii(actor: Principal) -> bool:
    return actor.can(Permission.READ_PII)


Limit = Annotated[int, Query(ge=1, le=1000)]

# --- entities ---------------------------------------------------------------------------


@router.post(
    "/entities",
    status_code=status.HTTP_201_CREATED,
    summary="Create an entity (what features describe, keyed by join keys)",
    responses=errors(409, e409="An entity of that name exists."),
)
def create_entity(
    body: EntityCreate, request: Request, platform: PlatformDep, actor: Writer
) -> Entity:
    view = platform.features.create_entity(body.model_dump(exclude_none=True), actor=actor)
    request.state.audit_resource_id = view["name"]
    return view  # type: ignore[return-value]


@router.get("/entities", summary="List entities, by name")
def list_entities(
    platform: PlatformDep, _: Reader, limit: Limit = 100, offset: Offset = 0, cursor: Cursor = None
) -> Page[Entity]:
    return offset_page(  # type: ignore[return-value]
        lambda n, skip: platform.features.list_entities(limit=n, offset=skip),
        limit=limit,
        offset=offset,
        cursor=cursor,
    )


@router.get("/entities/{name}", summary="Get an entity", responses=errors(404))
def get_entity(name: str, platform: PlatformDep, _: Reader) -> Entity:
    return platform.features.get_entity(name)  # type: ignore[return-value]


# --- feature views ----------------------------------------------------------------------


@router.post(
    "/feature-views",
    status_code=status.HTTP_201_CREATED,
    summary="Create a feature view with its features",
    responses=errors(
        404,
        409,
        e404="An entity it names does not exist.",
        e409="A view or one of its features' names is taken.",
    ),
)
def create_view(
    body: ViewCreate, request: Request, platform: PlatformDep, actor: Writer
) -> FeatureViewOut:
    view = platform.features.create_view(_view_body(body), actor=actor)
    request.state.audit_resource_id = view["name"]
    return view  # type: ignore[return-value]


def _view_body(body: ViewCreate) -> dict[str, Any]:
    data = body.model_dump(exclude_none=True)
    data["features"] = [{k: v for k, v in f.items() if v is not None} for f in data["features"]]
    return data


@router.get("/feature-views", summary="List feature views, by name")
def list_views(
    platform: PlatformDep,
    _: Reader,
    kind: Literal["batch", "on_demand"] | None = None,
    entity: Annotated[str | None, Query(max_length=128)] = None,
    tag: Annotated[str | None, Query(max_length=d.MAX_TAG_LENGTH)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
    cursor: Cursor = None,
) -> Page[FeatureViewOut]:
    return offset_page(  # type: ignore[return-value]
        lambda n, skip: platform.features.list_views(
            kind=kind, entity=entity, tag=tag, limit=n, offset=skip
        ),
        limit=limit,
        offset=offset,
        cursor=cursor,
    )


@router.get("/feature-views/{name}", summary="Get a feature view", responses=errors(404))
def get_view(name: str, platform: PlatformDep, _: Reader) -> FeatureViewOut:
    return platform.features.get_view(name)  # type: ignore[return-value]


@router.put(
    "/feature-views/{name}",
    summary="Replace a feature view's definition (features left out are removed)",
    responses=errors(404, 409, e409="A deployment uses a feature the change retypes or removes."),
)
def update_view(
    name: str, body: ViewUpdate, platform: PlatformDep, actor: Writer
) -> FeatureViewOut:
    return platform.features.update_view(name, _view_body(body), actor=actor)  # type: ignore[return-value]


@router.post(
    "/feature-views/{name}/push",
    summary="Push rows to a push-source view (offline and online); all or nothing",
    responses=errors(404),
)
def push(name: str, body: PushRequest, platform: PlatformDep, actor: Writer) -> PushResult:
    return platform.features.push(name, body.rows, actor=actor)  # type: ignore[return-value]


@router.post(
    "/feature-views/{name}/materialize",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Queue a materialisation of the view into the online store (an experiment)",
    responses=errors(404),
)
def materialize(
    name: str, body: MaterializeRequest, platform: PlatformDep, actor: Writer
) -> Experiment:
    return platform.features.materialize(  # type: ignore[return-value]
        name, start=body.start, end=body.end, actor=actor
    )


@router.get(
    "/feature-views/{name}/statistics",
    summary="The latest statistics of each feature of the view (from materialisation)",
    responses=errors(404),
)
def statistics(name: str, platform: PlatformDep, actor: Reader) -> ViewStatistics:
    return platform.features.statistics(name, can_read_pii=_pii(actor))  # type: ignore[return-value]


# --- features ---------------------------------------------------------------------------


@router.post(
    "/features",
    status_code=status.HTTP_201_CREATED,
    summary="Add a feature to a feature view",
    responses=errors(404, 409, e409="A feature of that name exists (names are store-wide)."),
)
def create_feature(
    body: FeatureCreate, request: Request, platform: PlatformDep, actor: Writer
) -> Feature:
    view = platform.features.create_feature(body.model_dump(exclude_none=True), actor=actor)
    request.state.audit_resource_id = view["name"]
    return view  # type: ignore[return-value]


@router.get("/features", summary="List features, by name")
def list_features(
    platform: PlatformDep,
    _: Reader,
    type: Literal["numerical", "categorical", "boolean", "text"] | None = None,
    source: Annotated[
        str | None,
        Query(
            max_length=d.MAX_URI_LENGTH,
            description="file, sql, push, on_demand, or a file source's uri.",
        ),
    ] = None,
    tag: Annotated[str | None, Query(max_length=d.MAX_TAG_LENGTH)] = None,
    entity: Annotated[str | None, Query(max_length=128)] = None,
    view: Annotated[str | None, Query(max_length=128)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
    cursor: Cursor = None,
) -> Page[Feature]:
    return offset_page(  # type: ignore[return-value]
        lambda n, skip: platform.features.list_features(
            type=type, source=source, tag=tag, entity=entity, view=view, limit=n, offset=skip
        ),
        limit=limit,
        offset=offset,
        cursor=cursor,
    )


def _online_features(platform: Any, body: OnlineRequest, actor: Principal) -> dict[str, Any]:
    answer = platform.features.get_online_features(
        body.features,
        body.entities,
        request_data=body.request_data,
        can_read_pii=_pii(actor),
        actor=actor,
    )
    return {**answer, "entities": body.entities}


async def _batch_values_fast(request: Request) -> Response:
    """``POST /features/batch`` without FastAPI's routing and dependencies (the guard has
    checked the token and the read permission)."""
    body = await json_body(request, OnlineRequest)
    platform = request.app.state.platform
    actor = request.state.principal
    service = platform.features
    if service.reads_locally(body.features, len(body.entities), can_read_pii=_pii(actor)):
        # a small read of local files (SQLite): on the loop, where a thread hop would
        # cost more than the read itself
        return orjson_response(_online_features(platform, body, actor))
    # a network store's async read awaited on the loop where nothing else would block
    # it; else the whole read in a thread
    answer = await service.get_online_features_async(
        body.features,
        body.entities,
        request_data=body.request_data,
        can_read_pii=_pii(actor),
        actor=actor,
    )
    return orjson_response({**answer, "entities": body.entities})


@router.post(
    "/features/batch",
    summary="Online values of many features for many entities, in one call",
    response_model=OnlineFeatures,
    responses=errors(404),
)
@online_read(fast=fast_route(_batch_values_fast))
def batch_values(body: OnlineRequest, platform: PlatformDep, actor: Reader) -> Response:
    # served by _batch_values_fast (the same answer) unless fast routes are off.
    # On the prediction path: the service's plain dict as JSON, without revalidating
    # every value against the response model (the schema still documents it)
    return orjson_response(_online_features(platform, body, actor))


@router.post(
    "/features/training-set",
    summary="A point-in-time-correct training set for JSON entity rows",
    responses=errors(404),
)
def training_set(body: TrainingSetRequest, platform: PlatformDep, actor: Reader) -> TrainingSet:
    return platform.features.training_set(  # type: ignore[return-value]
        body.features,
        body.entities,
        timestamp_column=body.timestamp_column,
        can_read_pii=_pii(actor),
        actor=actor,
    )


@router.get(
    "/features/{name:feature}", summary="Get a feature (name or view:name)", responses=errors(404)
)
def get_feature(name: FeaturePath, platform: PlatformDep, _: Reader) -> Feature:
    return platform.features.get_feature(name)  # type: ignore[return-value]


@router.put(
    "/features/{name:feature}",
    summary="Change a feature (a new version is recorded)",
    responses=errors(404, 409, e409="A type change while a deployment uses the feature."),
)
def update_feature(
    name: FeaturePath, body: FeatureUpdate, platform: PlatformDep, actor: Writer
) -> Feature:
    # an explicit null type or tags is "keep it", as leaving the field out
    changes = {
        k: v
        for k, v in body.model_dump(exclude_unset=True).items()
        if v is not None or k not in ("type", "tags")
    }
    return platform.features.update_feature(name, changes, actor=actor)  # type: ignore[return-value]


@router.get(
    "/features/{name:feature}/history",
    summary="Every definition the feature has had, with who and when",
    responses=errors(404),
)
def feature_history(name: FeaturePath, platform: PlatformDep, _: Reader) -> FeatureHistory:
    return platform.features.feature_history(name)  # type: ignore[return-value]


@router.get(
    "/features/{name:feature}/values",
    summary="A feature's online values for entity keys (as_of: an offline point lookup)",
    responses=errors(404),
)
@online_read()
def feature_values(
    name: FeaturePath,
    platform: PlatformDep,
    actor: Reader,
    key: Annotated[
        list[Annotated[str, Query(min_length=3, max_length=2000, pattern=KEY_PATTERN)]],
        Query(
            min_length=1,
            max_length=MAX_PARAM_REPEATS,
            description="One entity per parameter: join_key:value[,join_key:value...]; "
            "digits are integers.",
        ),
    ],
    as_of: Annotated[
        datetime | None,
        Query(description="An ISO 8601 time: the value as of then, from the offline store."),
    ] = None,
) -> OnlineFeatures:
    rows = [d.parse_key(k) for k in key]
    return platform.features.feature_values(  # type: ignore[return-value]
        name, rows, as_of=as_of, can_read_pii=_pii(actor), actor=actor
    )


__all__ = ["FEATURE_TYPES", "router"]
