"""Find the files of a model version from what MLflow recorded about it: its
``storage_location`` (MLflow 3), or its ``source``: ``models:/m-<id>`` (a logged model),
``runs:/<run id>/<path>`` (MLflow 2, inside the run's artifacts) or a plain URI."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlrig.importers.mlflow_artifacts import LocalTree, resolve_tree
from mlrig.importers.mlflow_records import ArtifactTree, ModelVersion

if TYPE_CHECKING:
    import httpx


class ModelLocator:
    """What the file and SQL readers share to find artifacts (a mixin)."""

    base: Path
    artifacts_root: Path | None
    http: httpx.Client | None = None

    def run_artifact_uri(self, run_id: str) -> str | None:
        """The artifact URI of a run of this store."""
        raise NotImplementedError

    def logged_model_location(self, model_id: str) -> str | None:
        """The artifact location of an MLflow 3 logged model of this store."""
        raise NotImplementedError

    def tree(self, uri: str | None) -> ArtifactTree | None:
        """The files of ``uri`` as this store reaches them."""
        return resolve_tree(uri, base=self.base, artifacts_root=self.artifacts_root, http=self.http)

    def _physical(self, uri: str) -> str | None:
        if uri.startswith("models:/"):
            ident = uri.removeprefix("models:/").strip("/")
            return self.logged_model_location(ident) if ident.startswith("m-") else None
        if uri.startswith("runs:/"):
            run_id, _, path = uri.removeprefix("runs:/").strip("/").partition("/")
            root = self.run_artifact_uri(run_id)
            if root is None:
                return None
            return f"{root.rstrip('/')}/{path}" if path else root
        return uri

    def version_artifacts(self, version: ModelVersion) -> ArtifactTree | None:
        for uri in (version.storage_location, version.source):
            if not uri:
                continue
            physical = self._physical(uri)
            tree = self.tree(physical) if physical else None
            if tree is None:
                continue
            if isinstance(tree, LocalTree) and not (tree.root / "MLmodel").is_file():
                continue
            return tree
        return None
