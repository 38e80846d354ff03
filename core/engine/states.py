"""Experiment states and the transitions between them."""

from __future__ import annotations

CREATED = "created"
QUEUED = "queued"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

FINAL = frozenset({COMPLETED, FAILED, CANCELLED})
#: states a user may start (queue) an experiment from; a running job is requeued only
#: by the engine itself (a lost lease, a failed attempt)
STARTABLE = frozenset({CREATED, FAILED, CANCELLED})
