"""Bring an MLflow store into mlrig: experiments become run groups, runs become tracked
runs (``origin="import"``), registered models and their versions, aliases and stages
become registry models.

Idempotent: each imported run carries the tag ``mlflow.run_id``, each imported version
the tag ``mlflow.version`` (its number is the MLflow number too), so a second import of
the same store skips what the first brought in. A run whose import was cut off (still
``running`` in mlrig) is finished: the points it wrote are kept and the rest written,
its files written again, then it ends as in MLflow.

The registered models are :mod:`.mlflow_registry`'s half; the readers of the three store
forms are :mod:`.mlflow_files`, :mod:`.mlflow_sql` and :mod:`.mlflow_rest`.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from mlrig import validation as v
from mlrig.errors import ConflictError, MlrigError, NotFoundError, ValidationError
from mlrig.importers.mlflow_records import (
    Experiment,
    MetricPoint,
    MlflowSource,
    Run,
)
from mlrig.importers.mlflow_registry import RegistryImport
from mlrig.importers.mlflow_summary import RUN_ID_TAG, ImportSummary, Progress
from mlrig.importers.targets import is_remote, runs_service

if TYPE_CHECKING:
    from mlrig.platform import Platform
    from mlrig.security import Principal

#: points per log_metrics call
BATCH = 10_000
#: how MLflow's run statuses end an imported run, and the error recorded
END = {
    "FINISHED": ("completed", None),
    "FAILED": ("failed", "failed in MLflow"),
    "KILLED": ("killed", None),
    "RUNNING": ("killed", "was still RUNNING in MLflow when it was imported"),
    "SCHEDULED": ("killed", "was still SCHEDULED in MLflow when it was imported"),
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

__all__ = ["RUN_ID_TAG", "ImportSummary", "MlflowImporter"]


def run_name(run: Run, fallback: str | None = None) -> str:
    """An mlrig experiment name from the MLflow run name (letters, digits, ``. _ -``)."""
    stem = _UNSAFE.sub("-", run.name or fallback or "").strip("-._")[:160]
    return stem or f"mlflow-{run.id[:12]}"


def _parents_first(runs: list[Run]) -> list[Run]:
    """``runs`` (oldest first) with each nested run after its parent (``mlflow.parentRunId``),
    so that the parent's mlrig id is known when the child is imported."""
    ids = {run.id for run in runs}
    placed: set[str] = set()
    ordered: list[Run] = []
    pending = list(runs)
    while pending:
        waiting = []
        for run in pending:
            parent = run.tags.get("mlflow.parentRunId")
            if parent in ids and parent not in placed and parent != run.id:
                waiting.append(run)
                continue
            ordered.append(run)
            placed.add(run.id)
        if len(waiting) == len(pending):  # a cycle: keep the source's order
            ordered.extend(waiting)
            break
        pending = waiting
    return ordered


def _nonfinite_accepted() -> bool:
    """Whether this mlrig stores NaN and infinite metric values."""
    from mlrig.experiments.points import check_points

    try:
        check_points([("probe", math.nan, 0, None, None)])
    except ValidationError:
        return False
    return True


