"""The registry end to end, as a user would run it.

- through the CLI on the embedded default (SQLite + local artifacts, real subprocesses);
- over REST against a real uvicorn server on PostgreSQL + S3 (moto server), with
  compression and encryption at rest.
"""

import json

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from mlrig import datasets
from mlrig.artifacts import generate_master_key


def _train(tmp_path, c=1.0):
    frame = datasets.load("iris")
    features, labels = frame.drop(columns=["species"]), frame["species"]
    model = LogisticRegression(C=c, max_iter=500).fit(features, labels)
    path = tmp_path / f"model-{c}.joblib"
    joblib.dump(model, path)
    return model, features, path


def test_cli_end_to_end_on_the_embedded_default(tmp_path, run_cli):
    work = tmp_path / "project"
    work.mkdir()
    model, features, path_a = _train(work, 1.0)
    _, _, path_b = _train(work, 0.05)
    data = str(datasets.path("iris"))
    features.head(5).to_csv(work / "sample.csv", index=False)

    def cli(*args, token=None, ok=True):
        env = {"MLRIG_TOKEN": token} if token else {}
        result = run_cli(*args, cwd=work, env=env)
        if ok:
            assert result.exit_code == 0, f"{args}: {result.stderr}"
        return result

    def as_json(*args, token=None):
        return json.loads(cli(*args, "--json", token=token).stdout)

    v1 = as_json(
        "models",
        "register",
        str(path_a),
        "--name",
        "iris",
        "--sample",
        "sample.csv",
        "--metric",
        "train_accuracy=0.97",
        "--dataset",
        data,
    )
    v2 = as_json(
        "models",
        "register",
        str(path_b),
        "--name",
        "iris",
        "--sample",
        "sample.csv",
        "--parent",
        "1",
    )
    assert (v1["version"], v2["version"]) == ("1", "2")
    assert v1["framework"] == "sklearn" and v1["model_type"] == "classification"
    assert {"model.joblib", "model.onnx"} <= {a["path"] for a in v1["artifacts"]}
    assert v1["signature"]["inputs"]
    assert any(r.startswith("scikit-learn") for r in v1["requirements"])
    assert v1["lineage"]["datasets"][0]["hash"]

    assert as_json("models", "alias", "iris", "champion", "2")["version"] == "2"
    assert as_json("models", "show", "iris", "champion")["version"] == "2"

    # two different users: one requests production, the other approves
    cli("users", "create", "alice", "--role", "developer")
    cli("users", "create", "bob", "--role", "deployer")
    alice = as_json("tokens", "create", "--user", "alice")["token"]
    bob = as_json("tokens", "create", "--user", "bob")["token"]
    pending = as_json(
        "models", "stage", "iris", "2", "production", "--comment", "better", token=alice
    )
    assert pending["status"] == "pending_approval"
    request_id = pending["request"]["id"]
    own = cli("models", "approve", request_id, token=alice, ok=False)
    assert own.exit_code != 0 and "approve" in own.stderr
    assert "Traceback" not in own.stderr
    approved = as_json("models", "approve", request_id, "--comment", "ok", token=bob)
    assert approved["status"] == "approved" and approved["decided_by"] == "bob"
    assert as_json("models", "show", "iris", "2")["stage"] == "production"

    evaluated = as_json(
        "models",
        "evaluate",
        "iris",
        "1",
        "2",
        "--data",
        data,
        "--target",
        "species",
        "--runtime",
        "sklearn",
    )
    assert [e["version"] for e in evaluated] == ["1", "2"]
    for e in evaluated:
        assert 0.5 < e["metrics"]["accuracy"] <= 1.0
        assert e["metrics"]["latency_p99_ms"] >= e["metrics"]["latency_p50_ms"] > 0
        assert e["metrics"]["batch_rows_per_s"] > 0
        assert {"f1", "roc_auc", "log_loss"} <= set(e["metrics"])
    compared = as_json("models", "compare", "iris", "1", "2")
    assert set(compared["metrics"]["accuracy"]) == {"1", "2"}
    assert compared["metrics"]["train_accuracy"]["1"] == 0.97

    out = work / "downloaded"
    cli("models", "download", "iris", "1", "--out", str(out))
    restored = joblib.load(out / "model.joblib")
    assert np.array_equal(restored.predict(features), model.predict(features))

    versions = as_json("models", "versions", "iris", "--metric", "train_accuracy>0.9")
    assert [v["version"] for v in versions["items"]] == ["1"]
    audit = as_json("audit", "--action", "approve")
    assert audit and audit[0]["actor"] == "bob"


