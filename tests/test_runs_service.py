"""Tracked runs in the experiment service, on SQLite and PostgreSQL: start, params, tags,
datasets, heartbeats, the end and resuming, files, groups, the sweep for silent runs,
list filters, and non-finite metric values."""

import io
import math
import re
import threading
from datetime import datetime, timedelta, timezone

import pytest

from mlrig import hookimpl
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.security import Principal

ACTOR = Principal(name="alice", role="developer")


class StateRecorder:
    def __init__(self):
        self.states = []

    @hookimpl
    def mlrig_experiment_state_changed(self, platform, event):
        self.states.append((event["old"], event["new"]))


@pytest.fixture
def service(db_platform):
    return db_platform.experiments


# --- starting -----------------------------------------------------------------------------


def test_start_run_records_a_running_tracked_run(db_platform, service):
    recorder = StateRecorder()
    db_platform.pm.register(recorder)
    try:
        run = service.start_run(
            actor=ACTOR,
            group="churn study",
            params={"lr": 0.1, "layers": [3, 4]},
            tags={"team": "ml"},
            description="first try",
            reproducibility={"seed": 42, "git_commit": "abc", "git_dirty": True},
        )
    finally:
        db_platform.pm.unregister(recorder)
    assert re.fullmatch(r"churn-study-\d{8}-\d{6}-[0-9a-f]{4}", run["name"]), run["name"]
    assert run["status"] == "running" and run["origin"] == "tracking"
    assert run["trainer"] is None and run["group"] == "churn study"
    assert run["hyperparameters"] == {"lr": 0.1, "layers": [3, 4]}
    assert run["tags"] == {"team": "ml"} and run["description"] == "first try"
    assert run["seed"] == 42 and run["reproducibility"]["git_dirty"] is True
    assert run["created_by"] == "alice" and run["started_at"] is not None
    assert [(e["old"], e["new"]) for e in run["events"]] == [
        (None, "created"),
        ("created", "running"),
    ]
    assert recorder.states == [(None, "created"), ("created", "running")]
    assert service.get_group("churn study")["runs"] == 1
    plain = service.start_run(actor=ACTOR)
    assert re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{4}", plain["name"]) and plain["group"] is None


def test_start_run_nested_imported_and_refusals(service):
    parent = service.start_run(actor=ACTOR, name="parent-run")
    since = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    child = service.start_run(
        actor=ACTOR, name="child-run", parent="parent-run", origin="import", started_at=since
    )
    assert child["parent_id"] == parent["id"] and child["origin"] == "import"
    assert child["started_at"] == since.isoformat()
    assert child["events"][-1]["at"] == since.isoformat()
    with pytest.raises(ConflictError, match="already exists"):
        service.start_run(actor=ACTOR, name="parent-run")
    with pytest.raises(NotFoundError):
        service.start_run(actor=ACTOR, parent="no-such-run")
    with pytest.raises(ValidationError, match="origin"):
        service.start_run(actor=ACTOR, origin="engine")
    with pytest.raises(ValidationError, match="invalid experiment name"):
        service.start_run(actor=ACTOR, name="has spaces")
    with pytest.raises(ValidationError, match="params"):
        service.start_run(actor=ACTOR, params={"x": math.nan})
    with pytest.raises(ValidationError):
        service.start_run(actor=ACTOR, group="\x00bad")


def test_the_engine_does_not_queue_or_rerun_a_tracked_run(service):
    service.start_run(actor=ACTOR, name="mine")
    service.end_run("mine", status="failed", error="boom")
    with pytest.raises(ConflictError, match="tracked run"):
        service.start("mine")
    with pytest.raises(ConflictError, match="tracked run"):
        service.rerun("mine", actor=ACTOR)
    assert service.get("mine")["status"] == "failed"


# --- params, tags, datasets ---------------------------------------------------------------


