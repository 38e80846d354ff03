"""A tracked run: what ``mlrig.start_run`` returns.

``log_metric`` only appends to the run's :class:`~mlrig.tracking.buffer.MetricBuffer`;
everything else (params, tags, artifacts, datasets, models) is one call to the store at
once. A heartbeat thread tells the server the script is alive every ``[tracking]
heartbeat_interval_seconds``. The run ends ``completed`` when its ``with`` block ends,
``failed`` (``Type: message``) when the block raises, ``killed`` on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from mlrig.errors import ConflictError, MlrigError, ValidationError
from mlrig.tracking.buffer import MetricBuffer, UnreachableError

if TYPE_CHECKING:
    from mlrig.config import TrackingSection
    from mlrig.tracking.stores import TrackingStore

__all__ = ["END_TIMEOUT", "Run", "dataset_record"]

log = logging.getLogger("mlrig.tracking")

#: seconds the end of a run waits for its points (and the end itself) to reach a server
#: that is down; what is left stays in the spill file
END_TIMEOUT = 60.0
_KINDS = frozenset({"train", "validation", "test"})
_now = time.time


class _Ended(list):  # type: ignore[type-arg]
    """Stands in for the points list of an ended run: logging more says so."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self._name = run.name

    def append(self, _point: object) -> None:
        msg = f"run {self._name!r} has ended; start another (or resume it with run_id=)"
        raise MlrigError(msg)