class MlflowImporter(RegistryImport):
    """One import of ``source`` into ``platform``, as ``actor``.

    :param experiments: only these MLflow experiments (names); all when None.
    :param artifacts: copy the runs' files.
    :param models: import the registered models.
    :param convert: package versions as mlrig models (see :mod:`.mlflow_models`).
    :param progress: called as runs and versions are done.
    """

    def __init__(
        self,
        platform: Platform,
        source: MlflowSource,
        *,
        actor: Principal,
        experiments: list[str] | None = None,
        artifacts: bool = True,
        models: bool = True,
        convert: bool = True,
        progress: Progress | None = None,
    ) -> None:
        self.platform = platform
        self.source = source
        self.actor = actor
        self.only = set(experiments) if experiments else None
        self.copy_artifacts = artifacts
        self.import_models = models
        self.convert = convert
        self.progress = progress or (lambda phase, done, total: None)
        self.summary = ImportSummary(source=source.uri)
        self.nonfinite = _nonfinite_accepted()
        self.remote = is_remote(platform)
        #: groups and tracked runs: the experiment service, or the server's REST API
        self.runs = runs_service(platform)
        #: experiments whose name is no group name mlrig takes
        self.ungrouped: set[str] = set()

    # --- the whole import -------------------------------------------------------------

    def run(self) -> ImportSummary:
        """Import everything; returns the summary."""
        chosen = [e for e in self.source.experiments() if self.only is None or e.name in self.only]
        missing = sorted((self.only or set()) - {e.name for e in chosen})
        if missing:
            msg = f"no MLflow experiment named {', '.join(map(repr, missing))} in the store"
            raise NotFoundError(msg)
        known = self._imported_runs()
        planned = [(e, _parents_first(list(self.source.runs(e)))) for e in chosen]
        total = sum(len(runs) for _, runs in planned)
        done = 0
        self.progress("runs", 0, total)
        for experiment, runs in planned:
            self._group(experiment, len(runs))
            for run in runs:
                try:
                    self._run(experiment, run, known.get(run.id))
                except (MlrigError, OSError) as exc:  # one bad run does not stop the others
                    self.summary.add("runs_failed")
                    self.summary.warn(f"run {run.id} ({run.name}) not imported: {exc}")
                done += 1
                self.progress("runs", done, total)
        if self.import_models:
            self._models(known)
        return self.summary

    def _imported_runs(self) -> dict[str, dict[str, Any]]:
        """MLflow run id -> the mlrig run an earlier import made of it."""
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            page = self.runs.list(origin="import", limit=1000, offset=offset)
            for view in page:
                mlflow_id = (view.get("tags") or {}).get(RUN_ID_TAG)
                if mlflow_id:
                    found[str(mlflow_id)] = view
            if len(page) < 1000:
                return found
            offset += 1000

    # --- experiments and runs -------------------------------------------------------------

    def _clean_tags(self, tags: dict[str, str], where: str) -> dict[str, str]:
        """The tags mlrig can store; the others are reported."""
        kept: dict[str, str] = {}
        for key, value in sorted(tags.items()):
            try:
                v.check_tags({key: value})
            except ValidationError as exc:
                self.summary.warn(f"{where}: tag {key!r} not imported: {exc.message}")
                continue
            if len(kept) >= v.MAX_TAGS:
                self.summary.warn(
                    f"{where}: more than {v.MAX_TAGS} tags; {key!r} and later left out"
                )
                break
            kept[key] = value
        return kept

    def _group(self, experiment: Experiment, runs: int) -> None:
        if experiment.id == "0" and experiment.name == "Default" and not runs:
            return  # MLflow's empty default experiment: no group for it
        self.summary.add("experiments")
        service = self.runs
        tags = {k: x for k, x in experiment.tags.items() if k != "mlflow.note.content"}
        tags["mlflow.experiment_id"] = experiment.id
        try:
            try:
                service.get_group(experiment.name)
            except NotFoundError:
                self.summary.add("groups_created")
            service.ensure_group(
                experiment.name,
                description=experiment.tags.get("mlflow.note.content"),
                tags=self._clean_tags(tags, f"experiment {experiment.name!r}")
                if len(tags) <= v.MAX_TAGS
                else {"mlflow.experiment_id": experiment.id},
            )
        except ValidationError as exc:  # a name mlrig refuses: its runs go in ungrouped
            self.ungrouped.add(experiment.id)
            self.summary.warn(
                f"experiment {experiment.name!r}: no run group made ({exc.message}); its runs "
                "are imported without a group, with the tag mlflow.experiment_id"
            )

    def _run(self, experiment: Experiment, run: Run, earlier: dict[str, Any] | None) -> None:
        self.summary.add("runs")
        if earlier is not None and earlier.get("status") != "running":
            self.summary.add("runs_skipped")
            self.summary.runs[run.id] = str(earlier["id"])
            return
        where = f"run {run.id}"
        tags = self._clean_tags(
            {**run.tags, RUN_ID_TAG: run.id, "mlflow.experiment_id": experiment.id}, where
        )
        if RUN_ID_TAG not in tags:  # too many tags: the one that makes imports idempotent first
            tags = {RUN_ID_TAG: run.id, **dict(list(tags.items())[: v.MAX_TAGS - 1])}
        service = self.runs
        if earlier is not None:
            key = str(earlier["id"])
            service.set_tags(key, tags, actor=self.actor)
            service.log_params(key, run.params, actor=self.actor)
            self.summary.add("runs_resumed")
        else:
            key = self._start(experiment, run, tags)
            self.summary.add("runs_imported")
        self.summary.runs[run.id] = key
        self.summary.add("params", len(run.params))
        self.summary.add("tags", len(tags))
        for dataset in run.datasets:
            try:
                service.log_dataset(key, dataset)
            except ValidationError as exc:
                self.summary.warn(f"{where}: dataset {dataset.get('name')!r} not recorded: {exc}")
                continue
            self.summary.add("datasets")
        self._metrics(key, run, self._written(key) if earlier is not None else {})
        if self.copy_artifacts:
            self._artifacts(key, run)
        status, error = END.get(run.status.upper(), ("completed", None))
        service.end_run(
            key,
            status=status,
            error=error,
            ended_at=run.end_time or run.start_time,
            actor=self.actor,
        )

    def _start(self, experiment: Experiment, run: Run, tags: dict[str, str]) -> str:
        service = self.runs
        base = run_name(run, run.tags.get("mlflow.runName"))
        for name in (base, f"{base}-{run.id[:8]}", f"{base}-{run.id}"):
            try:
                view = service.start_run(
                    actor=self.actor,
                    name=name,
                    group=None if experiment.id in self.ungrouped else experiment.name,
                    parent=self.summary.runs.get(run.tags.get("mlflow.parentRunId") or ""),
                    params=dict(run.params),
                    tags=tags,
                    description=run.tags.get("mlflow.note.content"),
                    reproducibility=self._facts(run),
                    origin="import",
                    started_at=run.start_time,
                )
            except ConflictError:
                continue
            return str(view["id"])
        msg = f"no free name for MLflow run {run.id} (tried {base!r} and suffixes)"
        raise ConflictError(msg)

    @staticmethod
    def _facts(run: Run) -> dict[str, Any]:
        """What the run's MLflow system tags say about how it was made."""
        facts: dict[str, Any] = {"imported_from": "mlflow", "mlflow_run_id": run.id}
        commit = run.tags.get("mlflow.source.git.commit")
        if commit:
            facts["git"] = {"commit": commit}
        if run.tags.get("mlflow.source.name"):
            facts["command"] = run.tags["mlflow.source.name"]
        if run.user_id:
            facts["user"] = run.user_id
        return facts

    def _written(self, key: str) -> dict[str, int]:
        """How many points of each metric a cut-off import of the run wrote. Batches are
        all or nothing and follow the source's order, so they are the first ones of each
        metric the source gives: those are not written again."""
        history = self.runs.metrics(key)["metrics"]
        return {name: len(series.get("values") or []) for name, series in history.items()}

    def _usable(self, point: MetricPoint) -> bool:
        from mlrig.experiments.points import INT32_MAX, MAX_NAME_LENGTH, VALUE_LIMIT

        if not 0 <= point.step <= INT32_MAX or not 0 < len(point.key) <= MAX_NAME_LENGTH:
            return False
        if math.isfinite(point.value):
            return -VALUE_LIMIT < point.value < VALUE_LIMIT
        return self.nonfinite

    def _metrics(self, key: str, run: Run, written: dict[str, int]) -> None:
        batch: list[tuple[Any, ...]] = []
        skipped = 0
        already = dict(written)
        for point in self.source.metric_history(run):
            if not self._usable(point):
                skipped += 1
                continue
            if already.get(point.key):
                already[point.key] -= 1  # written by the cut-off import
                continue
            # (name, value, step, epoch, kind, recorded_at): the service's sequence form
            batch.append((point.key, point.value, point.step, None, None, point.timestamp))
            if len(batch) >= BATCH:
                self._write(key, batch)
                batch = []
        if batch:
            self._write(key, batch)
        if skipped:
            self.summary.add("metric_points_skipped", skipped)
            self.summary.warn(
                f"run {run.id}: {skipped} metric points not imported (a step beyond 2**31-1, "
                "a name over 100 characters, or a value mlrig cannot store)"
            )

    def _write(self, key: str, batch: list[tuple[Any, ...]]) -> None:
        self.runs.log_metrics(key, batch)
        self.summary.add("metric_points", len(batch))

    def _artifacts(self, key: str, run: Run) -> None:
        tree = self.source.run_artifacts(run)
        if tree is None:
            self.summary.warn(
                f"run {run.id}: artifacts at {run.artifact_uri!r} are not reachable from here; "
                "give --artifacts-root for mlflow-artifacts:/ URIs"
            )
            return
        try:
            files = list(tree.files())
        except (OSError, MlrigError) as exc:
            self.summary.warn(f"run {run.id}: cannot list its artifacts: {exc}")
            return
        for item in files:
            with tree.open(item.path) as stream:
                stored = self.runs.put_run_artifact(key, item.path, stream)
            self.summary.add("artifacts")
            self.summary.add("artifact_bytes", int(stored.get("size_bytes") or 0))