def test_params_merge_and_a_changed_value_conflicts(service, trainer):
    service.start_run(actor=ACTOR, name="r", params={"lr": 0.1})
    assert service.log_params("r", {"bs": 32, "lr": 0.1}, actor=ACTOR)["hyperparameters"] == {
        "lr": 0.1,
        "bs": 32,
    }
    with pytest.raises(ConflictError, match=r"param 'lr' of run 'r' is already 0\.1") as caught:
        service.log_params("r", {"lr": 0.2, "new": 1}, actor=ACTOR)
    assert caught.value.details["param"] == "lr"
    assert "new" not in service.get("r")["hyperparameters"]  # all or nothing
    with pytest.raises(ValidationError, match="params key"):
        service.log_params("r", {"": 1}, actor=ACTOR)
    service.create(name="engine-job", trainer=trainer, actor=ACTOR)
    with pytest.raises(ConflictError, match="run by the engine"):
        service.log_params("engine-job", {"x": 1}, actor=ACTOR)


def test_tags_are_set_and_deleted(service):
    service.start_run(actor=ACTOR, name="r", tags={"a": "1"})
    assert service.set_tags("r", {"b": "2", "a": "3"}, actor=ACTOR)["tags"] == {"a": "3", "b": "2"}
    assert service.delete_tag("r", "a")["tags"] == {"b": "2"}
    with pytest.raises(NotFoundError, match="no tag 'a'"):
        service.delete_tag("r", "a")
    with pytest.raises(ValidationError):
        service.set_tags("r", {"k": 5}, actor=ACTOR)
    with pytest.raises(ValidationError, match="at most 100"):
        service.set_tags("r", {f"k{i}": "v" for i in range(100)}, actor=ACTOR)
    assert service.get("r")["tags"] == {"b": "2"}


def test_datasets_are_kept_once_in_reproducibility(service):
    service.start_run(actor=ACTOR, name="r", reproducibility={"python": "3.11"})
    record = {"name": "train", "source": "s3://b/train.csv", "digest": "ab" * 32, "rows": 10}
    service.log_dataset("r", record)
    view = service.log_dataset("r", record)
    assert view["reproducibility"] == {"python": "3.11", "datasets": [record]}
    with pytest.raises(ValidationError, match="unknown keys"):
        service.log_dataset("r", {"name": "x", "colour": "red"})
    with pytest.raises(ValidationError, match="a name or a source"):
        service.log_dataset("r", {"rows": 3})
    with pytest.raises(ValidationError, match=r"dataset\.rows"):
        service.log_dataset("r", {"name": "x", "rows": -1})


# --- liveness and the end -----------------------------------------------------------------


def test_heartbeat_end_resume(service):
    service.start_run(actor=ACTOR, name="r")
    before = service.get("r")["heartbeat_at"]
    beat = service.heartbeat("r")
    assert beat["status"] == "running" and beat["heartbeat_at"] > before
    assert service.get("r")["heartbeat_at"] == beat["heartbeat_at"]
    ended = service.end_run("r", status="failed", error="ValueError: bad input", actor=ACTOR)
    assert ended["status"] == "failed" and ended["status_detail"] == "ValueError: bad input"
    assert ended["completed_at"] is not None
    # the same end again (a retried request) changes nothing; another one conflicts
    assert service.end_run("r", status="failed")["events"] == ended["events"]
    with pytest.raises(ConflictError, match="already ended failed"):
        service.end_run("r", status="completed")
    with pytest.raises(ConflictError) as caught:
        service.heartbeat("r")
    assert caught.value.details["status"] == "failed"
    resumed = service.resume_run("r", actor=ACTOR)
    assert resumed["status"] == "running" and resumed["completed_at"] is None
    assert resumed["events"][-1]["detail"] == "resumed by alice"
    assert service.resume_run("r")["events"] == resumed["events"]  # running: just a beat
    killed = service.end_run("r", status="killed")
    assert (killed["status"], killed["status_detail"]) == ("cancelled", "killed")
    with pytest.raises(ValidationError, match="status 'done'"):
        service.end_run("r", status="done")
    ended_at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    service.resume_run("r")
    assert service.end_run("r", ended_at=ended_at)["completed_at"] == ended_at.isoformat()


def test_engine_jobs_take_no_tracked_run_calls(service, trainer):
    service.create(name="job", trainer=trainer, actor=ACTOR)
    for call in (
        lambda: service.heartbeat("job"),
        lambda: service.end_run("job"),
        lambda: service.resume_run("job"),
    ):
        with pytest.raises(ConflictError, match="run by the engine"):
            call()
    assert service.get("job")["status"] == "created"


