"""Feature-backed deployments on the request path: entity keys in, model rows out.

A deployment that declares ``features`` (see :func:`mlrig.serving.spec.check_features`)
gets a :class:`FeatureBinding` when the data plane loads it: the views' definitions are
resolved then (``platform.features.resolve``) and kept, so a request reads no definition;
its only I/O is the online store read, one round trip per view
(:func:`mlrig.features.online.read_online`), run off the event loop (awaited on it
through the store's async read where the store has one).

Requests send entity rows: ``{"entities": [{"customer_id": 42, "amount": 3.5}, ...]}``
(mlrig), or the same rows as records / columns through the other JSON formats (mlrig
``inputs``, MLflow ``dataframe_records`` / ``dataframe_split``, CSV with a header, KServe
v2 named tensors): each row holds the entity keys and the request fields, nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from mlrig.errors import ValidationError
from mlrig.serving.wire import ParsedRequest

if TYPE_CHECKING:
    from mlrig.contracts.online_store import OnlineStore
    from mlrig.platform import Platform
    from mlrig.serving.dataplane import Answer, DataPlane
    from mlrig.serving.table import DeploymentState

__all__ = ["FeatureBinding", "parse_entities", "predict_features"]

#: rows and features a missing-value message names before "..." (details hold more)
_SHOWN = 10
_DETAIL_ROWS = 100
_ENTITY_KEYS = frozenset({"entities", "request_id", "params"})


@dataclass(frozen=True, eq=False)
class FeatureBinding:
    """What a feature-backed deployment needs per request, resolved once at load."""

    #: (view spec, feature names) per view, as ``platform.features.resolve`` returns them
    requests: tuple[tuple[Any, tuple[str, ...]], ...]
    store: OnlineStore
    #: the features in the refs' order, then the request fields: the model's columns
    columns: tuple[str, ...]
    features: tuple[str, ...]
    entity_keys: tuple[str, ...]
    request_fields: tuple[str, ...]
    #: ``None`` (a missing value refuses the request), a number, or {feature: number}
    fill_value: float | int | dict[str, float | int] | None
    #: the views' names and versions loaded (for health and logs)
    views: tuple[tuple[str, int], ...] = ()
    #: how many entities one request may ask for (``[features] max_entities_per_request``)
    max_entities: int = 10_000
    #: request fields on-demand views read that are no model column (rows send them too)
    ondemand_fields: tuple[str, ...] = ()
    #: features tagged ``pii``: masked in the inference log (``[features] pii_mask``)
    pii: tuple[str, ...] = ()
    pii_mask: str = "hash"
    #: the installation's key of the ``hash`` mask (read only when a feature is PII)
    pii_mask_key: bytes = b""

    @classmethod
    def load(cls, platform: Platform, config: Mapping[str, Any]) -> FeatureBinding:
        """Resolve the deployment's ``features`` config against the feature store now."""
        refs = list(config["refs"])
        groups = platform.features.resolve(refs)
        requests = tuple((view, tuple(names)) for view, names in groups)
        features = tuple(r.rsplit(":", 1)[-1] for r in refs)
        request_fields = tuple(config.get("request_fields") or ())
        on_demand = [v for v, _ in requests if getattr(v, "join_keys", None) is None]
        asked = {n for _, names in requests for n in names}
        needed = sorted(
            {r for v in on_demand for r in v.inputs if r.rpartition(":")[2] not in asked}
        )
        if needed:  # read with the asked features of their views: one read per view
            merged = {v.name: (v, list(names)) for v, names in requests}
            for view, names in platform.features.resolve(needed):
                held = merged.setdefault(view.name, (view, []))[1]
                held += [n for n in names if n not in held]
            requests = tuple((v, tuple(names)) for v, names in merged.values())
        join_keys: list[str] = []
        for view, _ in requests:
            join_keys += [k for k in getattr(view, "join_keys", None) or () if k not in join_keys]
        ondemand_fields = tuple(
            dict.fromkeys(f for v in on_demand for f in v.request_fields if f not in request_fields)
        )
        keys = tuple(config.get("entity_keys") or join_keys)
        limit = getattr(platform.settings.features, "max_entities_per_request", None) or 10_000
        pii = tuple(n for n in features if _is_pii(groups, n))
        return cls(
            requests=requests,
            store=platform.online_store,
            columns=features + request_fields,
            features=features,
            entity_keys=keys,
            request_fields=request_fields,
            fill_value=config.get("fill_value"),
            views=tuple((v.name, int(getattr(v, "version", 1))) for v, _ in requests),
            max_entities=int(limit),
            ondemand_fields=ondemand_fields,
            pii=pii,
            pii_mask=str(getattr(platform.settings.features, "pii_mask", "hash")),
            pii_mask_key=platform.features.pii_mask_key if pii else b"",
        )

    def current(self, deployment: Mapping[str, Any]) -> bool:
        """Whether the views loaded are the versions a snapshot names (``feature_views``);
        a changed view makes the data plane load the binding again."""
        versions = deployment.get("feature_views")
        if not versions:
            return True
        return all(versions.get(name) in (None, version) for name, version in self.views)

    def describe(self) -> dict[str, Any]:
        """What health shows of the binding."""
        return {
            "columns": list(self.columns),
            "entity_keys": list(self.entity_keys),
            "request_fields": list(self.request_fields),
            "on_demand_fields": list(self.ondemand_fields),
            "views": [{"name": n, "version": v} for n, v in self.views],
            "fill_value": self.fill_value,
        }

    # --- the request path ---------------------------------------------------------------

    def check_rows(self, rows: list[dict[str, Any]]) -> None:
        """Each row holds every entity key and request field, and nothing else."""
        if not rows:
            msg = "the request has no entities; send at least one {key: value} row"
            raise ValidationError(msg, details={"problem": "empty"})
        if len(rows) > self.max_entities:
            msg = (
                f"the request has {len(rows)} entities; at most {self.max_entities} per "
                "request ([features] max_entities_per_request)"
            )
            raise ValidationError(msg, details={"problem": "too_many"})
        wanted = self.entity_keys + self.request_fields + self.ondemand_fields
        allowed = frozenset(wanted)
        for i, row in enumerate(rows):
            if type(row) is not dict:
                msg = f"entity row {i} must be an object of {', '.join(wanted)}"
                raise ValidationError(msg, details={"row": i, "expected": list(wanted)})
            if len(row) != len(allowed) or not allowed.issuperset(row):
                lacking = [k for k in wanted if k not in row]
                unknown = [str(k)[:60] for k in row if k not in allowed]
                parts = []
                if lacking:
                    parts.append(f"misses {', '.join(lacking)}")
                if unknown:
                    parts.append(f"has unknown field(s) {', '.join(unknown[:_SHOWN])}")
                fields = self.request_fields + self.ondemand_fields
                msg = (
                    f"entity row {i} {' and '.join(parts)}; a row holds the entity keys "
                    f"({', '.join(self.entity_keys)})"
                    + (f" and request fields ({', '.join(fields)})" if fields else "")
                )
                raise ValidationError(
                    msg,
                    details={
                        "row": i,
                        "entity_keys": list(self.entity_keys),
                        "request_fields": list(self.request_fields + self.ondemand_fields),
                    },
                )

    def fetch(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[str]]]:
        """The features of every row from the online store (blocking: one read per view)."""
        from mlrig.features.online import read_online

        return read_online(self.store, self.requests, rows)

    async def fetch_async(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[list[str]]]:
        """:meth:`fetch` for the event loop: the store's async read awaited there when the
        store has one and no on-demand view runs user code; else :meth:`fetch` in a thread."""
        import asyncio

        from mlrig.features.online import has_on_demand, read_online_async

        if getattr(self.store, "async_reads", False) and not has_on_demand(self.requests):
            return await read_online_async(self.store, self.requests, rows)
        return await asyncio.to_thread(self.fetch, rows)

    def assemble(
        self,
        rows: list[dict[str, Any]],
        values: list[dict[str, Any]],
        missing: list[list[str]],
    ) -> tuple[list[list[Any]], list[dict[str, Any]], list[list[str]]]:
        """The model's rows (features then request fields), the features used per row (as
        logged) and per row the features that were filled.

        :raises ValidationError: a missing value the fill policy does not cover (422,
            naming the rows and features).
        """
        del missing  # read_online's list; a stored null is as missing to the model
        features = self.features
        fill = self.fill_value
        unfilled: list[tuple[int, list[str]]] = []
        filled: list[list[str]] = []
        matrix: list[list[Any]] = []
        used: list[dict[str, Any]] = []
        for i, got in enumerate(values):
            absent = [n for n in features if _is_missing(got.get(n))]
            row_filled: list[str] = []
            if absent:
                got = dict(got)
                stuck = []
                for name in absent:
                    value = fill.get(name) if isinstance(fill, dict) else fill
                    if value is None:
                        stuck.append(name)
                    else:
                        got[name] = value
                        row_filled.append(name)
                if stuck:
                    unfilled.append((i, stuck))
            filled.append(row_filled)
            row = [got.get(n) for n in features]
            used.append(dict(zip(features, row, strict=True)))
            if self.request_fields:
                source = rows[i]
                row += [source[f] for f in self.request_fields]
            matrix.append(row)
        if unfilled:
            self._refuse_missing(rows, unfilled)
        return matrix, used, filled

    def _refuse_missing(
        self, rows: list[dict[str, Any]], unfilled: list[tuple[int, list[str]]]
    ) -> None:
        shown = "; ".join(
            f"row {i} ({_keys(rows[i], self.entity_keys)}): {', '.join(names[:_SHOWN])}"
            + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
            for i, names in unfilled[:_SHOWN]
        )
        more = f" (and {len(unfilled) - _SHOWN} more rows)" if len(unfilled) > _SHOWN else ""
        msg = (
            f"features are missing for {len(unfilled)} of {len(rows)} entities (unknown key, "
            f"expired by the view's TTL, or never materialised): {shown}{more}; "
            "materialise the views, or give the deployment a features.fill_value"
        )
        raise ValidationError(
            msg,
            details={
                "problem": "missing_features",
                "missing": [
                    {
                        "row": i,
                        "entity": {k: rows[i].get(k) for k in self.entity_keys},
                        "features": names,
                    }
                    for i, names in unfilled[:_DETAIL_ROWS]
                ],
            },
        )


