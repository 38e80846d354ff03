"""The MLflow tracking REST subset the ``mlflow`` client uses, under ``/api/2.0/mlflow``
(and ``/ajax-api/2.0/mlflow``), mapped onto mlrig's runs and run groups, plus MLflow's
artifact proxy routes (``/api/2.0/mlflow-artifacts/artifacts``).

``mlflow.set_tracking_uri("http://mlrig-server:8080")`` (and ``MLFLOW_TRACKING_TOKEN`` set
to an mlrig token) is all an MLflow script needs. An MLflow experiment is a run group, a
run is an experiment of origin ``mlflow`` (:mod:`mlrig.api.mlflow.convert` has the
mapping). Reads need the read permission, everything else the write permission, as on
the rest of the API. Errors are MLflow's ``{"error_code", "message"}``
(:mod:`mlrig.api.mlflow.errors`). The routes are left out of the OpenAPI schema: their
contract is MLflow's REST API, not mlrig's (docs/migrating-from-mlflow.md lists them).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from mlrig import validation as v
from mlrig.api.deps import PlatformDep
from mlrig.api.middleware import body_class
from mlrig.api.mlflow import convert as c
from mlrig.api.mlflow.errors import (
    INVALID_STATE,
    RESOURCE_ALREADY_EXISTS,
    MlflowError,
    MlflowRoute,
)
from mlrig.api.mlflow.messages import (
    DeleteTag,
    ExperimentCreate,
    ExperimentRef,
    ExperimentSearch,
    ExperimentTag,
    ExperimentUpdate,
    LogBatch,
    LogInputs,
    LogMetric,
    LogParam,
    MetricIn,
    RunCreate,
    RunRef,
    RunSearch,
    RunUpdate,
    SetTag,
)
from mlrig.api.mlflow.search import filter_sort_page, parse_filter, parse_order_by
from mlrig.api.security import Reader, Writer
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.experiments.points import check_points

router = APIRouter(tags=["mlflow"], route_class=MlflowRoute)

PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
ARTIFACT_PREFIXES = ("/api/2.0/mlflow-artifacts", "/ajax-api/2.0/mlflow-artifacts")
#: MLflow's limits of one log-batch request
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_SEARCH_RUNS = 50_000
#: bytes of an artifact upload kept in memory before spooling to a file
SPOOL_BYTES = 8 * 1024 * 1024


# --- lookups --------------------------------------------------------------------------------


def _view_type(value: str | int | None) -> int:
    if value is None or value == "":
        return 1
    found = c.VIEW_TYPES.get(str(value).upper())
    if found is None:
        msg = f"view type {value!r} must be ACTIVE_ONLY, DELETED_ONLY or ALL"
        raise c.invalid(msg)
    return found


def _all_groups(platform: Any) -> list[dict[str, Any]]:
    return platform.experiments.list_groups(include_deleted=True)


def _default_group(platform: Any, *, create: bool = False) -> dict[str, Any]:
    """The group ``Default`` (MLflow's experiment ``"0"``, which always exists): made by
    the first write into it; a read before that sees it without making it."""
    try:
        return platform.experiments.get_group(c.DEFAULT_EXPERIMENT_NAME)
    except NotFoundError:
        if create:
            return platform.experiments.ensure_group(c.DEFAULT_EXPERIMENT_NAME)
        return {"id": None, "name": c.DEFAULT_EXPERIMENT_NAME, "tags": {}, "deleted_at": None}


def _group(platform: Any, experiment_id: str | None, *, active: bool = False) -> dict[str, Any]:
    """The group an MLflow experiment id names (deleted ones too unless ``active``)."""
    key = c.group_key(experiment_id)
    if key is None:
        return _default_group(platform, create=active)
    found = next((g for g in _all_groups(platform) if uuid.UUID(g["id"]) == key), None)
    if found is None or found["name"] == c.DEFAULT_EXPERIMENT_NAME:
        msg = f"no experiment with id {experiment_id!r}"
        raise c.not_found(msg)
    if active and found.get("deleted_at"):
        msg = f"experiment {experiment_id!r} is deleted; restore it first"
        raise MlflowError(INVALID_STATE, msg)
    return found


def _experiment_ids(platform: Any) -> dict[str, str]:
    """Group name -> MLflow experiment id."""
    return {g["name"]: c.experiment_id_of(g) for g in _all_groups(platform)}


def _run(platform: Any, ref: RunRef) -> tuple[dict[str, Any], str]:
    """A run's full view and its MLflow experiment id."""
    view = platform.experiments.get(ref.run)
    ids = _experiment_ids(platform) if view.get("group") else {}
    return view, ids.get(view.get("group") or "", c.DEFAULT_EXPERIMENT_ID)


def _points(metrics: list[MetricIn]) -> list[dict[str, Any]]:
    return [
        {
            "name": m.key,
            "value": m.value,
            "step": m.step or 0,
            "recorded_at": c.from_millis(m.timestamp, field="timestamp"),
        }
        for m in metrics
    ]


def _route(
    paths: tuple[str, ...], suffix: str, methods: list[str], name: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function at ``suffix`` under each of ``paths``."""

    def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        for prefix in paths:
            router.add_api_route(
                prefix + suffix,
                endpoint,
                methods=methods,
                name=name,
                include_in_schema=False,
            )
        return endpoint

    return register


def _api(suffix: str, method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return _route(PREFIXES, suffix, [method], "mlflow_" + suffix.strip("/").replace("/", "_"))


# --- experiments ----------------------------------------------------------------------------


@_api("/experiments/create", "POST")
def create_experiment(body: ExperimentCreate, platform: PlatformDep, _: Writer) -> dict[str, Any]:
    taken = body.name == c.DEFAULT_EXPERIMENT_NAME  # experiment 0 always exists
    if taken or any(g["name"] == body.name for g in _all_groups(platform)):
        msg = f"experiment {body.name!r} already exists"
        raise MlflowError(RESOURCE_ALREADY_EXISTS, msg)
    group = _create_group(platform, body.name, c.unpairs(body.tags, field="tags"))
    return {"experiment_id": c.experiment_id_of(group)}


def _create_group(platform: Any, name: str, tags: dict[str, str]) -> dict[str, Any]:
    """A new group ``name``, or ``RESOURCE_ALREADY_EXISTS`` when it exists: the insert
    decides (the unique name), so of two creates at once one wins and the other is told
    (the service's ``ensure_group`` is get-or-create: both would get the one group)."""
    from sqlalchemy.exc import IntegrityError

    from mlrig.db.models import RunGroup
    from mlrig.experiments.groups import check_group_name, group_view

    name = check_group_name(name)
    checked = v.check_tags(tags)
    try:
        with platform.db.session() as session:
            row = RunGroup(id=uuid.uuid4(), name=name, description=None, tags=checked)
            session.add(row)
            session.flush()
            return group_view(row)
    except IntegrityError:
        msg = f"experiment {name!r} already exists"
        raise MlflowError(RESOURCE_ALREADY_EXISTS, msg) from None


@_api("/experiments/get", "GET")
def get_experiment(
    platform: PlatformDep, _: Reader, experiment_id: str = Query(default="")
) -> dict[str, Any]:
    return {"experiment": c.experiment_json(_group(platform, experiment_id))}


@_api("/experiments/get-by-name", "GET")
def get_experiment_by_name(
    platform: PlatformDep, _: Reader, experiment_name: str = Query(default="")
) -> dict[str, Any]:
    if not experiment_name:
        raise c.invalid("experiment_name is required")
    if experiment_name == c.DEFAULT_EXPERIMENT_NAME:
        return {"experiment": c.experiment_json(_default_group(platform))}
    found = next((g for g in _all_groups(platform) if g["name"] == experiment_name), None)
    if found is None:
        msg = f"no experiment named {experiment_name!r}"
        raise c.not_found(msg)
    return {"experiment": c.experiment_json(found)}


@_api("/experiments/search", "POST")
def search_experiments(body: ExperimentSearch, platform: PlatformDep, _: Reader) -> dict[str, Any]:
    view_type = _view_type(body.view_type)
    groups = _all_groups(platform)
    if not any(g["name"] == c.DEFAULT_EXPERIMENT_NAME for g in groups):
        groups.append(_default_group(platform))  # MLflow's experiment 0 always exists
    records = []
    for group in groups:
        deleted = bool(group.get("deleted_at"))
        if (view_type == 1 and deleted) or (view_type == 2 and not deleted):
            continue
        experiment = c.experiment_json(group)
        records.append(
            {
                "json": experiment,
                "attributes": {
                    "name": experiment["name"],
                    "experiment_id": experiment["experiment_id"],
                    "creation_time": experiment.get("creation_time"),
                    "last_update_time": experiment.get("last_update_time"),
                    "lifecycle_stage": experiment["lifecycle_stage"],
                },
                "tags": dict(group.get("tags") or {}),
            }
        )
    chosen, token = filter_sort_page(
        records,
        filter_string=body.filter,
        order_by=body.order_by,
        default_order=[("attributes", "creation_time", True), ("attributes", "name", False)],
        max_results=body.max_results,
        page_token=body.page_token,
        default_limit=1000,
        most=50_000,
    )
    answer: dict[str, Any] = {"experiments": [r["json"] for r in chosen]}
    if token:
        answer["next_page_token"] = token
    return answer


@_api("/experiments/update", "POST")
def update_experiment(body: ExperimentUpdate, platform: PlatformDep, _: Writer) -> dict[str, Any]:
    group = _group(platform, body.experiment_id, active=True)
    if body.new_name:
        if group["name"] == c.DEFAULT_EXPERIMENT_NAME:
            raise c.invalid("the default experiment (id 0) cannot be renamed")
        try:
            platform.experiments.update_group(group["id"], name=body.new_name)
        except ConflictError as exc:
            raise MlflowError(RESOURCE_ALREADY_EXISTS, exc.message) from None
    return {}


@_api("/experiments/delete", "POST")
def delete_experiment(body: ExperimentRef, platform: PlatformDep, _: Writer) -> dict[str, Any]:
    group = _group(platform, body.experiment_id, active=True)
    if group["name"] == c.DEFAULT_EXPERIMENT_NAME:
        raise c.invalid("the default experiment (id 0) cannot be deleted")
    platform.experiments.delete_group(group["id"])
    return {}


@_api("/experiments/restore", "POST")
def restore_experiment(body: ExperimentRef, platform: PlatformDep, _: Writer) -> dict[str, Any]:
    group = _group(platform, body.experiment_id)
    if group.get("deleted_at"):
        platform.experiments.restore_group(group["id"])
    return {}


@_api("/experiments/set-experiment-tag", "POST")
def set_experiment_tag(body: ExperimentTag, platform: PlatformDep, _: Writer) -> dict[str, Any]:
    group = _group(platform, body.experiment_id, active=True)
    platform.experiments.update_group(group["id"], tags={body.key: body.value or ""})
    return {}


# --- runs -----------------------------------------------------------------------------------


@_api("/runs/create", "POST")
def create_run(body: RunCreate, platform: PlatformDep, actor: Writer) -> dict[str, Any]:
    group = _group(platform, body.experiment_id or c.DEFAULT_EXPERIMENT_ID, active=True)
    tags = c.unpairs(body.tags, field="tags")
    name = body.run_name or tags.get(c.RUN_NAME_TAG)
    if name:
        tags[c.RUN_NAME_TAG] = name
    fields = {
        "actor": actor,
        "group": group["name"],
        "parent": _parent(platform, tags.get(c.PARENT_TAG)),
        "tags": tags,
        "origin": "mlflow",
        "started_at": c.from_millis(body.start_time, field="start_time"),
    }
    try:
        view = platform.experiments.start_run(name=name, **fields)
    except (ConflictError, ValidationError):
        if name is None:
            raise
        # MLflow's run names need not be unique nor name-safe; the tag keeps it
        view = platform.experiments.start_run(name=None, **fields)
    view = platform.experiments.get(view["id"])
    return {"run": c.run_json(view, c.experiment_id_of(group))}


def _parent(platform: Any, run_id: str | None) -> uuid.UUID | None:
    """The run a nested MLflow run names (tag ``mlflow.parentRunId``), if mlrig has it."""
    if not run_id:
        return None
    try:
        key = uuid.UUID(run_id)
    except ValueError:
        return None
    try:
        platform.experiments.resolve(key)
    except NotFoundError:
        return None
    return key


@_api("/runs/get", "GET")
def get_run(
    platform: PlatformDep,
    _: Reader,
    run_id: str | None = Query(default=None),
    run_uuid: str | None = Query(default=None),
) -> dict[str, Any]:
    view, experiment_id = _run(platform, RunRef(run_id=run_id, run_uuid=run_uuid))
    return {"run": c.run_json(view, experiment_id)}


@_api("/runs/update", "POST")
def update_run(body: RunUpdate, platform: PlatformDep, actor: Writer) -> dict[str, Any]:
    service = platform.experiments
    key = body.run
    status = (body.status or "").upper() or None
    if status is not None and status not in c.RUN_STATUSES:
        msg = f"status {body.status!r} must be one of {', '.join(c.RUN_STATUSES)}"
        raise c.invalid(msg)
    if body.run_name:
        service.set_tags(key, {c.RUN_NAME_TAG: body.run_name}, actor=actor)
    current = service.get(key)
    try:
        if status in c.END_STATUS:
            ended = c.from_millis(body.end_time, field="end_time")
            service.end_run(key, status=c.END_STATUS[status], ended_at=ended, actor=actor)
        elif status == "RUNNING" and current["status"] != "running":
            service.resume_run(key, actor=actor)
    except ConflictError as exc:
        raise MlflowError(INVALID_STATE, exc.message) from None
    view, experiment_id = _run(platform, body)
    return {"run_info": c.run_info_json(view, experiment_id)}


@_api("/runs/delete", "POST")
def delete_run(body: RunRef, platform: PlatformDep, actor: Writer) -> dict[str, Any]:
    platform.experiments.set_tags(body.run, {c.DELETED_TAG: "true"}, actor=actor)
    return {}


@_api("/runs/restore", "POST")
def restore_run(body: RunRef, platform: PlatformDep, _: Writer) -> dict[str, Any]:
    view = platform.experiments.get(body.run)
    if c.is_deleted(view):
        platform.experiments.delete_tag(body.run, c.DELETED_TAG)
    return {}


@_api("/runs/log-metric", "POST")
def log_metric(body: LogMetric, platform: PlatformDep, _: Writer) -> dict[str, Any]:
    platform.experiments.log_metrics(body.run, _points([body]))
    return {}


@_api("/runs/log-parameter", "POST")
def log_parameter(body: LogParam, platform: PlatformDep, actor: Writer) -> dict[str, Any]:
    platform.experiments.log_params(body.run, {body.key: body.value or ""}, actor=actor)
    return {}


@_api("/runs/set-tag", "POST")
def set_tag(body: SetTag, platform: PlatformDep, actor: Writer) -> dict[str, Any]:
    platform.experiments.set_tags(body.run, {body.key: body.value or ""}, actor=actor)
    return {}


@_api("/runs/delete-tag", "POST")
def delete_tag(body: DeleteTag, platform: PlatformDep, _: Writer) -> dict[str, Any]:
    platform.experiments.delete_tag(body.run, body.key)
    return {}


@_route(PREFIXES, "/runs/log-batch", ["POST"], "mlflow_runs_log_batch")
def log_batch(body: LogBatch, platform: PlatformDep, actor: Writer) -> dict[str, Any]:
    for what, items, most in (
        ("metrics", body.metrics, MAX_BATCH_METRICS),
        ("params", body.params, MAX_BATCH_PARAMS),
        ("tags", body.tags, MAX_BATCH_TAGS),
    ):
        if len(items) > most:
            msg = f"a batch takes at most {most} {what}, got {len(items)}"
            raise c.invalid(msg)
    service = platform.experiments
    key = body.run
    # what can be checked alone is checked before anything is written: a bad point or
    # tag refuses the whole batch (a param of another value still refuses the rest)
    points = _points(body.metrics)
    check_points(points)
    tags = v.check_tags(c.unpairs(body.tags, field="tags"))
    if body.params:
        params = {p.key: p.value or "" for p in body.params}
        service.log_params(key, params, actor=actor)
    if tags:
        service.set_tags(key, tags, actor=actor)
    if points:
        service.log_metrics(key, points)
    return {}


@_api("/runs/log-inputs", "POST")
def log_inputs(body: LogInputs, platform: PlatformDep, _: Writer) -> dict[str, Any]:
    key = body.run
    for item in body.datasets:
        tags = c.unpairs(item.tags, field="tags")
        platform.experiments.log_dataset(key, c.dataset_record(item.dataset, tags))
    return {}


@_api("/metrics/get-history", "GET")
def get_metric_history(
    platform: PlatformDep,
    _: Reader,
    run_id: str | None = Query(default=None),
    run_uuid: str | None = Query(default=None),
    metric_key: str = Query(default=""),
    max_results: int | None = Query(default=None),
    page_token: str | None = Query(default=None),
) -> dict[str, Any]:
    if not metric_key:
        raise c.invalid("metric_key is required")
    key = RunRef(run_id=run_id, run_uuid=run_uuid).run
    history = platform.experiments.metrics(key, name=metric_key)["metrics"].get(metric_key)
    points = []
    if history:
        times = history.get("times") or [None] * len(history["values"])
        for step, value, at in zip(history["steps"], history["values"], times, strict=True):
            points.append(
                {
                    "key": metric_key,
                    "value": c.wire_value(value),
                    "timestamp": c.millis(at),
                    "step": step or 0,
                }
            )
    return {"metrics": points}


@_api("/runs/search", "POST")
def search_runs(body: RunSearch, platform: PlatformDep, _: Reader) -> dict[str, Any]:
    view_type = _view_type(body.run_view_type)
    clauses = parse_filter(body.filter)
    order = parse_order_by(body.order_by)
    deep = any(cl.kind in ("metrics", "params") for cl in clauses) or any(
        kind in ("metrics", "params") for kind, _, _ in order
    )
    service = platform.experiments
    records = []
    for experiment_id in body.experiment_ids or [c.DEFAULT_EXPERIMENT_ID]:
        group = _group(platform, experiment_id)
        offset = 0
        while len(records) < MAX_SEARCH_RUNS:
            views = service.list(group=group["name"], limit=1000, offset=offset)
            for view in views:
                if deep:
                    view = service.get(view["id"])
                records.append(c.run_record(view, c.experiment_id_of(group)))
            if len(views) < 1000:
                break
            offset += 1000

    def keep(record: dict[str, Any]) -> bool:
        deleted = record["attributes"]["lifecycle_stage"] == "deleted"
        return view_type == 3 or (view_type == 2) == deleted

    chosen, token = filter_sort_page(
        records,
        filter_string=body.filter,
        order_by=body.order_by,
        default_order=[("attributes", "start_time", True), ("attributes", "run_id", False)],
        max_results=body.max_results,
        page_token=body.page_token,
        default_limit=1000,
        most=50_000,
        keep=keep,
    )
    runs = []
    for record in chosen:
        view = record["view"] if deep else service.get(record["view"]["id"])
        runs.append(c.run_json(view, record["experiment_id"]))
    answer: dict[str, Any] = {"runs": runs}
    if token:
        answer["next_page_token"] = token
    return answer


@_api("/logged-models/search", "POST")
def search_logged_models(platform: PlatformDep, _: Reader) -> dict[str, Any]:
    """No MLflow logged models live here (register models with mlrig's registry): the
    client asks while it lists a run's artifacts, and gets none."""
    return {"models": []}


# --- artifacts (MLflow's proxy: mlflow-artifacts:/<experiment id>/<run id>/artifacts/...) --


def _artifact_target(path: str) -> tuple[uuid.UUID, str]:
    """The run and the path within its files of ``<experiment id>/<run id>/artifacts/<path>``."""
    parts = path.strip("/").split("/", 3)
    if len(parts) < 3 or parts[2] != "artifacts":
        msg = f"artifact path {path!r} must be <experiment id>/<run id>/artifacts/<path>"
        raise c.invalid(msg)
    return c.run_key(parts[1]), parts[3] if len(parts) == 4 else ""


@_route(ARTIFACT_PREFIXES, "/artifacts", ["GET"], "mlflow_list_artifacts")
def list_artifacts(
    platform: PlatformDep, _: Reader, path: str | None = Query(default=None)
) -> dict[str, Any]:
    parts = (path or "").strip("/").split("/")
    if len(parts) < 3:
        # above a run's files: the run's folder ``artifacts``, else nothing to show
        files = [{"path": "artifacts", "is_dir": True}] if len(parts) == 2 else []
        return {"files": files}
    key, inner = _artifact_target(path or "")
    prefix = inner.rstrip("/") + "/" if inner else None
    entries: dict[str, dict[str, Any]] = {}
    records = platform.experiments.list_run_artifacts(key, prefix=prefix)
    if inner and not records:  # a file's own path lists that file, as MLflow's servers do
        records = [r for r in platform.experiments.list_run_artifacts(key) if r["path"] == inner]
        return {
            "files": [
                {"path": inner.rsplit("/", 1)[-1], "is_dir": False, "file_size": r["size_bytes"]}
                for r in records
            ]
        }
    for record in records:
        rest = record["path"][len(prefix or "") :]
        head, slash, _ = rest.partition("/")
        if slash:
            entries.setdefault(head, {"path": head, "is_dir": True})
        else:
            entries[head] = {"path": head, "is_dir": False, "file_size": record["size_bytes"]}
    return {"files": [entries[name] for name in sorted(entries)]}


@_route(ARTIFACT_PREFIXES, "/artifacts/{path:path}", ["GET"], "mlflow_download_artifact")
def download_artifact(path: str, platform: PlatformDep, _: Reader) -> StreamingResponse:
    key, inner = _artifact_target(path)
    if not inner:
        raise c.invalid("name a file: <experiment id>/<run id>/artifacts/<path>")
    pieces, size = platform.experiments.open_run_artifact(key, inner)

    def chunks() -> Iterator[bytes]:
        yield from pieces

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size)},
    )


@router.put(
    "/api/2.0/mlflow-artifacts/artifacts/{path:path}",
    name="mlflow_upload_artifact",
    include_in_schema=False,
    dependencies=[body_class("upload")],  # bounded by [api] max_upload_bytes
)
@router.put(
    "/ajax-api/2.0/mlflow-artifacts/artifacts/{path:path}",
    name="mlflow_upload_artifact",
    include_in_schema=False,
    dependencies=[body_class("upload")],
)
async def upload_artifact(
    path: str, request: Request, platform: PlatformDep, _: Writer
) -> dict[str, Any]:
    key, inner = _artifact_target(path)
    if not inner:
        raise c.invalid("name a file: <experiment id>/<run id>/artifacts/<path>")
    await run_in_threadpool(platform.experiments.get, key)  # 404 before reading the body
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    try:
        async for chunk in request.stream():
            if chunk:
                await anyio.to_thread.run_sync(spool.write, chunk)
        spool.seek(0)
        await run_in_threadpool(platform.experiments.put_run_artifact, key, inner, spool)
    finally:
        spool.close()
    return {}
