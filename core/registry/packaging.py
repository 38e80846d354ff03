"""From a model object or file to a registered version: package, then upload.

``mlrig.log_model(model, name="churn", sample=X[:5])`` is the Python entry point;
``mlrig models register PATH --name churn`` the CLI one. Both store the native artifact,
an ONNX export where a converter exists, the signature and the requirements.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlrig.platform import Platform
    from mlrig.security import Principal


def register_model(
    platform: Platform,
    model: Any,
    *,
    name: str,
    actor: Principal,
    sample: Any = None,
    framework: str | None = None,
    **version: Any,
) -> dict[str, Any]:
    """Package ``model`` (an object or a path) and register it as a new version of ``name``.

    :param model: a model object, a path, or a :class:`~mlrig.formats.ModelPackage`
        written already (:func:`~mlrig.formats.read_package`), registered as it is.
    :param sample: a few input rows; used to infer the signature and export to ONNX.
    :param version: more fields of :meth:`ModelRegistry.create_version` (``version``,
        ``metrics``, ``params``, ``tags``, ``parent_version``, ``datasets``...).
    """
    from mlrig.formats import ModelPackage, package_model

    if isinstance(model, ModelPackage):
        return _create_version(platform, model, name=name, actor=actor, **version)
    with tempfile.TemporaryDirectory(prefix="mlrig-package-") as tmp:
        package = package_model(model, Path(tmp), sample=sample, framework=framework)
        return _create_version(platform, package, name=name, actor=actor, **version)


def _create_version(
    platform: Platform, package: Any, *, name: str, actor: Principal, **version: Any
) -> dict[str, Any]:
    return platform.registry.create_version(
        name,
        files={rel: package.folder / rel for rel in package.files},
        actor=actor,
        create_model=True,
        framework=package.framework,
        model_type=version.pop("model_type", None) or package.model_type,
        signature=package.signature,
        requirements=package.requirements,
        **version,
    )


def log_model(
    model: Any,
    *,
    name: str,
    sample: Any = None,
    platform: Platform | None = None,
    **version: Any,
) -> dict[str, Any]:
    """Register ``model`` in the registry of ``platform``; without one, where runs are
    tracked: into the active run (``mlrig.start_run``: lineage to it), else on the server
    of ``mlrig.set_tracking`` / ``MLRIG_URL``, else in the local config's registry.

    Works for scikit-learn, PyTorch, TensorFlow/Keras and ONNX models. Returns the new
    version as the API shows it.
    """
    from mlrig.cli.context import cli_actor
    from mlrig.platform import Platform
    from mlrig.security import Principal

    if platform is None:
        from mlrig.tracking import fluent, stores

        run = fluent.active_run()
        if run is not None:
            return run.log_model(model, name=name, sample=sample, **version)
        remote = stores.remote_target()
        if remote is not None:
            store = stores.RemoteStore(*remote)
            try:
                return store.log_model(None, model, name=name, sample=sample, **version)
            finally:
                store.close()
    owned = platform is None
    platform = platform or Platform.from_config()
    try:
        actor = Principal(name=cli_actor().replace("cli:", "python:"), role="admin")
        return register_model(platform, model, name=name, actor=actor, sample=sample, **version)
    finally:
        if owned:
            platform.close()
