"""Hostile input and races against the distributed trainers (torch-ddp, tensorflow) and the
multi-node jobs: a 4xx JSON error at creation (no 500), values accepted read back as given,
node jobs not drivable on their own, concurrent ends of a leader leave no live node.

Nothing here imports torch or tensorflow (the trainers' ``check`` does not); the REST cases
are ``heavy``, since a trainer loads through the API only where its extra is installed."""

import json
import subprocess
import sys
import threading

import pytest
from test_engine_nodes import add_leader, children, claim, context_of

from mlrig.engine import nodes, states
from mlrig.errors import ConflictError, ValidationError
from mlrig.plugins._distributed import load_user_module

BASE = "/api/ml/experiments"

# (trainer, hyperparameter, value): each one must be refused at creation
REFUSED = [
    *(
        ("torch-ddp", "nproc_per_node", v)
        for v in (2**70, -1, 0, True, "2", 1.5, 2.0, {"a": 1}, None, 10**9)
    ),
    *(("torch-ddp", "nnodes", v) for v in (2**70, -1, True, "2", 1.0, 10**6)),
    *(
        ("torch-ddp", "rdzv_endpoint", v)
        for v in (
            "::::",
            "a:99999",
            ":",
            "",
            "a:",
            ":1",
            "x" * 10000,
            "a:-1",
            "a:0",
            5,
            ["a:1"],
            "host:\uff11\uff12",  # full-width digits: isdigit() but not a port
            "x" * 300 + ":29500",
            "a b:1",
            "a\tb:1",
        )
    ),
    *(("torch-ddp", "rdzv_timeout_s", v) for v in (-1, 0, "5", True, 1e12, 1e300)),
    *(("torch-ddp", "epochs", v) for v in (2**70, 10**12, -1, True, 1.0)),
    *(("torch-ddp", "batch_size", v) for v in (2**70, 10**12, 0, "32")),
    *(("torch-ddp", "max_restarts", v) for v in (2**70, -1, True)),
    *(("torch-ddp", "precision", v) for v in ("bf32", None, 1)),
    *(("torch-ddp", "compile", v) for v in ("yes", 1, None)),
    *(("tensorflow", "workers", v) for v in (2**70, -1, 0, True, "2", 257, 1.0)),
    *(("tensorflow", "epochs", v) for v in (2**70, -1, True)),
    *(("tensorflow", "batch_size", v) for v in (2**70, 0, "32", 3)),
    *(("tensorflow", "validation_split", v) for v in (1, -0.1, True)),
    *(("tensorflow", "dump_weights", v) for v in ("no", None)),
    *(("tensorflow", "startup_timeout_s", v) for v in (0, 86_401, 2**40, True)),
    *((t, "module", v) for t in ("torch-ddp", "tensorflow") for v in ("", "  ", 5, None, {}, [])),
]


@pytest.fixture
def client(api_client, admin_headers):
    api_client.headers.update(admin_headers)
    return api_client


def _post(client, body):
    return client.post(BASE, content=json.dumps(body), headers={"Content-Type": "application/json"})


TRAINERS = {
    "torch-ddp": "mlrig.plugins.trainer_torch_ddp:TorchDDPTrainer",
    "tensorflow": "mlrig.plugins.trainer_tensorflow:TensorflowTrainer",
}


def _trainer(name):
    """The trainer class itself: importing it needs no framework (its check() neither),
    so this runs where torch and tensorflow are not installed."""
    import importlib

    module, _, cls = TRAINERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)({})


def test_hostile_hyperparameters_are_refused_by_the_trainers_check():
    passed = []
    for trainer, key, value in REFUSED:
        try:
            _trainer(trainer).check(params={"module": "train.py", key: value}, dataset=None)
        except ValidationError:
            continue
        passed.append(f"{trainer} {key}={value!r:.40}")
    assert passed == []


@pytest.mark.heavy  # through REST the trainer loads only where its extra is installed
def test_hostile_hyperparameters_are_a_4xx_json_error_at_creation(client):
    bad = []
    for n, (trainer, key, value) in enumerate(REFUSED):
        hp = {"module": "train.py", key: value}
        response = _post(client, {"name": f"e{n}", "trainer": trainer, "hyperparameters": hp})
        error = response.json().get("error") if response.status_code >= 400 else None
        if response.status_code != 422 or set(error or {}) != {"code", "message", "details"}:
            bad.append(f"{trainer} {key}={value!r:.40}: {response.status_code} {response.text:.99}")
    assert bad == []
    assert client.get(BASE).json()["items"] == []


