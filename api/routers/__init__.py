"""One router module per resource; ``ROUTERS`` is included under ``/api/ml``."""

from mlrig.api.routers import (
    approvals,
    audit,
    deployments,
    experiments,
    health,
    models,
    predict,
    tokens,
    users,
    versions,
)

ROUTERS = [
    health.router,
    models.router,
    versions.router,
    approvals.router,
    users.router,
    tokens.router,
    audit.router,
    experiments.router,
    deployments.router,
    predict.router,
]
