"""The data plane: answers predictions for every active deployment.

A :class:`DataPlane` keeps a :class:`~mlrig.serving.table.Table` of the served
deployments. A background thread re-reads ``platform.deployments.snapshot()`` every
``[serving] refresh_seconds`` (and at once when the deployment-changed hook fires in this
process), loads what changed beside what serves now, warms it and swaps the table in one
assignment (a rolling update); a replaced version is closed once its in-flight requests
ended. The request path never touches the database: tokens are checked through
:class:`~mlrig.serving.auth.TokenCache`, inference records go to a buffered
:class:`~mlrig.serving.inference_log.InferenceLogger`.

Two front ends share it: :func:`create_app`, the raw ASGI app ``mlrig serve`` runs in its
replicas (:mod:`mlrig.serving.asgi`), and :func:`embedded`, the one data plane of a
``mlrig server`` process behind ``api/routers/predict.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlrig.errors import (
    MlrigError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from mlrig.hooks import hookimpl
from mlrig.serving.batcher import Closing
from mlrig.serving.loader import LoadedVersion, ModelLoader, Target, version_key
from mlrig.serving.table import DeploymentState, ResponseCache, Route, Table

if TYPE_CHECKING:
    import numpy as np

    from mlrig.platform import Platform
    from mlrig.security import Principal

__all__ = [
    "Answer",
    "DataPlane",
    "DeploymentFailedError",
    "DeploymentRequiredError",
    "NotReadyError",
    "close_embedded",
    "create_app",
    "embedded",
]

log = logging.getLogger("mlrig.serving")

#: a deployment whose revision failed to load is tried again after this long (seconds)
RETRY_FAILED_SECONDS = 30.0
#: a replaced version stays open at least this long after the swap (seconds): a request
#: that read the old table just before it still finds its batcher running
RETIRE_GRACE_SECONDS = 1.0
#: the most deployment names an error message lists
_LIST_NAMES = 20


class NotReadyError(MlrigError):
    """The deployment is still loading its first version: try again shortly."""

    code = "deployment_not_ready"
    http_status = 503

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class DeploymentFailedError(MlrigError):
    """The deployment could not load its version (its status says why)."""

    code = "deployment_failed"
    http_status = 409


class DeploymentRequiredError(MlrigError):
    """``/invocations`` on a server hosting several deployments names none of them."""

    code = "deployment_required"
    http_status = 400


@dataclass(slots=True)
class Answer:
    """A predict response: the bytes to send and what to do after sending them."""

    body: bytes
    request_id: str
    status: int = 200
    #: the shadow version's copy of the request, run after the answer is sent
    shadow: tuple[DeploymentState, LoadedVersion, Any, str] | None = None


@dataclass
class _Failure:
    revision: str
    at: float
    reason: str


@dataclass
class _Stats:
    refreshes: int = 0
    refresh_errors: int = 0
    last_error: str | None = None
    loaded: int = 0
    retired: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class DataPlane:
    """The served deployments of one replica, their models, and the predict logic.

    :param replica: this replica's number (for health and logs).
    :param only: serve just these deployments (ids or names); ``None``: every active one.
    :param load_wait_seconds: how long a request for a deployment that is still loading
        its first version waits for it (0: answer 503 with ``Retry-After`` at once).
    :param follow_hooks: refresh at once when this process's deployment-changed hook
        fires (the embedded data plane, which shares the process with the control plane).
    :param report_status: tell the control plane deploying/active/failed (off for a
        one-shot ``mlrig predict``, which is no serving replica).
    """

    def __init__(
        self,
        platform: Platform,
        *,
        replica: int = 0,
        only: Iterable[str] | None = None,
        load_wait_seconds: float = 0.0,
        follow_hooks: bool = False,
        report_status: bool = True,
        metrics: Any = None,
        inference_log: Any = None,
    ) -> None:
        self.platform = platform
        self.settings = platform.settings.serving
        self.replica = replica
        self.only = frozenset(only) if only is not None else None
        self.load_wait_seconds = float(load_wait_seconds)
        self.report_status = report_status
        #: what the request path reads; replaced whole, never mutated
        self.table = Table()
        self.auth_enabled = bool(platform.settings.auth.enabled)
        self.tokens = self._token_cache() if self.auth_enabled else None
        self.metrics = metrics if metrics is not None else _make_metrics()
        self.inference_log = (
            inference_log
            if inference_log is not None
            else _make_inference_log(platform, self.metrics)
        )
        self.loader = ModelLoader(platform, metrics=self.metrics)
        self.stats = _Stats()
        self._pool: dict[tuple[Any, ...], LoadedVersion] = {}
        self._retired: list[LoadedVersion] = []
        self._failures: dict[str, _Failure] = {}
        #: deployments stopped or deleted through this process, not yet out of a snapshot
        self._dropped: set[str] = set()
        #: versions whose request path ran once in the event loop (see :meth:`warm`)
        self._warmed: set[tuple[Any, ...]] = set()
        self._refresh_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._start_lock = threading.Lock()
        #: refresh generations: asked for (hook, request) and completed
        self._wanted = 0
        self._done = -1
        self._background: set[asyncio.Task[Any]] = set()
        self._follower = _follow_hooks(self) if follow_hooks else None

    def _token_cache(self) -> Any:
        from mlrig.serving.auth import TokenCache

        return TokenCache(self.platform.security, self.settings.token_cache_seconds)

    # --- lifecycle -------------------------------------------------------------------

    def start(self, *, wait: bool = False) -> DataPlane:
        """Start the refresh thread and the inference log (once); ``wait``: return after
        the first refresh (models loaded)."""
        with self._start_lock:
            if not self._started:
                self._started = True
                start = getattr(self.inference_log, "start", None)
                if start is not None:
                    start()
                self._thread = threading.Thread(
                    target=self._run, name=f"mlrig-dataplane-{self.replica}", daemon=True
                )
                self._thread.start()
        if wait:
            self.wait_refreshed()
        return self

    def stop(self) -> None:
        """Stop refreshing, close every model (their batchers drain) and flush the log."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        for lv in [*self._pool.values(), *self._retired]:
            lv.close()
        self._pool.clear()
        self._retired.clear()
        stop = getattr(self.inference_log, "stop", None)
        if stop is not None and self._started:
            try:
                stop(flush=True)
            except Exception:
                log.exception("flushing the inference log failed")
        self._started = False
        if self._follower is not None:
            with contextlib.suppress(Exception):
                self.platform.pm.unregister(self._follower)
            self._follower = None

    def changed(self, event: dict[str, Any]) -> None:
        """A deployment changed in this process (the hook): a stopped or deleted one stops
        answering now (no database read), anything else is read by a refresh at once."""
        dep_id = str(event.get("deployment_id") or "")
        view = event.get("deployment") or {}
        gone = event.get("action") == "deleted" or view.get("status") == "inactive"
        if gone and dep_id:
            self._dropped.add(dep_id)
            table = self.table
            if table.get(dep_id) is not None:
                kept = [s for s in table.states if s.id != dep_id]
                self.table = Table.of(kept, ready=table.ready)
        else:
            self._dropped.discard(dep_id)
        self.request_refresh()

    def request_refresh(self) -> int:
        """Ask the refresh thread to re-read the deployments now; the generation to wait for."""
        self._wanted += 1
        self._wake.set()
        return self._wanted

    def wait_refreshed(self, generation: int | None = None, timeout: float = 60.0) -> bool:
        """Block until a refresh at least as new as ``generation`` completed."""
        target = self._wanted if generation is None else generation
        deadline = time.monotonic() + timeout
        while self._done < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    async def _await_refresh(self, timeout: float) -> None:
        target = self._wanted
        deadline = time.monotonic() + timeout
        while self._done < target and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _run(self) -> None:
        while not self._stop.is_set():
            generation = self._wanted
            self.refresh()
            self._done = generation
            self._wake.wait(self.settings.refresh_seconds)
            self._wake.clear()

    # --- the refresh: snapshot -> table ----------------------------------------------

    def refresh(self) -> Table:
        """Read the deployments once, load what changed, swap the table, retire the old.

        Never raises: a failed read keeps serving the current table."""
        with self._refresh_lock:
            try:
                self._refresh()
                self.stats.refreshes += 1
            except Exception as exc:  # the database may be down: keep serving
                self.stats.refresh_errors += 1
                error = f"{type(exc).__name__}: {exc}"
                if error != self.stats.last_error:  # once per outage, not every refresh
                    log.warning("reading the deployments failed (still serving): %s", error)
                self.stats.last_error = error
            else:
                self.stats.last_error = None
            self._reap()
            return self.table

    def _refresh(self) -> None:
        snapshot = [d for d in self.platform.deployments.snapshot() if self._wanted_here(d)]
        current = {s.id: s for s in self.table.states}
        ids = [str(d["id"]) for d in snapshot]
        # a stop seen through the hook holds until a snapshot no longer has the deployment
        self._dropped &= set(ids)
        # deployments gone (deleted, stopped) leave the table first, at once
        states = {i: current[i] for i in ids if i in current}
        self._publish(states, ids, complete=False)
        for deployment in snapshot:
            dep_id = str(deployment["id"])
            old = current.get(dep_id)
            if (
                old is not None
                and old.revision == deployment.get("revision")
                and old.routes
                and (old.features is None or old.features.current(deployment))
            ):
                old.view = deployment  # informational fields may change with the revision
                self._report_loaded(deployment, old)
                continue
            failure = self._failures.get(dep_id)
            if (
                failure is not None
                and failure.revision == deployment.get("revision")
                and time.monotonic() - failure.at < RETRY_FAILED_SECONDS
            ):
                continue
            states[dep_id] = self._load_state(deployment, old)
            self._publish(states, ids, complete=False)
        self._publish(states, ids, complete=True)
        self._retire_unused()

    def _wanted_here(self, deployment: dict[str, Any]) -> bool:
        if deployment.get("status") == "inactive":
            return False
        return self.only is None or bool(
            {str(deployment.get("id")), deployment.get("name")} & self.only
        )

    def _publish(
        self, states: dict[str, DeploymentState], ids: list[str], *, complete: bool
    ) -> None:
        dropped = self._dropped
        ids = [i for i in ids if i not in dropped]
        ordered = [states[i] for i in ids if i in states]
        ready = complete and len(ordered) == len(ids) and all(s.routes or s.error for s in ordered)
        self.table = Table.of(ordered, ready=ready)

    def _load_state(
        self, deployment: dict[str, Any], old: DeploymentState | None
    ) -> DeploymentState:
        """Load every target of ``deployment`` (beside ``old``, which keeps serving until
        this returns) and build its new state; on failure keep ``old`` serving."""
        dep_id, name = str(deployment["id"]), str(deployment["name"])
        revision = str(deployment.get("revision") or "")
        if deployment.get("status") == "pending":  # the control plane says so on a change
            self._set_status(dep_id, "deploying", revision=revision)
        try:
            targets = [Target.of(t) for t in deployment.get("targets") or []]
            serving = [t for t in targets if t.variant != "shadow"]
            if not serving:
                msg = f"deployment {name!r} has no version to serve"
                raise ValidationError(msg)
            routes = [Route(self._version(deployment, t), t.variant, t.percent) for t in serving]
            binding = self._features(deployment)
        except Exception as exc:
            reason = _reason(exc)
            log.warning("deployment %s: loading failed: %s", name, reason)
            self._failures[dep_id] = _Failure(revision, time.monotonic(), reason)
            if old is not None and old.routes:
                primary = old.primary
                still = f"{primary.model_name} {primary.version_name}" if primary else "?"
                self._set_status(dep_id, "failed", f"{reason} (still serving {still})", revision)
                return old
            self._set_status(dep_id, "failed", reason, revision)
            return DeploymentState(dep_id, name, deployment, revision, [], None, error=reason)
        shadow, shadow_problem = None, None
        for t in targets:
            if t.variant == "shadow":
                try:
                    shadow = self._version(deployment, t)
                except Exception as exc:  # a broken shadow must not stop the primary
                    shadow_problem = f"shadow version {t.version!r} not loaded: {_reason(exc)}"
                    log.warning("deployment %s: %s", name, shadow_problem)
        self._failures.pop(dep_id, None)
        state = DeploymentState(
            dep_id,
            name,
            deployment,
            revision,
            routes,
            shadow,
            recent=old.recent if old is not None else ResponseCache(),
            ready=True,
            features=binding,
        )
        reported = (deployment.get("status"), deployment.get("status_reason"))
        if reported != ("active", shadow_problem):
            self._set_status(dep_id, "active", shadow_problem, revision)
        return state

    def _features(self, deployment: dict[str, Any]) -> Any:
        """A feature-backed deployment's binding: its views resolved now, once per load."""
        config = deployment.get("features")
        if not config:
            return None
        from mlrig.serving.features import FeatureBinding

        return FeatureBinding.load(self.platform, config)

    def _report_loaded(self, deployment: dict[str, Any], state: DeploymentState) -> None:
        # the control plane set "deploying" (or another replica "failed") for a revision
        # this replica serves: say it is active
        if deployment.get("status") in ("pending", "deploying", "failed") and state.ready:
            self._set_status(state.id, "active", None, state.revision)

    def _version(self, deployment: dict[str, Any], target: Target) -> LoadedVersion:
        key = version_key(deployment, target)
        found = self._pool.get(key)
        if found is not None and not found.closed:
            return found
        lv = self.loader.load(deployment, target)
        self.stats.loaded += 1
        _call(self.metrics, "model_loaded", deployment["name"], target.version, lv.load_seconds)
        self._pool[key] = lv
        log.info(
            "deployment %s: loaded %s %s with %s in %.2f s",
            deployment["name"],
            target.model,
            target.version,
            lv.runtime,
            lv.load_seconds,
        )
        return lv

    def _retire_unused(self) -> None:
        used = {id(v) for s in self.table.states for v in s.all_versions()}
        now = time.monotonic()
        for key, lv in list(self._pool.items()):
            if id(lv) not in used:
                del self._pool[key]
                lv.retired_at = now
                self._retired.append(lv)

    def _reap(self) -> None:
        """Close the retired versions whose last request ended."""
        now = time.monotonic()
        keep = []
        for lv in self._retired:
            if lv.in_flight <= 0 and now - (lv.retired_at or now) >= RETIRE_GRACE_SECONDS:
                lv.close()
                self.stats.retired += 1
            else:
                keep.append(lv)
        self._retired = keep
        if keep:  # come back soon to close them
            threading.Timer(RETIRE_GRACE_SECONDS, self._wake.set).start()

    def _set_status(
        self,
        deployment_id: str,
        status: str,
        reason: str | None = None,
        revision: str | None = None,
    ) -> None:
        if not self.report_status:
            return
        try:
            self.platform.deployments.set_status(deployment_id, status, reason, revision=revision)
        except Exception as exc:  # reporting must never stop serving
            log.warning("could not report %s for deployment %s: %s", status, deployment_id, exc)

    # --- the request path ------------------------------------------------------------

    async def authenticate(self, token: str | None) -> Principal:
        """The principal of a bearer token (the local operator when auth is off)."""
        if self.tokens is None:
            from mlrig.api.security import LOCAL_OPERATOR

            return LOCAL_OPERATOR
        if not token:
            return self.tokens.authenticate(token)  # refuses without the database
        principal = self.tokens.peek(token)
        if principal is None:  # not cached: one database check, off the event loop
            principal = await asyncio.to_thread(self.tokens.authenticate, token)
        return principal

    async def lookup(self, ref: str, principal: Principal) -> DeploymentState:
        """The served deployment ``ref`` (id or name), loaded or not, if ``principal`` may
        predict with it.

        :raises NotFoundError: no such deployment is served here (404).
        :raises PermissionDeniedError: the token may not predict with it (403).
        """
        state = self.table.get(ref)
        if state is None and self._done < self._wanted:  # a change is being read
            await self._await_refresh(min(self.load_wait_seconds, 10.0) or 0.5)
            state = self.table.get(ref)
        if state is None:
            raise self._not_found(ref)
        may = getattr(principal, "may_predict", None)
        allowed = may(state.id, state.name) if may is not None else _can_predict(principal)
        if not allowed:
            msg = (
                f"user {principal.name!r} may not predict with deployment {state.name!r}: "
                "the token's role or scopes do not allow it (it needs the predict "
                f"permission and a scope such as 'predict:{state.name}' or 'predict:*')"
            )
            raise PermissionDeniedError(
                msg, details={"permission": "predict", "deployment": state.name}
            )
        return state

    async def resolve(self, ref: str, principal: Principal) -> DeploymentState:
        """:meth:`lookup`, and the deployment must serve (waits up to
        ``load_wait_seconds`` for its first version).

        :raises NotReadyError: still loading its first version (503, Retry-After).
        :raises DeploymentFailedError: its version could not be loaded (409).
        """
        state = await self.lookup(ref, principal)
        if not state.routes:
            state = await self._wait_loaded(state)
        return state

    def not_ready(self, state: DeploymentState) -> MlrigError:
        """The error of a deployment that serves nothing (failed, or still loading)."""
        if state.error is not None:
            msg = f"deployment {state.name!r} failed to load: {state.error}"
            return DeploymentFailedError(msg, details={"deployment": state.name})
        msg = f"deployment {state.name!r} is still loading its model; retry shortly"
        return NotReadyError(msg, details={"deployment": state.name})

    async def _wait_loaded(self, state: DeploymentState) -> DeploymentState:
        deadline = time.monotonic() + self.load_wait_seconds
        while not state.routes:
            if state.error is not None or time.monotonic() >= deadline:
                raise self.not_ready(state)
            await asyncio.sleep(0.02)
            state = self.table.get(state.id) or state
        return state

    def _not_found(self, ref: str) -> NotFoundError:
        names = [s.name for s in self.table.states][:_LIST_NAMES]
        served = ", ".join(names) if names else "none"
        msg = f"no deployment {ref[:200]!r} is served here (active deployments: {served})"
        return NotFoundError(msg, details={"deployment": ref[:200]})

    def only_deployment(self) -> str:
        """The one served deployment's id (for ``/invocations``)."""
        states = self.table.states
        if len(states) == 1:
            return states[0].id
        if not states:
            raise self._not_found("")
        names = ", ".join(s.name for s in states[:_LIST_NAMES])
        msg = (
            f"several deployments are served here ({names}): name one with "
            "?deployment=NAME or the X-Mlrig-Deployment header"
        )
        raise DeploymentRequiredError(msg)

    async def predict(
        self,
        state: DeploymentState,
        body: bytes,
        *,
        content_type: str | None = None,
        protocol: str = "auto",
        request_id: str | None = None,
        client_key: bytes | None = None,
        version: str | None = None,
        header_length: int | None = None,
    ) -> Answer:
        """Answer one predict request of ``state`` (a resolved deployment).

        :param request_id: the ``X-Request-Id`` header, used when the body names none.
        :param client_key: makes the canary choice sticky for one client.
        :param version: serve this version name (``/v2/models/{name}/versions/{v}``).
        :raises MlrigError: bad input (422), overload (429), ...
        """
        started = time.perf_counter()
        if state.features is not None:  # entity keys in: its own branch, off the hot path
            from mlrig.serving.features import predict_features

            return await predict_features(
                self,
                state,
                body,
                started=started,
                content_type=content_type,
                protocol=protocol,
                request_id=request_id,
                client_key=client_key,
                version=version,
                header_length=header_length,
            )
        parsed = _parse(body, content_type, protocol, header_length)
        # a v2 "id" only correlates (Triton clients reuse them): echoed, not idempotent
        client_id = parsed.request_id if parsed.protocol != "v2" else None
        recent = state.recent
        future = None
        digest = 0
        if client_id:
            digest = hash(body)
            found = recent.get(client_id)
            if found is not None:
                return await _replay(found, digest, client_id, state.name)
            future = recent.start(client_id, digest)
            rid = client_id
        else:
            rid = parsed.request_id or request_id or _new_request_id()
        try:
            route = _pick(state, client_key, version)
            try:
                predictions, probabilities, x = await self._infer(state, route, parsed)
            except Closing:  # replaced by a rolling update meanwhile: use the new table
                state = self.table.get(state.id) or state
                route = _pick(state, client_key, version)
                predictions, probabilities, x = await self._infer(state, route, parsed)
            lv = route.version
            out = _format(parsed, predictions, probabilities, lv, state.name, rid)
        except BaseException as exc:
            if future is not None:
                recent.fail(client_id, future, exc)
            if isinstance(exc, MlrigError):
                primary = state.primary
                _call(
                    self.metrics,
                    "error",
                    state.name,
                    primary.version_name if primary else "",
                    exc.code,
                )
                _call(
                    self.metrics,
                    "observe_request",
                    state.name,
                    primary.version_name if primary else "",
                    time.perf_counter() - started,
                    exc.http_status,
                )
            raise
        if future is not None:
            recent.finish(client_id, digest, future, out)
        seconds = time.perf_counter() - started
        self.inference_log.record(
            deployment_id=state.id,
            request_id=rid,
            inputs=x,
            prediction=predictions,
            confidence=_confidence(probabilities),
            latency_ms=seconds * 1000.0,
            model_version_id=lv.version_id,
            variant=route.variant,
        )
        self.metrics.observe_request(state.name, lv.version_name, seconds, 200)
        shadow = state.shadow
        return Answer(out, rid, 200, (state, shadow, x, rid) if shadow is not None else None)

    async def _infer(
        self, state: DeploymentState, route: Route, parsed: Any
    ) -> tuple[Any, Any, np.ndarray]:
        lv = route.version
        x = lv.schema.to_batch(parsed)
        lv.in_flight += 1
        metrics = self.metrics
        metrics.in_flight_inc(state.name)
        try:
            predictions, probabilities = await lv.batcher.submit(x)
        finally:
            lv.in_flight -= 1
            metrics.in_flight_dec(state.name)
        return predictions, probabilities, x

    def after(self, answer: Answer) -> None:
        """Run what comes after an answer was sent (the shadow copy), in the background."""
        if answer.shadow is None:
            return
        task = asyncio.get_running_loop().create_task(self._shadow(*answer.shadow))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow(
        self, state: DeploymentState, lv: LoadedVersion, x: np.ndarray, request_id: str
    ) -> None:
        """The shadow version's answer to a copy of the request: logged, never returned."""
        started = time.perf_counter()
        lv.in_flight += 1
        try:
            predictions, probabilities = await lv.batcher.submit(x)
        except Exception as exc:  # the shadow's failure is the shadow's alone
            code = getattr(exc, "code", type(exc).__name__)
            _call(self.metrics, "error", state.name, lv.version_name, f"shadow_{code}")
            return
        finally:
            lv.in_flight -= 1
        seconds = time.perf_counter() - started
        self.inference_log.record(
            deployment_id=state.id,
            request_id=f"{request_id}:shadow",
            inputs=x,
            prediction=predictions,
            confidence=_confidence(probabilities),
            latency_ms=seconds * 1000.0,
            model_version_id=lv.version_id,
            variant="shadow",
        )

    async def warm(self) -> None:
        """Run one synthetic request per served version through the request path in this
        event loop (parse, schema, batcher at 1 row and at a full batch, answer), so the
        first real requests pay no lazy start-up. Not logged, not counted."""
        from mlrig.serving.loader import warm_sample

        for state in self.table.states:
            for lv in state.all_versions():
                if lv.closed or lv.key in self._warmed:
                    continue
                hook, lv.batcher.on_batch = lv.batcher.on_batch, None
                try:
                    for rows in (1, lv.batcher.max_batch_size):
                        sample = warm_sample(lv.signature, rows=rows)
                        if sample is None:
                            break
                        body = _warm_body(sample)
                        parsed = _parse(body, "application/json", "auto", None)
                        predictions, probabilities = await lv.batcher.submit(
                            lv.schema.to_batch(parsed)
                        )
                        _format(parsed, predictions, probabilities, lv, state.name, "warm-up")
                except Exception as exc:  # the load's own warm-up passed: report, go on
                    log.warning("warming %s %s failed: %s", state.name, lv.version_name, exc)
                finally:
                    lv.batcher.on_batch = hook
                self._warmed.add(lv.key)

    # --- health ----------------------------------------------------------------------

    def health(self, state: DeploymentState) -> dict[str, Any]:
        """What a deployment's health route answers."""
        status = "ready" if state.routes else ("failed" if state.error else "loading")

        def version(lv: LoadedVersion, variant: str, percent: float) -> dict[str, Any]:
            return {
                "variant": variant,
                "model": lv.model_name,
                "version": lv.version_name,
                "version_id": lv.version_id,
                "runtime": lv.runtime,
                "percent": percent,
                "load_seconds": round(lv.load_seconds, 4),
                "in_flight": lv.in_flight,
                "queue_depth": getattr(lv.batcher, "queue_depth", 0),
                "execution": _jsonable(lv.facts),
            }

        versions = [version(r.version, r.variant, r.percent) for r in state.routes]
        if state.shadow is not None:
            versions.append(version(state.shadow, "shadow", 0.0))
        extra = {"features": state.features.describe()} if state.features is not None else {}
        return {
            **extra,
            "deployment": state.name,
            "id": state.id,
            "status": status,
            "ready": bool(state.routes),
            "deployment_status": state.view.get("status"),
            "reason": state.error or state.view.get("status_reason"),
            "revision": state.revision,
            "replica": self.replica,
            "versions": versions,
        }

    def readiness(self) -> dict[str, Any]:
        """Whether every served deployment is loaded and warm (``/readyz``)."""
        table = self.table
        loading = [s.name for s in table.states if not s.routes and not s.error]
        failed = [s.name for s in table.states if s.error]
        return {
            "ready": table.ready and not loading,
            "replica": self.replica,
            "deployments": len(table.states),
            "loading": loading,
            "failed": failed,
            #: why the last read of the deployments failed (serving goes on), else None
            "refresh_error": self.stats.last_error,
        }


