"""The database's last line against unstorable text: whatever path a value took (a
service that forgot a check, a plugin, a script), a NUL character or a lone surrogate
never reaches a statement, and a JSON document that could not be read back is never
written. The services check their inputs with better messages first
(:mod:`mlrig.validation`); this makes the class of bug impossible, not just unlikely.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from mlrig.errors import ValidationError
from mlrig.validation import find_bad_text, json_problem

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
