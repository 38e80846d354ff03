"""schemathesis hooks for the mlrig fuzz run (``SCHEMATHESIS_HOOKS=hooks``, set by run.py).

Each substitution below is for a rule the schema cannot state, and only for the parts of a
case meant to be valid (cases meant to be invalid keep what schemathesis made):

Cursors are opaque: only a ``next_cursor`` the server handed out is valid, so a random
string that fits the schema's ``pattern`` is refused (422), as it must be. For a case whose
query is meant to be valid, the cursor is replaced with one of the shape the server hands
out for that query (an offset, or a keyset position for the version search sorted by time
or name), so "valid requests are accepted" is checked on real cursors; cases whose query
is meant to be invalid keep what schemathesis made.

What depends on the world rather than on the request's shape: an experiment's
hyperparameters are checked by its trainer (the estimator's own parameters; a distributed
trainer needs its ``module``), a dataset
must exist and lie where the server may read ([datasets] allowed_roots), and a metric
filter or sort must name a metric some version has. Valid cases train with ``sklearn``
on an empty ``hyperparameters`` and no ``dataset``, an ``artifact://`` dataset that does not exist
(404), and no metric filter or metric sort. A followed log (``follow=true``) streams
until its experiment ends, and none runs here (no worker): cases follow for 0.5 s.

A deployment needs a model version a runtime can load, and canaries, shadows and runtimes
that fit it: valid deployment cases deploy ``fuzz-model`` version 1 (run.py registers it)
with the ``auto`` runtime, no canary and no shadow, and replicas in order (min <= max, a
rule across two fields); valid predict cases send rows of its 4 features. Whatever else
they hold is sent as generated.
"""

from __future__ import annotations

import uuid

import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode

from mlrig.validation import encode_cursor

#: what a boolean query parameter reads as true (pydantic)
TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})


def is_version_search(path: str) -> bool:
    """The version search pages by keyset for time/name sorts (the rest by offset)."""
    return path.endswith(("/model-versions", "/models/{id}/versions"))


def valid_cursor(path: str, query: dict[str, object]) -> str:
    """A cursor of the shape the server would hand out for this query."""
    sort = str(query.get("sort") or "-created_at")
    if not is_version_search(path) or "metrics." in sort:
        return encode_cursor({"offset": 10})
    key = "2026-01-01T00:00:00+00:00" if sort.lstrip("-") == "created_at" else "m"
    return encode_cursor({"k": key, "id": str(uuid.UUID(int=1))})


def _valid(case: schemathesis.Case, location: ParameterLocation) -> bool:
    component = case.meta.components.get(location) if case.meta is not None else None
    return component is not None and component.mode == GenerationMode.POSITIVE


@schemathesis.hook
def map_case(context: object, case: schemathesis.Case) -> schemathesis.Case:
    path, method = case.operation.path, case.operation.method.upper()
    query = case.query
    if query and path.endswith("/logs") and str(query.get("follow")).lower() in TRUE:
        # a followed log streams until the job ends, and none runs here: a valid timeout
        # is shortened (still valid), an invalid one is left to be refused
        try:
            timeout = float(str(query.get("timeout", 3600)))
        except ValueError:
            timeout = 0.0  # not a number: the server refuses it at once
        if 0.5 < timeout <= 86400:
            query["timeout"] = 0.5
    if query and _valid(case, ParameterLocation.QUERY):
        if path == "/api/ml/features/{name}/values" and isinstance(query.get("key"), list):
            # one entity names each join key once (the pattern cannot say it)
            query["key"] = [_distinct_join_keys(k) for k in query["key"]]
        if is_version_search(path):
            query.pop("metric", None)
            if "metrics." in str(query.get("sort", "")):
                query.pop("sort")
        if "cursor" in query:
            query["cursor"] = valid_cursor(path, query)
    body = case.body
    if isinstance(body, dict) and method == "POST" and _valid(case, ParameterLocation.BODY):
        if path == "/api/ml/experiments":
            body.update(trainer="sklearn", hyperparameters={}, dataset=None)
        elif path == "/api/ml/sweeps":
            _searchable(body)
        elif path.endswith("/evaluations"):
            body["dataset_uri"] = "artifact://fuzz/no-such-dataset.csv"
        elif path == "/api/ml/deployments":
            body.update(model=FUZZ_MODEL, version="1", alias=None, runtime="auto")
            _deployable(body)
        elif path.startswith("/api/ml/feature") or path == "/api/ml/entities":
            _feature_store(path, body)
        elif path.endswith("/predict") and "inputs" in body:
            body["inputs"] = FUZZ_ROWS  # what fits the model's signature depends on the model
    if (
        isinstance(body, dict)
        and method == "PUT"
        and path == "/api/ml/deployments/{id}"
        and _valid(case, ParameterLocation.BODY)
    ):
        if body.get("version") is not None or body.get("alias") is not None:
            body.update(version="1", alias=None)
        body.pop("runtime", None)
        _deployable(body)
    if (
        isinstance(body, dict)
        and method == "PUT"
        and path == "/api/ml/feature-views/{name}"
        and _valid(case, ParameterLocation.BODY)
    ):
        _feature_store(path, body)
    return case