class Run:
    """One tracked run; use it as a context manager, or call :meth:`end`.

    Made by :func:`mlrig.start_run`, not directly. ``id`` and ``name`` identify it (an
    experiment like any other: ``mlrig experiments show NAME``).
    """

    def __init__(
        self,
        store: TrackingStore,
        view: dict[str, Any],
        *,
        settings: TrackingSection,
        spill_dir: Path,
        owns_store: bool = True,
        baseline: int = 0,
    ) -> None:
        self.store = store
        self.view = view
        self.id: str = str(view["id"])
        self.name: str = view["name"]
        self.group: str | None = view.get("group")
        self.parent_id: str | None = view.get("parent_id")
        self.status = "running"
        self._owns_store = owns_store
        self._params: dict[str, Any] = dict(view.get("hyperparameters") or {})
        self._buffer = MetricBuffer(
            store,
            self.id,
            flush_points=settings.flush_points,
            flush_seconds=settings.flush_seconds,
            max_buffered_points=settings.max_buffered_points,
            spill_dir=spill_dir,
            baseline=baseline,
        )
        self._points = self._buffer.points
        self._interval = settings.heartbeat_interval_seconds
        self._stop = threading.Event()
        self._ended = False
        self._on_end: list[Any] = []
        self._helpers: list[threading.Thread] = []  # use the store: joined before it closes
        self._buffer.start()
        self._heart = threading.Thread(
            target=self._beat, name=f"mlrig-heartbeat-{self.id[:8]}", daemon=True
        )
        self._heart.start()

    def __repr__(self) -> str:
        return f"<Run {self.name!r} id={self.id} {self.status}>"

    # --- metrics (the hot path) -------------------------------------------------------------

    def log_metric(
        self,
        name: str,
        value: float,
        step: int | None = None,
        epoch: int | None = None,
        kind: str | None = None,
    ) -> None:
        """Log one metric point (buffered; sent in the background).

        :param value: a real number; NaN and infinities are kept as such.
        :param kind: ``train``, ``validation``, ``test`` or none.
        """
        if type(value) is not float:
            value = float(value)  # numpy and torch scalars; a non-number fails here
        if kind is not None and kind not in _KINDS:
            msg = f"kind {kind!r} must be one of train, validation, test or None"
            raise ValidationError(msg)
        self._points.append((name, value, step, epoch, kind, _now()))

    def log_metrics(
        self,
        metrics: Mapping[str, float],
        step: int | None = None,
        epoch: int | None = None,
        kind: str | None = None,
    ) -> None:
        """Log several metrics at one step (``{"loss": 0.3, "accuracy": 0.9}``)."""
        if kind is not None and kind not in _KINDS:
            msg = f"kind {kind!r} must be one of train, validation, test or None"
            raise ValidationError(msg)
        at = _now()
        append = self._points.append
        for name, value in metrics.items():
            append((name, value if type(value) is float else float(value), step, epoch, kind, at))

    def flush(self, timeout: float | None = None) -> bool:
        """Send the points logged so far now; ``False`` if ``timeout`` passed first."""
        return self._buffer.flush(timeout)

    # --- params, tags -----------------------------------------------------------------------

    def log_param(self, key: str, value: Any) -> None:
        """Log one parameter (once: the same key with another value is a ConflictError)."""
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (JSON values; anything else is stored as its text)."""
        plain = {str(k): _json_value(v) for k, v in params.items()}
        self.store.log_params(self.id, plain)
        self._params.update(plain)

    def set_tag(self, key: str, value: Any) -> None:
        """Set one tag (a string; other values are stored as their text)."""
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (merged over the run's)."""
        self.store.set_tags(self.id, {str(k): str(v) for k, v in tags.items()})

    # --- files, datasets, models --------------------------------------------------------

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> str:
        """Store a local file with the run, under ``artifact_path/`` (a folder in the
        run's files) or at its top; returns the path it got."""
        file = Path(path)
        if not file.is_file():
            msg = f"no file {str(path)!r} to log (log_artifacts takes a folder)"
            raise ValidationError(msg)
        target = _join(artifact_path, file.name)
        self.store.put_artifact(self.id, target, file)
        return target

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> list[str]:
        """Store every file under ``folder`` (recursively, keeping the layout) under
        ``artifact_path/``; returns their paths."""
        root = Path(folder)
        if not root.is_dir():
            msg = f"no folder {str(folder)!r} to log (log_artifact takes a file)"
            raise ValidationError(msg)
        stored = []
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            target = _join(artifact_path, file.relative_to(root).as_posix())
            self.store.put_artifact(self.id, target, file)
            stored.append(target)
        return stored

    def log_dataset(
        self,
        data: Any,
        *,
        name: str | None = None,
        source: str | None = None,
        context: str | None = None,
    ) -> dict[str, Any]:
        """Record a dataset the run used: a path or URI, a pandas DataFrame or a NumPy
        array. Its sha256 digest, schema (columns and dtypes) and row count are computed
        here; ``context`` says what for (``training``, ``evaluation``). Returns the record."""
        record = dataset_record(data, name=name, source=source, context=context)
        self.store.log_dataset(self.id, record)
        return record

    def log_model(self, model: Any, *, name: str, **version: Any) -> dict[str, Any]:
        """Register ``model`` (scikit-learn, PyTorch, Keras, ONNX...) as a new version of
        the registry model ``name`` with lineage to this run (``source_experiment_id``);
        ``version`` takes ``sample`` (a few input rows) and the fields of a version
        (``metrics``, ``tags``, ``datasets``...). The run's params are its params unless
        given, and ``source_run`` / ``code_version`` its name and git commit. Returns the
        version."""
        version.setdefault("source_run", self.name)
        commit = (self.view.get("reproducibility") or {}).get("git_commit")
        if commit:
            version.setdefault("code_version", commit)
        version.setdefault(
            "params",
            {k: v for k, v in self._params.items() if isinstance(v, (str, int, float, bool))},
        )
        return self.store.log_model(self.id, model, name=name, **version)

    # --- the end ----------------------------------------------------------------------------

    def end(self, status: str = "completed", error: str | None = None) -> None:
        """Send what is buffered, then end the run ``completed``, ``failed`` or
        ``killed`` (``error``: what went wrong). Ending an ended run does nothing."""
        if self._ended:
            return
        if status not in ("completed", "failed", "killed"):
            msg = f"status {status!r} must be completed, failed or killed"
            raise ValidationError(msg)
        self._ended = True
        for callback in list(self._on_end):
            callback(self, status)
        self._points = _Ended(self)
        deadline = time.monotonic() + END_TIMEOUT
        self._buffer.close(timeout=END_TIMEOUT)
        self._stop.set()
        try:
            self._end_with_retries(status, error, deadline)
        finally:
            self.status = status
            for helper in self._helpers:
                helper.join(timeout=END_TIMEOUT)
            if self._owns_store:
                self.store.close()

    def _end_with_retries(self, status: str, error: str | None, deadline: float) -> None:
        pause = 0.25
        while True:
            try:
                self.view = self.store.end_run(self.id, status=status, error=error)
                return
            except Exception as exc:
                if not unreachable(exc) or time.monotonic() + pause > deadline:
                    log.warning("mlrig: run %s could not be ended %s: %s", self.name, status, exc)
                    return
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.end("completed")
        elif isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (signals.Terminated)
            from mlrig.tracking.signals import Terminated

            self.end("killed", error="SIGTERM" if isinstance(exc, Terminated) else None)
        else:
            self.end("failed", error=_one_line(exc))

    # --- heartbeats -------------------------------------------------------------------------

    def _revive(self) -> bool:
        """After an outage longer than the server's heartbeat timeout the sweep failed the
        run while the script went on: put it back to running (``True`` if so)."""
        try:
            if self._ended or not _silent_detail(self.store.get_run(self.id)):
                return False
            self.store.resume_run(self.id)
        except Exception:
            return False
        log.warning("mlrig: run %s was failed for silence while unreachable; resumed", self.name)
        return True

    def _beat(self) -> None:
        warned = False
        while not self._stop.wait(self._interval):
            try:
                self.store.heartbeat(self.id)
            except ConflictError as exc:
                if self._revive():
                    continue
                if not warned:  # another process ended it: say it once
                    log.warning("mlrig: run %s: %s", self.name, exc)
                    warned = True
            except Exception as exc:  # the server is down: the next beat may get through
                log.debug("mlrig: heartbeat of %s failed: %s", self.name, exc)


