"""One router module per resource; ``ROUTERS`` is included under ``/api/ml``."""

from mlrig.api.routers import (
    approvals,
    audit,
    deployments,
    experiments,
    features,
    health,
    models,
    predict,
    runs,
    sweeps,
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
    runs.router,
    sweeps.router,
    deployments.router,
    predict.router,
    features.router,
]
