"""Experiments: the service over training runs, metric storage and job logs."""

from mlrig.experiments.logs import LogStore
from mlrig.experiments.service import ExperimentService

__all__ = ["ExperimentService", "LogStore"]
