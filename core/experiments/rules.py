"""Validation of what an experiment is created with: name, trainer, resources, dataset,
early-stopping rule, numbers. Every check returns the normalised value or raises
:class:`~mlrig.errors.ValidationError` naming the bad value and what is allowed."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlrig.errors import ValidationError

#: an experiment name (also in the API's schema, mlrig.api.types)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
_NAME = re.compile(NAME_PATTERN)
#: the metric kinds a point (and an early-stopping rule) may name
METRIC_KINDS = ("train", "validation", "test")
RESOURCE_KEYS = ("cpus", "gpus", "memory_mb")
EARLY_STOPPING_KEYS = ("monitor", "mode", "patience", "min_delta", "kind")
INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1


def check_name(name: object) -> str:
    """An experiment name: letters, digits and ``. _ -``, 1-200, not a UUID.

    200 rather than the column's 255 leaves room for the ``-rerun-N`` suffix; a UUID
    would be ambiguous where an id or a name is accepted.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        msg = (
            f"invalid experiment name {name!r}: start with a letter or digit, then letters, "
            "digits and . _ - (1-200 characters)"
        )
        raise ValidationError(msg)
    try:
        uuid.UUID(name)
    except ValueError:
        return name
    msg = f"experiment name {name!r} looks like an id; pick a name that is not a UUID"
    raise ValidationError(msg)


def check_trainer(trainer: object) -> str:
    """The name of an installed trainer backend (entry-point group ``mlrig.trainers``)."""
    from mlrig.backends import backend_names

    installed = backend_names("trainers")
    if not isinstance(trainer, str) or trainer not in installed:
        listed = ", ".join(installed) or "none (install a trainer plugin)"
        msg = f"unknown trainer {trainer!r}; installed trainers: {listed}"
        raise ValidationError(msg, details={"trainer": str(trainer), "installed": installed})
    return trainer


def check_int(field: str, value: object, *, low: int, high: int) -> int:
    """An integer (not a bool) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        msg = f"{field} must be an integer from {low} to {high}, got {value!r}"
        raise ValidationError(msg)
    return value


def check_resources(resources: object) -> dict[str, int]:
    """``{"cpus", "gpus", "memory_mb"}``: non-negative integers; missing ones get the
    engine's defaults (1 CPU, no GPU, ``memory_mb`` 0 = no memory limit)."""
    from mlrig.engine.allocator import parse_request

    if resources is None:
        resources = {}
    if not isinstance(resources, dict):
        msg = (
            "resources must be an object like {'cpus': 2, 'gpus': 0, 'memory_mb': 4096}, "
            f"got {resources!r}"
        )
        raise ValidationError(msg)
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        msg = f"resources: unknown keys {unknown}; allowed: {', '.join(RESOURCE_KEYS)}"
        raise ValidationError(msg)
    for key, value in resources.items():
        check_int(f"resources.{key}", value, low=0, high=INT32_MAX)
    return parse_request(resources)


def check_early_stopping(rule: object) -> dict[str, Any] | None:
    """An early-stopping rule, completed with its defaults, or ``None`` for none."""
    from mlrig.engine.early_stopping import EarlyStopping

    if rule is None or rule == {}:
        return None
    if not isinstance(rule, dict):
        msg = (
            "early_stopping must be an object like {'monitor': 'val_loss', 'mode': 'min', "
            f"'patience': 3, 'min_delta': 0}}, got {rule!r}"
        )
        raise ValidationError(msg)
    kind = rule.get("kind", "validation")
    if kind not in METRIC_KINDS:
        msg = f"early_stopping.kind must be one of {', '.join(METRIC_KINDS)}, got {kind!r}"
        raise ValidationError(msg)
    parsed = EarlyStopping.from_rule(rule)
    assert parsed is not None  # an empty rule returned above
    if len(parsed.monitor) > 100:
        msg = (
            f"early_stopping.monitor {parsed.monitor[:40]!r}...: metric names are at most "
            "100 characters"
        )
        raise ValidationError(msg)
    return {
        "monitor": parsed.monitor,
        "mode": parsed.mode,
        "patience": parsed.patience,
        "min_delta": parsed.min_delta,
        "kind": parsed.kind,
    }


def check_dataset(dataset: object) -> dict[str, Any] | None:
    """``{"uri": ..., "target": ..., ...}`` (extra keys are kept for the trainer)."""
    if dataset is None:
        return None
    if (
        not isinstance(dataset, dict)
        or not isinstance(dataset.get("uri"), str)
        or not dataset["uri"].strip()
    ):
        msg = f"dataset must be an object with a 'uri' (and usually a 'target'), got {dataset!r}"
        raise ValidationError(msg)
    target = dataset.get("target")
    if target is not None and (not isinstance(target, str) or not target):
        msg = f"dataset.target must be a column name, got {target!r}"
        raise ValidationError(msg)
    return check_json("dataset", dataset)


def check_dataset_exists(uri: str, resolve: Callable[[str], Path]) -> None:
    """A local dataset path (no scheme, or ``file://``) must name an existing file;
    relative paths are taken from the config file's folder, as the job does. Other
    schemes (object stores, ``artifact://``) are read, and checked, when the job runs."""
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    elif "://" in uri:
        return
    try:
        exists = resolve(uri).is_file()
    except (OSError, ValueError):  # a name too long for the file system, and the like
        exists = False
    if not exists:
        msg = (
            f"dataset {uri!r} not found: give an existing CSV/parquet file (a relative path "
            "is taken from the config file's folder) or an object-store URL"
        )
        raise ValidationError(msg, details={"dataset": uri})


def check_json(field: str, value: dict[str, Any]) -> dict[str, Any]:
    """A JSON object that can be stored and read back: string keys, finite numbers,
    storable text, bounded depth and size (:func:`mlrig.validation.check_json`)."""
    from mlrig.validation import check_json as check

    return check(value, field=field)


def check_seed(seed: object) -> tuple[int, str]:
    """The given seed, or a random one; with ``"given"`` or ``"random"``."""
    if seed is None:
        import secrets

        return secrets.randbelow(2**31), "random"
    return check_int("seed", seed, low=0, high=SEED_MAX), "given"


def check_model_name(name: object) -> str | None:
    """The registry model name the trainer registers under (``None``: the experiment's)."""
    if name is None:
        return None
    from mlrig.registry.names import check_model_name as check

    return check(name)  # type: ignore[arg-type]
