"""The model pool's loading side: download a version into the serving cache once, load it
with its runtime, warm it up, and put a micro-batcher in front of it.

Runs in the data plane's refresh thread, never on the request path: it may read the
database (the version's metadata) and the artifact store. A version lives in
``[serving] cache_dir/<version_id>/``; it is downloaded into a temporary folder and
renamed into place, so replicas sharing the cache never see half a download.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrig.errors import MlrigError, ValidationError
from mlrig.folders import publish_folder, scratch_beside

if TYPE_CHECKING:
    import numpy as np

    from mlrig.contracts.runtime import LoadedModel
    from mlrig.platform import Platform

log = logging.getLogger("mlrig.serving")

#: written last into a cached version's folder: the download is complete
COMPLETE_MARKER = ".mlrig-complete"


@dataclass(frozen=True)
class Target:
    """One version a deployment serves, as the snapshot names it."""

    variant: str  # "primary" | "canary" | "shadow"
    model: str
    version: str
    version_id: str
    runtime: str
    percent: float

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Target:
        """A target from a snapshot entry's ``targets`` item."""
        return cls(
            variant=str(raw.get("variant") or "primary"),
            model=str(raw["model"]),
            version=str(raw["version"]),
            version_id=str(raw["version_id"]),
            runtime=str(raw.get("runtime") or "auto"),
            percent=float(raw.get("percent") or 0.0),
        )


@dataclass(eq=False)
class LoadedVersion:
    """A version loaded for one deployment: the model, its input schema and its batcher.

    ``in_flight`` counts the requests holding it (event loop only): a version replaced by
    a rolling update is closed once it reaches zero.
    """

    key: tuple[Any, ...]
    deployment_id: str
    deployment: str
    target: Target
    runtime: str
    model: LoadedModel
    schema: Any
    batcher: Any
    signature: dict[str, Any] | None
    has_proba: bool
    load_seconds: float
    facts: dict[str, Any] = field(default_factory=dict)
    in_flight: int = 0
    retired_at: float | None = None
    closed: bool = False
    #: str(version name) / the model's name, encoded once for the response
    version_name: str = ""
    model_name: str = ""

    @property
    def version_id(self) -> str:
        """The registry id of the version served."""
        return self.target.version_id

    def close(self) -> None:
        """Stop the batcher (it answers what is queued) and drop the model.

        Called from the refresh thread; the batcher belongs to the event loop that used
        it, so its ``close()`` is run there (or here, when no loop ever used it)."""
        if self.closed:
            return
        self.closed = True
        import asyncio

        loop = getattr(self.batcher, "_loop", None)
        try:
            if loop is not None and loop.is_running():
                asyncio.run_coroutine_threadsafe(self.batcher.close(), loop)
            else:
                _drive(self.batcher.close())
        except Exception:  # closing must not stop the refresh thread
            log.exception("closing the batcher of %s failed", self.target.version)


