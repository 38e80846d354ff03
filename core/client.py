"""``mlrig.Client``: the REST API of an mlrig server from Python.

For notebooks, scripts and trainers that run outside the job engine: create and follow
experiments, log metrics in batches, read histories, find models and versions, register
a version from files and download its artifacts::

    import mlrig

    with mlrig.Client("http://mlrig.internal:8080", token=os.environ["MLRIG_TOKEN"]) as ml:
        ml.create_experiment("notebook-run", trainer="sklearn")
        ml.log_metrics("notebook-run", [{"name": "loss", "value": 0.4, "step": 1}])
        history = ml.metrics("notebook-run", name="loss", fields=["steps", "values"])

The URL and token default to ``MLRIG_URL`` and ``MLRIG_TOKEN``. Every error the server
reports comes back as the matching :class:`~mlrig.errors.MlrigError` subclass (404 ->
:class:`~mlrig.errors.NotFoundError`, 422 -> :class:`~mlrig.errors.ValidationError`...)
with the server's message and details. httpx and orjson are imported on first use.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlrig import errors
from mlrig.nonfinite import from_json, to_json

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_URL", "Client"]

DEFAULT_URL = "http://127.0.0.1:8080"
#: points per ingest request when log_metrics splits a long list
DEFAULT_BATCH = 10_000


@functools.cache
def _error_classes() -> dict[str, type[errors.MlrigError]]:
    """The public MlrigError classes by their ``code``, so a server error is re-raised as
    itself; those of :mod:`mlrig.errors` win a shared code, private ones (a module's own
    ``_NoRoute`` with another constructor) never count."""
    found: dict[str, type[errors.MlrigError]] = {}
    pending: list[type[errors.MlrigError]] = [errors.MlrigError]
    seen: list[type[errors.MlrigError]] = []
    while pending:
        cls = pending.pop()
        seen.append(cls)
        pending.extend(cls.__subclasses__())
    for cls in sorted(seen, key=lambda c: c.__module__ != errors.__name__):
        if not cls.__name__.startswith("_"):
            found.setdefault(cls.code, cls)
    return found


class Client:
    """A connection to one mlrig server (``/api/ml``), usable as a context manager.

    :param url: the server's base URL (default ``MLRIG_URL``, else ``http://127.0.0.1:8080``).
    :param token: an API token (default ``MLRIG_TOKEN``); ``mlrig tokens create`` makes one.
    :param timeout: seconds per request.
    """

    def __init__(
        self, url: str | None = None, *, token: str | None = None, timeout: float = 60.0
    ) -> None:
        import httpx

        self.url = (url or os.environ.get("MLRIG_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("MLRIG_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=f"{self.url}/api/ml", headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- plumbing -------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call any route under ``/api/ml`` (``path`` like ``/models``; ``kwargs`` go to
        httpx): the decoded JSON body, or the server's error raised as its
        :class:`~mlrig.errors.MlrigError` subclass. For routes without a method here."""
        return self._request(method, path, **kwargs)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            msg = f"cannot reach the mlrig server at {self.url}: {exc}; is `mlrig server` running?"
            raise errors.MlrigError(msg, details={"url": self.url}) from None
        _raise_for_error(response)
        return response.json() if response.content else None

    def _items(self, path: str, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The ``items`` of one page of a list route (``{"items", "next_cursor"}``)."""
        return self._request("GET", path, params=_params(filters))["items"]

    # --- server -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The server's health report (database, storage, plugins)."""
        return self._request("GET", "/health")

    def me(self) -> dict[str, Any]:
        """The user the token belongs to."""
        return self._request("GET", "/users/me")

    # --- experiments ------------------------------------------------------------------------

    def create_experiment(self, name: str, *, trainer: str, **fields: Any) -> dict[str, Any]:
        """Create an experiment (``hyperparameters``, ``dataset``, ``resources``,
        ``priority``, ``start``... as in ``POST /experiments``)."""
        return self._request(
            "POST", "/experiments", json={"name": name, "trainer": trainer, **fields}
        )

    def get_experiment(self, ref: str) -> dict[str, Any]:
        """An experiment by name or id, with its latest metric values (NaN and infinities
        as floats, as the service gives them)."""
        view = self._request("GET", f"/experiments/{_segment(ref)}")
        for latest in (view.get("metrics") or {}).values():
            if isinstance(latest, dict) and type(latest.get("value")) is str:
                latest["value"] = from_json(latest["value"])
        return view

    def list_experiments(self, **filters: Any) -> list[dict[str, Any]]:
        """One page of experiments, newest first (``status``, ``name_prefix``, ``trainer``,
        ``limit``, ``offset`` or ``cursor``)."""
        return self._items("/experiments", filters)

    def start_experiment(self, ref: str) -> dict[str, Any]:
        """Queue an experiment for the workers."""
        return self._request("POST", f"/experiments/{_segment(ref)}/start")

    def stop_experiment(self, ref: str) -> dict[str, Any]:
        """Cancel a queued or running experiment (its process tree is ended)."""
        return self._request("POST", f"/experiments/{_segment(ref)}/stop")

    def log_metrics(
        self,
        ref: str,
        points: Iterable[Mapping[str, Any] | Iterable[Any]],
        *,
        batch_size: int = DEFAULT_BATCH,
    ) -> int:
        """Send metric points (dicts ``{name, value, step?, epoch?, kind?, recorded_at?}``
        or ``[name, value, step, epoch, kind]``), ``batch_size`` per request; returns how
        many were written. Each request is all or nothing: a bad point fails its batch
        with a :class:`~mlrig.errors.ValidationError` naming it; earlier batches stay."""
        import orjson

        if batch_size < 1:
            msg = f"batch_size must be at least 1, not {batch_size}"
            raise errors.ValidationError(msg)
        written = 0
        for batch in _batches(points, batch_size):
            try:
                body = orjson.dumps({"points": batch}, option=orjson.OPT_SERIALIZE_NUMPY)
                if b"null" in body:  # orjson writes NaN and infinities as null
                    wired = [_wire_point(point) for point in batch]
                    body = orjson.dumps({"points": wired}, option=orjson.OPT_SERIALIZE_NUMPY)
            except TypeError as exc:
                msg = f"a metric point is not JSON-serialisable: {exc}"
                raise errors.ValidationError(msg) from None
            result = self._request(
                "POST",
                f"/experiments/{_segment(ref)}/metrics",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            written += result["written"]
        return written

    def log_metric(
        self,
        ref: str,
        name: str,
        value: float,
        *,
        step: int | None = None,
        epoch: int | None = None,
        kind: str | None = None,
    ) -> None:
        """One point (prefer :meth:`log_metrics` with a batch: one request per point is slow)."""
        point = {"name": name, "value": value, "step": step, "epoch": epoch, "kind": kind}
        self.log_metrics(ref, [{k: v for k, v in point.items() if v is not None}])

    def metrics(
        self,
        ref: str,
        *,
        name: str | None = None,
        kind: str | None = None,
        after_step: int | None = None,
        limit: int | None = None,
        fields: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Metric history, columnar per metric (``{"count", "metrics": {name: {"steps",
        "values", ...}}}``); ``fields`` picks the columns (``["steps", "values"]`` for a plot)."""
        params = _params(
            {
                "name": name,
                "kind": kind,
                "after_step": after_step,
                "limit": limit,
                "fields": ",".join(fields) if fields is not None else None,
            }
        )
        history = self._request("GET", f"/experiments/{_segment(ref)}/metrics", params=params)
        for series in history.get("metrics", {}).values():
            values = series.get("values")
            if values and str in map(type, values):  # NaN and infinities come as text
                series["values"] = [from_json(x) for x in values]
        return history

    # --- models -----------------------------------------------------------------------------

    def list_models(self, **filters: Any) -> list[dict[str, Any]]:
        """One page of registered models, by name (``name_prefix``, ``q``, ``tag``,
        ``limit``, ``offset`` or ``cursor``)."""
        return self._items("/models", filters)

    def get_model(self, ref: str) -> dict[str, Any]:
        """A registered model by name or id."""
        return self._request("GET", f"/models/{_segment(ref)}")

    def list_versions(self, model: str, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every version of ``model`` matching the filters (``framework``, ``stage``,
        ``tag``, ``metric="accuracy>0.9"``, ``sort``...), following the pages."""
        params = _params(filters)
        while True:
            page = self._request("GET", f"/models/{_segment(model)}/versions", params=params)
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            params = {**params, "cursor": page["next_cursor"]}

    def get_version(self, model: str, version: str) -> dict[str, Any]:
        """A version (number, name, alias or id) with its lineage."""
        return self._request("GET", f"/models/{_segment(model)}/versions/{_segment(version)}")

    def register_version(
        self, model: str, files: Mapping[str, str | os.PathLike[str] | bytes], **metadata: Any
    ) -> dict[str, Any]:
        """Create a version of ``model`` from files (``{path in the version: local file or
        bytes}``) and metadata (``version``, ``framework``, ``params``, ``metrics``,
        ``tags``, ``datasets``...); the model must exist (``POST /models``)."""
        import orjson

        with contextlib.ExitStack() as opened:
            uploads = []
            for path, source in files.items():
                content: IO[bytes] | bytes = (
                    source
                    if isinstance(source, bytes)
                    else opened.enter_context(Path(source).open("rb"))
                )
                uploads.append(("files", (path, content, "application/octet-stream")))
            return self._request(
                "POST",
                f"/models/{_segment(model)}/versions",
                files=uploads,
                data={"metadata": orjson.dumps(metadata).decode()},
            )

    def create_model(self, name: str, **fields: Any) -> dict[str, Any]:
        """Register a model name (``description``, ``tags``)."""
        return self._request("POST", "/models", json={"name": name, **fields})

    def delete_model(self, model: str, *, force: bool = False) -> dict[str, Any]:
        """Soft-delete a model and its versions (``delete`` permission); ``force`` (admin)
        deletes even versions in production, aliased or deployed (else 409)."""
        return self._request("DELETE", f"/models/{_segment(model)}", params={"force": force})

    def delete_version(self, model: str, version: str, *, force: bool = False) -> dict[str, Any]:
        """Soft-delete one version; ``force`` as for :meth:`delete_model`."""
        return self._request(
            "DELETE",
            f"/models/{_segment(model)}/versions/{_segment(version)}",
            params={"force": force},
        )

    def restore_model(self, model: str) -> dict[str, Any]:
        """Bring back a deleted model with the versions deleted along with it."""
        return self._request("POST", f"/models/{_segment(model)}/restore")

    def restore_version(self, model: str, version: str) -> dict[str, Any]:
        """Bring back a deleted version of a live model."""
        return self._request(
            "POST", f"/models/{_segment(model)}/versions/{_segment(version)}/restore"
        )

    # --- lifecycle ----------------------------------------------------------------------

    def set_alias(self, model: str, alias: str, version: str) -> dict[str, Any]:
        """Point ``alias`` (``champion``...) at ``version``."""
        return self._request(
            "PUT", f"/models/{_segment(model)}/aliases/{_segment(alias)}", json={"version": version}
        )

    def set_stage(
        self, model: str, version: str, stage: str, *, comment: str | None = None
    ) -> dict[str, Any]:
        """Move a version to a stage; ``production`` opens an approval request instead
        (when the policy asks for one), which the result describes."""
        body = {"stage": stage, "comment": comment}
        return self._request(
            "POST", f"/models/{_segment(model)}/versions/{_segment(version)}/stage", json=body
        )

    def list_approvals(self, **filters: Any) -> list[dict[str, Any]]:
        """Approval requests (``status``, ``model``)."""
        return self._items("/approvals", filters)

    def approve(self, request_id: str, *, comment: str | None = None) -> dict[str, Any]:
        """Approve a request (as another user than the requester, with the deployer role)."""
        return self._request(
            "POST", f"/approvals/{_segment(request_id)}/approve", json={"comment": comment}
        )

    def reject(self, request_id: str, *, comment: str | None = None) -> dict[str, Any]:
        """Reject a request."""
        return self._request(
            "POST", f"/approvals/{_segment(request_id)}/reject", json={"comment": comment}
        )

    def download_artifact(
        self, model: str, version: str, path: str, destination: str | os.PathLike[str]
    ) -> Path:
        """Stream one artifact of a version to ``destination`` (a file path); returns it.
        The server verifies the bytes as it sends them; a partial file is removed."""
        import httpx

        target = Path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        url = f"/models/{_segment(model)}/versions/{_segment(version)}/artifacts/{_path(path)}"
        try:
            with self._http.stream("GET", url) as response:
                if response.is_error:
                    response.read()
                    _raise_for_error(response)
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes(1024 * 1024):
                        out.write(chunk)
            partial.replace(target)
        except httpx.HTTPError as exc:
            msg = f"download of {path!r} from {self.url} broke off: {exc}"
            raise errors.StorageError(msg) from None
        finally:
            partial.unlink(missing_ok=True)
        return target

    # --- deployments --------------------------------------------------------------------

    def create_deployment(
        self,
        name: str,
        *,
        model: str,
        version: str | None = None,
        alias: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Deploy ``version`` of ``model`` (or whatever ``alias`` points at, followed when
        it moves) as ``name``; ``fields``: ``runtime``, ``environment``, ``replicas``
        (``{"min", "max"}``), ``batching`` (``{"max_batch_size", "max_latency_ms"}``),
        ``resources``, ``traffic`` (``[{"version", "percent"}]``), ``shadow``,
        ``allow_nan``. Status starts ``pending``."""
        body = {"name": name, "model": model, "version": version, "alias": alias, **fields}
        return self._request("POST", "/deployments", json=_params(body))

    def list_deployments(self, **filters: Any) -> list[dict[str, Any]]:
        """One page of deployments (``status``, ``environment``, ``model``, ``limit``,
        ``offset`` or ``cursor``)."""
        return self._items("/deployments", filters)

    def get_deployment(self, ref: str) -> dict[str, Any]:
        """A deployment by id or name."""
        return self._request("GET", f"/deployments/{_segment(ref)}")

    def update_deployment(self, ref: str, **changes: Any) -> dict[str, Any]:
        """Change a deployment (the fields of :meth:`create_deployment`, and ``status``:
        ``inactive`` stops it, ``active`` starts it); ``shadow=None`` removes the shadow,
        ``traffic=[]`` the canaries."""
        return self._request("PUT", f"/deployments/{_segment(ref)}", json=changes)

    def delete_deployment(self, ref: str) -> dict[str, Any]:
        """Delete a deployment (it stops; its name can be used again)."""
        return self._request("DELETE", f"/deployments/{_segment(ref)}")

    def predict(self, ref: str, inputs: Any, **fields: Any) -> dict[str, Any]:
        """Predictions of deployment ``ref`` for ``inputs`` (rows ``[[...], ...]`` or
        columns ``{"col": [...]}``); ``fields`` go into the body too (``request_id``).
        Returns ``{"predictions", "probabilities"?, "model", "version", "request_id"...}``."""
        body = {"inputs": _plain(inputs), **fields}
        return self._request("POST", f"/deployments/{_segment(ref)}/predict", json=body)

    def deployment_health(self, ref: str) -> dict[str, Any]:
        """Whether deployment ``ref`` is loaded and serving, per version."""
        return self._request("GET", f"/deployments/{_segment(ref)}/health")

    # --- sweeps -----------------------------------------------------------------------------

    def create_sweep(
        self,
        name: str,
        *,
        trainer: str,
        space: Mapping[str, Any],
        objective: str,
        **fields: Any,
    ) -> dict[str, Any]:
        """Create a hyperparameter sweep and queue its first trials: ``space`` as in a space
        file (docs/sweeps.md), ``objective`` the metric to optimise; ``fields`` as in
        ``POST /sweeps``: ``direction`` (``minimize``/``maximize``), ``objective_kind``,
        ``strategy``, ``strategy_options``, ``max_trials``, ``parallelism``,
        ``max_seconds``, ``pruner``, ``hyperparameters`` (the base of every trial),
        ``dataset``, ``resources``, ``seed``, ``model_name``, ``description``;
        ``dry_run=True`` validates and returns the sweep it would be, creating nothing
        (``planned_trials`` is a grid's count)."""
        from mlrig.remote.sweeps import floats

        body = {"name": name, "trainer": trainer, "space": dict(space), "objective": objective}
        body.update({k: v for k, v in fields.items() if v is not None})
        return floats(self._request("POST", "/sweeps", json=body))

    def list_sweeps(self, **filters: Any) -> list[dict[str, Any]]:
        """One page of sweeps, newest first (``status``, ``limit``, ``offset`` or ``cursor``)."""
        from mlrig.remote.sweeps import floats

        return floats(self._items("/sweeps", filters))

    def get_sweep(self, ref: str) -> dict[str, Any]:
        """A sweep by id, id prefix or name: its settings, trial counts by state and best
        trial."""
        from mlrig.remote.sweeps import floats

        return floats(self._request("GET", f"/sweeps/{_segment(ref)}"))

    def sweep_trials(self, ref: str, **filters: Any) -> list[dict[str, Any]]:
        """A sweep's trials by number (``state``, ``limit``, ``offset``): params, state,
        objective value, rung if pruned, duration, the trial's experiment."""
        from mlrig.remote.sweeps import floats

        return floats(self._items(f"/sweeps/{_segment(ref)}/trials", filters))

    def sweep_results(self, ref: str) -> dict[str, Any]:
        """A sweep's results: ``best``, every trial, the ``best_so_far`` curve (in
        completion order) and parameter ``importances`` (with the ``method`` used)."""
        from mlrig.remote.sweeps import floats

        return floats(self._request("GET", f"/sweeps/{_segment(ref)}/results"))

    def stop_sweep(self, ref: str) -> dict[str, Any]:
        """End a sweep now: its queued and running trials are cancelled
        (:class:`~mlrig.errors.ConflictError` if it has ended already)."""
        from mlrig.remote.sweeps import floats

        return floats(self._request("POST", f"/sweeps/{_segment(ref)}/stop"))

    # --- feature store ----------------------------------------------------------------------

    def create_entity(self, name: str, join_keys: list[str], **fields: Any) -> dict[str, Any]:
        """Create an entity keyed by ``join_keys`` (``description`` optional)."""
        body = {"name": name, "join_keys": list(join_keys), **_params(fields)}
        return self._request("POST", "/entities", json=body)

    def list_entities(self, **filters: Any) -> list[dict[str, Any]]:
        """One page of entities, by name (``limit``, ``offset`` or ``cursor``)."""
        return self._items("/entities", filters)

    def get_entity(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/entities/{_segment(name)}")

    def create_feature_view(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a feature view with its features (docs/features.md has the body)."""
        return self._request("POST", "/feature-views", json=dict(body))

    def list_feature_views(self, **filters: Any) -> list[dict[str, Any]]:
        """One page of views (``kind``, ``entity``, ``tag``, ``limit``, ``offset``)."""
        return self._items("/feature-views", filters)

    def get_feature_view(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/feature-views/{_segment(name)}")

    def update_feature_view(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Replace a view's definition (features left out are removed)."""
        return self._request("PUT", f"/feature-views/{_segment(name)}", json=dict(body))

    def create_feature(self, view: str, name: str, type: str, **fields: Any) -> dict[str, Any]:
        """Add feature ``name`` of ``type`` to ``view`` (``expression``, ``tags``...)."""
        body = {"view": view, "name": name, "type": type, **_params(fields)}
        return self._request("POST", "/features", json=body)

    def list_features(self, **filters: Any) -> list[dict[str, Any]]:
        """One page of features (``type``, ``source``, ``tag``, ``entity``, ``view``,
        ``limit``, ``offset``)."""
        return self._items("/features", filters)

    def get_feature(self, ref: str) -> dict[str, Any]:
        """A feature by ``name`` or ``view:name``."""
        return self._request("GET", f"/features/{_segment(ref)}")

    def update_feature(self, ref: str, **fields: Any) -> dict[str, Any]:
        """Change ``type``, ``expression``, ``description`` or ``tags`` (a new version)."""
        return self._request("PUT", f"/features/{_segment(ref)}", json=_params(fields))

    def feature_history(self, ref: str) -> dict[str, Any]:
        """Every definition the feature has had, oldest first, with who and when."""
        return self._request("GET", f"/features/{_segment(ref)}/history")

    def get_online_features(
        self,
        features: list[str],
        entity_rows: list[Mapping[str, Any]],
        *,
        request_data: list[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The latest values: ``{"features", "entities", "results": [{name: value}],
        "missing": [[names]]}``, one result per entity row (unknown keys: null, missing)."""
        body: dict[str, Any] = {
            "features": list(features),
            "entities": [dict(r) for r in entity_rows],
        }
        if request_data is not None:
            body["request_data"] = [dict(r) for r in request_data]
        return self._request("POST", "/features/batch", json=body)

    def get_historical_features(
        self, entity_df: Any, features: list[str], *, timestamp_column: str = "event_timestamp"
    ) -> Any:
        """A point-in-time-correct training set as a pandas DataFrame: ``entity_df``'s
        rows (join keys and ``timestamp_column``) in order, one column per feature. Sent
        in chunks of 10,000 rows."""
        from mlrig.remote.features import historical_over_rest

        return historical_over_rest(
            self._request, entity_df, features, timestamp_column=timestamp_column
        )

    def push_features(self, view: str, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
        """Append rows to a push-source view (all refused on a schema mismatch)."""
        from mlrig.remote.features import _plain as plain

        body = {"rows": [{k: plain(v) for k, v in r.items()} for r in rows]}
        return self._request("POST", f"/feature-views/{_segment(view)}/push", json=body)

    def materialize(self, view: str, *, start: Any = None, end: Any = None) -> dict[str, Any]:
        """Queue a materialisation of ``view`` (``[start, end)``; default from the
        watermark to now): the experiment (follow it with :meth:`get_experiment`)."""
        body = _params({"start": _jsonable(start), "end": _jsonable(end)})
        return self._request("POST", f"/feature-views/{_segment(view)}/materialize", json=body)

    def feature_statistics(self, view: str) -> dict[str, Any]:
        """The latest statistics of each feature of ``view``."""
        return self._request("GET", f"/feature-views/{_segment(view)}/statistics")

    # --- tracked runs -----------------------------------------------------------------------

    def start_run(self, **fields: Any) -> dict[str, Any]:
        """Start a tracked run (``name``, ``group``, ``parent``, ``params``, ``tags``,
        ``description``, ``reproducibility``, ``origin``, ``started_at``: as
        ``ExperimentService.start_run``); it is ``running`` until :meth:`end_run`."""
        body = {k: _jsonable(v) for k, v in fields.items() if v is not None}
        return self._request("POST", "/runs", json=body)

    def log_params(self, ref: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Add params to a run (a key logged again must keep its value: 409 otherwise)."""
        return self._request("POST", f"{_run(ref)}/params", json={"params": dict(params)})

    def set_tags(self, ref: str, tags: Mapping[str, str]) -> dict[str, Any]:
        """Set tags of a run (merged over its tags)."""
        return self._request("POST", f"{_run(ref)}/tags", json={"tags": dict(tags)})

    def delete_tag(self, ref: str, key: str) -> dict[str, Any]:
        """Remove one tag of a run."""
        return self._request("DELETE", f"{_run(ref)}/tags/{_path(key)}")  # keys may hold '/'

    def heartbeat(self, ref: str) -> dict[str, Any]:
        """Tell the server the run's script is alive (:class:`~mlrig.errors.ConflictError`
        once the run is no longer running)."""
        return self._request("POST", f"{_run(ref)}/heartbeat")

    def end_run(
        self,
        ref: str,
        *,
        status: str = "completed",
        error: str | None = None,
        ended_at: Any = None,
    ) -> dict[str, Any]:
        """End a run: ``completed``, ``failed`` (with ``error``) or ``killed``."""
        body = _params({"status": status, "error": error, "ended_at": _jsonable(ended_at)})
        return self._request("POST", f"{_run(ref)}/end", json=body)

    def resume_run(self, ref: str) -> dict[str, Any]:
        """Put an ended run back to running."""
        return self._request("POST", f"{_run(ref)}/resume")

    def log_dataset(self, ref: str, dataset: Mapping[str, Any]) -> dict[str, Any]:
        """Record a dataset the run used: ``{"name", "source", "digest", "schema", "rows",
        "context"}``."""
        return self._request("POST", f"{_run(ref)}/datasets", json=dict(dataset))

    def upload_run_artifact(self, ref: str, path: str, data: bytes | IO[bytes]) -> dict[str, Any]:
        """Store ``data`` (bytes or a binary file) as the run's file ``path`` (``a/b.txt``)."""
        return self._request(
            "PUT",
            f"{_run(ref)}/artifacts/{_path(path)}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    def list_run_artifacts(self, ref: str, prefix: str | None = None) -> list[dict[str, Any]]:
        """The files of a run (``path``, ``size_bytes``, ``checksum``), by path."""
        return self._items(f"{_run(ref)}/artifacts", {"prefix": prefix})

    def download_run_artifact(self, ref: str, path: str, dest: str | Path) -> Path:
        """Download the run's file ``path`` to ``dest`` (a file, or a folder to put it
        in); the sha256 is checked. Returns the file written."""
        import hashlib

        import httpx

        target = Path(dest)
        if target.is_dir():
            target = target / path.rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", f"{_run(ref)}/artifacts/{_path(path)}") as response:
                if response.is_error:
                    response.read()
                    _raise_for_error(response)
                expected = response.headers.get("x-checksum-sha256", "")
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes(1024 * 1024):
                        digest.update(chunk)
                        out.write(chunk)
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            msg = f"cannot reach the mlrig server at {self.url}: {exc}; is `mlrig server` running?"
            raise errors.MlrigError(msg, details={"url": self.url}) from None
        if expected and digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            msg = f"artifact {path!r} of run {ref!r} arrived damaged (sha256 mismatch)"
            raise errors.CorruptArtifactError(msg, details={"path": path})
        partial.replace(target)
        return target

    def list_groups(self, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """The run groups (studies) with their number of runs."""
        return self._items("/groups", {"include_deleted": include_deleted or None})

    def get_group(self, ref: str) -> dict[str, Any]:
        """A run group by name or id."""
        return self._request("GET", f"/groups/{_segment(ref)}")

    def ensure_group(
        self,
        name: str,
        *,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The run group ``name``, made if missing."""
        body = _params({"name": name, "description": description, "tags": tags})
        return self._request("POST", "/groups", json=body)


def _wire_point(point: Any) -> Any:
    if isinstance(point, Mapping):
        return {**point, "value": to_json(point.get("value"))} if "value" in point else point
    items = list(point)
    if len(items) > 1:
        items[1] = to_json(items[1])
    return items


def _run(ref: str) -> str:
    return f"/experiments/{_segment(ref)}"


def _path(path: str) -> str:
    """A run artifact path for the URL: each segment quoted, the ``/`` kept."""
    from urllib.parse import quote

    return "/".join(quote(part, safe="") for part in str(path).split("/"))


def _jsonable(value: Any) -> Any:
    """Datetimes as ISO 8601 text; the rest unchanged."""
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) and not isinstance(value, str) else value


def _raise_for_error(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        error = response.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details") or {}
    except (ValueError, KeyError, TypeError):
        code, message, details = "error", f"HTTP {response.status_code}: {response.text[:300]}", {}
    cls = _error_classes().get(code, errors.MlrigError)
    details = {**details, "status": response.status_code}
    try:
        error_object = cls(message, details=details)
    except TypeError:  # a subclass with a constructor of its own
        error_object = errors.MlrigError(message, details=details)
    raise error_object


def _params(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _batches(points: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for point in points:
        batch.append(point)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def url_segment(value: Any) -> str:
    """``value`` (a name or an id) as one URL path segment: ``?`` and ``#`` stay in it, and
    ``.`` or ``..`` is not resolved away by the HTTP client (``get_version("m", "..")``
    asked for the model, ``delete_version("m", "..")`` deleted it).

    :raises ValidationError: ``value`` holds a ``/``: the server decodes ``%2F`` before
        routing, so ``delete_model("m/versions/1")`` would reach the delete of version 1
        of ``m``; no name or id has one.
    """
    from urllib.parse import quote

    if "/" in str(value):
        msg = f"{str(value)[:100]!r} is not a name or an id: it contains '/'"
        raise errors.ValidationError(msg, details={"value": str(value)[:100]})
    text = quote(str(value), safe="")
    return text.replace(".", "%2E") if text in (".", "..") else text


_segment = url_segment


def _plain(value: Any) -> Any:
    """numpy arrays and pandas frames as JSON lists (rows), the rest unchanged."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a DataFrame: columns
        return {str(c): value[c].tolist() for c in value.columns}
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