def _distinct_join_keys(key: object) -> object:
    """``a:1,a:2,b:3`` -> ``a:1,b:3``: the first value of each join key."""
    if not isinstance(key, str):
        return key
    parts: dict[str, str] = {}
    for part in key.split(","):
        parts.setdefault(part.split(":", 1)[0], part)
    return ",".join(parts.values())


#: columns a feature store body may not use as a feature or join key
_RESERVED = {"event_timestamp", "created_timestamp"}


def _feature_store(path: str, body: dict[str, object]) -> None:
    """What a feature store body needs beyond its shape: distinct join keys and feature
    names, none a timestamp column; a view over a push source (a file or a query must
    exist, an on-demand function must import: the world's, not the request's); entity
    rows that name a join key; a training-set row's event time; end after start."""
    if path == "/api/ml/entities":
        keys = [k for k in dict.fromkeys(body.get("join_keys") or []) if k not in _RESERVED]
        body["join_keys"] = keys or ["fuzz_id"]
    elif path.startswith("/api/ml/feature-views") and "features" in body:
        for key in ("function", "inputs", "request_fields"):
            body.pop(key, None)
        # the run's entity "fuzz" (join key fuzz_id): an entity an earlier case made may
        # have a join key that clashes with a generated feature name
        body.update(kind="batch", source={"kind": "push"}, entities=["fuzz"])
        seen: dict[str, object] = {}
        for feature in body.get("features") or []:
            if isinstance(feature, dict) and feature.get("name") not in _RESERVED | {"fuzz_id"}:
                seen.setdefault(str(feature.get("name")), feature)
        body["features"] = list(seen.values()) or [{"name": "fuzz_feature", "type": "text"}]
    elif path.endswith("/materialize"):
        body.pop("end", None)
    elif path == "/api/ml/features/batch":
        body["entities"] = [{"fuzz_id": 1}]
        body.pop("request_data", None)
    elif path == "/api/ml/features/training-set":
        body["entities"] = [{"fuzz_id": 1, "event_timestamp": "2026-01-01T00:00:00Z"}]
        body["timestamp_column"] = "event_timestamp"
    elif path == "/api/ml/features" and body.get("name") in _RESERVED:
        body["name"] = "fuzz_feature"


#: a space every strategy can search (grid included) whose sample the trainer accepts
FUZZ_SPACE = {"n_estimators": {"type": "int", "low": 10, "high": 50, "step": 10}}


def _searchable(body: dict[str, object]) -> None:
    """What a sweep needs beyond its shape: a space the strategies and the trainer accept
    (its rules, low <= high..., are checked by the service), options the strategy knows,
    trials within the server's ``[search] max_trials``, an ASHA ladder that fits."""
    body.update(
        trainer="sklearn", space=FUZZ_SPACE, hyperparameters={}, dataset=None, strategy_options=None
    )
    trials = body.get("max_trials")
    if isinstance(trials, (int, float)) and not isinstance(trials, bool):
        # an integral float (26465.0) is an integer to JSON Schema, and capped as well
        body["max_trials"] = trials if trials <= 10_000 else 10_000
    pruner = body.get("pruner")
    if isinstance(pruner, dict) and pruner.get("rule") == "asha":
        # the first rung (min_resource * reduction_factor ** min_early_stopping_rate) must
        # lie below max_resource, which the schema bounds to 32 bits
        first = pruner.get("min_resource", 1) * pruner.get("reduction_factor", 3) ** pruner.get(
            "min_early_stopping_rate", 0
        )
        if first >= 2**31 - 1:
            pruner.update(min_resource=1, min_early_stopping_rate=0)
            first = 1
        pruner["max_resource"] = max(pruner.get("max_resource", 1), first + 1)


#: the model valid deployment cases deploy (registered by run.py), and rows that fit it
FUZZ_MODEL = "fuzz-model"
FUZZ_ROWS = [[0.5, -1.0, 2.0, 0.0]]


def _deployable(body: dict[str, object]) -> None:
    """What a deployment of ``fuzz-model`` 1 can be: no canary or shadow (the model has
    one version), replicas in order, no feature references (they must name features the
    store has, and fuzz-model's signature takes 4 numbers, not them)."""
    body["traffic"] = []
    body["shadow"] = None
    body.pop("features", None)
    replicas = body.get("replicas")
    if isinstance(replicas, dict):
        given = [n for n in (replicas.get("min"), replicas.get("max")) if n is not None]
        if given:  # both keys (a change merges into what is set: min=5 over max=1 is 422)
            replicas.update(min=min(given), max=max(given))  # type: ignore[type-var]
