"""``mlrig.autolog()`` for scikit-learn: what one fit records (params, training metrics,
dataset, a registered model), inside a run or in one of its own; nested fits; searches;
failures; switching it off; and that scikit-learn is imported only by the user."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mlrig
from mlrig.testing.fixtures import make_platform
from mlrig.testing.serving import breast_cancer_data


@pytest.fixture
def platform(tmp_path, monkeypatch):
    """The platform ``mlrig.start_run`` finds through the config (embedded tracking)."""
    from mlrig.tracking import stores

    home = tmp_path / "home"
    plat = make_platform(home)
    monkeypatch.setattr(stores, "_configured", None)
    monkeypatch.delenv("MLRIG_URL", raising=False)
    monkeypatch.setenv("MLRIG_CONFIG", str(home / "mlrig.toml"))
    monkeypatch.setenv("MLRIG_DATABASE__URL", f"sqlite:///{home / 'mlrig.db'}")
    monkeypatch.setenv("MLRIG_STORAGE__LOCAL__ROOT", str(home / "artifacts"))
    monkeypatch.setenv("MLRIG_TRACKING__SPILL_DIR", str(tmp_path / "spill"))
    yield plat
    mlrig.autolog(disable=True)
    mlrig.end_run()
    plat.close()


@pytest.fixture
def data():
    bc = breast_cancer_data()
    x = bc.x[:200]
    return (x - x.mean(axis=0)) / x.std(axis=0), bc.y[:200]  # scaled: solvers converge fast


def _runs(platform):
    return platform.experiments.list(origin="tracking")


def _latest(view, kind=None):
    """``{name: value}`` of a run's latest metrics of one kind."""
    return {m["name"]: m["value"] for m in view["metrics"].values() if m["kind"] == kind}


def test_a_fit_outside_a_run_is_logged_in_a_run_of_its_own(platform, data, tmp_path):
    from sklearn.tree import DecisionTreeClassifier

    x, y = data
    mlrig.autolog(registered_model_name="bc-tree")
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y)
    assert mlrig.active_run() is None  # started and ended by the fit

    (summary,) = _runs(platform)
    run = platform.experiments.get(summary["id"])
    assert run["status"] == "completed" and run["tags"]["mlrig.autolog"] == "sklearn"
    assert run["tags"]["estimator_class"] == "sklearn.tree._classes.DecisionTreeClassifier"
    params = run["hyperparameters"]
    assert params["max_depth"] == 3 and params["criterion"] == "gini"
    assert params["random_state"] == 0 and params["max_features"] is None
    metrics = _latest(run, "train")
    assert metrics["accuracy"] == pytest.approx(tree.score(x, y))
    assert metrics["score"] == metrics["accuracy"]
    assert {"precision", "recall", "f1", "log_loss", "roc_auc"} <= set(metrics)
    (dataset,) = run["reproducibility"]["datasets"]
    assert dataset["name"] == "training" and dataset["rows"] == 200

    version = platform.registry.get_version("bc-tree", "latest")
    assert version["lineage"]["source_experiment_id"] == run["id"]
    assert run["tags"]["mlrig.autolog.model"] == f"bc-tree/{version['version']}"
    assert version["params"]["max_depth"] == 3
    loaded = mlrig.load_model(
        "models:/bc-tree/latest", runtime="sklearn", platform=platform, cache_dir=tmp_path
    )
    np.testing.assert_array_equal(loaded.predict(x), tree.predict(x))


def test_inside_a_run_a_pipeline_is_one_fit(platform, data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = data
    mlrig.autolog(log_datasets=False)
    with mlrig.start_run("study") as run:
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=500))
        pipe.fit(x, y)
        assert mlrig.active_run() is run  # autolog logs into it, does not end it
    assert len(_runs(platform)) == 1
    view = platform.experiments.get(run.id)
    assert view["group"] == "study" and view["status"] == "completed"
    params = view["hyperparameters"]
    assert params["logisticregression__C"] == 0.5
    assert params["steps"] == [
        ["standardscaler", "StandardScaler"],
        ["logisticregression", "LogisticRegression"],
    ]
    assert _latest(view, "train")["accuracy"] == pytest.approx(pipe.score(x, y))
    assert "datasets" not in view["reproducibility"]
    # one version, of the pipeline: its steps' fits were not logged on their own
    assert [m["name"] for m in platform.registry.list_models()] == ["Pipeline"]
    assert platform.registry.get_model("Pipeline")["version_count"] == 1


