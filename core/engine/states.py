"""Experiment states and the transitions between them."""

from __future__ import annotations

CREATED = "created"
QUEUED = "queued"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

FINAL = frozenset({COMPLETED, FAILED, CANCELLED})

#: state -> states it may move to
TRANSITIONS: dict[str, frozenset[str]] = {
    CREATED: frozenset({QUEUED, CANCELLED}),
    QUEUED: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({COMPLETED, FAILED, CANCELLED, QUEUED}),
    COMPLETED: frozenset(),
    FAILED: frozenset({QUEUED}),
    CANCELLED: frozenset({QUEUED}),
}
