"""The module-level tracking API: ``mlrig.start_run``, ``mlrig.log_metric``...

A stack of active runs per process: ``start_run`` pushes one (``nested=True`` makes it a
child of the active run), :meth:`Run.end <mlrig.tracking.run.Run.end>` pops it, and the
shortcuts (``mlrig.log_metric``, ``mlrig.log_params``...) act on the top one, starting a
run first when none is active (as MLflow does).

Where runs go: :func:`set_tracking` (a server URL and token, or ``None`` for the local
config), else ``MLRIG_URL``/``MLRIG_TOKEN``, else the local config (embedded).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrig.errors import ConflictError
from mlrig.tracking import signals, stores
from mlrig.tracking.run import Run

if TYPE_CHECKING:
    from mlrig.config import TrackingSection

__all__ = [
    "active_run",
    "end_run",
    "log_artifact",
    "log_artifacts",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "set_tag",
    "set_tags",
    "set_tracking",
    "start_run",
]

_stack: list[Run] = []
_lock = threading.RLock()


def set_tracking(url: str | None = None, token: str | None = None) -> None:
    """Send the runs started from now on to the mlrig server at ``url`` (with an API
    ``token`` that may write), or with ``url=None`` to the local config's database,
    whatever ``MLRIG_URL`` says."""
    stores.configure(url.rstrip("/") if url else None, token)


def _settings(store: stores.TrackingStore) -> tuple[TrackingSection, Path]:
    """The ``[tracking]`` section and the spill folder for runs of ``store``."""
    from mlrig.config import TrackingSection

    if isinstance(store, stores.EmbeddedStore):
        settings = store.platform.settings
    else:
        from mlrig.config import load_settings
        from mlrig.errors import ConfigError

        try:
            settings = load_settings()
        except ConfigError:
            settings = None
    section = settings.tracking if settings is not None else TrackingSection()
    if section.spill_dir is not None and settings is not None:
        spill = settings.resolve_path(section.spill_dir)
    else:
        from platformdirs import user_cache_dir

        spill = Path(user_cache_dir("mlrig")) / "spill"
    return section, spill


def start_run(
    experiment: str | None = None,
    *,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
    run_id: str | None = None,
    description: str | None = None,
    seed: int | None = None,
    set_seeds: bool = False,
) -> Run:
    """Start a tracked run (or resume one), make it the active run and return it.

    Use it as a context manager (``with mlrig.start_run("churn") as run:``): the run ends
    ``completed``, ``failed`` when the block raises, ``killed`` on Ctrl-C or SIGTERM.
    Without ``with``, end it with :func:`end_run` (or at exit, when it ends
    ``completed``, or ``failed`` on an uncaught exception).

    :param experiment: the study (run group) it belongs to, made on first use.
    :param name: default ``<experiment or "run">-<yyyymmdd-HHMMSS>-<4 hex>``.
    :param params: its parameters.
    :param tags: its tags (text).
    :param nested: a child of the active run (``parent_id``).
    :param run_id: resume this run (an ended one goes back to running) instead.
    :param seed: recorded in the reproducibility record (drawn when not given).
    :param set_seeds: also seed ``random``, NumPy (and torch when imported) with it.
    :raises ConflictError: a run is active and neither ``nested`` nor ``run_id`` is given.
    """
    from mlrig.tracking import reproducibility
    from mlrig.tracking.buffer import replay_spilled

    with _lock:
        if _stack and not nested and run_id is None:
            active = _stack[-1]
            msg = (
                f"run {active.name!r} is active; end it first (mlrig.end_run()), or pass "
                "nested=True to start a child run"
            )
            raise ConflictError(msg, details={"run": active.id})
        parent = _stack[-1].id if nested and _stack else None
        store = stores.open_store()
        try:
            section, spill = _settings(store)
            baseline = 0
            if run_id is not None:
                view = store.resume_run(run_id)
                baseline = store.count_points(str(view["id"]))
                if params:
                    store.log_params(str(view["id"]), _plain_params(params))
                if tags:
                    store.set_tags(str(view["id"]), {str(k): str(v) for k, v in tags.items()})
            else:
                facts = reproducibility.capture(seed=seed)
                view = store.start_run(
                    name=name,
                    group=experiment,
                    parent=parent,
                    params=_plain_params(params or {}),
                    tags={str(k): str(v) for k, v in (tags or {}).items()},
                    description=description,
                    reproducibility=facts,
                )
                seed = facts["seed"]
            if set_seeds and seed is not None:
                reproducibility.seed_generators(seed)
            run = Run(store, view, settings=section, spill_dir=spill, baseline=baseline)
        except BaseException:
            store.close()
            raise
        run._on_end.append(_forget)
        _stack.append(run)
        signals.install(_end_all)
    if spill.is_dir() and any(spill.iterdir()):  # points an earlier process left
        helper = threading.Thread(
            target=_replay, args=(replay_spilled, store, spill), name="mlrig-replay", daemon=True
        )
        helper.start()
        run._helpers.append(helper)
    return run


def _replay(replay: Any, store: stores.TrackingStore, spill: Path) -> None:
    try:
        replay(store, spill)
    except Exception:  # leftovers of an earlier process: the next run tries again
        return


def _plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    from mlrig.tracking.run import _json_value

    return {str(k): _json_value(v) for k, v in params.items()}


def _forget(run: Run, status: str) -> None:
    """Before ``run`` ends: its children end the same way; then it leaves the stack."""
    with _lock:
        if run not in _stack:
            return
        children = _stack[_stack.index(run) + 1 :]
    for child in reversed(children):
        child.end(status)
    with _lock:
        if run in _stack:
            _stack.remove(run)


def _end_all(status: str, error: str | None) -> None:
    """End every open run, innermost first (at exit, on SIGTERM)."""
    while True:
        with _lock:
            if not _stack:
                return
            run = _stack[-1]
        try:
            run.end(status, error=error)
        except Exception:
            with _lock:
                if run in _stack:
                    _stack.remove(run)


def active_run() -> Run | None:
    """The innermost active run, or ``None``."""
    with _lock:
        return _stack[-1] if _stack else None


def end_run(status: str = "completed") -> None:
    """End the active run (and the runs nested in it); nothing when none is active."""
    run = active_run()
    if run is not None:
        run.end(status)


def _run() -> Run:
    run = active_run()
    return run if run is not None else start_run()


def log_metric(
    name: str,
    value: float,
    step: int | None = None,
    epoch: int | None = None,
    kind: str | None = None,
) -> None:
    """Log a metric point to the active run (see :meth:`Run.log_metric`)."""
    (_stack[-1] if _stack else _run()).log_metric(name, value, step, epoch, kind)


def log_metrics(
    metrics: Mapping[str, float],
    step: int | None = None,
    epoch: int | None = None,
    kind: str | None = None,
) -> None:
    """Log several metrics to the active run at one step."""
    _run().log_metrics(metrics, step=step, epoch=epoch, kind=kind)


def log_param(key: str, value: Any) -> None:
    """Log a parameter of the active run."""
    _run().log_param(key, value)


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters of the active run."""
    _run().log_params(params)


def set_tag(key: str, value: Any) -> None:
    """Set a tag of the active run."""
    _run().set_tag(key, value)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags of the active run."""
    _run().set_tags(tags)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> str:
    """Store a file with the active run."""
    return _run().log_artifact(path, artifact_path)


def log_artifacts(folder: str | Path, artifact_path: str | None = None) -> list[str]:
    """Store a folder's files with the active run."""
    return _run().log_artifacts(folder, artifact_path)