def test_a_regressor_gets_regression_metrics(platform, data):
    from sklearn.linear_model import Ridge

    x, y = data
    mlrig.autolog(log_models=False)
    ridge = Ridge(alpha=2.0).fit(x, y.astype(float))
    (summary,) = _runs(platform)
    metrics = _latest(platform.experiments.get(summary["id"]), "train")
    assert metrics["r2"] == pytest.approx(ridge.score(x, y))
    assert metrics["rmse"] == pytest.approx(metrics["mse"] ** 0.5)
    assert "accuracy" not in metrics and "mae" in metrics
    assert platform.registry.list_models() == []  # log_models=False


def test_a_search_logs_its_best_params_and_registers_its_best_estimator(platform, data, tmp_path):
    from sklearn.model_selection import GridSearchCV
    from sklearn.tree import DecisionTreeClassifier

    x, y = data
    mlrig.autolog(log_datasets=False)
    search = GridSearchCV(DecisionTreeClassifier(random_state=0), {"max_depth": [1, 4]}, cv=3)
    search.fit(x, y)
    (summary,) = _runs(platform)  # the 7 inner fits made no runs
    view = platform.experiments.get(summary["id"])
    params = view["hyperparameters"]
    assert params["best_max_depth"] == search.best_params_["max_depth"]
    assert params["estimator"] == "DecisionTreeClassifier" and params["error_score"] == "nan"
    assert params["param_grid"] == {"max_depth": [1, 4]} and params["cv"] == 3
    assert _latest(view, "validation")["best_cv_score"] == pytest.approx(search.best_score_)
    version = platform.registry.get_version("DecisionTreeClassifier", "latest")
    assert version["lineage"]["source_experiment_id"] == view["id"]
    loaded = mlrig.load_model(
        "models:/DecisionTreeClassifier/1", platform=platform, cache_dir=tmp_path
    )
    np.testing.assert_array_equal(loaded.predict(x), search.predict(x))


def test_a_fit_that_raises_ends_its_run_failed(platform, data):
    from sklearn.linear_model import LogisticRegression

    x, y = data
    mlrig.autolog()
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        LogisticRegression().fit(bad, y)
    (summary,) = _runs(platform)
    assert summary["status"] == "failed"
    assert summary["status_detail"].startswith("ValueError: ")


def test_logging_problems_are_warnings_and_the_fit_goes_on(platform, data, caplog):
    from sklearn.linear_model import LogisticRegression

    x, y = data
    mlrig.autolog(log_models=False, log_datasets=False)
    with caplog.at_level(logging.WARNING, "mlrig.tracking"), mlrig.start_run() as run:
        LogisticRegression(C=1.0, max_iter=500).fit(x, y)
        second = LogisticRegression(C=2.0, max_iter=500).fit(x, y)  # C again, another value
    assert hasattr(second, "coef_")
    assert "its parameters could not be logged" in caplog.text
    history = platform.experiments.metrics(run.id, name="accuracy")["metrics"]["accuracy"]
    assert history["steps"] == [0, 1]  # each fit's metrics at its own step


def test_disable_gives_the_estimators_their_fit_back(platform, data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    x, y = data
    own = LogisticRegression.fit
    mlrig.autolog()
    mlrig.autolog()  # twice: patched once
    assert LogisticRegression.fit is not own and LogisticRegression.fit.__wrapped__ is own
    mlrig.autolog(disable=True)
    assert LogisticRegression.fit is own
    SVC().fit(x, y)
    assert _runs(platform) == []


def test_scikit_learn_is_imported_by_the_user_only(tmp_path):
    script = textwrap.dedent(
        """
        import json, sys
        import mlrig
        mlrig.autolog()
        before = "sklearn" in sys.modules
        from sklearn.linear_model import LogisticRegression
        from sklearn.base import BaseEstimator

        class Mine(BaseEstimator):  # defined after autolog: patched when defined
            def fit(self, X, y=None):
                return self

        patched = [hasattr(c.fit, "__mlrig_autolog__") for c in (LogisticRegression, Mine)]
        mlrig.autolog(disable=True)
        restored = [hasattr(c.fit, "__mlrig_autolog__") for c in (LogisticRegression, Mine)]
        print(json.dumps([before, patched, restored, "sklearn.ensemble" in sys.modules]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout) == [False, [True, True], [False, False], False]
