"""What a deployment is: its fields, their rules, its view and its serving targets.

Pure functions (no database): the :class:`~mlrig.serving.service.DeploymentService`
checks input with them, the data plane reads the targets and revision they compute.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mlrig import validation as v
from mlrig.errors import ValidationError

if TYPE_CHECKING:
    from mlrig.db.models import ModelDeployment

#: the spec's statuses: pending (created, not yet loaded), deploying (a data plane is
#: loading its target), active (serving), inactive (stopped or deleted), failed (see reason)
STATUSES = ("pending", "deploying", "active", "inactive", "failed")
#: statuses a data plane reports (``set_status``)
REPORTED_STATUSES = ("deploying", "active", "failed")
#: statuses a user may ask for (``update(status=...)``): start and stop
REQUESTED_STATUSES = ("active", "inactive")
ENVIRONMENTS = ("development", "staging", "production")
VARIANTS = ("primary", "canary", "shadow")
AUTO = "auto"

#: a deployment name: used in URLs and token scopes (``predict:NAME``), so no ``:`` or ``/``
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)
#: runtime names as entry points spell them
RUNTIME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_RUNTIME = re.compile(RUNTIME_PATTERN)

MAX_REPLICAS = 256
MAX_BATCH_SIZE = 100_000
MAX_LATENCY_MS = 10_000.0
MAX_CANARIES = 10
#: where predictions are answered (the data plane's route, relative to the server root)
ENDPOINT = "/api/ml/deployments/{id}/predict"


def check_name(name: object) -> str:
    """A deployment name: 1-100 letters, digits, ``.``, ``_``, ``-``; not a UUID (a
    reference is an id or a name, so a name that reads as an id would be ambiguous)."""
    if not isinstance(name, str) or not _NAME.match(name):
        shown = v.shorten(repr(name), 80) if isinstance(name, str) else type(name).__name__
        msg = f"invalid deployment name {shown}: letters, digits and . _ - (1-100, first not . _ -)"
        raise ValidationError(msg, details={"field": "name"})
    if as_uuid(name) is not None:
        msg = f"invalid deployment name {name!r}: a name must not be a UUID (ids are UUIDs)"
        raise ValidationError(msg, details={"field": "name"})
    return name


def as_uuid(value: object) -> uuid.UUID | None:
    """``value`` as a UUID, else ``None``."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def check_ref(value: object, field: str) -> str:
    """A model, version or alias reference: storable text of a sane length (the registry
    then says whether it exists)."""
    return v.check_text(value, field=field, min_length=1, max_length=255)


def check_choice(value: object, choices: tuple[str, ...], field: str) -> str:
    if not isinstance(value, str) or value not in choices:
        shown = v.shorten(repr(value), 80)
        msg = f"{field} must be one of {', '.join(choices)}, got {shown}"
        raise ValidationError(msg, details={"field": field, "allowed": list(choices)})
    return value


def check_runtime_name(value: object) -> str:
    """``auto`` or a runtime name (whether it is installed is :func:`choose_runtime`'s)."""
    text = v.check_text(value, field="runtime", min_length=1, max_length=100)
    if not _RUNTIME.match(text):
        msg = f"invalid runtime {v.shorten(repr(text), 80)}: 'auto' or a runtime name"
        raise ValidationError(msg, details={"field": "runtime"})
    return text


