"""The registry half of an MLflow import: registered models, their versions (packaged by
:mod:`.mlflow_models`), aliases and stages (a mixin of
:class:`~mlrig.importers.mlflow_import.MlflowImporter`)."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrig import validation as v
from mlrig.errors import ConflictError, MlrigError, NotFoundError, ValidationError
from mlrig.importers.mlflow_models import fetch, prepare_version
from mlrig.importers.mlflow_records import MlflowSource, ModelVersion, RegisteredModel
from mlrig.importers.mlflow_summary import RUN_ID_TAG, VERSION_TAG, ImportSummary, Progress

if TYPE_CHECKING:
    from mlrig.platform import Platform
    from mlrig.security import Principal

#: MLflow stages (lower-cased) and the mlrig stage each becomes
STAGES = {"staging": "staging", "production": "production", "archived": "archived"}


class RegistryImport:
    """Registered models, versions, aliases and stages of an import."""

    platform: Platform
    source: MlflowSource
    actor: Principal
    summary: ImportSummary
    progress: Progress
    convert: bool
    remote: bool

    def _clean_tags(self, tags: dict[str, str], where: str) -> dict[str, str]:
        raise NotImplementedError

    def _models(self, known: dict[str, dict[str, Any]]) -> None:
        models = self.source.registered_models()
        planned = [(m, self.source.model_versions(m)) for m in models]
        total = sum(len(versions) for _, versions in planned)
        done = 0
        self.progress("models", 0, total)
        for model, versions in planned:
            existing = self._model(model)
            if existing is None:
                done += len(versions)
                self.progress("models", done, total)
                continue
            imported: set[str] = set()
            for version in versions:
                try:
                    if self._version(model, version, existing):
                        imported.add(version.version)
                except (MlrigError, OSError) as exc:
                    self.summary.add("versions_failed")
                    self.summary.warn(f"{model.name} version {version.version}: {exc}")
                done += 1
                self.progress("models", done, total)
            self._aliases(model, imported | existing)
            self.summary.add("models")

    def _model(self, model: RegisteredModel) -> set[str] | None:
        """Make the model unless it exists; the version names it already has."""
        registry = self.platform.registry
        try:
            return {x["version"] for x in registry.get_model(model.name)["versions"]}
        except NotFoundError:
            pass
        try:
            registry.create_model(
                name=model.name,
                actor=self.actor,
                description=model.description,
                tags=self._clean_tags(model.tags, f"model {model.name!r}"),
            )
        except (ConflictError, ValidationError) as exc:
            self.summary.warn(f"model {model.name!r} not imported: {exc.message}")
            return None
        self.summary.add("models_created")
        return set()

    def _version(self, model: RegisteredModel, version: ModelVersion, existing: set[str]) -> bool:
        """Import one version; whether it is in mlrig now."""
        self.summary.add("versions")
        where = f"{model.name} version {version.version}"
        if version.version in existing:
            self.summary.add("versions_skipped")
            tags = self.platform.registry.get_version(model.name, version.version)["tags"]
            if tags.get(VERSION_TAG) != version.version:
                self.summary.warn(
                    f"{where}: mlrig's model already has a version {version.version} that was "
                    "not imported from MLflow; it is left as it is"
                )
            return True
        try:
            tree = self.source.version_artifacts(version)
        except (OSError, MlrigError) as exc:
            tree = None
            self.summary.warn(f"{where}: {exc}")
        if tree is None:
            self.summary.add("versions_unreachable")
            self.summary.warn(
                f"{where}: its files ({version.storage_location or version.source}) are not "
                "reachable from here; not imported"
            )
            return False
        with tempfile.TemporaryDirectory(prefix="mlrig-import-") as tmp:
            work = Path(tmp)
            folder = fetch(tree, work / "download")
            prepared = prepare_version(folder, work, convert=self.convert)
            if not prepared.files:
                self.summary.add("versions_unreachable")
                self.summary.warn(f"{where}: no files at {version.source!r}; not imported")
                return False
            tags = {
                **version.tags,
                VERSION_TAG: version.version,
                "mlflow.source": (version.source or "")[: v.MAX_TAG_VALUE_LENGTH],
                "mlflow.flavors": ",".join(prepared.flavors),
            }
            if version.run_id:
                tags[RUN_ID_TAG] = version.run_id
            lineage = self.summary.runs.get(version.run_id or "")
            view = self.platform.registry.create_version(
                model.name,
                files=prepared.files,
                actor=self.actor,
                version=version.version,
                description=version.description,
                framework=prepared.framework,
                model_type=prepared.model_type,
                tags=self._clean_tags(tags, where),
                signature=prepared.signature,
                requirements=prepared.requirements,
                source_experiment_id=lineage,
                source_run=version.run_id,
            )
        if prepared.not_converted:
            self.summary.add("versions_not_converted")
            self.summary.warn(f"{where}: stored as MLflow files only: {prepared.not_converted}")
        self.summary.add("versions_imported")
        stage = STAGES.get(version.stage.lower())
        if stage is not None:
            self._stage(model.name, version.version, view["id"], stage)
        return True

    def _stage(self, model: str, version: str, version_id: str, stage: str) -> None:
        """Record the stage the version had in MLflow. It was decided there, so it is
        written as it was, without mlrig's approval workflow; against a server (no
        database here) it goes through the server's stage route, which may open an
        approval request instead."""
        if self.remote:
            done = self.platform.lifecycle.transition(model, version, stage, actor=self.actor)
            if done.get("status") == "pending_approval":
                self.summary.warn(
                    f"{model} version {version}: moving it to {stage} awaits approval "
                    f"(request {done['request']['id']})"
                )
                return
            self.summary.add("stages")
            return
        from mlrig.db.models import MLModel

        with self.platform.db.session() as session:
            row = session.get(MLModel, uuid.UUID(version_id))
            if row is not None:
                row.stage = stage
        self.summary.add("stages")

    def _aliases(self, model: RegisteredModel, versions: set[str]) -> None:
        current = self.platform.registry.get_model(model.name).get("aliases") or {}
        for alias, number in sorted(model.aliases.items()):
            if current.get(alias) == number:
                continue  # set by an earlier import
            if number not in versions:
                self.summary.warn(
                    f"alias {alias!r} of {model.name!r}: version {number} was not imported"
                )
                continue
            try:
                self.platform.lifecycle.set_alias(model.name, alias, number, actor=self.actor)
            except (ValidationError, ConflictError) as exc:
                self.summary.warn(f"alias {alias!r} of {model.name!r} not set: {exc.message}")
                continue
            self.summary.add("aliases")
