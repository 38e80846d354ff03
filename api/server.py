"""The app factory uvicorn imports in each server worker process."""

from __future__ import annotations

from fastapi import FastAPI

from mlrig.api.app import create_app
from mlrig.platform import Platform
from mlrig.serving.http import freeze_heap


def app_from_config() -> FastAPI:
    """Build the app from the config the ``mlrig server`` command put in ``MLRIG_CONFIG``."""
    app = create_app(Platform.from_config())
    freeze_heap()
    return app
