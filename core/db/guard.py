"""The database's last line against unstorable text: whatever path a value took (a
service that forgot a check, a plugin, a script), a NUL character or a lone surrogate
never reaches a statement, and a JSON document that could not be read back is never
written. The services check their inputs with better messages first
(:mod:`mlrig.validation`); this makes the class of bug impossible, not just unlikely.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from mlrig.errors import ValidationError
from mlrig.validation import find_bad_text, json_problem

_SURROGATE = re.compile("[\ud800-\udfff]")
#: a stored document deeper than this would not read back everywhere (orjson stops at 255)
MAX_STORED_JSON_DEPTH = 64


def dump_json(value: Any) -> str:
    """The ``json_serializer`` of every engine: compact JSON, refusing NaN, infinities,
    NUL characters, lone surrogates and absurd nesting (so every stored value reads back).
    """
    problem = json_problem(value, max_depth=MAX_STORED_JSON_DEPTH)
    if problem is not None:
        where, what = problem
        msg = f"cannot store this JSON value (at {where or 'the top'}): {what}"
        raise ValidationError(msg)
    return json.dumps(value, allow_nan=False)


def load_json(text: str | bytes) -> Any:
    """The ``json_deserializer`` of every engine: a value stored before these checks
    existed (SQLite kept JSON escapes of lone surrogates) reads back with U+FFFD in their
    place, so one old row cannot make every response that holds it fail."""
    value = json.loads(text)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if "\\ud" in text or "\\uD" in text:  # a surrogate escape, paired or not: look closer
        value = _replace_surrogates(value)
    if text.count("{") + text.count("[") > MAX_STORED_JSON_DEPTH:  # possibly too deep
        value = _cut_deep(value, MAX_STORED_JSON_DEPTH)
    return value


def _cut_deep(value: Any, depth: int) -> Any:
    """``value`` with what lies deeper than ``depth`` replaced by a short note (old rows
    nested hundreds deep broke every response that held them)."""
    if not isinstance(value, (dict, list)):
        return value
    if depth == 0:
        return f"(nested deeper than {MAX_STORED_JSON_DEPTH} levels: not shown)"
    if isinstance(value, list):
        return [_cut_deep(item, depth - 1) for item in value]
    return {key: _cut_deep(item, depth - 1) for key, item in value.items()}


def _replace_surrogates(value: Any) -> Any:
    # json.loads joins valid pairs into one character: what is left is a lone surrogate
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(item) for k, item in value.items()}
    return value


def _check_parameters(parameters: Any) -> None:
    if isinstance(parameters, Mapping):
        values: Any = parameters.values()
    elif isinstance(parameters, Sequence) and not isinstance(parameters, (str, bytes)):
        values = parameters
    else:
        return
    for value in values:
        if type(value) is str:
            problem = find_bad_text(value)
            if problem is not None:
                msg = f"cannot store or look up this text: it {problem}"
                raise ValidationError(msg)
        elif isinstance(value, (Mapping, list, tuple)):  # executemany: one set per row
            _check_parameters(value)


def _before_cursor_execute(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    _check_parameters(parameters)


def install(engine: Engine) -> None:
    """Check every statement's bound parameters on ``engine``."""
    event.listen(engine, "before_cursor_execute", _before_cursor_execute)
