"""Server-side reads of user-given dataset URIs (``POST .../evaluations``): only the
artifact store, the bundled datasets, ``[datasets] allowed_roots`` and allowed schemes;
streamed with a size cap; regular files only; never a 5xx, never the file's contents."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlrig import datasets
from mlrig.datasets.access import DatasetAccess
from mlrig.errors import MissingExtraError, TooLargeError, ValidationError
from mlrig.security import Principal
from mlrig.testing.fixtures import make_platform

ADMIN = Principal(name="tester", role="admin")
LIMIT = 64 * 1024
HOSTNAME = Path("/etc/hostname")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield from _serve(tmp_path_factory, allowed_roots=["data"], max_bytes=LIMIT)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An operator who allowed s3:// and gs:// (without installing gcsfs)."""
    yield from _serve(tmp_path_factory, allowed_schemes=["s3", "gs"])


def _serve(tmp_path_factory: pytest.TempPathFactory, **section: Any) -> Iterator[dict[str, Any]]:
    from fastapi.testclient import TestClient
    from sklearn.linear_model import LogisticRegression

    from mlrig.api import create_app
    from mlrig.registry.packaging import register_model

    home = tmp_path_factory.mktemp("home")
    data = home / "data"
    data.mkdir()
    frame = datasets.load("iris")
    frame.to_csv(data / "iris.csv", index=False)
    (data / "big.csv").write_bytes(b"a,b\n" + b"1,2\n" * (LIMIT // 4 + 10))
    os.mkfifo(data / "pipe.csv")
    (data / "escape.csv").symlink_to(HOSTNAME if HOSTNAME.exists() else "/etc/passwd")
    (data / "garbage.csv").write_bytes(b"\x89PNG secret-bytes \x00\x01" * 10)
    platform = make_platform(home, datasets=section)
    platform.artifacts.put("datasets/iris.csv", (data / "iris.csv").read_bytes())
    platform.artifacts.put("datasets/big.csv", (data / "big.csv").read_bytes())
    model = LogisticRegression(max_iter=500).fit(frame.drop(columns=["species"]), frame["species"])
    register_model(platform, model, name="iris", actor=ADMIN)
    platform.security.create_user(name="dev", role="developer")
    token = platform.security.create_token(user="dev")["token"]
    with TestClient(create_app(platform), raise_server_exceptions=False) as client:
        yield {"client": client, "headers": {"Authorization": f"Bearer {token}"}, "home": home}
    platform.close()


def _evaluate(server: dict[str, Any], uri: str) -> Any:
    result: dict[str, Any] = {}

    def call() -> None:
        result["response"] = server["client"].post(
            "/api/ml/models/iris/versions/1/evaluations",
            headers=server["headers"],
            json={"dataset_uri": uri, "target": "species", "runtime": "sklearn"},
        )

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(60)  # a FIFO or a device must not hang the request
    assert not worker.is_alive(), f"{uri!r}: the request hung"
    return result["response"]


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) >= {"code", "message", "details"}
    if HOSTNAME.exists() and HOSTNAME.read_text().strip():
        assert HOSTNAME.read_text().strip() not in response.text  # nothing of the file shows
    return body


@pytest.mark.parametrize(
    "uri",
    [
        "../../etc/hostname",
        "../../../../../../../../etc/hostname",
        "/etc/hostname",
        "file:///etc/hostname",
        "/dev/zero",
        "/proc/self/environ",
        "data/../../../etc/hostname",
        "data/escape.csv",  # a symlink inside an allowed root, pointing out of it
        str(datasets.path("iris").parent / "__init__.py"),  # next to the bundled CSVs
    ],
)
def test_paths_outside_the_allowed_roots_are_refused(server: dict[str, Any], uri: str) -> None:
    body = _error(_evaluate(server, uri), 422)
    assert "outside the folders the server may read" in body["message"]
    assert "[datasets] allowed_roots" in body["message"]
    assert body["details"]["reason"] == "outside_allowed_roots"


def test_a_fifo_in_an_allowed_root_is_refused_without_hanging(server: dict[str, Any]) -> None:
    body = _error(_evaluate(server, "data/pipe.csv"), 422)
    assert "not a regular file" in body["message"]


def test_a_folder_is_refused(server: dict[str, Any]) -> None:
    assert "not a regular file" in _error(_evaluate(server, "data"), 422)["message"]


@pytest.mark.parametrize("uri", ["data/big.csv", "artifact://datasets/big.csv"])
def test_a_dataset_over_the_cap_is_413(server: dict[str, Any], uri: str) -> None:
    body = _error(_evaluate(server, uri), 413)
    assert body["code"] == "too_large" and body["details"]["limit"] == LIMIT
    assert "[datasets] max_bytes" in body["message"]


def test_a_file_that_is_not_csv_is_not_echoed(server: dict[str, Any]) -> None:
    response = _evaluate(server, "data/garbage.csv")
    assert response.status_code == 422, response.text
    assert "secret-bytes" not in response.text and "PNG" not in response.text


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/train.csv",
        "gs://bucket/train.csv",
        "http://example.com/x.csv",
        "memory://x.csv",
    ],
)
def test_schemes_not_allowed_are_422(server: dict[str, Any], uri: str) -> None:
    body = _error(_evaluate(server, uri), 422)
    assert body["details"]["reason"] == "scheme_not_allowed"
    assert "[datasets] allowed_schemes" in body["message"]


