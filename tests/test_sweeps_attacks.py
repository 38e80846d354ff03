"""Sweeps under attack: concurrent creates and stops, a stop while a driver step is in
flight, hostile request bodies (every refusal a 4xx in the error shape with nothing
half-created), and engine edge cases (every trial failing, a tiny time budget, more
parallelism than workers)."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from sqlalchemy import func, select

from mlrig import datasets
from mlrig.db.models import RunGroup, Sweep, SweepTrial, TrainingExperiment
from mlrig.errors import ConflictError, ValidationError
from mlrig.security import Principal

ACTOR = Principal(name="mallory", role="admin")
IRIS = {"uri": str(datasets.path("iris")), "target": "species"}
SPACE = {"C": {"type": "float", "low": 0.01, "high": 10.0, "log": True}}
BASE_PARAMS = {"estimator": "sklearn.linear_model.LogisticRegression", "max_iter": 300}
BASE = "/api/ml/sweeps"


def sweep_args(name="sw", **kw):
    args = {
        "name": name,
        "trainer": "sklearn",
        "space": SPACE,
        "objective": "val_accuracy",
        "direction": "maximize",
        "actor": ACTOR,
        "dataset": IRIS,
        "hyperparameters": BASE_PARAMS,
        "strategy": "random",
        "seed": 3,
        "max_trials": 4,
        "parallelism": 2,
    }
    args.update(kw)
    return args


def counts(platform):
    """(experiments, sweeps, sweep trials, run groups)."""
    with platform.db.session() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(model))
            for model in (TrainingExperiment, Sweep, SweepTrial, RunGroup)
        )


def run_at_once(calls):
    """Run the zero-argument ``calls`` in threads released together; their results
    (or the exceptions they raised), in order."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        try:
            results[index] = call()
        except Exception as exc:  # the caller looks at what each one got
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    return results


# --- races ------------------------------------------------------------------------------


def test_creates_of_one_name_at_once_make_one_sweep(db_platform):
    """Four creates of one name at once: one sweep, three conflicts (409s), no other
    error, one experiment of that name, its trials only."""
    results = run_at_once(
        [lambda: db_platform.sweeps.create(**sweep_args("same")) for _ in range(4)]
    )
    made = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if not isinstance(r, dict)]
    assert len(made) == 1, results
    assert all(isinstance(r, ConflictError) for r in refused), refused
    with db_platform.db.session() as session:
        named = session.scalars(
            select(TrainingExperiment.id).where(TrainingExperiment.name == "same")
        ).all()
        assert [str(i) for i in named] == [made[0]["id"]]
        assert session.scalar(select(func.count()).select_from(Sweep)) == 1
        trials = session.scalar(select(func.count()).select_from(SweepTrial))
        assert trials == 2  # the one sweep's first parallelism trials


def test_two_stops_at_once_one_stops_the_other_conflicts(db_platform):
    view = db_platform.sweeps.create(**sweep_args("stopme"))
    results = run_at_once(
        [lambda: db_platform.sweeps.stop(view["id"], actor=ACTOR) for _ in range(2)]
    )
    stopped = [r for r in results if isinstance(r, dict)]
    assert len(stopped) == 1, results
    assert isinstance(next(r for r in results if not isinstance(r, dict)), ConflictError)
    assert stopped[0]["status"] == "cancelled"
    with db_platform.db.session() as session:
        statuses = session.scalars(
            select(TrainingExperiment.status).where(
                TrainingExperiment.parent_id == uuid.UUID(view["id"])
            )
        ).all()
    assert statuses and set(statuses) == {"cancelled"}


