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


def test_a_dataframe_fit_records_its_columns_and_loads_back_by_name(platform, tmp_path):
    from sklearn.linear_model import LogisticRegression

    frame = breast_cancer_data().frame.iloc[:200]
    frame = (frame - frame.mean()) / frame.std()
    y = breast_cancer_data().y[:200]
    mlrig.autolog(registered_model_name="bc-frame")
    model = LogisticRegression(max_iter=500).fit(frame, y)
    (summary,) = _runs(platform)
    (dataset,) = platform.experiments.get(summary["id"])["reproducibility"]["datasets"]
    assert dataset["schema"]["mean radius"] == "float64" and dataset["rows"] == 200
    loaded = mlrig.load_model("models:/bc-frame/1", platform=platform, cache_dir=tmp_path)
    assert [c["name"] for c in loaded.signature["inputs"]["columns"]][:2] == [
        "mean radius",
        "mean texture",
    ]
    reordered = frame[frame.columns[::-1]]  # by name: the column order does not matter
    np.testing.assert_array_equal(loaded.predict(reordered), model.predict(frame))


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


def test_against_a_server_the_same_records(
    platform, data, live_server, make_token, tmp_path, monkeypatch
):
    from sklearn.tree import DecisionTreeClassifier

    x, y = data
    token = make_token("ada", "developer")["Authorization"].removeprefix("Bearer ")
    monkeypatch.setenv("MLRIG_URL", live_server)
    monkeypatch.setenv("MLRIG_TOKEN", token)
    mlrig.autolog(registered_model_name="remote-tree")
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, y)

    (summary,) = _runs(platform)  # the server's database
    run = platform.experiments.get(summary["id"])
    assert run["status"] == "completed" and run["created_by"] == "ada"
    assert run["hyperparameters"]["max_depth"] == 2
    assert _latest(run, "train")["accuracy"] == pytest.approx(tree.score(x, y))
    assert run["reproducibility"]["datasets"][0]["rows"] == 200
    version = platform.registry.get_version("remote-tree", "latest")
    assert version["lineage"]["source_experiment_id"] == run["id"]
    loaded = mlrig.load_model("models:/remote-tree/1", runtime="sklearn", cache_dir=tmp_path)
    np.testing.assert_array_equal(loaded.predict(x), tree.predict(x))


def test_the_framework_integrations_import_no_framework():
    script = textwrap.dedent(
        """
        import json, sys
        import mlrig.tracking.autolog
        import mlrig.tracking.integrations.keras, mlrig.tracking.integrations.lightning
        heavy = ("sklearn", "keras", "tensorflow", "torch", "lightning", "pytorch_lightning")
        print(json.dumps([m for m in heavy if m in sys.modules]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == []


# --- Keras ----------------------------------------------------------------------------------


@pytest.mark.heavy
def test_the_keras_callback_logs_each_epoch_and_registers_the_model(platform, data, tmp_path):
    from mlrig.formats._tensorflow import _tf

    _tf()  # tensorflow, its start-up lines kept off stderr
    import keras

    from mlrig.tracking.integrations.keras import MlrigCallback

    x, y = data
    x = x.astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((30,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callback = MlrigCallback(
        experiment="keras-study",
        registered_model_name="bc-keras",
        model_type="classification",
        sample=x[:5],
    )
    model.fit(x, y, epochs=3, batch_size=64, validation_split=0.25, verbose=0, callbacks=[callback])

    view = platform.experiments.get(callback.run.id)
    assert view["status"] == "completed" and view["group"] == "keras-study"
    params = view["hyperparameters"]
    assert params["epochs"] == 3 and params["steps_per_epoch"] == 3  # 150 rows / 64
    assert params["optimizer"] == "Adam" and params["learning_rate"] == pytest.approx(0.01)
    train = platform.experiments.metrics(view["id"], kind="train")["metrics"]
    assert train["loss"]["steps"] == [0, 1, 2] and train["loss"]["epochs"] == [0, 1, 2]
    assert len(train["accuracy"]["values"]) == 3
    validation = platform.experiments.metrics(view["id"], kind="validation")["metrics"]
    assert set(validation) >= {"loss", "accuracy"} and validation["loss"]["steps"] == [0, 1, 2]

    version = callback.version
    assert version["lineage"]["source_experiment_id"] == view["id"]
    loaded = mlrig.load_model(
        version["id"], runtime="tensorflow", platform=platform, cache_dir=tmp_path
    )
    np.testing.assert_allclose(loaded.predict_proba(x), model.predict(x, verbose=0), atol=1e-5)


# --- PyTorch Lightning ----------------------------------------------------------------------


def _lightning_module(**hparams):
    lightning = pytest.importorskip("lightning", reason="PyTorch Lightning: pip install lightning")
    import torch

    class Tiny(lightning.LightningModule):
        def __init__(self, lr=0.1, hidden=8, fail_at_epoch=None):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(30, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2)
            )

        def training_step(self, batch, _index):
            if self.current_epoch == self.hparams.fail_at_epoch:
                raise RuntimeError("the loss diverged")
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, _index):
            x, y = batch
            logits = self.net(x)
            self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

        def test_step(self, batch, _index):
            x, y = batch
            self.log("test_loss", torch.nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Tiny(**hparams)


def _fit(module, logger, data):
    import lightning
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    x, y = data
    rows = TensorDataset(torch.from_numpy(x.astype("float32")), torch.from_numpy(y).long())
    trainer = lightning.Trainer(
        max_epochs=2,
        logger=logger,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DataLoader(rows, batch_size=50), DataLoader(rows, batch_size=100))
    return trainer, DataLoader(rows, batch_size=100)


@pytest.mark.heavy
def test_the_lightning_logger_records_hparams_and_epoch_metrics(platform, data):
    from mlrig.tracking.integrations.lightning import MlrigLogger

    logger = MlrigLogger("pl-study", tags={"team": "ml"})
    module = _lightning_module(lr=0.05, hidden=8)
    trainer, loader = _fit(module, logger, data)

    view = platform.experiments.get(logger.version)
    assert view["status"] == "completed" and view["group"] == "pl-study"
    assert view["tags"]["team"] == "ml" and logger.name == "pl-study"
    assert view["hyperparameters"]["lr"] == 0.05 and view["hyperparameters"]["hidden"] == 8
    train = platform.experiments.metrics(view["id"], kind="train")["metrics"]
    assert train["loss"]["epochs"] == [0, 1] and train["loss"]["steps"] == [3, 7]  # 4 batches
    validation = platform.experiments.metrics(view["id"], kind="validation")["metrics"]
    assert validation["loss"]["epochs"] == [0, 1] and len(validation["acc"]["values"]) == 2

    trainer.test(module, loader, verbose=False)  # the same run, resumed and ended again
    assert platform.experiments.get(logger.version)["status"] == "completed"
    test = platform.experiments.metrics(view["id"], kind="test")["metrics"]
    assert list(test) == ["loss"] and len(test["loss"]["values"]) == 1


@pytest.mark.heavy
def test_a_lightning_training_that_raises_ends_failed(platform, data):
    from mlrig.tracking.integrations.lightning import MlrigLogger

    logger = MlrigLogger()
    with pytest.raises(RuntimeError, match="diverged"):
        _fit(_lightning_module(fail_at_epoch=1), logger, data)
    view = platform.experiments.get(logger.version)
    assert view["status"] == "failed"
    assert view["status_detail"] == "RuntimeError: the loss diverged"
    train = platform.experiments.metrics(view["id"], kind="train")["metrics"]
    assert train["loss"]["epochs"] == [0]  # what came before the failure is kept