def test_bad_artifact_key_is_422(server: dict[str, Any]) -> None:
    _error(_evaluate(server, "artifact://../../etc/hostname"), 422)


def test_missing_file_in_an_allowed_root_is_404(server: dict[str, Any]) -> None:
    _error(_evaluate(server, "data/nope.csv"), 404)


def test_missing_artifact_is_404_without_the_store_location(server: dict[str, Any]) -> None:
    body = _error(_evaluate(server, "artifact://datasets/nope.csv"), 404)
    assert str(server["home"]) not in body["message"]
    assert (
        body["message"] == "dataset 'artifact://datasets/nope.csv' not found in the artifact store"
    )


@pytest.mark.parametrize(
    "uri", ["data/iris.csv", "artifact://datasets/iris.csv", str(datasets.path("iris"))]
)
def test_allowed_datasets_are_read(server: dict[str, Any], uri: str) -> None:
    response = _evaluate(server, uri)
    assert response.status_code == 201, response.text
    assert response.json()["metrics"]["accuracy"] > 0.8


def test_allowed_scheme_without_its_fsspec_implementation_names_the_extra(
    open_server: dict[str, Any],
) -> None:
    try:
        import gcsfs  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        pytest.skip("gcsfs is installed here")
    body = _error(_evaluate(open_server, "gs://bucket/train.csv"), 400)
    assert body["code"] == "missing_extra" and "pip install gcsfs" in body["message"]
    with pytest.raises(MissingExtraError, match="pip install gcsfs"):
        DatasetAccess(artifacts=None, schemes=["gs"]).check("gs://bucket/train.csv")


@pytest.mark.parametrize(
    "uri", ["s3://bucket/x.csv::file:///etc/hostname", "simplecache::s3://bucket/x.csv"]
)
def test_chained_urls_are_refused(open_server: dict[str, Any], uri: str) -> None:
    body = _error(_evaluate(open_server, uri), 422)
    assert body["details"]["reason"] == "chained_url"


@pytest.mark.s3
def test_allowed_s3_without_credentials_is_4xx(
    open_server: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_s3: str
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3)
    body = _error(_evaluate(open_server, "s3://no-creds-bucket/train.csv"), 422)
    assert "no credentials for it on the server" in body["message"]


def test_the_cap_holds_for_a_file_that_grows(tmp_path: Path) -> None:
    """The size is checked as bytes arrive, not only from stat()."""
    access = DatasetAccess(artifacts=None, roots=[tmp_path], max_bytes=4096, base_dir=tmp_path)
    (tmp_path / "small.csv").write_bytes(b"a\n" * 100)
    assert access.read("small.csv") == b"a\n" * 100

    class Growing:
        def read(self, n: int) -> bytes:
            return b"x" * n

    with pytest.raises(TooLargeError):
        access._capped("grows.csv", Growing())  # type: ignore[arg-type]


def test_local_operator_reads_any_regular_file_but_not_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / "mine.csv"
    own.write_bytes(b"x,y\n1,2\n")
    server_side = DatasetAccess(artifacts=None, base_dir=tmp_path / "elsewhere")
    with pytest.raises(ValidationError, match="outside"):
        server_side.read(str(own))
    local = server_side.local_operator()
    assert local.read(str(own)) == b"x,y\n1,2\n"
    monkeypatch.chdir(tmp_path)  # a relative path means the shell's working directory
    assert server_side.local_operator().read("mine.csv") == b"x,y\n1,2\n"
    with pytest.raises(ValidationError, match="not a regular file"):
        local.read("/dev/zero")


def test_the_worker_reads_an_experiment_dataset_within_the_same_bounds(tmp_path: Path) -> None:
    """An experiment's dataset is read by a worker, server-side: the same rules apply, and
    a refused dataset fails the run at once with the reason (retrying cannot help)."""
    from mlrig.engine.allocator import Capacity
    from mlrig.engine.worker import Worker

    platform = make_platform(tmp_path / "home")
    outside = tmp_path / "elsewhere" / "train.csv"
    outside.parent.mkdir()
    outside.write_text("x,y\n1,0\n2,1\n", encoding="utf-8")
    dataset = {"uri": str(outside), "target": "y"}
    with pytest.raises(ValidationError, match="outside the folders the server may read"):
        platform.experiments.create(
            name="refused", trainer="sklearn", dataset=dataset, actor=ADMIN, start=True
        )
    # an experiment queued before the rule (or by a path that skipped the create check)
    # is refused by the worker itself
    from mlrig.db.models import TrainingExperiment

    with platform.db.session() as session:
        row = TrainingExperiment(
            name="outside", trainer="sklearn", configuration={"dataset": dataset}, seed=1
        )
        session.add(row)
        session.flush()
        platform.queue.record_created(session, row)
        job_id = row.id
    platform.queue.enqueue(job_id)
    stop = threading.Event()
    timer = threading.Timer(120, stop.set)
    timer.start()
    try:
        Worker(platform, concurrency=1, capacity=Capacity(cpus=(0,)), lease_seconds=10).run(
            stop=stop, max_jobs=1, exit_when_idle=True
        )
    finally:
        timer.cancel()
    done = platform.experiments.get(str(job_id))
    assert done["status"] == "failed", done
    assert "outside the folders the server may read" in (done.get("status_detail") or "")
    platform.close()