def test_silent_runs_are_failed_and_a_late_end_overrules(db_platform, service):
    service.start_run(actor=ACTOR, name="silent")
    service.start_run(actor=ACTOR, name="alive")
    service.start_run(actor=ACTOR, name="mlflow-run", origin="mlflow")
    assert service.expire_silent_runs() == 0  # all fresh
    later = datetime.now(timezone.utc) + timedelta(seconds=service.heartbeat_timeout + 1)
    assert service.expire_silent_runs(later - timedelta(seconds=2)) == 0
    with db_platform.db.session() as session:  # "alive" beat just now, seen from later
        from mlrig.db.models import TrainingExperiment

        session.query(TrainingExperiment).filter_by(name="alive").update(
            {"heartbeat_at": later - timedelta(seconds=1)}
        )
    assert service.expire_silent_runs(later) == 1
    silent = service.get("silent")
    assert silent["status"] == "failed"
    assert silent["status_detail"] == (
        "no heartbeat for 300 s: the script was killed or lost its connection"
    )
    assert service.get("alive")["status"] == "running"
    assert service.get("mlflow-run")["status"] == "running"  # MLflow clients send no beats
    assert service.expire_silent_runs(later) == 0
    # the script was only cut off: its own end wins over the sweep's verdict
    assert service.end_run("silent", status="completed")["status"] == "completed"


# --- files --------------------------------------------------------------------------------


def test_run_files_are_stored_listed_replaced_and_read(service, tmp_path):
    service.start_run(actor=ACTOR, name="r")
    service.put_run_artifact("r", "plots/loss.png", b"\x89PNG")
    source = tmp_path / "model.bin"
    source.write_bytes(b"m" * 3_000_000)
    service.put_run_artifact("r", "model/model.bin", source)
    stored = service.put_run_artifact("r", "plots/loss.png", io.BytesIO(b"replaced"))
    assert stored["size_bytes"] == 8 and len(stored["checksum"]) == 64
    listed = service.list_run_artifacts("r")
    assert [(a["path"], a["size_bytes"]) for a in listed] == [
        ("model/model.bin", 3_000_000),
        ("plots/loss.png", 8),
    ]
    assert [a["path"] for a in service.list_run_artifacts("r", prefix="plots/")] == [
        "plots/loss.png"
    ]
    pieces, size = service.open_run_artifact("r", "model/model.bin")
    assert size == 3_000_000 and b"".join(pieces) == b"m" * 3_000_000
    pieces, _ = service.open_run_artifact("r", "plots/loss.png")
    assert b"".join(pieces) == b"replaced"
    with pytest.raises(NotFoundError, match="no artifact"):
        service.open_run_artifact("r", "plots/none.png")
    for bad in (
        "../x",
        "a/../b",
        "a/./b",
        ".",
        "/etc",
        "a\x00b",
        "",
        "a//b",
        "a/",
        "a\\b",
        "a\n",
        5,
    ):
        with pytest.raises(ValidationError):
            service.put_run_artifact("r", bad, b"x")
    assert len(service.list_run_artifacts("r")) == 2


# --- groups -------------------------------------------------------------------------------


def test_groups_are_made_once_even_concurrently(service):
    made, failures = [], []

    def ensure():
        try:
            made.append(service.ensure_group("shared")["id"])
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=ensure) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(set(made)) == 1
    assert [g["name"] for g in service.list_groups()] == ["shared"]


def test_groups_get_update_delete_restore(service):
    service.ensure_group("churn", description="d", tags={"a": "1"})
    service.start_run(actor=ACTOR, name="r1", group="churn")
    service.start_run(actor=ACTOR, name="r2", group="churn")
    group = service.get_group("churn")
    assert (group["runs"], group["description"], group["tags"]) == (2, "d", {"a": "1"})
    assert service.get_group(group["id"])["name"] == "churn"
    renamed = service.update_group("churn", name="churn-v2", tags={"b": "2"})
    assert renamed["tags"] == {"a": "1", "b": "2"} and renamed["runs"] == 2
    assert service.get("r1")["group"] == "churn-v2"
    service.ensure_group("other")
    with pytest.raises(ConflictError, match="already exists"):
        service.update_group("other", name="churn-v2")
    assert service.delete_group("churn-v2")["deleted_at"] is not None
    with pytest.raises(NotFoundError):
        service.get_group("churn-v2")
    assert [g["name"] for g in service.list_groups()] == ["other"]
    assert {g["name"] for g in service.list_groups(include_deleted=True)} == {"other", "churn-v2"}
    assert service.ensure_group("churn-v2")["deleted_at"] is None  # restored
    assert service.list(group="churn-v2", limit=10)[0]["name"] == "r2"