def _silent_detail(view: dict[str, Any]) -> bool:
    return view.get("status") == "failed" and str(view.get("status_detail") or "").startswith(
        "no heartbeat for "
    )


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server or database could not be reached (worth a retry)
    rather than refusing the request."""
    if isinstance(exc, UnreachableError):
        return True
    if isinstance(exc, MlrigError):  # the client's connection error names the URL only
        return "url" in exc.details and "status" not in exc.details
    return type(exc).__module__.startswith("sqlalchemy") and "DBAPIError" in {
        c.__name__ for c in type(exc).__mro__
    }


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:2000]


def _join(folder: str | None, name: str) -> str:
    folder = (folder or "").strip("/")
    return f"{folder}/{name}" if folder else name


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a numpy/torch scalar
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


# --- datasets -----------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for chunk in iter(lambda: src.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dataset_record(
    data: Any, *, name: str | None = None, source: str | None = None, context: str | None = None
) -> dict[str, Any]:
    """``{"name", "source", "digest", "schema", "rows", "context"}`` of a path or URI, a
    pandas DataFrame or a NumPy array (the digest is sha256: of the file's bytes, or of
    the values with their columns and dtypes)."""
    record: dict[str, Any] = {"name": name, "source": source}
    if isinstance(data, (str, Path)):
        text = str(data)
        record["source"] = source or text
        record["name"] = name or Path(text.split("://", 1)[-1]).stem or "dataset"
        path = Path(text.removeprefix("file://"))
        if "://" not in text.removeprefix("file://") and path.is_file():
            record["digest"] = _file_digest(path)
    elif hasattr(data, "columns") and hasattr(data, "dtypes"):  # a DataFrame
        import pandas as pd

        digest = hashlib.sha256(repr([(str(c), str(t)) for c, t in data.dtypes.items()]).encode())
        digest.update(pd.util.hash_pandas_object(data, index=True).to_numpy().tobytes())
        record["digest"] = digest.hexdigest()
        record["schema"] = {str(c): str(t) for c, t in data.dtypes.items()}
        record["rows"] = len(data)
    elif hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "tobytes"):
        import numpy as np

        array = np.ascontiguousarray(data)
        digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
        record["digest"] = digest.hexdigest()
        record["schema"] = {"dtype": str(array.dtype), "shape": list(array.shape[1:])}
        record["rows"] = int(array.shape[0]) if array.ndim else 1
    else:
        msg = (
            f"log_dataset takes a path or URI, a pandas DataFrame or a NumPy array, not "
            f"{type(data).__name__}"
        )
        raise ValidationError(msg)
    record["name"] = record["name"] or "dataset"
    if context is not None:
        record["context"] = context
    return {k: v for k, v in record.items() if v is not None}
