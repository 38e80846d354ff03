"""``create_app(platform)``: the FastAPI application over a platform."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI

from mlrig import __version__
from mlrig.api import docs, openapi
from mlrig.api.errors import install_error_handlers
from mlrig.api.middleware import AuditMiddleware, RequestGuardMiddleware, RequestIdMiddleware
from mlrig.api.routers import ROUTERS
from mlrig.api.types import check_request_params
from mlrig.platform import Platform

API_PREFIX = "/api/ml"


def create_app(platform: Platform) -> FastAPI:
    """Build the REST API for ``platform``: built-in routers, plugin routes, error shape."""
    app = FastAPI(
        title="mlrig",
        version=__version__,
        description="mlrig REST API: every route lives under /api/ml.",
        docs_url=None,  # served offline by mlrig.api.docs
        redoc_url=None,
        openapi_url="/openapi.json",
        # every route's query and path parameters, plugin routes included (api/types.py)
        dependencies=[Depends(check_request_params)],
    )
    app.state.platform = platform
    install_error_handlers(app)
    # innermost: routes, authenticates and bounds the body before the route reads it
    app.add_middleware(RequestGuardMiddleware)
    from mlrig.api.mlflow.errors import MlflowErrorShapeMiddleware

    app.add_middleware(MlflowErrorShapeMiddleware)  # MLflow's paths: MLflow's error bodies
    app.add_middleware(AuditMiddleware)
    app.add_middleware(RequestIdMiddleware)  # outermost: the audit entry sees the id
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    from mlrig.api.routers import mlflow_compat

    app.include_router(mlflow_compat.router)  # MLflow's own paths, outside /api/ml
    platform.hooks.register_routes(app)
    _document_security(app)
    openapi.install(app)  # last: completes the schema the steps above build
    docs.install(app)
    return app


def _document_security(app: FastAPI) -> None:
    """Mark every operation with the permission the guard enforces (``x-mlrig-permission``)
    and, where it needs a token, with the bearer scheme.

    Routes that declare ``Reader``/``Writer``/... get the scheme from FastAPI already; this
    adds it to plugin routes that declare nothing (and so need the read permission).
    """
    from mlrig.api.security import PUBLIC, route_permissions

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        needs = {(row.method.lower(), row.path): row for row in route_permissions(app)}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                row = needs.get((method, path))
                if row is None or not isinstance(operation, dict):
                    continue
                operation["x-mlrig-permission"] = row.label  # what the guard enforces
                if row.permission != PUBLIC and not operation.get("security"):
                    operation["security"] = [{"bearer": []}]
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes.setdefault("bearer", {"type": "http", "scheme": "bearer"})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