def test_a_stop_during_a_driver_step_leaves_no_live_trial(db_platform, monkeypatch):
    """The stop waits for the step's lock; the trials that step queued are cancelled
    with the rest, and no later step asks more."""

    view = db_platform.sweeps.create(**sweep_args("racy", max_trials=6, parallelism=2))
    sweep_id = uuid.UUID(view["id"])
    # end the two queued trials so that the next step tells them and asks two more
    for _ in range(2):
        job = db_platform.queue.claim("sim", lease_seconds=30)
        assert job is not None
        db_platform.queue.fail(job, "boom", retry=False)
    in_ask, release = threading.Event(), threading.Event()
    strategy_class = type(db_platform.sweeps.driver._restore(_sweep(db_platform, sweep_id)))
    original = strategy_class.ask

    def slow_ask(self):
        in_ask.set()
        release.wait(30)
        return original(self)

    monkeypatch.setattr(strategy_class, "ask", slow_ask)
    stepper = threading.Thread(target=db_platform.sweeps.advance, kwargs={"owner": "t"})
    stepper.start()
    assert in_ask.wait(30)
    stopper_result: list[object] = []

    def stopper():
        try:
            stopper_result.append(db_platform.sweeps.stop(view["id"], actor=ACTOR))
        except Exception as exc:
            stopper_result.append(exc)

    stop_thread = threading.Thread(target=stopper)
    stop_thread.start()
    release.set()
    stepper.join(60)
    stop_thread.join(60)
    monkeypatch.setattr(strategy_class, "ask", original)
    assert isinstance(stopper_result[0], dict), stopper_result
    assert stopper_result[0]["status"] == "cancelled"
    db_platform.sweeps.advance(owner="after")
    with db_platform.db.session() as session:
        live = session.scalars(
            select(TrainingExperiment.name).where(
                TrainingExperiment.parent_id == sweep_id,
                TrainingExperiment.status.in_(("created", "queued", "running")),
            )
        ).all()
        asked = session.scalar(select(Sweep.trials_asked).where(Sweep.id == sweep_id))
    assert live == []
    assert asked == 4  # the step in flight asked two more; none after the stop


def _sweep(platform, sweep_id):
    with platform.db.session() as session:
        sweep = session.get(Sweep, sweep_id)
        session.expunge(sweep)
        return sweep


# --- hostile bodies -----------------------------------------------------------------------


@pytest.fixture
def client(api_client, admin_headers):
    api_client.headers.update(admin_headers)
    return api_client


def _body(**kw):
    body = {
        "name": "hostile",
        "trainer": "sklearn",
        "space": SPACE,
        "objective": "val_accuracy",
        "direction": "maximize",
        "strategy": "random",
        "max_trials": 4,
        "parallelism": 2,
        "hyperparameters": BASE_PARAMS,
        "dataset": IRIS,
        "seed": 7,
    }
    body.update(kw)
    return body


def _deep(levels):
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


HOSTILE = {
    "NUL in name": {"name": "a\x00b"},
    "surrogate in a param name": {"space": {"C\ud800": {"type": "float", "low": 0, "high": 1}}},
    "NUL in a choice option": {"space": {"C": {"type": "choice", "options": [0.1, "a\x00"]}}},
    "surrogate in a strategy option": {
        "strategy": "nevergrad",
        "strategy_options": {"optimizer": "\udfff"},
    },
    "NUL in the objective": {"objective": "val\x00"},
    "NUL in a condition": {
        "space": {
            "k": {"type": "choice", "options": ["a", "b"]},
            "C": {"type": "float", "low": 0.1, "high": 1.0, "when": {"k": "\x00"}},
        }
    },
    "2**63 max_trials": {"max_trials": 2**63},
    "10**30 parallelism": {"parallelism": 10**30},
    "2**63 seed": {"seed": 2**63},
    "10**30 max_seconds": {"max_seconds": 10**30},
    "2**63 int bound": {"space": {"max_iter": {"type": "int", "low": 1, "high": 2**63}}},
    "10**30 step": {"space": {"max_iter": {"type": "int", "low": 1, "high": 9, "step": 10**30}}},
    "2**31 int grid": {
        "strategy": "grid",
        "space": {"max_iter": {"type": "int", "low": 1, "high": 2**31}},
    },
    "a step too small for a float grid": {
        "strategy": "grid",
        "space": {"C": {"type": "float", "low": 0.0, "high": 1.0, "step": 5e-324}},
    },
    "10,000 parameters": {
        "space": {f"p{i}": {"type": "float", "low": 0, "high": 1} for i in range(10_000)}
    },
    "a deeply nested constant": {"space": {**SPACE, "x": {"type": "const", "value": _deep(500)}}},
    "an unknown trainer": {"trainer": "no-such-trainer"},
    "an unknown strategy": {"strategy": "no-such-strategy"},
    "strategy options of the wrong type": {"strategy_options": ["optimizer"]},
    "a wrongly typed grid option": {"strategy": "grid", "strategy_options": {"float_points": "x"}},
    "an unknown nevergrad optimizer": {
        "strategy": "nevergrad",
        "strategy_options": {"optimizer": "NoSuchOptimizer"},
    },
    "ASHA's first rung past its last": {
        "pruner": {"rule": "asha", "min_resource": 2**31 - 1, "max_resource": 1}
    },
    "ASHA with eta 1": {"pruner": {"rule": "asha", "max_resource": 10, "reduction_factor": 1}},
    "a cycle of conditions": {
        "space": {
            "a": {"type": "choice", "options": [1, 2], "when": {"b": 1}},
            "b": {"type": "choice", "options": [1, 2], "when": {"a": 1}},
        }
    },
}


