"""MLflow's search grammar for ``runs/search`` and ``experiments/search``: a filter of
comparisons joined by ``AND``, ``order_by`` clauses, and page tokens.

Filter: ``metrics.acc > 0.9 and params.lr = '0.1' and tags."mlflow.user" LIKE 'a%'
and attributes.status IN ('FINISHED', 'FAILED')``. Identifiers are ``metrics.`` (``metric.``),
``params.`` (``param.``, ``parameters.``), ``tags.`` (``tag.``) and ``attributes.``
(``attribute.``, ``attr.``, ``run.``, or no prefix); a name with spaces or dots is quoted
with backticks or double quotes. Comparators: ``= != > >= < <=`` for numbers, ``= !=
LIKE ILIKE`` for strings, ``IN`` / ``NOT IN`` with a parenthesised list. Values are quoted
strings or numbers. A run without the metric, param or tag a clause names does not match.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mlrig.api.mlflow.convert import invalid

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
     |(?P<op>!=|>=|<=|==|=|>|<)
     |(?P<punct>[(),])
     |(?P<num>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
     |(?P<ident>`[^`]*`|[A-Za-z_][\w]*(?:\.(?:`[^`]*`|"[^"]*"|[\w.\-/:]+))?)
    )""",
    re.X,
)
_KINDS = {
    "metric": "metrics",
    "metrics": "metrics",
    "param": "params",
    "params": "params",
    "parameter": "params",
    "parameters": "params",
    "tag": "tags",
    "tags": "tags",
    "attribute": "attributes",
    "attributes": "attributes",
    "attr": "attributes",
    "run": "attributes",
}
_NUMERIC_ATTRIBUTES = frozenset({"start_time", "end_time", "creation_time", "last_update_time"})
#: what ``attributes.<name>`` may name (aliases to the record's keys)
_ATTRIBUTE_ALIASES = {"run_id": "run_id", "run_uuid": "run_id", "id": "run_id"}


@dataclass(frozen=True)
class Clause:
    """One comparison: ``kind`` (metrics, params, tags, attributes), ``key``, ``op``,
    ``value`` (a string, a number or a tuple of strings for IN)."""

    kind: str
    key: str
    op: str
    value: Any


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"`":
        body = text[1:-1]
        return re.sub(r"\\(.)", r"\1", body) if text[0] != "`" else body
    return text


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            msg = f"invalid filter {text!r}: cannot read from {text[position : position + 30]!r}"
            raise invalid(msg)
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        position = match.end()
    return out


def _identifier(raw: str, *, default_kind: str) -> tuple[str, str]:
    if raw.startswith("`"):
        return default_kind, _unquote(raw)
    head, dot, rest = raw.partition(".")
    if dot and head.lower() in _KINDS:
        return _KINDS[head.lower()], _unquote(rest)
    return default_kind, raw