def test_importing_and_checking_the_trainers_imports_no_framework():
    code = (
        "import sys, mlrig, mlrig.plugins.trainer_torch_ddp as t, "
        "mlrig.plugins.trainer_tensorflow as f, mlrig.engine.nodes\n"
        "t.TorchDDPTrainer({}).check(params={'module': 'a.py'}, dataset=None)\n"
        "f.TensorflowTrainer({}).check(params={'module': 'a.py'}, dataset=None)\n"
        "print(sorted({'torch', 'tensorflow', 'keras', 'onnxruntime'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize(
    ("trainer", "hp"),
    [
        ("torch-ddp", {"module": "x" * 10000}),
        ("torch-ddp", {"module": "/etc/passwd", "rdzv_endpoint": "[::1]:29500"}),
        ("torch-ddp", {"module": "a.py", "rdzv_endpoint": "h:00080", "rdzv_timeout_s": 86400}),
        ("torch-ddp", {"module": "a.py", "nested": {"a": [1, {"b": None}]}, "lr": 1e-9}),
        ("tensorflow", {"module": "../../outside.py", "workers": 1, "note": "\u00e9" * 2000}),
    ],
)
@pytest.mark.heavy  # the trainer loads only where its extra is installed
def test_accepted_values_read_back_identically(client, trainer, hp):
    response = _post(client, {"name": "ok", "trainer": trainer, "hyperparameters": hp})
    assert response.status_code == 201, response.text
    assert client.get(f"{BASE}/ok").json()["hyperparameters"] == hp


LONG_PATHS = ["x" * 300 + ".py", "a/" + "y" * 5000 + ".py", "d/" * 3000 + "t.py"]


@pytest.mark.parametrize("spec", LONG_PATHS)
def test_a_module_path_too_long_for_the_file_system_is_a_validation_error(spec):
    # an OSError here would make the job retry as if the failure were transient
    with pytest.raises(ValidationError, match="module file"):
        load_user_module(spec)


def test_a_viewer_cannot_create_a_distributed_experiment(api_client, make_token):
    viewer = make_token("vic", "viewer")
    body = {"name": "v", "trainer": "torch-ddp", "hyperparameters": {"module": "a.py"}}
    response = api_client.post(BASE, json=body, headers=viewer)
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


def test_a_node_job_cannot_be_driven_through_the_api(platform, client, tmp_path):
    leader = add_leader(platform)
    ctx = context_of(platform, claim(platform, leader), tmp_path)
    nodes.start_nodes(ctx, nnodes=2, rendezvous={"endpoint": "h:1"})
    nodes.stop_nodes(ctx, reason="test")
    for action in ("start", "rerun"):
        response = client.post(f"{BASE}/ddp-node1/{action}")
        assert response.status_code == 409, (action, response.text)
        assert "is node 1 of the multi-node run 'ddp'" in response.json()["error"]["message"]
    for action in ("resume", "end", "heartbeat"):  # tracked-run endpoints
        response = client.post(f"{BASE}/ddp-node1/{action}", json={})
        assert 400 <= response.status_code < 500, (action, response.text)
    assert client.get(f"{BASE}/ddp-node1").json()["status"] == states.CANCELLED


def _status(view):
    return view["status"] if isinstance(view, dict) else view.status


def _race(*calls):
    barrier = threading.Barrier(len(calls))
    outcomes = [None] * len(calls)

    def run(i, call):
        barrier.wait()
        try:
            call()
            outcomes[i] = "ok"
        except ConflictError:
            outcomes[i] = "conflict"
        except Exception as exc:  # the test reports it
            outcomes[i] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a call hung"
    return outcomes


def test_cancelling_a_leader_twice_at_once(db_platform, tmp_path):
    leader = add_leader(db_platform)
    ctx = context_of(db_platform, claim(db_platform, leader), tmp_path)
    nodes.start_nodes(ctx, nnodes=3, rendezvous={"endpoint": "h:1"})
    outcomes = _race(*(lambda: db_platform.experiments.stop("ddp") for _ in range(2)))
    assert sorted(outcomes) == ["conflict", "ok"], outcomes
    assert [c.status for c in children(db_platform, leader)] == [states.CANCELLED] * 2


def test_cancelling_a_leader_while_its_nodes_complete(db_platform, tmp_path):
    leader = add_leader(db_platform)
    ctx = context_of(db_platform, claim(db_platform, leader), tmp_path)
    ids = nodes.start_nodes(ctx, nnodes=3, rendezvous={"endpoint": "h:1"})
    claimed = [db_platform.queue.claim(f"w{i}", lease_seconds=30) for i in range(2)]
    assert sorted(str(c.id) for c in claimed) == sorted(ids)
    outcomes = _race(
        lambda: db_platform.experiments.stop("ddp"),
        *(lambda c=c: db_platform.queue.complete(c) for c in claimed),
    )
    assert all(o in ("ok", "conflict") for o in outcomes), outcomes
    rows = children(db_platform, leader)
    assert all(r.status in (states.COMPLETED, states.CANCELLED) for r in rows), rows
    assert _status(db_platform.experiments.get("ddp")) == states.CANCELLED


def test_tensorflow_threads_above_the_job_s_cpus_fail_before_any_worker_starts(tmp_path):
    from types import SimpleNamespace

    from mlrig.contracts.trainer import PermanentError
    from mlrig.plugins.trainer_tensorflow import TensorflowTrainer, job_cpus

    params = {"module": "a.py", "workers": 1, "threads": 2**31 - 1}
    context = SimpleNamespace(params=params, workdir=tmp_path)
    with pytest.raises(PermanentError, match=rf"threads=2147483647 .* the {job_cpus()} CPU"):
        TensorflowTrainer({}).train(context)
    assert not (tmp_path / "tf").exists()