# --- helpers of the request path --------------------------------------------------------

#: request ids: a random per-process prefix and a counter (unique across replicas and
#: restarts without a random draw per request)
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


def _parse(body: bytes, content_type: str | None, protocol: str, header_length: int | None) -> Any:
    from mlrig.serving.wire import parse_request

    return parse_request(
        body, content_type=content_type, protocol=protocol, header_length=header_length
    )


def _format(
    parsed: Any,
    predictions: list[Any],
    probabilities: list[Any] | None,
    lv: LoadedVersion,
    deployment: str,
    request_id: str,
) -> bytes:
    from mlrig.serving.wire import format_response

    return format_response(
        parsed,
        predictions=predictions,
        probabilities=probabilities,
        model=lv.model_name,
        version=lv.version_name,
        deployment=deployment,
        request_id=request_id,
    )


def _warm_body(sample: np.ndarray) -> bytes:
    import orjson

    return orjson.dumps({"inputs": sample.tolist()})


def _pick(state: DeploymentState, client_key: bytes | None, version: str | None) -> Route:
    if state.split is None:  # nothing loaded (any more): a table swapped meanwhile
        msg = f"deployment {state.name!r} serves no version right now; retry shortly"
        raise NotReadyError(msg, details={"deployment": state.name})
    if version is None:
        return state.split.choose(client_key)  # type: ignore[union-attr]
    for route in state.routes:
        if version in (route.version.version_name, route.version.version_id):
            return route
    served = ", ".join(r.version.version_name for r in state.routes)
    msg = f"deployment {state.name!r} does not serve version {version!r} (it serves {served})"
    raise NotFoundError(msg, details={"deployment": state.name, "version": version})


