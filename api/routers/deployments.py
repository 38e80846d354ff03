"""``/api/ml/deployments``: create, list, read, change and delete deployments (the
control plane; the predict and health routes are in :mod:`mlrig.api.routers.predict`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from pydantic import AfterValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from mlrig.api.deps import PlatformDep
from mlrig.api.openapi import errors
from mlrig.api.schemas import Deployment, Page
from mlrig.api.security import Deployer, Reader
from mlrig.api.types import Cursor, InputModel, JsonObject, Offset
from mlrig.errors import ValidationError
from mlrig.serving import spec

router = APIRouter(prefix="/deployments", tags=["deployments"])


def _name(value: str) -> str:
    try:
        return spec.check_name(value)
    except ValidationError as exc:  # a 422 at the field, with the service's message
        raise PydanticCustomError("invalid", "{message}", {"message": exc.message}) from None


DeploymentName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        json_schema_extra={"pattern": spec.NAME_PATTERN},
        description="Letters, digits and . _ - (1-100); used in URLs and token scopes.",
    ),
    AfterValidator(_name),
]
#: a model, version or alias reference (the registry says whether it exists: 404)
Ref = Annotated[str, Field(min_length=1, max_length=255)]


def _installed_runtimes(schema: dict[str, Any]) -> None:
    """The schema lists the runtimes installed where it is served (read when the schema is
    made, not at import): a runtime that is not installed is a 422 for the server too."""
    schema["pattern"] = spec.RUNTIME_PATTERN
    schema["enum"] = [spec.AUTO, *sorted(spec.installed_runtimes())]


Runtime = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        json_schema_extra=_installed_runtimes,
        description="'auto' (onnx when exported and installed, else the framework's) or a "
        "runtime name (`mlrig plugins list`).",
    ),
]
EnvironmentName = Literal[spec.ENVIRONMENTS]  # type: ignore[valid-type]


class ReplicasIn(InputModel):
    min: Annotated[int, Field(ge=1, le=spec.MAX_REPLICAS)] | None = None
    max: Annotated[int, Field(ge=1, le=spec.MAX_REPLICAS)] | None = None


class BatchingIn(InputModel):
    max_batch_size: Annotated[int, Field(ge=1, le=spec.MAX_BATCH_SIZE)] | None = None
    max_latency_ms: Annotated[float, Field(ge=0, le=spec.MAX_LATENCY_MS)] | None = None


class CanaryIn(InputModel):
    version: Ref
    percent: Annotated[float, Field(gt=0, lt=100, description="Share of requests (0-100).")]


class ShadowIn(InputModel):
    version: Ref


Traffic = Annotated[
    list[CanaryIn],
    Field(
        max_length=spec.MAX_CANARIES,
        description="Canary versions; their percents sum below 100 (the primary keeps the "
        "rest). Each is another version of the same model.",
    ),
]
Shadow = Annotated[
    Ref | ShadowIn,
    Field(description="A version that gets a copy of every request; answers only logged."),
]


def _string(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"type": "string"}}}


def _one_target(schema: dict[str, Any], model: type) -> None:
    """State "exactly one of version and alias" in the schema (a string, not null)."""
    InputModel.model_config["json_schema_extra"](schema, model)  # type: ignore[index,operator]
    schema["oneOf"] = [_string("version"), _string("alias")]


def _not_both(schema: dict[str, Any], model: type) -> None:
    """State "not both version and alias" in the schema."""
    InputModel.model_config["json_schema_extra"](schema, model)  # type: ignore[index,operator]
    both = {
        "required": ["version", "alias"],
        # both present and neither null (a null one is "not this one")
        "properties": {"version": {"not": {"type": "null"}}, "alias": {"not": {"type": "null"}}},
    }
    schema["not"] = both


FeatureName = Annotated[str, Field(pattern=spec.FEATURE_NAME_PATTERN, max_length=128)]
FeatureRef = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}(:[A-Za-z_][A-Za-z0-9_]{0,127})?$",
        max_length=257,
        description="A feature: `name` or `view:name`.",
    ),
]


class FeaturesIn(InputModel):
    """A feature-backed deployment: the model's inputs come from the feature store."""

    refs: Annotated[
        list[FeatureRef],
        Field(
            min_length=1,
            max_length=spec.MAX_FEATURE_REFS,
            description="Features in the order of the model's input columns.",
        ),
    ]
    entity_keys: (
        Annotated[list[FeatureName], Field(min_length=1, max_length=spec.MAX_REQUEST_FIELDS)] | None
    ) = Field(default=None, description="Key fields per request row (default: the join keys).")
    request_fields: (
        Annotated[list[FeatureName], Field(max_length=spec.MAX_REQUEST_FIELDS)] | None
    ) = Field(default=None, description="Request-time values: model columns after the features.")
    fill_value: float | dict[str, float] | None = Field(
        default=None,
        description="A missing value becomes this (a number, or per feature); null: a 422.",
    )


