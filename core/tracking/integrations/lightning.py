"""``MlrigLogger``: a PyTorch Lightning logger that records a ``Trainer``'s run in mlrig.

::

    from mlrig.tracking.integrations.lightning import MlrigLogger

    trainer = lightning.Trainer(max_epochs=10, logger=MlrigLogger("churn"))
    trainer.fit(model, train_loader, val_loader)

``log_hyperparams`` (the module's ``save_hyperparameters()``) become the run's params,
nested ones flattened with ``.``; every metric ``self.log`` sends becomes a point at the
trainer's global step, with the epoch Lightning reports; ``val_*``/``val/*`` metrics get
kind ``validation`` (``val_loss`` is ``loss``), ``test_*`` kind ``test``, ``train_*``
kind ``train``. The run is the one given, else the active one, else one the logger
starts: that one ends ``completed`` when the trainer finishes, ``failed`` when it stops
on an exception (Ctrl-C included); a later ``trainer.test`` resumes it. Only rank zero
logs. Lightning is imported when ``MlrigLogger`` is first used, not when this module is.
"""

from __future__ import annotations

import functools
import sys
from argparse import Namespace
from typing import Any

__all__ = ["MlrigLogger"]  # noqa: F822 (made on first use: module __getattr__)


def __getattr__(name: str) -> Any:
    if name == "MlrigLogger":
        return _logger_class()
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


@functools.cache
def _logger_class() -> type:
    try:
        from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
        from lightning.pytorch.utilities import rank_zero_only
    except ModuleNotFoundError:
        try:  # the standalone package
            from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
            from pytorch_lightning.utilities import rank_zero_only
        except ModuleNotFoundError as exc:
            from mlrig.errors import MissingExtraError

            msg = (
                "MlrigLogger needs PyTorch Lightning: pip install 'mlrig[lightning]' "
                f"({exc.name} is missing)"
            )
            raise MissingExtraError(msg, details={"missing": [exc.name]}) from exc

    from mlrig.tracking.integrations._common import RunHolder, by_kind, plain_params, warn

    class MlrigLogger(Logger):
        """Log a Lightning training into an mlrig run (see
        :mod:`mlrig.tracking.integrations.lightning`).

        :param experiment: the study (run group) of a run the logger starts.
        :param run_name: the name of a run the logger starts.
        :param run: the run to log into (default: the active run, else a new one).
        :param tags: tags of a run the logger starts.
        """

        def __init__(
            self,
            experiment: str | None = None,
            *,
            run_name: str | None = None,
            run: Any = None,
            tags: dict[str, Any] | None = None,
        ) -> None:
            super().__init__()
            self._holder = RunHolder(
                run,
                experiment=experiment,
                name=run_name,
                tags={"mlrig.integration": "lightning", **(tags or {})},
            )
            self._experiment_name = experiment

        @property
        def name(self) -> str | None:
            """The study (run group) name."""
            run = self._holder.current
            return (run.group if run is not None else None) or self._experiment_name

        @property
        def version(self) -> str | None:
            """The run's id (the run is found or started on first use)."""
            if rank_zero_only.rank != 0:
                return None
            run = self._holder.current
            return run.id if run is not None else self.experiment.id

        @property
        @rank_zero_experiment
        def experiment(self) -> Any:
            """The :class:`~mlrig.tracking.run.Run` logged into (a run this logger started
            and ended is resumed: Lightning asks for it as each ``fit``/``test`` starts)."""
            return self._holder.get()

        @rank_zero_only
        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            values = vars(params) if isinstance(params, Namespace) else dict(params or {})
            try:
                self.experiment.log_params(plain_params(values))
            except Exception as exc:  # the same key logged before with another value
                warn(f"the hyperparameters could not be logged: {exc}")

        @rank_zero_only
        def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
            values = dict(metrics)
            epoch = values.pop("epoch", None)
            epoch = None if epoch is None else int(float(epoch))
            run = self.experiment
            for kind, group in by_kind(values, None).items():
                run.log_metrics(group, step=step, epoch=epoch, kind=kind)

        @rank_zero_only
        def finalize(self, status: str) -> None:
            if not self._holder.started:
                return
            if status != "failed":  # "success", "finished"
                self._holder.end("completed")
                return
            exc = sys.exc_info()[1]  # Lightning calls this while handling the exception
            if isinstance(exc, KeyboardInterrupt):
                self._holder.end("killed", "KeyboardInterrupt")
            elif exc is not None:
                self._holder.end("failed", " ".join(f"{type(exc).__name__}: {exc}".split()))
            else:
                self._holder.end("failed", "the Lightning trainer stopped on an exception")

    MlrigLogger.__module__ = __name__
    return MlrigLogger