def parse_filter(text: str | None, *, default_kind: str = "attributes") -> list[Clause]:
    """The clauses of a filter string (empty for none). Raises INVALID_PARAMETER_VALUE."""
    if not text or not text.strip():
        return []
    tokens = _tokens(text)
    clauses: list[Clause] = []
    index = 0

    def take() -> tuple[str, str]:
        nonlocal index
        if index >= len(tokens):
            msg = f"invalid filter {text!r}: it ends too early"
            raise invalid(msg)
        token = tokens[index]
        index += 1
        return token

    while index < len(tokens):
        kind, raw = take()
        if kind != "ident":
            msg = f"invalid filter {text!r}: expected a name like metrics.acc, got {raw!r}"
            raise invalid(msg)
        what, key = _identifier(raw, default_kind=default_kind)
        kind, raw = take()
        if kind == "op":
            op = "=" if raw == "==" else raw
        elif kind == "ident" and raw.upper() in ("LIKE", "ILIKE", "IN"):
            op = raw.upper()
        elif kind == "ident" and raw.upper() == "NOT":
            kind, raw = take()
            if raw.upper() != "IN":
                msg = f"invalid filter {text!r}: NOT must be followed by IN"
                raise invalid(msg)
            op = "NOT IN"
        else:
            msg = f"invalid filter {text!r}: expected a comparator after {key!r}, got {raw!r}"
            raise invalid(msg)
        if op in ("IN", "NOT IN"):
            if take() != ("punct", "("):
                msg = f"invalid filter {text!r}: IN takes a list in parentheses"
                raise invalid(msg)
            values = []
            while True:
                kind, raw = take()
                if kind not in ("str", "num"):
                    msg = f"invalid filter {text!r}: IN lists quoted values"
                    raise invalid(msg)
                values.append(_unquote(raw))
                kind, raw = take()
                if raw == ")":
                    break
                if raw != ",":
                    msg = f"invalid filter {text!r}: expected , or ) in the IN list"
                    raise invalid(msg)
            value: Any = tuple(values)
        else:
            kind, raw = take()
            if kind == "str":
                value = _unquote(raw)
            elif kind == "num":
                value = float(raw)
            else:
                msg = f"invalid filter {text!r}: expected a quoted string or a number, got {raw!r}"
                raise invalid(msg)
        if what == "metrics" and not isinstance(value, float):
            msg = f"invalid filter {text!r}: metrics.{key} compares with a number"
            raise invalid(msg)
        if what in ("params", "tags") and op in (">", ">=", "<", "<="):
            msg = f"invalid filter {text!r}: {what}.{key} compares with = != LIKE ILIKE"
            raise invalid(msg)
        clauses.append(Clause(what, key, op, value))
        if index < len(tokens):
            kind, raw = take()
            if raw.upper() != "AND":
                msg = f"invalid filter {text!r}: clauses are joined by AND (OR is not supported)"
                raise invalid(msg)
    return clauses


def _like(pattern: str, value: str, *, ignore_case: bool) -> bool:
    """SQL's ``LIKE`` (``%`` any run of characters, ``_`` one) in time linear in the pattern
    times the value: the pieces between ``%`` have a fixed length, so each is searched for
    once, leftmost first (one regex of ``.*`` per ``%`` backtracked exponentially: a viewer's
    ``LIKE '%a%a%a%a%a%a%a%a%b'`` held a worker for minutes)."""
    flags = re.S | (re.I if ignore_case else 0)

    def piece(text: str) -> re.Pattern[str]:
        return re.compile("".join("." if c == "_" else re.escape(c) for c in text), flags)

    first, *middle, last = pattern.split("%") if "%" in pattern else (pattern, None)
    if last is None:
        return piece(first).fullmatch(value) is not None
    head = piece(first).match(value)
    tail_at = len(value) - len(last)  # every character of a piece matches one character
    if head is None or tail_at < head.end() or not piece(last).fullmatch(value, tail_at):
        return False
    at = head.end()
    for part in middle:
        found = piece(part).search(value, at, tail_at)
        if found is None:
            return False
        at = found.end()
    return True


def _compare(op: str, left: Any, right: Any) -> bool:
    if op in ("IN", "NOT IN"):
        return (str(left) in right) == (op == "IN")
    if op in ("LIKE", "ILIKE"):
        return _like(str(right), str(left), ignore_case=op == "ILIKE")
    if isinstance(right, float):
        try:
            left = float(left)
        except (TypeError, ValueError):
            return False
        if left != left:  # NaN matches no comparison but !=
            return op == "!="
    else:
        left = str(left)
    if op == "=":
        return left == right
    if op == "!=":
        return left != right
    try:
        return {">": left > right, ">=": left >= right, "<": left < right, "<=": left <= right}[op]
    except TypeError:
        return False