def _number(value: object, field: str, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{field} must be a number, got {type(value).__name__}"
        raise ValidationError(msg, details={"field": field})
    try:
        number = float(value)
    except OverflowError:  # an int beyond float
        number = math.inf
    if not math.isfinite(number) or not low <= number <= high:
        msg = f"{field} must be from {low:g} to {high:g}"
        raise ValidationError(msg, details={"field": field})
    return number


def check_replicas(value: object) -> dict[str, int]:
    """``{"min": int, "max": int}``, 1 <= min <= max <= 256 (a missing key: the other)."""
    if not isinstance(value, Mapping):
        msg = "replicas must be an object {min, max}"
        raise ValidationError(msg, details={"field": "replicas"})
    unknown = sorted(set(value) - {"min", "max"})
    if unknown:
        msg = f"replicas: unknown key {unknown[0]!r}; use min and max"
        raise ValidationError(msg, details={"field": "replicas"})
    low = value.get("min", value.get("max", 1))
    high = value.get("max", max(low, 1) if isinstance(low, int) else 1)
    low = v.check_int(low, field="replicas.min", low=1, high=MAX_REPLICAS)
    high = v.check_int(high, field="replicas.max", low=1, high=MAX_REPLICAS)
    if low > high:
        msg = f"replicas.min ({low}) must not exceed replicas.max ({high})"
        raise ValidationError(msg, details={"field": "replicas"})
    return {"min": low, "max": high}


def check_batching(value: object) -> dict[str, Any]:
    """``{"max_batch_size"?: int, "max_latency_ms"?: float}`` (missing: the ``[serving]``
    defaults, applied when the view is made)."""
    if not isinstance(value, Mapping):
        msg = "batching must be an object {max_batch_size, max_latency_ms}"
        raise ValidationError(msg, details={"field": "batching"})
    unknown = sorted(set(value) - {"max_batch_size", "max_latency_ms"})
    if unknown:
        msg = f"batching: unknown key {unknown[0]!r}; use max_batch_size and max_latency_ms"
        raise ValidationError(msg, details={"field": "batching"})
    out: dict[str, Any] = {}
    if value.get("max_batch_size") is not None:
        out["max_batch_size"] = v.check_int(
            value["max_batch_size"], field="batching.max_batch_size", low=1, high=MAX_BATCH_SIZE
        )
    if value.get("max_latency_ms") is not None:
        out["max_latency_ms"] = _number(
            value["max_latency_ms"], "batching.max_latency_ms", low=0, high=MAX_LATENCY_MS
        )
    return out


def check_resources(value: object) -> dict[str, Any]:
    """Free-form JSON (``{"cpu": 2, "gpu": 1}``): recorded for schedulers, not enforced."""
    return v.check_json(value, field="resources")


def parse_traffic(value: object) -> list[dict[str, Any]]:
    """Canary entries ``[{"version": str, "percent": float}]`` checked for shape and
    bounds (0 < percent < 100 each, sum < 100: the primary keeps the rest); whether the
    versions exist is the service's."""
    if not isinstance(value, list):
        msg = "traffic must be a list of {version, percent}"
        raise ValidationError(msg, details={"field": "traffic"})
    if len(value) > MAX_CANARIES:
        msg = f"traffic: at most {MAX_CANARIES} canary versions, got {len(value)}"
        raise ValidationError(msg, details={"field": "traffic"})
    entries = []
    for i, item in enumerate(value):
        field = f"traffic[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"version", "percent"}:
            msg = f"{field} must be an object {{version, percent}}"
            raise ValidationError(msg, details={"field": field})
        version = check_ref(item.get("version"), f"{field}.version")
        percent = _number(item.get("percent"), f"{field}.percent", low=0, high=100)
        if not 0 < percent < 100:
            msg = f"{field}.percent must be above 0 and below 100, got {percent:g}"
            raise ValidationError(msg, details={"field": field})
        entries.append({"version": version, "percent": percent})
    total = sum(e["percent"] for e in entries)
    if total >= 100:
        msg = f"traffic: the canary percents sum to {total:g}; keep it below 100 for the primary"
        raise ValidationError(msg, details={"field": "traffic"})
    return entries


def parse_shadow(value: object) -> str | None:
    """The shadow version reference: a string or ``{"version": str}``; ``None``: none."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        if set(value) - {"version"}:
            msg = "shadow must be a version or an object {version}"
            raise ValidationError(msg, details={"field": "shadow"})
        value = value.get("version")
    return check_ref(value, "shadow.version")


# --- feature-backed deployments -----------------------------------------------------------

#: most feature references (model input columns from the feature store) of a deployment
MAX_FEATURE_REFS = 500
MAX_REQUEST_FIELDS = 100
#: a feature, join key or request field name (they become DataFrame columns)
FEATURE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_FEATURE_NAME = re.compile(FEATURE_NAME_PATTERN)
_FEATURE_KEYS = frozenset({"refs", "entity_keys", "request_fields", "fill_value"})


def _names(value: object, field: str, *, max_items: int, min_items: int = 0) -> list[str]:
    if not isinstance(value, list) or not min_items <= len(value) <= max_items:
        msg = f"{field} must be a list of {min_items}-{max_items} names"
        raise ValidationError(msg, details={"field": field})
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not _FEATURE_NAME.match(item):
            shown = v.shorten(repr(item), 80)
            msg = f"{field}[{i}] must be a name (letters, digits, _; no digit first), got {shown}"
            raise ValidationError(msg, details={"field": f"{field}[{i}]"})
        out.append(item)
    repeated = sorted({n for n in out if out.count(n) > 1})
    if repeated:
        msg = f"{field}: {', '.join(map(repr, repeated))} appear(s) more than once"
        raise ValidationError(msg, details={"field": field, "repeated": repeated})
    return out


def _fill_number(value: object, field: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = type(value).__name__
        msg = f"{field} must be a number (the value a missing feature gets), got {kind}"
        raise ValidationError(msg, details={"field": field})
    if isinstance(value, float) and not math.isfinite(value):
        msg = f"{field} must be a finite number"
        raise ValidationError(msg, details={"field": field})
    return value


def check_features(value: object) -> dict[str, Any] | None:
    """A deployment's ``features`` field (``None``: a plain deployment), checked for shape:

    ``{"refs": [...], "entity_keys"?: [...], "request_fields"?: [...], "fill_value"?: ...}``

    - ``refs``: 1-500 feature references, ``name`` or ``view:name``; their order is the
      order of the model's input columns;
    - ``entity_keys``: the key fields a request sends per row (default: the views' join
      keys; they must cover every join key of the views);
    - ``request_fields``: values sent with each row at request time, model input columns
      after the features, in this order;
    - ``fill_value``: the missing-value policy: absent or ``null``: a missing feature value
      (unknown key, expired, stored null) refuses the request (422 naming rows and
      features); a number: every missing value becomes it; ``{feature: number}``: those
      features are filled, any other missing one refuses.

    Whether the references exist is the service's (through ``platform.features.resolve``).
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        msg = "features must be an object {refs, entity_keys?, request_fields?, fill_value?}"
        raise ValidationError(msg, details={"field": "features"})
    unknown = sorted(set(value) - _FEATURE_KEYS)
    if unknown:
        msg = (
            f"features: unknown key {v.shorten(repr(unknown[0]), 60)}; use refs, entity_keys, "
            "request_fields and fill_value"
        )
        raise ValidationError(msg, details={"field": "features"})
    refs = value.get("refs")
    if not isinstance(refs, list) or not 1 <= len(refs) <= MAX_FEATURE_REFS:
        msg = f"features.refs must be a list of 1-{MAX_FEATURE_REFS} feature references"
        raise ValidationError(msg, details={"field": "features.refs"})
    checked_refs = []
    for i, ref in enumerate(refs):
        parts = ref.split(":") if isinstance(ref, str) else []
        if not 1 <= len(parts) <= 2 or not all(
            isinstance(p, str) and _FEATURE_NAME.match(p) for p in parts
        ):
            shown = v.shorten(repr(ref), 80)
            msg = f"features.refs[{i}] must be 'name' or 'view:name', got {shown}"
            raise ValidationError(msg, details={"field": f"features.refs[{i}]"})
        checked_refs.append(ref)
    names = [r.rsplit(":", 1)[-1] for r in checked_refs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        msg = f"features.refs: feature(s) {', '.join(map(repr, repeated))} named more than once"
        raise ValidationError(msg, details={"field": "features.refs", "repeated": repeated})
    out: dict[str, Any] = {"refs": checked_refs}
    keys = value.get("entity_keys")
    out["entity_keys"] = (
        None
        if keys is None
        else _names(keys, "features.entity_keys", max_items=MAX_REQUEST_FIELDS, min_items=1)
    )
    fields = value.get("request_fields")
    out["request_fields"] = (
        []
        if fields is None
        else _names(fields, "features.request_fields", max_items=MAX_REQUEST_FIELDS)
    )
    clash = sorted(set(out["request_fields"]) & (set(names) | set(out["entity_keys"] or ())))
    if clash:
        msg = f"features.request_fields: {', '.join(map(repr, clash))} is also a feature or key"
        raise ValidationError(msg, details={"field": "features.request_fields"})
    fill = value.get("fill_value")
    if isinstance(fill, Mapping):
        strange = sorted(set(fill) - set(names))
        if strange:
            msg = (
                f"features.fill_value names {', '.join(map(repr, strange[:10]))}, which "
                "features.refs does not"
            )
            raise ValidationError(msg, details={"field": "features.fill_value"})
        fill = {str(k): _fill_number(x, f"features.fill_value.{k}") for k, x in fill.items()}
    elif fill is not None:
        fill = _fill_number(fill, "features.fill_value")
    out["fill_value"] = fill
    return out


def feature_columns(features: Mapping[str, Any]) -> list[str]:
    """The model's input columns of a feature-backed deployment: the features in the refs'
    order, then the request fields."""
    return [r.rsplit(":", 1)[-1] for r in features["refs"]] + list(
        features.get("request_fields") or ()
    )


def check_signature_columns(
    signature: Mapping[str, Any] | None, features: Mapping[str, Any], where: str
) -> None:
    """A version's input signature must take the deployment's feature columns: a dataframe
    signature their names in order, a tensor signature ``[-1, F]`` their count. No or
    another kind of signature: nothing to check (the data plane checks at predict)."""
    inputs = (signature or {}).get("inputs") if isinstance(signature, Mapping) else None
    if not isinstance(inputs, Mapping):
        return
    columns = feature_columns(features)
    if inputs.get("kind") == "dataframe":
        declared = inputs.get("columns") or ()
        expected = [str(c.get("name")) for c in declared if isinstance(c, Mapping)]
        if expected != columns:
            msg = (
                f"{where} takes the columns {expected[:20]} (in this order), the deployment's "
                f"features give {columns[:20]}: list features.refs (then request_fields) in "
                "the model's column order"
            )
            raise ValidationError(
                msg, details={"field": "features.refs", "expected": expected, "given": columns}
            )
    elif inputs.get("kind") == "tensor":
        shape = inputs.get("shape") or []
        width = shape[1] if len(shape) == 2 else None
        if isinstance(width, int) and width > 0 and width != len(columns):
            msg = (
                f"{where} takes rows of {width} values, the deployment's features give "
                f"{len(columns)} ({', '.join(columns[:10])})"
            )
            raise ValidationError(
                msg, details={"field": "features.refs", "expected": width, "given": len(columns)}
            )


# --- runtimes -----------------------------------------------------------------------------


def version_formats(version: Mapping[str, Any]) -> list[str]:
    """The formats a version can be served from: its framework's native one when it has
    a model artifact, ``onnx`` when it has an ONNX export (``model.onnx``)."""
    files = {a["path"]: a.get("type") for a in version.get("artifacts") or []}
    formats = []
    framework = version.get("framework")
    natives = {p for p, kind in files.items() if kind == "model" and not p.endswith(".onnx")}
    if framework and framework != "onnx" and natives:
        formats.append(framework)
    if any(p.rsplit("/", 1)[-1] == "model.onnx" or p.endswith(".onnx") for p in files):
        formats.append("onnx")
    return formats


def installed_runtimes() -> dict[str, tuple[str, ...]]:
    """Installed runtimes (their extras present) -> the formats each loads."""
    from mlrig.backends import available_backends, load_backend

    found: dict[str, tuple[str, ...]] = {}
    for info in available_backends("runtimes"):
        if info.missing:
            continue
        try:
            formats = tuple(load_backend("runtimes", info.name).formats) or (info.name,)
        except Exception:  # a broken plugin: treat it as not installed
            continue
        found[info.name] = formats
    return found


def choose_runtime(
    version_view: Mapping[str, Any],
    requested: str = AUTO,
    *,
    installed: Mapping[str, tuple[str, ...]] | None = None,
) -> str:
    """The runtime that serves ``version_view`` (a registry version view with artifacts).

    ``auto``: ``onnx`` when the version has an ONNX export and the onnx runtime is
    installed, else the runtime of the version's framework. A named runtime must be
    installed and load one of the version's formats. Anything else: 422 saying why.
    """
    runtimes = installed_runtimes() if installed is None else installed
    artifacts = version_view.get("artifacts") or []
    name = f"{version_view.get('name')} version {version_view.get('version')}"
    if not artifacts:
        msg = f"{name}: version has no artifacts, nothing to serve"
        raise ValidationError(msg, details={"version": version_view.get("version")})
    formats = version_formats(version_view)
    if not formats:
        paths = ", ".join(sorted(a["path"] for a in artifacts)[:10])
        msg = f"{name}: version has no artifacts a runtime can load (found: {paths})"
        raise ValidationError(msg, details={"version": version_view.get("version")})
    if requested == AUTO:
        for fmt in formats[::-1] if "onnx" in formats else formats:  # onnx first
            for runtime, loads in sorted(runtimes.items(), key=lambda kv: kv[0] != fmt):
                if fmt in loads:
                    return runtime
        msg = (
            f"{name}: no installed runtime loads its formats ({', '.join(formats)}); "
            f"installed runtimes: {', '.join(sorted(runtimes)) or 'none'}"
        )
        raise ValidationError(msg, details={"formats": formats, "installed": sorted(runtimes)})
    if requested not in runtimes:
        msg = (
            f"runtime {requested!r} is not installed (or lacks its extra); installed: "
            f"{', '.join(sorted(runtimes)) or 'none'}, or 'auto'"
        )
        raise ValidationError(msg, details={"field": "runtime", "installed": sorted(runtimes)})
    if not set(formats) & set(runtimes[requested]):
        msg = (
            f"runtime {requested!r} loads {', '.join(runtimes[requested])}; {name} has "
            f"{', '.join(formats)}"
        )
        raise ValidationError(msg, details={"field": "runtime", "formats": formats})
    return requested


# --- views --------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def display_name(row: ModelDeployment) -> str:
    """The name a user gave (a deleted row's name column is rewritten to free it)."""
    return (row.deployment_config or {}).get("deleted_name") or row.name


def deployment_view(
    row: ModelDeployment, *, creator: str | None, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """The deployment as the API returns it (see the plan's "Deployment view")."""
    config = row.deployment_config or {}
    batching = {
        "max_batch_size": defaults["max_batch_size"],
        "max_latency_ms": float(defaults["max_latency_ms"]),
        **(config.get("batching") or {}),
    }
    shadow = config.get("shadow")
    return {
        "id": str(row.id),
        "name": display_name(row),
        "model": config.get("model"),
        "model_id": config.get("model_id"),
        "version": row.version,
        "version_id": config.get("version_id"),
        "alias": config.get("alias"),
        "runtime": config.get("runtime", AUTO),
        "resolved_runtime": config.get("resolved_runtime"),
        "environment": row.environment,
        "status": row.status,
        "status_reason": row.status_reason,
        "replicas": config.get("replicas") or {"min": 1, "max": 1},
        "batching": batching,
        "resources": row.resources or {},
        "traffic": [
            {"version": t["version"], "version_id": t["version_id"], "percent": t["percent"]}
            for t in config.get("traffic") or []
        ],
        "shadow": {"version": shadow["version"], "version_id": shadow["version_id"]}
        if shadow
        else None,
        "allow_nan": bool(config.get("allow_nan", False)),
        "features": config.get("features"),
        "endpoint_url": ENDPOINT.format(id=row.id),
        "created_by": creator,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "deployed_at": _iso(row.deployed_at),
        "deleted_at": _iso(row.deleted_at),
    }


def targets(row: ModelDeployment) -> list[dict[str, Any]]:
    """What the data plane loads: the primary (100 - canaries %), each canary, the shadow
    (0 %), each with its resolved runtime."""
    config = row.deployment_config or {}
    model = config.get("model")
    canaries = config.get("traffic") or []
    out = [
        {
            "variant": "primary",
            "model": model,
            "version": row.version,
            "version_id": config.get("version_id"),
            "runtime": config.get("resolved_runtime"),
            "percent": round(100.0 - sum(t["percent"] for t in canaries), 6),
        }
    ]
    out += [
        {
            "variant": "canary",
            "model": model,
            "version": t["version"],
            "version_id": t["version_id"],
            "runtime": t.get("runtime"),
            "percent": float(t["percent"]),
        }
        for t in canaries
    ]
    shadow = config.get("shadow")
    if shadow:
        out.append(
            {
                "variant": "shadow",
                "model": model,
                "version": shadow["version"],
                "version_id": shadow["version_id"],
                "runtime": shadow.get("runtime"),
                "percent": 0.0,
            }
        )
    return out


def revision(row: ModelDeployment, view: Mapping[str, Any]) -> str:
    """A short hash of what serving depends on (targets, batching, replicas, NaN policy,
    resources): equal revisions need no reload. Status and times are left out."""
    basis = {
        "targets": targets(row),
        "batching": view["batching"],
        "replicas": view["replicas"],
        "allow_nan": view["allow_nan"],
        "resources": view["resources"],
    }
    if view.get("features"):  # absent for plain deployments: their revisions stay as they were
        basis["features"] = view["features"]
    text = json.dumps(basis, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