class DeploymentCreate(InputModel):
    """Exactly one of ``version`` and ``alias``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_target)

    name: DeploymentName
    model: Ref = Field(description="Model name or id.")
    version: Ref | None = Field(default=None, description="A version (pinned).")
    alias: Ref | None = Field(
        default=None, description="An alias to follow (re-resolved when it moves)."
    )
    runtime: Runtime = "auto"
    environment: EnvironmentName = "development"
    replicas: ReplicasIn | None = None
    batching: BatchingIn | None = None
    resources: JsonObject | None = None
    traffic: Traffic | None = None
    shadow: Shadow | None = None
    allow_nan: bool = False
    features: FeaturesIn | None = None


class DeploymentUpdate(InputModel):
    """Only the fields sent change; ``traffic: []`` or ``null`` removes the canaries,
    ``shadow: null`` the shadow; ``version`` pins, ``alias`` follows (not both)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_not_both)

    version: Ref | None = None
    alias: Ref | None = None
    runtime: Runtime | None = None
    environment: EnvironmentName | None = None
    replicas: ReplicasIn | None = None
    batching: BatchingIn | None = None
    resources: JsonObject | None = None
    traffic: Traffic | None = None
    shadow: Shadow | None = None
    allow_nan: bool | None = None
    features: FeaturesIn | None = Field(
        default=None, description="Feature references; null makes it a plain deployment."
    )
    status: Literal[spec.REQUESTED_STATUSES] | None = Field(  # type: ignore[valid-type]
        default=None, description="inactive stops serving, active starts again."
    )


_CLEARABLE = ("traffic", "shadow", "features")


def _fields(body: InputModel, names: set[str] | None = None) -> dict[str, Any]:
    """The fields sent, nested models as dicts (unset nested keys left out)."""
    out: dict[str, Any] = {}
    for name in names if names is not None else body.model_fields_set:
        value = getattr(body, name)
        if isinstance(value, InputModel):
            value = value.model_dump(exclude_none=True)
        elif isinstance(value, list):
            value = [i.model_dump() if isinstance(i, InputModel) else i for i in value]
        out[name] = value
    return out


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Deploy a model version (or follow an alias)",
    responses=errors(
        404,
        409,
        e404="No such model, version or alias.",
        e409="The name is taken, or a production deployment of a version not in production.",
    ),
    response_model_exclude_unset=True,
)
def create_deployment(
    body: DeploymentCreate, request: Request, platform: PlatformDep, actor: Deployer
) -> Deployment:
    fields = _fields(body, set(DeploymentCreate.model_fields))
    fields = {k: v for k, v in fields.items() if v is not None}
    view = platform.deployments.create(actor=actor, **fields)
    request.state.audit_resource_id = view["id"]
    return view  # type: ignore[return-value]


@router.get(
    "",
    summary="List deployments",
    responses=errors(404, e404="No model of that name or id (`model`)."),
    response_model_exclude_unset=True,
)
def list_deployments(
    platform: PlatformDep,
    _: Reader,
    status: Literal[spec.STATUSES] | None = Query(default=None),  # type: ignore[valid-type]
    environment: EnvironmentName | None = Query(default=None),
    model: str | None = Query(
        default=None, description="Model name or id.", min_length=1, max_length=255
    ),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: Offset = 0,
    cursor: Cursor = None,
) -> Page[Deployment]:
    """One page, oldest first: ``{"items": [...], "next_cursor": ...}``."""
    return platform.deployments.list(  # type: ignore[return-value]
        status=status,
        environment=environment,
        model=model,
        limit=limit,
        offset=offset,
        cursor=cursor,
    )


@router.get("/{id}", summary="Get a deployment (by id or name)", response_model_exclude_unset=True)
def get_deployment(id: str, platform: PlatformDep, _: Reader) -> Deployment:
    return platform.deployments.get(id)  # type: ignore[return-value]


@router.put(
    "/{id}",
    summary="Change a deployment (target, runtime, traffic, batching, start/stop...)",
    responses=errors(409, e409="A production deployment of a version not in the production stage."),
    response_model_exclude_unset=True,
)
def update_deployment(
    id: str, body: DeploymentUpdate, platform: PlatformDep, actor: Deployer
) -> Deployment:
    # null clears traffic and shadow; elsewhere it means "unchanged"
    changes = {k: v for k, v in _fields(body).items() if v is not None or k in _CLEARABLE}
    return platform.deployments.update(id, actor=actor, **changes)  # type: ignore[return-value]


@router.delete(
    "/{id}",
    summary="Delete a deployment (stops it; the name is free again)",
    response_model_exclude_unset=True,
)
def delete_deployment(id: str, platform: PlatformDep, actor: Deployer) -> Deployment:
    return platform.deployments.delete(id, actor=actor)  # type: ignore[return-value]
