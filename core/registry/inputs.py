"""The registry's input rules at its service entry points (the API checks the same in its
schema; the CLI, ``mlrig.Client`` and Python callers meet them here). The limits are
:mod:`mlrig.validation`'s and are listed in docs/registry.md."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from mlrig import validation as v
from mlrig.errors import ValidationError

#: the longest metric name a version may record (as for experiment metrics)
MAX_METRIC_NAME_LENGTH = 100


def check_model_fields(
    *, description: str | None, tags: Mapping[str, str] | None
) -> tuple[str | None, dict[str, str] | None]:
    """A model's (or a version's) editable fields: description and tags."""
    if description is not None:
        v.check_text(description, field="description", max_length=v.MAX_DESCRIPTION_LENGTH)
    return description, None if tags is None else v.check_tags(tags)


def check_artifact_paths(paths: Iterable[object]) -> None:
    """The file names of an upload (their paths inside the version)."""
    for path in paths:
        v.check_text(path, field="artifact path", min_length=1, max_length=v.MAX_SHORT_TEXT_LENGTH)


#: the short text fields of a version and their column sizes (VARCHAR on PostgreSQL,
#: which refuses longer text: a 500 before these bounds)
VERSION_TEXT_LENGTHS = {"framework": 100, "model_type": 100, "source_run": 255, "code_version": 255}


def check_version_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The recorded fields of a new version, checked and as plain JSON values."""
    checked = dict(fields)
    description, tags = check_model_fields(
        description=fields.get("description"), tags=fields.get("tags") or {}
    )
    checked["description"], checked["tags"] = description, tags
    for key, length in VERSION_TEXT_LENGTHS.items():
        checked[key] = v.check_optional_text(fields.get(key), field=key, max_length=length)
    checked["params"] = v.check_json(fields.get("params") or {}, field="params")
    if fields.get("signature") is not None:
        checked["signature"] = v.check_json(fields["signature"], field="signature")
    checked["metrics"] = _metrics(fields.get("metrics") or {})
    checked["requirements"] = v.check_text_list(
        fields.get("requirements") or [],
        field="requirements",
        max_items=v.MAX_REQUIREMENTS,
        max_length=v.MAX_REQUIREMENT_LENGTH,
    )
    checked["datasets"] = _datasets(fields.get("datasets") or [])
    return checked


def _metrics(metrics: object) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        msg = "metrics must be an object of metric names and numbers"
        raise ValidationError(msg)
    if len(metrics) > v.MAX_JSON_KEYS:
        msg = f"metrics: {len(metrics):,} metrics; at most {v.MAX_JSON_KEYS}"
        raise ValidationError(msg)
    checked = {}
    for name, value in metrics.items():
        v.check_text(name, field="metric name", min_length=1, max_length=MAX_METRIC_NAME_LENGTH)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            msg = f"metric {name!r} must be a number, got {value!r}"
            raise ValidationError(msg)
        number = float(value) if -1e308 < value < 1e308 else math.inf
        if not math.isfinite(number):
            msg = f"metric {name!r} must be a finite number, got {value!r}"
            raise ValidationError(msg)
        checked[name] = number
    return checked


def _datasets(datasets: object) -> list[dict[str, Any]]:
    items = v.check_json(
        list(datasets) if isinstance(datasets, (list, tuple)) else datasets,
        field="datasets",
        object_only=False,
        max_keys=None,
    )
    if not isinstance(items, list) or len(items) > v.MAX_DATASETS:
        msg = f"datasets must be a list of at most {v.MAX_DATASETS} {{'uri', 'hash'}} objects"
        raise ValidationError(msg)
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("uri"), str):
            msg = f"datasets[{index}] must be an object with a 'uri'"
            raise ValidationError(msg)
        v.check_text(item["uri"], field=f"datasets[{index}].uri", min_length=1, max_length=1000)
    return items
