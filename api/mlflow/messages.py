"""MLflow's request messages as pydantic models (unknown fields ignored, as protobuf's
JSON parser does; int64 fields may come as numbers or strings; metric values may be
``"NaN"``, ``"Infinity"``, ``"-Infinity"``)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from mlrig.api.mlflow import convert as c


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class KeyValue(_Message):
    key: str
    value: str | None = None


class ExperimentCreate(_Message):
    name: str
    artifact_location: str | None = None
    tags: list[KeyValue] = Field(default_factory=list)


class ExperimentRef(_Message):
    experiment_id: str


class ExperimentUpdate(ExperimentRef):
    new_name: str | None = None


class ExperimentTag(ExperimentRef):
    key: str
    value: str | None = ""


class ExperimentSearch(_Message):
    max_results: int | None = None
    page_token: str | None = None
    filter: str | None = None
    order_by: list[str] = Field(default_factory=list)
    view_type: str | int | None = None


class RunRef(_Message):
    run_id: str | None = None
    run_uuid: str | None = None

    @property
    def run(self) -> uuid.UUID:
        """The experiment id of the run (``run_id``, or the older ``run_uuid``)."""
        return c.run_key(self.run_id or self.run_uuid)


class RunCreate(_Message):
    experiment_id: str | None = None
    user_id: str | None = None
    start_time: int | None = None
    tags: list[KeyValue] = Field(default_factory=list)
    run_name: str | None = None


class RunUpdate(RunRef):
    status: str | None = None
    end_time: int | None = None
    run_name: str | None = None


class MetricIn(_Message):
    key: str
    value: float
    timestamp: int | None = None
    step: int | None = None


class LogMetric(RunRef, MetricIn):
    pass


class LogParam(RunRef):
    key: str
    value: str | None = ""


class SetTag(RunRef):
    key: str
    value: str | None = ""


class DeleteTag(RunRef):
    key: str


class LogBatch(RunRef):
    metrics: list[MetricIn] = Field(default_factory=list)
    params: list[KeyValue] = Field(default_factory=list)
    tags: list[KeyValue] = Field(default_factory=list)


class RunSearch(_Message):
    experiment_ids: list[str] = Field(default_factory=list)
    filter: str | None = None
    run_view_type: str | int | None = None
    max_results: int | None = None
    order_by: list[str] = Field(default_factory=list)
    page_token: str | None = None


class Dataset(_Message):
    name: str
    digest: str | None = None
    source_type: str | None = None
    source: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    profile: str | None = None


class DatasetInput(_Message):
    tags: list[KeyValue] = Field(default_factory=list)
    dataset: Dataset


class LogInputs(RunRef):
    datasets: list[DatasetInput] = Field(default_factory=list)