def matches(record: dict[str, dict[str, Any]], clauses: Sequence[Clause]) -> bool:
    """Whether ``record`` (``{"metrics", "params", "tags", "attributes"}``, each a dict)
    meets every clause."""
    for clause in clauses:
        key = clause.key
        if clause.kind == "attributes":
            key = _ATTRIBUTE_ALIASES.get(key, key)
        values = record.get(clause.kind, {})
        if key not in values or values[key] is None:
            return False
        value = values[key]
        if clause.kind == "attributes" and key in _NUMERIC_ATTRIBUTES:
            if isinstance(clause.value, str):
                msg = f"attributes.{clause.key} compares with a number"
                raise invalid(msg)
        if not _compare(clause.op, value, clause.value):
            return False
    return True


def parse_order_by(
    clauses: Sequence[str] | None, *, default_kind: str = "attributes"
) -> list[tuple[str, str, bool]]:
    """``order_by`` as ``(kind, key, descending)`` triples."""
    out = []
    for text in clauses or []:
        words = text.strip().rsplit(None, 1)
        descending = False
        if len(words) == 2 and words[1].upper() in ("ASC", "DESC"):
            descending = words[1].upper() == "DESC"
            text = words[0]
        tokens = _tokens(text.strip())
        if len(tokens) != 1 or tokens[0][0] != "ident":
            msg = f"invalid order_by clause {text!r}: use e.g. 'metrics.acc DESC'"
            raise invalid(msg)
        kind, key = _identifier(tokens[0][1], default_kind=default_kind)
        if kind == "attributes":
            key = _ATTRIBUTE_ALIASES.get(key, key)
        out.append((kind, key, descending))
    return out


def sort_records(
    records: list[dict[str, Any]], order: Sequence[tuple[str, str, bool]]
) -> list[dict[str, Any]]:
    """``records`` in ``order``; missing values last whatever the direction."""
    result = list(records)
    for kind, key, descending in reversed(order):

        def sort_key(r: dict[str, Any], kind: str = kind, key: str = key) -> Any:
            value = r.get(kind, {}).get(key)
            if value is None:
                return (1, 0, "")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return (0, 0, value)
            return (0, 1, str(value))

        present = [r for r in result if r.get(kind, {}).get(key) is not None]
        missing = [r for r in result if r.get(kind, {}).get(key) is None]
        present.sort(key=sort_key, reverse=descending)
        result = present + missing
    return result


def page(
    items: list[Any], *, max_results: int | None, token: str | None, default: int, most: int
) -> tuple[list[Any], str | None]:
    """One page of ``items`` and the token of the next (``None`` at the end)."""
    limit = default if not max_results else max_results
    if not 1 <= limit <= most:
        msg = f"max_results must be 1-{most}, got {limit}"
        raise invalid(msg)
    offset = 0
    if token:
        try:
            offset = int(json.loads(base64.b64decode(token, validate=True))["offset"])
        except (ValueError, KeyError, TypeError):
            msg = f"invalid page_token {token[:50]!r}"
            raise invalid(msg) from None
        if offset < 0:
            msg = f"invalid page_token {token[:50]!r}"
            raise invalid(msg)
    chunk = items[offset : offset + limit]
    after = offset + limit
    following = None
    if after < len(items):
        following = base64.b64encode(json.dumps({"offset": after}).encode()).decode()
    return chunk, following


def filter_sort_page(
    records: list[dict[str, Any]],
    *,
    filter_string: str | None,
    order_by: Sequence[str] | None,
    default_order: Sequence[tuple[str, str, bool]],
    max_results: int | None,
    page_token: str | None,
    default_limit: int,
    most: int,
    default_kind: str = "attributes",
    keep: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Filter, sort and page search records in one call."""
    clauses = parse_filter(filter_string, default_kind=default_kind)
    order = parse_order_by(order_by, default_kind=default_kind) + list(default_order)
    chosen = [r for r in records if (keep is None or keep(r)) and matches(r, clauses)]
    return page(
        sort_records(chosen, order),
        max_results=max_results,
        token=page_token,
        default=default_limit,
        most=most,
    )