async def _replay(
    found: tuple[int, bytes | asyncio.Future[bytes]], digest: int, request_id: str, name: str
) -> Answer:
    first_digest, value = found
    if first_digest != digest:
        msg = (
            f"request_id {request_id[:128]!r} was already used with another input on "
            f"deployment {name!r}; a retry must send the same body, a new request a new id"
        )
        from mlrig.errors import ConflictError

        raise ConflictError(msg, details={"request_id": request_id[:128]})
    body = value if isinstance(value, bytes) else await asyncio.shield(value)
    return Answer(body, request_id)


def _confidence(probabilities: list[Any] | None) -> float | None:
    """The highest class probability of the first row (what inference records keep)."""
    if probabilities is None or not len(probabilities):
        return None
    first = probabilities[0]
    try:
        return float(max(first)) if hasattr(first, "__len__") else float(first)
    except (TypeError, ValueError):
        return None


def _can_predict(principal: Principal) -> bool:
    from mlrig.security import Permission

    return principal.can(Permission.PREDICT)


def _reason(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, MlrigError) else f"{type(exc).__name__}: {exc}"
    return text[:1000]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _call(target: Any, method: str, *args: Any) -> None:
    """Call an optional metrics method; metrics never fail a request."""
    fn = getattr(target, method, None)
    if fn is None:
        return
    try:
        fn(*args)
    except Exception:
        log.debug("metrics call %s failed", method, exc_info=True)