def _is_pii(groups: Sequence[tuple[Any, Sequence[str]]], name: str) -> bool:
    for view, names in groups:
        if name in names:
            return any(f.name == name and f.pii for f in view.features)
    return False


def logged_features(binding: FeatureBinding, used: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The feature values as the inference log keeps them: PII features masked."""
    if not binding.pii:
        return used
    from mlrig.features.service import mask_value

    mode, key = binding.pii_mask, binding.pii_mask_key
    return [
        {k: mask_value(v, mode, key) if k in binding.pii else v for k, v in row.items()}
        for row in used
    ]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _keys(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={str(row.get(k))[:40]!s}" for k in keys)


# --- reading a feature request ------------------------------------------------------------


def parse_entities(
    body: bytes, content_type: str | None, protocol: str, header_length: int | None
) -> tuple[ParsedRequest, list[dict[str, Any]]]:
    """The request (for the answer's protocol) and its entity rows.

    ``{"entities": [...]}`` is read here; anything else goes through
    :func:`mlrig.serving.wire.parse_request` and its records, named columns or named
    tensors become the rows.
    """
    if protocol in ("auto", "mlrig") and header_length is None and _json(content_type):
        doc = _entities_doc(body)
        if doc is not None:
            return _from_entities(doc)
    from mlrig.serving.wire import parse_request

    parsed = parse_request(
        body, content_type=content_type, protocol=protocol, header_length=header_length
    )
    return parsed, _rows_of(parsed)


def _json(content_type: str | None) -> bool:
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "") and "format=pandas-" not in content_type


def _entities_doc(body: bytes) -> dict[str, Any] | None:
    if b'"entities"' not in body:
        return None
    try:
        doc = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return None  # the general parser explains it
    return doc if isinstance(doc, dict) and "entities" in doc else None


def _from_entities(doc: dict[str, Any]) -> tuple[ParsedRequest, list[dict[str, Any]]]:
    from mlrig.serving.wire import _params, _request_id

    unknown = [str(k)[:60] for k in doc if k not in _ENTITY_KEYS]
    if unknown:
        msg = (
            f"unknown field(s) {', '.join(map(repr, unknown))} in the request; expected "
            "entities, request_id, params"
        )
        raise ValidationError(msg)
    entities = doc["entities"]
    if isinstance(entities, dict):  # columns: {"customer_id": [1, 2]}
        parsed = _columns_request(entities)
        rows = _rows_of(parsed)
    elif isinstance(entities, list):
        rows = entities
    else:
        msg = "entities must be a list of {key: value} rows or a {key: [values]} object"
        raise ValidationError(msg)
    parsed = ParsedRequest(
        "mlrig",
        records=rows,
        request_id=_request_id(doc.get("request_id"), "request_id"),
        params=_params(doc.get("params"), "params"),
    )
    return parsed, rows


def _columns_request(value: dict[str, Any]) -> ParsedRequest:
    from mlrig.serving.wire import _columns

    return _columns("mlrig", value, "entities")


def _rows_of(parsed: ParsedRequest) -> list[dict[str, Any]]:
    """Entity rows of a request read by the general parser: records, or named columns."""
    if parsed.records is not None:
        return parsed.records
    columns = parsed.columns
    if columns is None and parsed.array is not None and len(parsed.v2_inputs or ()) == 1:
        # one v2 tensor [N] (or [N, 1]): the column its name says
        array = parsed.array
        if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1):
            parsed.array = array.reshape(-1, 1)
            columns = [str(parsed.v2_inputs[0]["name"])]  # type: ignore[index]
    if columns is None:
        msg = (
            "this deployment is feature-backed: send entity rows by name, e.g. "
            '{"entities": [{"customer_id": 42}]}, not unnamed rows of values'
        )
        raise ValidationError(msg, details={"problem": "names"})
    if parsed.array is not None:
        data = parsed.array.tolist()
    else:
        data = [list(r) if isinstance(r, list | tuple) else [r] for r in parsed.rows or ()]
    width = len(columns)
    out = []
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != width:
            msg = f"row {i} has not one value per column ({', '.join(columns)})"
            raise ValidationError(msg)
        out.append({c: _plain(x) for c, x in zip(columns, row, strict=True)})
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # CSV reads 42 as 42.0; keys are integers or strings
    return value


# --- the data plane's feature branch --------------------------------------------------------


async def predict_features(
    dataplane: DataPlane,
    state: DeploymentState,
    body: bytes,
    *,
    started: float,
    content_type: str | None,
    protocol: str,
    request_id: str | None,
    client_key: bytes | None,
    version: str | None,
    header_length: int | None,
) -> Answer:
    """:meth:`DataPlane.predict` for a feature-backed deployment: read the entity rows,
    fetch their features (one online-store read, awaited on the loop for a store with
    async reads, else in a thread), build the model's
    rows, answer as the plain path does; the inference log gets the entities and the
    feature values the model was given."""
    from mlrig.errors import MlrigError
    from mlrig.serving import dataplane as dp

    binding = state.features
    assert binding is not None
    parsed, rows = parse_entities(body, content_type, protocol, header_length)
    binding.check_rows(rows)
    client_id = parsed.request_id if parsed.protocol != "v2" else None
    recent = state.recent
    future = None
    digest = 0
    if client_id:
        digest = hash(body)
        found = recent.get(client_id)
        if found is not None:
            return await dp._replay(found, digest, client_id, state.name)
        future = recent.start(client_id, digest)
        rid = client_id
    else:
        rid = parsed.request_id or request_id or dp._new_request_id()
    metrics = dataplane.metrics
    try:
        values, missing = await binding.fetch_async(rows)
        matrix, used, filled = binding.assemble(rows, values, missing)
        model_input = ParsedRequest("mlrig", rows=matrix, columns=list(binding.columns))
        route = dp._pick(state, client_key, version)
        try:
            predictions, probabilities, x = await dataplane._infer(state, route, model_input)
        except dp.Closing:  # replaced by a rolling update meanwhile: use the new table
            state = dataplane.table.get(state.id) or state
            route = dp._pick(state, client_key, version)
            predictions, probabilities, x = await dataplane._infer(state, route, model_input)
        lv = route.version
        out = dp._format(parsed, predictions, probabilities, lv, state.name, rid)
    except BaseException as exc:
        if future is not None:
            recent.fail(client_id, future, exc)  # type: ignore[arg-type]
        if isinstance(exc, MlrigError):
            primary = state.primary
            name = primary.version_name if primary else ""
            dp._call(metrics, "error", state.name, name, exc.code)
            dp._call(
                metrics,
                "observe_request",
                state.name,
                name,
                time.perf_counter() - started,
                exc.http_status,
            )
        raise
    if future is not None:
        recent.finish(client_id, digest, future, out)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    logged: dict[str, Any] = {"entities": rows, "features": logged_features(binding, used)}
    if any(filled):
        logged["filled"] = filled
    if binding.request_fields:
        logged["request_fields"] = list(binding.request_fields)
    dataplane.inference_log.record(
        deployment_id=state.id,
        request_id=rid,
        inputs=logged,
        prediction=predictions,
        confidence=dp._confidence(probabilities),
        latency_ms=seconds * 1000.0,
        model_version_id=lv.version_id,
        variant=route.variant,
    )
    metrics.observe_request(state.name, lv.version_name, seconds, 200)
    shadow = state.shadow
    return dp.Answer(out, rid, 200, (state, shadow, x, rid) if shadow is not None else None)