# --- listing and comparing ----------------------------------------------------------------


def test_list_filters_and_compare_across_kinds(service, trainer):
    service.create(name="job", trainer=trainer, actor=ACTOR, hyperparameters={"n_estimators": 5})
    parent = service.start_run(actor=ACTOR, name="parent", group="g", params={"n_estimators": 7})
    service.start_run(actor=ACTOR, name="child", parent=parent["id"], origin="mlflow")
    names = lambda **kw: sorted(r["name"] for r in service.list(**kw))  # noqa: E731
    assert names(origin="engine") == ["job"]
    assert names(origin="tracking") == ["parent"]
    assert names(group="g") == ["parent"]
    assert names(parent="parent") == ["child"]
    summary = next(r for r in service.list() if r["name"] == "child")
    assert summary["parent_id"] == parent["id"] and summary["origin"] == "mlflow"
    with pytest.raises(ValidationError, match="unknown origin"):
        service.list(origin="bogus")
    service.log_metrics("job", [("acc", 0.5, 1, None, None)])
    service.log_metrics("parent", [("acc", 0.7, 1, None, None)])
    compared = service.compare(["job", "parent"])
    assert compared["metrics"] == {"acc": [0.5, 0.7]}
    assert compared["hyperparameters"] == {"n_estimators": [5, 7]}
    assert [e["origin"] for e in compared["experiments"]] == ["engine", "tracking"]


# --- non-finite metric values -------------------------------------------------------------


def test_non_finite_values_are_kept_as_such(service):
    service.start_run(actor=ACTOR, name="r")
    values = [0.5, math.nan, math.inf, -math.inf, "NaN", "Infinity", "-Infinity"]
    edges = [9_999_999_999.999998, -9_999_999_999.999998, 0.0, 1.0]
    points = [("loss", v, i, None, None) for i, v in enumerate(values + edges)]
    assert service.log_metrics("r", points)["written"] == len(points)
    got = service.metrics("r")["metrics"]["loss"]["values"]
    assert got[0] == 0.5 and math.isnan(got[1]) and math.isnan(got[4])
    assert got[2] == got[5] == math.inf and got[3] == got[6] == -math.inf
    assert got[7:] == edges  # the largest finite values are not taken for infinities
    assert all(type(x) is float for x in got)
    service.log_metrics("r", [("diverged", math.inf, 1, None, None)])
    service.log_metrics("r", [("nan", math.nan, 1, None, None)])
    latest = service.latest_metrics("r")
    assert latest["diverged"]["value"] == math.inf and math.isnan(latest["nan"]["value"])
    assert service.get("r")["metrics"]["loss"]["value"] == 1.0
    with pytest.raises(ValidationError, match="within ±1e10"):
        service.log_metrics("r", [("loss", 1e300, 1, None, None)])
    with pytest.raises(ValidationError, match="is not a number"):
        service.log_metrics("r", [("loss", "nan", 1, None, None)])


def test_file_names_that_no_store_key_takes_as_is_are_kept_apart(service):
    import unicodedata

    service.start_run(actor=ACTOR, name="r")
    long_name = "é" * 600  # 1200 bytes of UTF-8: longer than an S3 key may be
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    for path, data in ((long_name, b"long"), (nfc, b"composed"), (nfd, b"decomposed")):
        service.put_run_artifact("r", path, data)
    assert len(service.list_run_artifacts("r")) == 3
    for path, data in ((long_name, b"long"), (nfc, b"composed"), (nfd, b"decomposed")):
        assert b"".join(service.open_run_artifact("r", path)[0]) == data


def test_concurrent_group_tag_changes_all_land(service):
    service.ensure_group("race")
    errors: list[BaseException] = []

    def tag(i: int) -> None:
        try:
            service.update_group("race", tags={f"k{i}": str(i)})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=tag, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert service.get_group("race")["tags"] == {f"k{i}": str(i) for i in range(8)}
