"""``MlrigCallback``: a Keras callback that tracks ``model.fit`` in an mlrig run.

::

    from mlrig.tracking.integrations.keras import MlrigCallback

    with mlrig.start_run("churn"):
        model.fit(x, y, epochs=10, validation_split=0.2, callbacks=[MlrigCallback()])

At the start of training: the epochs, steps per epoch, the optimizer's class and learning
rate as params. At each epoch's end: every metric Keras reports, at ``step=epoch`` and
``epoch=epoch``; ``val_*`` ones with kind ``validation`` (``val_loss`` is ``loss``), the
others kind ``train``. With ``registered_model_name``, the trained model is registered as
a new version at the end with lineage to the run. The run is the one given, else the
active one, else one the callback starts (ended at the end of training).

Keras is imported when ``MlrigCallback`` is first used, not when this module is.
Needs ``pip install 'mlrig[tensorflow]'`` (Keras 3 with TensorFlow).
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["MlrigCallback"]  # noqa: F822 (made on first use: module __getattr__)


def __getattr__(name: str) -> Any:
    if name == "MlrigCallback":
        return _callback_class()
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


@functools.cache
def _callback_class() -> type:
    try:
        import keras
    except ModuleNotFoundError as exc:
        from mlrig.errors import MissingExtraError

        msg = f"MlrigCallback needs Keras: pip install 'mlrig[tensorflow]' ({exc.name} is missing)"
        raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc

    from mlrig.tracking.integrations._common import RunHolder, by_kind, warn

    class MlrigCallback(keras.callbacks.Callback):
        """Log a Keras training into an mlrig run (see :mod:`mlrig.tracking.integrations.keras`).

        :param run: the run to log into (default: the active run, else a new one).
        :param experiment: the study (run group) of a run the callback starts.
        :param run_name: the name of a run the callback starts.
        :param registered_model_name: register the trained model under this name.
        :param model_type: the registered version's model type (``classification``: the
            runtimes answer ``predict`` with labels and ``predict_proba``).
        :param sample: a few input rows for the registered version's signature.
        """

        def __init__(
            self,
            run: Any = None,
            *,
            experiment: str | None = None,
            run_name: str | None = None,
            registered_model_name: str | None = None,
            model_type: str | None = None,
            sample: Any = None,
        ) -> None:
            super().__init__()
            self._holder = RunHolder(
                run, experiment=experiment, name=run_name, tags={"mlrig.integration": "keras"}
            )
            self.registered_model_name = registered_model_name
            self.model_type = model_type
            self.sample = sample
            #: the version registered at the end of training, if any
            self.version: dict[str, Any] | None = None

        @property
        def run(self) -> Any:
            """The run this callback logs into (``None`` before training starts)."""
            return self._holder.current

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            params: dict[str, Any] = {}
            for key, name in (("epochs", "epochs"), ("steps", "steps_per_epoch")):
                if self.params.get(key) is not None:
                    params[name] = self.params[key]
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is not None:
                params["optimizer"] = type(optimizer).__name__
                try:
                    rate = optimizer.learning_rate
                    params["learning_rate"] = float(keras.ops.convert_to_numpy(rate))
                except (AttributeError, TypeError, ValueError):
                    pass
            try:
                self._holder.get().log_params(params)
            except Exception as exc:  # another fit in this run with other params
                warn(f"the training's params could not be logged: {exc}")

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            run = self._holder.get()
            for kind, metrics in by_kind(logs or {}, "train").items():
                run.log_metrics(metrics, step=epoch, epoch=epoch, kind=kind)

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            try:
                if self.registered_model_name:
                    self.version = self._holder.get().log_model(
                        self.model,
                        name=self.registered_model_name,
                        sample=self.sample,
                        model_type=self.model_type,
                    )
            finally:
                self._holder.end("completed")

    MlrigCallback.__module__ = __name__
    return MlrigCallback