@pytest.mark.parametrize("change", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_bodies_are_4xx_and_create_nothing(client, platform, change):
    before = counts(platform)
    raw = json.dumps(_body(**change)).encode()  # lone surrogates as \\ud800 escapes
    response = client.post(BASE, content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"} and error["message"]
    assert counts(platform) == before


@pytest.mark.parametrize(
    "raw",
    [b'{"space": {"C": {"type": "float", "low": NaN, "high": 1}}}', b"[" * 100_000],
    ids=["NaN bound", "100,000 open brackets"],
)
def test_unparseable_numbers_and_nesting_are_4xx(client, platform, raw):
    before = counts(platform)
    response = client.post(BASE, content=raw, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()["error"]) == {"code", "message", "details"}
    assert counts(platform) == before


def test_an_accepted_space_reads_back_unchanged(client):
    space = {
        "C": {"type": "float", "low": 1e-300, "high": 1e-299, "log": True},
        "verbose": {"type": "choice", "options": [0, False]},
        "class_weight": {"type": "choice", "options": [None, "balanced", {"setosa": 0.5}]},
        "tol": 0.25,
    }
    created = client.post(BASE, json=_body(space=space))
    assert created.status_code == 201, created.text
    shown = client.get(f"{BASE}/{created.json()['id']}").json()
    assert shown["space"] == {**space, "tol": {"type": "const", "value": 0.25}}
    # 0 and False stay distinct options, with their types
    assert [type(o) for o in shown["space"]["verbose"]["options"]] == [int, bool]


def test_a_sweep_cannot_be_queued_or_rerun_as_an_experiment(client, platform):
    """Its experiment row is the sweep's: the message says so (not 'a tracked run, resume
    it from its script')."""
    view = platform.sweeps.create(**sweep_args("notajob"))
    before = counts(platform)
    for action in ("start", "rerun"):
        response = client.post(f"/api/ml/experiments/{view['id']}/{action}")
        assert response.status_code == 409, response.text
        message = response.json()["error"]["message"]
        assert "is a sweep" in message and "tracked run" not in message
    assert counts(platform) == before
    assert platform.sweeps.get(view["id"])["status"] == "running"


def test_rest_defaults_are_the_services():
    """A sweep made through the REST API gets the defaults one made in Python (or the
    embedded CLI) gets."""
    import inspect

    from mlrig.api.routers.sweeps import SweepCreate
    from mlrig.sweeps.service import SweepService

    signature = inspect.signature(SweepService.create).parameters
    differing = {}
    for name, field in SweepCreate.model_fields.items():
        default = signature[name].default if name in signature else inspect.Parameter.empty
        if default is inspect.Parameter.empty or name == "resources":  # None = the defaults
            continue
        ours = field.default_factory() if field.default_factory else field.default
        if ours != default and not (default is None and ours == {}):
            differing[name] = (ours, default)
    assert differing == {}


# --- the engine ---------------------------------------------------------------------------


def test_a_sweep_whose_every_trial_fails_ends_failed_saying_why(db_platform):
    view = db_platform.sweeps.create(**sweep_args("doomed", max_trials=3, parallelism=2))
    for _ in range(3):
        db_platform.sweeps.advance(owner="t")
        job = db_platform.queue.claim("sim", lease_seconds=30)
        assert job is not None, db_platform.sweeps.get(view["id"])
        assert db_platform.queue.fail(job, "RuntimeError: the trainer broke", retry=False)
    db_platform.sweeps.advance(owner="t")
    ended = db_platform.sweeps.get(view["id"])
    assert ended["status"] == "failed"
    assert "3 trial(s) failed" in ended["status_detail"]
    assert "the trainer broke" in ended["status_detail"]
    assert ended["trials"]["failed"] == 3 and ended["trials"]["total"] == 3
    assert db_platform.queue.claim("sim", lease_seconds=30) is None  # nothing more asked


def test_an_id_prefix_of_two_sweeps_is_ambiguous_not_a_guess(client, platform, monkeypatch):
    real = uuid.uuid4
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID("abcd" + real().hex[4:]))
    first = platform.sweeps.create(**sweep_args("one", parallelism=1))
    second = platform.sweeps.create(**sweep_args("two", parallelism=1))
    monkeypatch.undo()
    assert first["id"].startswith("abcd") and second["id"].startswith("abcd")
    for method, path in (
        ("GET", f"{BASE}/abcd"),
        ("GET", f"{BASE}/abcd/trials"),
        ("GET", f"{BASE}/abcd/results"),
        ("POST", f"{BASE}/abcd/stop"),
    ):
        response = client.request(method, path)
        assert response.status_code == 422, (path, response.text)
        error = response.json()["error"]
        assert "ambiguous" in error["message"]
        assert set(error["details"]["candidates"]) == {first["id"], second["id"]}
    assert {platform.sweeps.get(s["id"])["status"] for s in (first, second)} == {"running"}
    # a longer prefix picks one
    picked = client.get(f"{BASE}/{second['id'][:-1]}")
    assert picked.status_code == 200, picked.text
    assert picked.json()["id"] == second["id"]


@pytest.mark.parametrize(
    ("low", "high"), [(1e-300, 1.0000001e-300), (1e-320, 1e-310)], ids=["narrow", "subnormal"]
)
def test_nevergrad_searches_a_narrow_or_subnormal_log_range(client, low, high):
    """nevergrad's Log parameter fails its own bounds check there (it was a 500)."""
    pytest.importorskip("nevergrad")
    space = {"C": {"type": "float", "low": low, "high": high, "log": True}}
    body = _body(space=space, strategy="nevergrad", dry_run=True)
    body["strategy_options"] = {"optimizer": "RandomSearch"}
    response = client.post(BASE, json=body)
    assert response.status_code == 200, response.text
    from mlrig.backends import load_backend
    from mlrig.search.space import SearchSpace

    strategy = load_backend("search", "nevergrad").from_options(
        {"optimizer": "NGOpt"}, where="search.nevergrad"
    )
    strategy.start(SearchSpace.from_dict(space), direction="minimize", seed=1, parallelism=2)
    for _ in range(4):
        trial = strategy.ask()
        assert low <= trial.params["C"] <= high
        strategy.tell(trial, trial.params["C"] / low)


def test_a_state_that_cannot_be_restored_fails_the_sweep_instead_of_retrying(platform):
    """A restore that raises would raise on every round, the sweep running forever."""
    view = platform.sweeps.create(**sweep_args("garbled", max_trials=4, parallelism=1))
    sweep_id = uuid.UUID(view["id"])
    with platform.db.session() as session:
        sweep = session.get(Sweep, sweep_id)
        sweep.strategy_state = b"garbage"
        sweep.state_version += 1  # another process saved it: this one must restore
    job = platform.queue.claim("sim", lease_seconds=30)
    assert platform.queue.fail(job, "boom", retry=False)
    platform.sweeps.advance(owner="t")  # does not raise
    ended = platform.sweeps.get(view["id"])
    assert ended["status"] == "failed"
    assert "could not be restored" in ended["status_detail"]
    assert "not a saved random search state" in ended["status_detail"]
    assert platform.queue.claim("sim", lease_seconds=30) is None
    assert platform.sweeps.advance(owner="t") == 0  # and nothing more to do


def test_a_strategy_not_installed_here_leaves_the_sweep_to_other_drivers(platform, monkeypatch):
    """A worker without the strategy's extra must not fail other people's sweeps."""
    import mlrig.backends

    view = platform.sweeps.create(**sweep_args("elsewhere", max_trials=4, parallelism=1))
    job = platform.queue.claim("sim", lease_seconds=30)
    assert platform.queue.fail(job, "boom", retry=False)
    platform.sweeps.driver.forget(uuid.UUID(view["id"]))
    real = mlrig.backends.backend_names
    monkeypatch.setattr(
        mlrig.backends,
        "backend_names",
        lambda kind: [n for n in real(kind) if n != "random"] if kind == "search" else real(kind),
    )
    with pytest.raises(Exception, match="unknown search strategy 'random'"):
        platform.sweeps.advance(owner="t")
    assert platform.sweeps.get(view["id"])["status"] == "running"
    monkeypatch.undo()
    assert platform.sweeps.advance(owner="t") == 2  # told the failure, asked the next


@pytest.mark.parametrize("strategy", ["random", "grid", "nevergrad"])
def test_an_int_range_of_2_63_values_is_no_500(client, strategy):
    """len() of its range overflowed (OverflowError: a 500 at create)."""
    if strategy == "nevergrad":
        pytest.importorskip("nevergrad")
    space = {"max_iter": {"type": "int", "low": 0, "high": 2**63 - 1}}
    response = client.post(BASE, json=_body(space=space, strategy=strategy, dry_run=True))
    assert response.status_code in (200, 422), response.text
    if strategy == "grid":  # refused with its count
        assert response.status_code == 422
        assert "9,223,372,036,854,775,808 points" in response.json()["error"]["message"]
    else:
        assert response.status_code == 200, response.text


def test_the_size_of_a_huge_int_range_is_exact():
    from mlrig.search.space import SearchSpace

    space = SearchSpace.from_dict({"n": {"type": "int", "low": -(2**62), "high": 2**62}})
    assert space.params["n"].size() == 2**63 + 1
    assert space.grid_size() == 2**63 + 1


def test_a_bad_option_of_a_choice_is_refused_at_create_whatever_the_sample(platform):
    # the trainer checked one sample point only: a choice holding a bad option passed
    # whenever the sample missed it, and those trials then failed one by one
    space = {**SPACE, "solver": {"type": "choice", "options": ["lbfgs", "newton-cg", "bogus"]}}
    for seed in (1, 2, 3, 4):
        before = counts(platform)
        with pytest.raises(ValidationError) as caught:
            platform.sweeps.create(**sweep_args(f"bad-{seed}", space=space, seed=seed))
        assert "bogus" in caught.value.message
        assert counts(platform) == before


def test_too_many_merged_hyperparameters_are_refused_before_the_strategy_starts(
    platform, monkeypatch
):
    from mlrig.sweeps import service

    started = []
    monkeypatch.setattr(
        service.SweepService,
        "_start_strategy",
        lambda self, *a, **k: started.append(1) or pytest.fail("strategy started"),
    )
    space = {f"p{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(999)}
    with pytest.raises(ValidationError) as caught:
        platform.sweeps.create(**sweep_args("wide", space=space, strategy="nevergrad"))
    assert "hyperparameters" in caught.value.message
    assert not started
