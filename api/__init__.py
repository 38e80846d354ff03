"""The REST API: a FastAPI app over a :class:`mlrig.Platform`, every route under ``/api/ml``."""

from mlrig.api.app import create_app

__all__ = ["create_app"]
