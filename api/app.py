"""``create_app(platform)``: the FastAPI application over a platform."""

from __future__ import annotations

from fastapi import FastAPI

from mlrig import __version__
from mlrig.api.errors import install_error_handlers
from mlrig.api.middleware import AuditMiddleware, RequestIdMiddleware
from mlrig.api.routers import ROUTERS
from mlrig.platform import Platform

API_PREFIX = "/api/ml"


def create_app(platform: Platform) -> FastAPI:
    """Build the REST API for ``platform``: built-in routers, plugin routes, error shape."""
    app = FastAPI(
        title="mlrig",
        version=__version__,
        description="mlrig REST API: every route lives under /api/ml.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.platform = platform
    install_error_handlers(app)
    app.add_middleware(AuditMiddleware)
    app.add_middleware(RequestIdMiddleware)  # outermost: the audit entry sees the id
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    platform.hooks.register_routes(app)
    return app
