"""The model registry: registered models, immutable versions, lineage, search, aliases,
stages with approvals, artifacts and evaluations."""

from mlrig.registry.search import VersionQuery
from mlrig.registry.service import ModelRegistry

__all__ = ["ModelRegistry", "VersionQuery"]
