"""Read an MLflow tracking server through its REST API (``/api/2.0/mlflow/...``), as the
mlflow client does: experiments and runs search, metric histories, the run artifact
routes, registered models and versions, ``get-download-uri`` for a version's files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from mlrig.errors import ValidationError
from mlrig.importers.mlflow_artifacts import LocalTree, RunRestTree, resolve_tree
from mlrig.importers.mlflow_records import (
    ArtifactTree,
    Experiment,
    MetricPoint,
    ModelVersion,
    RegisteredModel,
    Run,
    dataset_record,
    from_millis,
    metric_value,
)

API = "/api/2.0/mlflow"
PAGE = 1000


def _tags(items: Any) -> dict[str, str]:
    return {str(t["key"]): str(t.get("value", "")) for t in items or []}


class RestSource:
    """An MLflow tracking server.

    :param url: its address (``http://mlflow.internal:5000``).
    :param token: sent as ``Authorization: Bearer`` (``MLFLOW_TRACKING_TOKEN``).
    :param username: with ``password``, HTTP basic auth (``MLFLOW_TRACKING_USERNAME``).
    :param artifacts_root: a local folder that holds the server's ``mlflow-artifacts:/``
        files (read from there instead of downloading).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        artifacts_root: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.uri = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        auth = (username, password or "") if username else None
        self.http = httpx.Client(base_url=self.uri, headers=headers, auth=auth, timeout=timeout)
        self.artifacts_root = artifacts_root
        try:
            self._call("POST", "/experiments/search", json={"max_results": 1})
        except (httpx.HTTPError, ValidationError) as exc:
            self.http.close()
            msg = f"{self.uri} does not answer as an MLflow tracking server: {exc}"
            raise ValidationError(msg) from None

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        answer = self.http.request(method, API + path, **kwargs)
        if answer.status_code >= 400:
            msg = f"{method} {API + path} answered {answer.status_code}: {answer.text[:300]}"
            raise ValidationError(msg)
        return answer.json()

    def _pages(self, method: str, path: str, key: str, body: dict[str, Any]) -> Iterator[Any]:
        token = None
        while True:
            page = dict(body)
            if token:
                page["page_token"] = token
            if method == "GET":
                found = self._call(method, path, params=page)
            else:
                found = self._call(method, path, json=page)
            yield from found.get(key, [])
            token = found.get("next_page_token")
            if not token:
                return

    # --- tracking ---------------------------------------------------------------------

    def experiments(self) -> list[Experiment]:
        body = {"max_results": PAGE, "view_type": "ACTIVE_ONLY"}
        return [
            Experiment(
                id=str(e["experiment_id"]),
                name=str(e["name"]),
                tags=_tags(e.get("tags")),
                artifact_location=e.get("artifact_location"),
                lifecycle_stage=str(e.get("lifecycle_stage") or "active"),
                created_at=from_millis(e.get("creation_time")),
            )
            for e in self._pages("POST", "/experiments/search", "experiments", body)
        ]

    def runs(self, experiment: Experiment) -> Iterator[Run]:
        body = {
            "experiment_ids": [experiment.id],
            "max_results": PAGE,
            "run_view_type": "ACTIVE_ONLY",
            "order_by": ["attributes.start_time ASC"],
        }
        for item in self._pages("POST", "/runs/search", "runs", body):
            info, data = item.get("info", {}), item.get("data", {})
            yield Run(
                id=str(info.get("run_id") or info["run_uuid"]),
                experiment_id=experiment.id,
                name=info.get("run_name"),
                status=str(info.get("status") or "FINISHED"),
                start_time=from_millis(info.get("start_time")),
                end_time=from_millis(info.get("end_time")),
                artifact_uri=info.get("artifact_uri"),
                user_id=info.get("user_id"),
                lifecycle_stage=str(info.get("lifecycle_stage") or "active"),
                params=_tags(data.get("params")),
                tags=_tags(data.get("tags")),
                metric_keys=sorted({m["key"] for m in data.get("metrics") or []}),
                datasets=[
                    dataset_record(
                        name=(d.get("dataset") or {}).get("name"),
                        digest=(d.get("dataset") or {}).get("digest"),
                        source=(d.get("dataset") or {}).get("source"),
                        schema=(d.get("dataset") or {}).get("schema"),
                        profile=(d.get("dataset") or {}).get("profile"),
                        context=_tags(d.get("tags")).get("mlflow.data.context"),
                    )
                    for d in (item.get("inputs") or {}).get("dataset_inputs") or []
                ],
            )

    def metric_history(self, run: Run) -> Iterator[MetricPoint]:
        for key in run.metric_keys:
            body = {"run_id": run.id, "metric_key": key, "max_results": 25000}
            for point in self._pages("GET", "/metrics/get-history", "metrics", body):
                # proto3 JSON leaves out zero values: a missing value or step is 0
                yield MetricPoint(
                    key,
                    metric_value(point.get("value", 0.0)),
                    from_millis(point.get("timestamp")),
                    int(point.get("step", 0)),
                )

    def run_artifacts(self, run: Run) -> ArtifactTree | None:
        return RunRestTree(self.http, run.id)

    # --- the model registry -------------------------------------------------------------

    def registered_models(self) -> list[RegisteredModel]:
        return [
            RegisteredModel(
                name=str(m["name"]),
                description=m.get("description") or None,
                tags=_tags(m.get("tags")),
                aliases={str(a["alias"]): str(a["version"]) for a in m.get("aliases") or []},
            )
            for m in self._pages(
                "GET", "/registered-models/search", "registered_models", {"max_results": PAGE}
            )
        ]

    def model_versions(self, model: RegisteredModel) -> list[ModelVersion]:
        quoted = model.name.replace("'", "\\'")
        body = {"filter": f"name='{quoted}'", "max_results": PAGE}
        versions = [
            ModelVersion(
                name=model.name,
                version=str(v["version"]),
                stage=str(v.get("current_stage") or "None"),
                description=v.get("description") or None,
                source=v.get("source"),
                storage_location=v.get("storage_location"),
                run_id=v.get("run_id") or None,
                status=str(v.get("status") or "READY"),
                tags=_tags(v.get("tags")),
                created_at=from_millis(v.get("creation_timestamp")),
            )
            for v in self._pages("GET", "/model-versions/search", "model_versions", body)
        ]
        return sorted(versions, key=lambda v: int(v.version) if v.version.isdigit() else 0)

    def version_artifacts(self, version: ModelVersion) -> ArtifactTree | None:
        found = self._call(
            "GET",
            "/model-versions/get-download-uri",
            params={"name": version.name, "version": version.version},
        )
        uri = found.get("artifact_uri")
        tree = resolve_tree(
            uri, base=Path.cwd(), artifacts_root=self.artifacts_root, http=self.http
        )
        if isinstance(tree, LocalTree) and not tree.root.is_dir():
            return None  # a path on the server's machine, not this one
        return tree

    def close(self) -> None:
        self.http.close()
