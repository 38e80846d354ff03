"""The one list envelope, ``{"items": [...], "next_cursor": "..." | null}``, for every
list route.

Offset-paged lists (models, experiments, audit) hand out the cursor the version search
uses (``mlrig.registry.search``), holding the offset of the next page; lists that are
never long (users, tokens, approvals, artifacts, events) come whole, with a null cursor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def whole(items: Sequence[T]) -> dict[str, Any]:
    """A list that is never paged, as the envelope."""
    return {"items": list(items), "next_cursor": None}


def cursor_offset(cursor: str | None, offset: int) -> int:
    """The offset a page starts at: the cursor's, else ``offset``."""
    if cursor is None:
        return offset
    from mlrig.validation import decode_cursor

    # strict: exactly {"offset": int 0..2**63-1}, or a 422 (mlrig.validation)
    return decode_cursor(cursor, {"offset": int})["offset"]


def offset_page(
    fetch: Callable[[int, int], list[T]], *, limit: int, offset: int, cursor: str | None
) -> dict[str, Any]:
    """One page of ``fetch(limit, offset)`` as the envelope; ``next_cursor`` is set only
    when a row exists past this page (one extra one-row query for a full page)."""
    from mlrig.registry.search import encode_cursor

    start = cursor_offset(cursor, offset)
    items = fetch(limit, start)
    more = len(items) == limit and bool(fetch(1, start + limit))
    return {
        "items": items,
        "next_cursor": encode_cursor({"offset": start + limit}) if more else None,
    }