@pytest.mark.postgres
@pytest.mark.s3
def test_rest_end_to_end_on_postgres_and_s3(tmp_path, pg_url, s3_bucket, run_cli):
    import httpx

    from mlrig.api import create_app
    from mlrig.formats import package_model
    from mlrig.testing.fixtures import make_platform, serve

    migrated = run_cli("db", "upgrade", env={"MLRIG_DATABASE__URL": pg_url})
    assert migrated.exit_code == 0, migrated.stderr
    platform = make_platform(
        tmp_path / "home",
        database={"url": pg_url},
        storage={
            "backend": "s3",
            "s3": s3_bucket.options(prefix="mlrig"),
            "compression": "zstd",
            "encryption": True,
            "master_key": generate_master_key(),
        },
    )
    security = platform.security
    tokens = {}
    for name, role in [("dev", "developer"), ("ops", "deployer")]:
        security.create_user(name=name, role=role)
        tokens[name] = {"Authorization": f"Bearer {security.create_token(user=name)['token']}"}

    model, features, _ = _train(tmp_path)
    package_dir = tmp_path / "package"
    package = package_model(model, package_dir, sample=features.head(5))
    csv = datasets.path("iris").read_bytes()
    platform.artifacts.put("datasets/iris.csv", csv)

    with (
        serve(create_app(platform)) as url,
        httpx.Client(base_url=f"{url}/api/ml", timeout=60) as http,
    ):
        dev, ops = tokens["dev"], tokens["ops"]
        assert http.post("/models", json={"name": "iris"}).status_code == 401
        created = http.post("/models", json={"name": "iris", "tags": {"team": "ml"}}, headers=dev)
        assert created.status_code == 201, created.text
        for n in (1, 2):
            files = [("files", (rel, (package_dir / rel).read_bytes())) for rel in package.files]
            meta = {
                "framework": "sklearn",
                "model_type": "classification",
                "signature": package.signature,
                "metrics": {"n": n},
            }
            response = http.post(
                "/models/iris/versions",
                files=files,
                data={"metadata": json.dumps(meta)},
                headers=dev,
            )
            assert response.status_code == 201, response.text
            assert response.json()["version"] == str(n)
        # the bytes in the bucket are compressed and encrypted, not the model
        keys = [
            o["Key"]
            for o in s3_bucket.client().list_objects_v2(
                Bucket=s3_bucket.name, Prefix="mlrig/models/"
            )["Contents"]
        ]
        assert len(keys) == 2 * len(package.files)
        stored = s3_bucket.client().get_object(Bucket=s3_bucket.name, Key=keys[0])["Body"].read()
        assert not any((package_dir / rel).read_bytes()[:64] in stored for rel in package.files)

        put = http.put("/models/iris/aliases/champion", json={"version": "1"}, headers=dev)
        assert put.status_code == 200, put.text
        stage = http.post(
            "/models/iris/versions/1/stage", json={"stage": "production"}, headers=dev
        ).json()
        assert stage["status"] == "pending_approval"
        assert (
            http.post(f"/approvals/{stage['request']['id']}/approve", headers=dev).status_code
            == 403
        )
        approved = http.post(
            f"/approvals/{stage['request']['id']}/approve", json={"comment": "ship it"}, headers=ops
        )
        assert approved.status_code == 200, approved.text
        version = http.get("/models/iris/versions/champion", headers=dev).json()
        assert version["stage"] == "production" and version["aliases"] == ["champion"]

        for n in ("1", "2"):
            evaluation = http.post(
                f"/models/iris/versions/{n}/evaluations",
                headers=dev,
                json={
                    "dataset_uri": "artifact://datasets/iris.csv",
                    "target": "species",
                    "runtime": "sklearn",
                },
            )
            assert evaluation.status_code == 201, evaluation.text
            assert evaluation.json()["metrics"]["accuracy"] > 0.8
        compared = http.get("/models/iris/compare", params={"versions": ["1", "2"]}, headers=dev)
        assert set(compared.json()["metrics"]["accuracy"]) == {"1", "2"}

        listed = http.get("/model-versions", params={"metric": "n>=2"}, headers=dev).json()
        assert [v["version"] for v in listed["items"]] == ["2"]

        download = http.get("/models/iris/versions/1/artifacts/model.joblib", headers=dev)
        assert download.status_code == 200
        (tmp_path / "back.joblib").write_bytes(download.content)
        restored = joblib.load(tmp_path / "back.joblib")
        assert np.array_equal(restored.predict(features), model.predict(features))
        assert (
            download.headers["x-checksum-sha256"]
            == version["artifacts"][
                [a["path"] for a in version["artifacts"]].index("model.joblib")
            ]["sha256"]
        )
    platform.close()
