"""The MLflow tracking REST subset the ``mlflow`` client uses, under ``/api/2.0/mlflow``
(and ``/ajax-api/2.0/mlflow``), mapped onto mlrig's runs and run groups, plus MLflow's
artifact proxy routes (``/api/2.0/mlflow-artifacts/artifacts``)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["mlflow"])
