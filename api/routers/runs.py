"""Runs tracked from user code (``mlrig.start_run``): start one, then log params, tags,
datasets, artifacts and heartbeats, and end it. A run is an experiment
(``/experiments/{id}``) with ``origin = "tracking"``."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["runs"])
