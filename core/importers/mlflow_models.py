"""From an MLflow model folder (``MLmodel`` and its flavour files) to the files and fields
of an mlrig version.

The model is loaded through the flavour MLflow saved it with (scikit-learn as pickle,
cloudpickle or skops; ONNX; PyTorch; Keras) and packaged with :func:`mlrig.formats.
package_model`, so it gets mlrig's manifest, signature (from MLflow's input example) and
ONNX export, and serves and loads like any version. The original MLflow files are kept
beside, under ``mlflow/``. A flavour mlrig cannot load (or ``convert=False``) keeps only
the MLflow files, and the reason is returned.

Loading a pickled model runs code from the pickle: import only stores you trust (the
same holds for ``mlflow.sklearn.load_model``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlrig.importers._yaml import load_yaml
from mlrig.importers.mlflow_artifacts import LocalTree
from mlrig.importers.mlflow_records import ArtifactTree

#: where the original MLflow files go inside the version
ORIGINALS = "mlflow/"


@dataclass
class PreparedVersion:
    """What :meth:`ModelRegistry.create_version` needs, from an MLflow model."""

    files: dict[str, Path]
    flavors: list[str]
    framework: str | None = None
    model_type: str | None = None
    signature: dict[str, Any] | None = None
    requirements: list[str] = field(default_factory=list)
    #: why the model was stored as MLflow files only (None: converted)
    not_converted: str | None = None


def fetch(tree: ArtifactTree, target: Path) -> Path:
    """A local folder with the tree's files: the tree's own folder when it is local,
    else a download into ``target``."""
    if isinstance(tree, LocalTree):
        return tree.root
    target.mkdir(parents=True, exist_ok=True)
    for item in tree.files():
        path = target / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with tree.open(item.path) as stream, path.open("wb") as out:
            shutil.copyfileobj(stream, out)
    return target


def _sample(folder: Path, mlmodel: dict[str, Any]) -> Any:
    """MLflow's saved input example, as the array or DataFrame it was."""
    info = mlmodel.get("saved_input_example_info") or {}
    path = folder / str(info.get("artifact_path") or "input_example.json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if info.get("type") == "dataframe" or (isinstance(data, dict) and "columns" in data):
            import pandas

            return pandas.DataFrame(data["data"], columns=data["columns"])
        import numpy

        if isinstance(data, dict) and "inputs" in data:
            data = data["inputs"]
        return numpy.asarray(data)
    except Exception:  # an example is a nicety: without it the signature stays empty
        return None


def _load_sklearn(folder: Path, flavor: dict[str, Any]) -> Any:
    path = folder / str(flavor.get("pickled_model") or "model.pkl")
    form = str(flavor.get("serialization_format") or "cloudpickle")
    if form == "skops":
        try:
            from skops import io as skops_io
        except ImportError:
            msg = "the model is saved with skops: pip install skops to convert it"
            raise LookupError(msg) from None
        return skops_io.load(path, trusted=skops_io.get_untrusted_types(file=path))
    import pickle

    with path.open("rb") as stream:
        return pickle.load(stream)  # cloudpickle output loads with pickle


def _load_torch(folder: Path, flavor: dict[str, Any]) -> Any:
    try:
        import torch
    except ImportError:
        msg = "the model is a PyTorch model: install mlrig[torch] to convert it"
        raise LookupError(msg) from None
    data = folder / str(flavor.get("model_data") or "data")
    path = data / "model.pth" if data.is_dir() else data
    return torch.load(path, weights_only=False)


def _native(folder: Path, flavors: dict[str, Any]) -> tuple[Any, str]:
    """The model object (or file) and its mlrig framework, from the first flavour that
    mlrig handles."""
    if "sklearn" in flavors:
        return _load_sklearn(folder, flavors["sklearn"] or {}), "sklearn"
    if "onnx" in flavors:
        return folder / str((flavors["onnx"] or {}).get("data") or "model.onnx"), "onnx"
    if "pytorch" in flavors:
        return _load_torch(folder, flavors["pytorch"] or {}), "torch"
    for name in ("keras", "tensorflow"):
        if name in flavors:
            found = sorted(folder.rglob("*.keras")) or [
                p.parent for p in folder.rglob("saved_model.pb")
            ]
            if found:
                return found[0], "tensorflow"
    msg = f"no flavour mlrig can load (flavours: {', '.join(sorted(flavors)) or 'none'})"
    raise LookupError(msg)


def prepare_version(folder: Path, work: Path, *, convert: bool = True) -> PreparedVersion:
    """The files and fields of a version made from the MLflow model in ``folder``.

    :param work: an empty folder for the package (kept until the version is registered).
    """
    mlmodel_path = folder / "MLmodel"
    mlmodel = load_yaml(mlmodel_path) if mlmodel_path.is_file() else {}
    mlmodel = mlmodel if isinstance(mlmodel, dict) else {}
    flavors = mlmodel.get("flavors") or {}
    originals = {
        ORIGINALS + p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    prepared = PreparedVersion(files=originals, flavors=sorted(flavors))
    if not convert:
        prepared.not_converted = "conversion was turned off (--no-convert)"
        return prepared
    from mlrig.errors import MlrigError
    from mlrig.formats import package_model

    package_dir = work / "package"
    try:
        obj, framework = _native(folder, flavors)
        package = package_model(
            obj, package_dir, sample=_sample(folder, mlmodel), framework=framework
        )
    except (LookupError, MlrigError, ImportError) as exc:
        prepared.not_converted = str(exc)
        return prepared
    except Exception as exc:  # a model that does not load or package: keep its files
        prepared.not_converted = f"{type(exc).__name__}: {exc}"[:500]
        return prepared
    prepared.files = {**originals, **{rel: package_dir / rel for rel in package.files}}
    prepared.framework = package.framework
    prepared.model_type = package.model_type
    prepared.signature = package.signature
    prepared.requirements = package.requirements
    return prepared
