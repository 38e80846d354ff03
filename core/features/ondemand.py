"""On-demand transformations: a registered Python function over fetched features and
request data, applied the same way to training sets and to online reads.

The function is named by an import string ``package.module:function`` (never a file
path), imported on first use and cached. It takes a pandas DataFrame (one column per
input feature and request field) and returns a DataFrame with exactly the view's
features, row for row.

It runs on the server for every reader, so only a plain Python function of the user's own
code qualifies: nothing from the standard library or builtins (``subprocess:call``,
``os:system``, ``builtins:exec``, ``pickle:loads``), from mlrig itself, or from the data and
serialisation libraries whose functions read files or unpickle (pandas, numpy, pyarrow,
duckdb, joblib...), also when the user's module merely re-exports one.
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
from collections.abc import Callable
from typing import Any

from mlrig.errors import ValidationError
from mlrig.features.spec import OnDemandViewSpec

_IMPORT_STRING = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
    r"(\.[A-Za-z_][A-Za-z0-9_]*)*$"
)
#: top-level packages whose functions never qualify (besides the standard library)
DENIED_PACKAGES = frozenset(
    {
        "builtins",
        "mlrig",
        "pandas",
        "numpy",
        "pyarrow",
        "duckdb",
        "sqlalchemy",
        "joblib",
        "dill",
        "cloudpickle",
        "sh",
        "plumbum",
        "pexpect",
        "paramiko",
        "fabric",
        "IPython",
        "setuptools",
        "pip",
        "_pytest",
        "pytest",
    }
)
_cache: dict[str, Callable[[Any], Any]] = {}
_lock = threading.Lock()


def check_function_reference(reference: str) -> str:
    """``reference`` if it has the shape ``package.module:function``.

    :raises ValidationError: a file path, a missing ``:``, anything else.
    """
    if not isinstance(reference, str) or not _IMPORT_STRING.match(reference):
        hint = ""
        if isinstance(reference, str) and ("/" in reference or "\\" in reference):
            hint = " (file paths are not accepted: install the module or put it on PYTHONPATH)"
        msg = (
            f"on-demand function must be an import string 'package.module:function', "
            f"got {reference!r}{hint}"
        )
        raise ValidationError(msg)
    return reference


def _denied(module: str | None) -> bool:
    import sys

    top = (module or "").partition(".")[0]
    return not top or top in DENIED_PACKAGES or top in sys.stdlib_module_names


def check_function_safety(reference: str) -> str:
    """``reference`` if its shape is right and its module is not one whose functions never
    qualify (the standard library, builtins, mlrig, data and serialisation libraries).
    Imports nothing: call it before importing the module.

    :raises ValidationError: naming the reference and why.
    """
    check_function_reference(reference)
    module_name = reference.partition(":")[0]
    if _denied(module_name):
        msg = (
            f"on-demand function {reference!r}: functions of {module_name.partition('.')[0]!r} "
            "cannot be on-demand transformations (they run on the server for every reader); "
            "name a function of your own module"
        )
        raise ValidationError(msg, details={"field": "function"})
    return reference


def load_function(reference: str) -> Callable[[Any], Any]:
    """The function at ``package.module:function`` (imported once, then cached).

    :raises ValidationError: a bad reference, a denied module (see
        :func:`check_function_safety`), a module that does not import, a missing attribute,
        anything but a plain Python function, or one defined in a denied module.
    """
    found = _cache.get(reference)
    if found is not None:
        return found
    check_function_safety(reference)
    module_name, _, attribute = reference.partition(":")
    with _lock:
        found = _cache.get(reference)
        if found is not None:
            return found
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as exc:
            msg = (
                f"on-demand function {reference!r}: module {module_name!r} does not import ({exc})"
            )
            raise ValidationError(msg) from None
        for part in attribute.split("."):
            target = getattr(target, part, None)
            if target is None:
                msg = f"on-demand function {reference!r}: {module_name!r} has no {attribute!r}"
                raise ValidationError(msg)
        if not inspect.isfunction(target):
            msg = (
                f"on-demand function {reference!r} is not a Python function "
                f"(got {type(target).__name__})"
            )
            raise ValidationError(msg)
        if _denied(getattr(target, "__module__", None)):
            msg = (
                f"on-demand function {reference!r} is {target.__module__}."
                f"{target.__qualname__}, which cannot be an on-demand transformation; "
                "define the function in your own module"
            )
            raise ValidationError(msg)
        _cache[reference] = target
    return target


def forget_functions() -> None:
    """Drop the cache (tests that redefine a module)."""
    with _lock:
        _cache.clear()


def apply_on_demand(spec: OnDemandViewSpec, frame: Any) -> Any:
    """Run ``spec``'s function over ``frame`` (inputs and request fields as columns).

    :returns: a DataFrame with exactly the view's features as columns, in declared order,
        with ``frame``'s index.
    :raises ValidationError: the function fails, returns no DataFrame, another number of
        rows, or columns other than the declared features.
    """
    import pandas as pd

    function = load_function(spec.function)
    try:
        result = function(frame)
    except Exception as exc:
        msg = (
            f"on-demand view {spec.name!r}: {spec.function} raised "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        )
        raise ValidationError(msg, details={"view": spec.name}) from exc
    if not isinstance(result, pd.DataFrame):
        msg = (
            f"on-demand view {spec.name!r}: {spec.function} must return a pandas DataFrame, "
            f"got {type(result).__name__}"
        )
        raise ValidationError(msg, details={"view": spec.name})
    declared = [f.name for f in spec.features]
    got = [str(c) for c in result.columns]
    if sorted(got) != sorted(declared) or len(set(got)) != len(got):
        extra = sorted(set(got) - set(declared))
        absent = sorted(set(declared) - set(got))
        msg = (
            f"on-demand view {spec.name!r}: {spec.function} must return exactly the columns "
            f"{', '.join(declared)}"
            + (f"; missing: {', '.join(absent)}" if absent else "")
            + (f"; not declared: {', '.join(extra)}" if extra else "")
        )
        raise ValidationError(msg, details={"view": spec.name, "missing": absent, "extra": extra})
    if len(result) != len(frame):
        msg = (
            f"on-demand view {spec.name!r}: {spec.function} returned {len(result)} rows "
            f"for {len(frame)}"
        )
        raise ValidationError(msg, details={"view": spec.name})
    result = result[declared]
    if not result.index.equals(frame.index):
        result = result.set_axis(frame.index)
    return result