# --- observability parts ------------------------------------------------------------------


def _make_metrics() -> Any:
    from mlrig.serving.metrics import shared_metrics

    return shared_metrics()  # one per process: replicas' figures add up in multiprocess mode


def _make_inference_log(platform: Platform, metrics: Any) -> Any:
    from mlrig.serving.inference_log import InferenceLogger

    s = platform.settings.serving
    return InferenceLogger(
        platform.db,
        sample_rate=s.log_sample_rate,
        max_buffer=s.log_buffer,
        flush_seconds=s.log_flush_seconds,
        hooks=platform.hooks,
        on_drop=getattr(metrics, "log_dropped", None),
    )


# --- the embedded data plane of ``mlrig server`` ------------------------------------------


class _HookFollower:
    """A hook plugin: a deployment change in this process refreshes the data plane now."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._ref = weakref.ref(dataplane)

    @hookimpl
    def mlrig_deployment_changed(self, platform: Any, event: dict[str, Any]) -> None:
        dataplane = self._ref()
        if dataplane is not None and platform is dataplane.platform:
            dataplane.changed(event)


def _follow_hooks(dataplane: DataPlane) -> _HookFollower:
    follower = _HookFollower(dataplane)
    dataplane.platform.pm.register(follower, name=f"mlrig-dataplane-{id(dataplane)}")
    return follower


_EMBEDDED: weakref.WeakKeyDictionary[Any, DataPlane] = weakref.WeakKeyDictionary()
_EMBEDDED_LOCK = threading.Lock()


def embedded(platform: Platform) -> DataPlane:
    """The data plane of this process for ``platform`` (created and started on first use).

    Requests for a deployment still loading its first version wait for it (up to 30 s),
    and deployment changes made through this process are seen at once.
    """
    with _EMBEDDED_LOCK:
        dataplane = _EMBEDDED.get(platform)
        if dataplane is None:
            dataplane = DataPlane(platform, load_wait_seconds=30.0, follow_hooks=True)
            _EMBEDDED[platform] = dataplane
            atexit.register(_stop_quietly, weakref.ref(dataplane))
    return dataplane.start()


def close_embedded() -> None:
    """Stop every embedded data plane of this process (the API app's shutdown calls it):
    models closed, inference records written. A later :func:`embedded` starts afresh."""
    with _EMBEDDED_LOCK:
        planes = list(_EMBEDDED.values())
        _EMBEDDED.clear()
    for dataplane in planes:
        _stop_quietly(weakref.ref(dataplane))


def _stop_quietly(ref: weakref.ref[DataPlane]) -> None:
    dataplane = ref()
    if dataplane is not None:
        try:
            dataplane.stop()
        except Exception:
            log.exception("stopping the data plane failed")


def create_app(platform: Platform, *, dataplane: DataPlane | None = None) -> Any:
    """The raw ASGI app of a serving replica (see :mod:`mlrig.serving.asgi`)."""
    from mlrig.serving.asgi import ServingApp

    return ServingApp(platform, dataplane=dataplane)
