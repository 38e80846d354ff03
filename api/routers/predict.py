"""``/api/ml/deployments/{id}/predict`` and ``/health``: the data plane inside ``mlrig server``.

Both delegate to the process's embedded :class:`~mlrig.serving.dataplane.DataPlane`
(:func:`mlrig.serving.dataplane.embedded`), so one command serves the API and
predictions. ``mlrig serve`` runs the same logic without FastAPI, faster.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from mlrig.api.deps import PlatformDep
from mlrig.api.errors import error_response
from mlrig.api.middleware import body_class
from mlrig.api.openapi import component, errors
from mlrig.api.security import Predictor, Reader
from mlrig.errors import MlrigError


def _close_data_plane() -> None:
    from mlrig.serving.dataplane import close_embedded

    close_embedded()  # models closed, the inference records written


# the app's shutdown stops the embedded data plane (its thread, models and log buffer)
router = APIRouter(prefix="/deployments", tags=["deployments"], on_shutdown=[_close_data_plane])


_Value = float | int | bool | str | None


class PredictRequest(BaseModel):
    """A predict request in mlrig's own format. The route also reads MLflow's scoring
    protocol (``dataframe_split``, ``dataframe_records``, ``instances``) and KServe v2
    (``{"inputs": [{"name", "shape", "datatype", "data"}]}``), told from the body."""

    model_config = ConfigDict(extra="forbid")
    inputs: (
        Annotated[list[Annotated[list[_Value], Field(min_length=1)]], Field(min_length=1)]
        | Annotated[dict[str, list[Any]], Field(min_length=1)]
    ) = Field(
        description='Rows of features (`[[...], ...]`), or columns by name (`{"col": [...]}`).',
    )
    request_id: str | None = Field(
        default=None,
        description="Idempotency key: a retry with the same id and body gets the same answer "
        "(and is logged once). 1-255 visible ASCII characters.",
        pattern=r"^[\x21-\x7e]{1,255}$",
    )
    params: dict[str, Any] | None = Field(default=None, description="Passed to the model.")


class PredictResponse(BaseModel):
    """The answer in mlrig's format (an MLflow or v2 request gets its own protocol's)."""

    predictions: list[Any] = Field(description="One prediction per row.")
    probabilities: list[list[float]] | None = Field(
        default=None, description="Per row, the probability of each class (classifiers)."
    )
    model: str
    version: str
    deployment: str
    request_id: str


class ServedVersion(BaseModel):
    variant: str = Field(description="primary, canary or shadow.")
    model: str
    version: str
    version_id: str
    runtime: str
    percent: float
    load_seconds: float
    in_flight: int
    queue_depth: int
    execution: dict[str, Any] = Field(description="What the runtime reports: providers, threads.")


class DeploymentHealth(BaseModel):
    deployment: str
    id: str
    status: str = Field(
        description="ready, loading, failed, or the deployment's status when "
        "this server does not serve it (inactive...)."
    )
    ready: bool
    deployment_status: str | None
    reason: str | None
    revision: str | None
    replica: int | None
    versions: list[ServedVersion]


@router.post(
    "/{id}/predict",
    summary="Predict with a deployment (mlrig, MLflow or KServe v2 request)",
    response_model=PredictResponse,
    # the body is bounded by [serving] max_body_bytes, as on mlrig serve
    dependencies=[body_class("predict")],
    responses={
        **errors(
            404,
            409,
            413,
            422,
            429,
            503,
            e404="No such deployment is served (or the version asked for).",
            e409="The deployment failed to load its version, or a request_id was reused "
            "with another body.",
            e413="The body is over [serving] max_body_bytes.",
            e422="The input does not fit the version's signature (the message names it).",
            e429="Overloaded: retry after the Retry-After header's seconds.",
            e503="The deployment is still loading its model: retry shortly.",
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": component(PredictRequest)}},
        }
    },
)
async def predict(id: str, request: Request, principal: Predictor) -> Response:
    """Predictions for the rows of the body, from the version the deployment serves (a
    canary by its percent). Needs the predict permission, and a token scoped to this
    deployment (``predict:NAME``) or to all (``predict:*``) when the token has scopes."""
    from mlrig.serving.dataplane import embedded

    dataplane = embedded(request.app.state.platform)
    try:
        state = await dataplane.resolve(id, principal)
        body = await request.body()
        answer = await dataplane.predict(
            state,
            body,
            content_type=request.headers.get("content-type"),
            request_id=getattr(request.state, "request_id", None),
            client_key=_header_bytes(request, "x-mlrig-client-key"),
            header_length=_int_or_none(request.headers.get("inference-header-content-length")),
        )
    except MlrigError as exc:
        retry = getattr(exc, "retry_after", None)
        if retry is None:
            raise
        return error_response(
            exc.http_status,
            exc.code,
            exc.message,
            exc.details,
            headers={"Retry-After": str(max(1, round(retry)))},
        )
    dataplane.after(answer)
    return Response(answer.body, media_type="application/json")


@router.get(
    "/{id}/health",
    summary="Is a deployment loaded and serving here?",
    response_model=DeploymentHealth,
    responses=errors(404, e404="No such deployment."),
)
async def deployment_health(id: str, request: Request, platform: PlatformDep, _: Reader) -> Any:
    """The served versions (runtime, providers, in-flight requests) of a deployment in this
    server's data plane; a deployment it does not serve (stopped, loading elsewhere) answers
    with its status and ``ready: false``."""
    import anyio

    from mlrig.serving.dataplane import embedded

    dataplane = embedded(platform)
    state = dataplane.table.get(id)
    if state is not None:
        return JSONResponse(dataplane.health(state))
    view = await anyio.to_thread.run_sync(platform.deployments.get, id)  # 404 if none
    state = dataplane.table.get(view["id"])
    if state is not None:
        return JSONResponse(dataplane.health(state))
    return JSONResponse(
        {
            "deployment": view["name"],
            "id": view["id"],
            "status": view.get("status") or "inactive",
            "ready": False,
            "deployment_status": view.get("status"),
            "reason": view.get("status_reason"),
            "revision": None,
            "replica": dataplane.replica,
            "versions": [],
        }
    )


def _header_bytes(request: Request, name: str) -> bytes | None:
    value = request.headers.get(name)
    return value.encode("latin-1", "replace") if value is not None else None


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        from mlrig.errors import ValidationError

        msg = f"invalid Inference-Header-Content-Length header: {value[:40]!r}"
        raise ValidationError(msg, details={"header": "Inference-Header-Content-Length"})
    return number