def _drive(coroutine: Any) -> None:
    """Run a coroutine that needs no event loop (nothing to wait for) to its end."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()  # it wanted to wait: no loop to wait on, nothing can be queued


def version_key(deployment: dict[str, Any], target: Target) -> tuple[Any, ...]:
    """What makes two loads the same: same deployment, version, runtime and settings."""
    batching = deployment.get("batching") or {}
    return (
        deployment["id"],
        target.version_id,
        target.runtime,
        bool(deployment.get("allow_nan")),
        batching.get("max_batch_size"),
        batching.get("max_latency_ms"),
        target.variant == "shadow",
    )


class ModelLoader:
    """Loads the versions of a platform's deployments (blocking; refresh thread only)."""

    def __init__(self, platform: Platform, *, metrics: Any = None) -> None:
        self.platform = platform
        #: where batch sizes are observed (``ServingMetrics``), if anywhere
        self.metrics = metrics
        self.settings = platform.settings.serving
        self.cache_dir = platform.settings.resolve_path(self.settings.cache_dir)

    # --- files ---------------------------------------------------------------------------

    def fetch(self, target: Target) -> Path:
        """The folder holding ``target``'s artifacts, downloaded now unless cached."""
        folder = self.cache_dir / target.version_id
        if (folder / COMPLETE_MARKER).is_file():
            return folder
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = scratch_beside(folder)
        try:
            written = self.platform.registry.download_version(target.model, target.version_id, tmp)
            if not written:
                msg = (
                    f"version {target.version!r} of model {target.model!r} has no artifacts: "
                    "nothing to serve"
                )
                raise ValidationError(msg)
            return publish_folder(tmp, folder, marker=COMPLETE_MARKER, content=target.version_id)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def metadata(self, target: Target, folder: Path) -> dict[str, Any]:
        """What the runtime is told: the package manifest, under the registry's version
        view (its ``model_type`` and ``signature`` win where they are set)."""
        from mlrig.formats import load_manifest

        try:
            manifest = load_manifest(folder)
        except MlrigError:
            manifest = {}
        view = self.platform.registry.get_version(target.model, target.version_id)
        recorded = {k: v for k, v in view.items() if v is not None and k != "artifacts"}
        return {**manifest, **recorded}

    # --- runtime -------------------------------------------------------------------------

    def resolve_runtime(self, target: Target) -> str:
        """The runtime name (``auto`` resolved the way the control plane does)."""
        if target.runtime and target.runtime != "auto":
            return target.runtime
        from mlrig.serving.spec import choose_runtime

        view = self.platform.registry.get_version(target.model, target.version_id)
        return choose_runtime(view, "auto")

    def load(self, deployment: dict[str, Any], target: Target) -> LoadedVersion:
        """Download, load and warm ``target`` for ``deployment``; build its batcher."""
        from mlrig.backends import load_backend
        from mlrig.serving.batcher import MicroBatcher
        from mlrig.serving.inputs import InputSchema

        started = time.perf_counter()
        folder = self.fetch(target)
        metadata = self.metadata(target, folder)
        runtime = self.resolve_runtime(target)
        backend = load_backend("runtimes", runtime).from_options(
            {}, where=f"runtimes.{runtime}", base_dir=self.platform.settings.base_dir
        )
        model = backend.load(folder, metadata)
        signature = metadata.get("signature")
        schema = InputSchema.from_signature(signature, allow_nan=bool(deployment.get("allow_nan")))
        has_proba = callable(getattr(model, "predict_proba", None))
        run = make_run(model, has_proba)
        batching = deployment.get("batching") or {}
        warm_up(model, run, signature, int(batching.get("max_batch_size") or 1))
        batching_helps = getattr(model, "batching_helps", True)
        batcher = MicroBatcher(
            run,
            max_batch_size=int(batching.get("max_batch_size") or self.settings.max_batch_size)
            if batching_helps
            else 1,
            max_latency_ms=float(
                batching.get("max_latency_ms")
                if batching.get("max_latency_ms") is not None
                else self.settings.max_latency_ms
            ),
            max_queue=int(self.settings.max_queue),
            name=f"{deployment['name']}:{target.version}",
        )
        metrics = getattr(self, "metrics", None)
        if metrics is not None and hasattr(metrics, "observe_batch"):
            dep_name, version_name = deployment["name"], target.version

            def on_batch(size: int, _seconds: float) -> None:
                metrics.observe_batch(dep_name, version_name, size)

            batcher.on_batch = on_batch
        try:
            facts = dict(model.describe())
        except Exception:  # facts are informative only
            facts = {}
        seconds = time.perf_counter() - started
        return LoadedVersion(
            key=version_key(deployment, target),
            deployment_id=deployment["id"],
            deployment=deployment["name"],
            target=target,
            runtime=runtime,
            model=model,
            schema=schema,
            batcher=batcher,
            signature=signature,
            has_proba=has_proba,
            load_seconds=seconds,
            facts=facts,
            version_name=target.version,
            model_name=target.model,
        )


def make_run(model: LoadedModel, has_proba: bool) -> Any:
    """The batch function: ``(N, F) array -> (predictions, probabilities | None)``."""
    both = getattr(model, "predict_with_proba", None)
    if callable(both):
        return both
    return make_generic_run(model, has_proba)


def make_generic_run(model: LoadedModel, has_proba: bool) -> Any:
    """The batch function over the runtime's ``predict`` (and ``predict_proba``)."""
    predict = model.predict
    if not has_proba:

        def run_predict(x: np.ndarray) -> tuple[list[Any], None]:
            return _as_list(predict(x)), None

        return run_predict
    proba = model.predict_proba  # type: ignore[attr-defined]

    def run_both(x: np.ndarray) -> tuple[list[Any], list[Any]]:
        return _as_list(predict(x)), _as_list(proba(x))

    return run_both


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def warm_sample(signature: dict[str, Any] | None, rows: int = 1) -> np.ndarray | None:
    """A zero batch shaped and typed like the signature's input (None: unknown shape)."""
    import numpy as np

    inputs = (signature or {}).get("inputs") or {}
    kind = inputs.get("kind")
    if kind == "dataframe":
        columns = inputs.get("columns") or []
        dtypes = {str(c.get("dtype", "float64")) for c in columns}
        dtype = dtypes.pop() if len(dtypes) == 1 else "float64"
        width = len(columns)
    elif kind == "tensor":
        shape = inputs.get("shape") or []
        if len(shape) != 2 or not isinstance(shape[1], int) or shape[1] <= 0:
            return None
        width, dtype = shape[1], str(inputs.get("dtype", "float32"))
    else:
        return None
    try:
        return np.zeros((rows, width), dtype=np.dtype(dtype))
    except TypeError:
        return np.zeros((rows, width), dtype=np.float64)


def warm_up(
    model: LoadedModel, run: Any, signature: dict[str, Any] | None, batch_rows: int = 1
) -> None:
    """Run the model on a sample so the first request pays no lazy initialisation."""
    sample = warm_sample(signature)
    if sample is None:
        return
    hook = getattr(model, "warm_up", None)
    if callable(hook):
        hook(sample)
    for _ in range(3):  # the allocator, thread pools and caches settle after a few runs
        run(sample)
    batch = warm_sample(signature, rows=batch_rows) if batch_rows > 1 else None
    if batch is not None:  # the first run at a batch's shape allocates (ONNX arenas, TensorRT)
        run(batch)
