"""package_model, load_manifest, load_native: the model package folder and its manifest."""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mlrig.errors import MissingExtraError, NotFoundError, ValidationError
from mlrig.formats._base import FrameworkFormat, SkipExport, require
from mlrig.formats._check import check_export
from mlrig.formats._detect import (
    FRAMEWORKS,
    MANIFEST,
    detect_framework,
    detect_framework_of_path,
)
from mlrig.formats._onnx import graph_io
from mlrig.formats._signature import is_dataframe
from mlrig.formats.batches import is_records

#: version of the manifest layout
MANIFEST_VERSION = 1
ONNX_FILE = "model.onnx"

_FORMATS = {
    "sklearn": "mlrig.formats._sklearn:SklearnFormat",
    "torch": "mlrig.formats._torch:TorchFormat",
    "tensorflow": "mlrig.formats._tensorflow:TensorflowFormat",
    "onnx": "mlrig.formats._onnx:OnnxFormat",
}


@dataclass(frozen=True)
class ModelPackage:
    """A model written to a folder by :func:`package_model`; ``manifest`` is its JSON."""

    folder: Path
    framework: str
    model_type: str | None
    files: list[str]
    signature: dict[str, Any]
    requirements: list[str]
    onnx: dict[str, Any]
    manifest: dict[str, Any]

    @property
    def formats(self) -> list[str]:
        """The runtime formats this package can be served with (``"sklearn"``, ``"onnx"``)."""
        return list(self.manifest["formats"])


def framework_format(framework: str) -> FrameworkFormat:
    """The handler of ``framework`` (imports its module, not the framework itself)."""
    if framework not in _FORMATS:
        msg = f"unknown framework {framework!r}; supported frameworks are {', '.join(FRAMEWORKS)}"
        raise ValidationError(msg)
    module, _, attr = _FORMATS[framework].partition(":")
    return getattr(importlib.import_module(module), attr)()


def package_model(
    obj_or_path: Any,
    folder: str | os.PathLike[str],
    *,
    sample: Any = None,
    framework: str | None = None,
) -> ModelPackage:
    """Write model ``obj_or_path`` (an object, or a file/folder to load it from) to ``folder``.

    The folder (created; it must be empty) receives the native artifact, an ONNX export
    ``model.onnx`` where a converter exists, and the manifest ``mlrig-model.json`` with
    the signature inferred by running ``sample`` (a few rows of input: numpy array, list
    of rows or DataFrame) through the model once, and the package requirements. An ONNX
    export that fails does not fail packaging: the manifest records why.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        msg = f"package folder {str(folder)!r} is not empty"
        raise ValidationError(msg)
    source, obj = None, obj_or_path
    if isinstance(obj_or_path, str | os.PathLike):
        source = Path(obj_or_path)
        framework = framework or detect_framework_of_path(source)
        if source.is_dir() and (source / MANIFEST).is_file():
            obj, source = load_native(source), None
        else:
            obj = framework_format(framework).load_file(source)
    framework = framework or detect_framework(obj)
    fmt = framework_format(framework)
    sample = _records_as_frame(sample)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _write(fmt, obj, folder, source=source, sample=sample)
    except BaseException:
        _empty(folder)  # no half-written package is left behind
        raise


def _write(
    fmt: FrameworkFormat, obj: Any, folder: Path, *, source: Path | None, sample: Any
) -> ModelPackage:
    framework = fmt.name
    native = fmt.save_native(obj, folder, source=source, sample=sample)
    signature = _signature(fmt, obj, sample)
    onnx = _export(fmt, obj, folder, sample, signature)
    requirements = _requirements(fmt, obj, signature)
    model_type = fmt.model_type(obj)
    formats = [framework] + (["onnx"] if onnx["status"] == "ok" and framework != "onnx" else [])
    files = sorted({*_files(folder), MANIFEST})
    manifest = {
        "mlrig_model": MANIFEST_VERSION,
        "framework": framework,
        "flavor": native["flavor"],
        "model_class": f"{type(obj).__module__}.{type(obj).__qualname__}",
        "model_type": model_type,
        "formats": formats,
        "native": native,
        "onnx": onnx,
        "signature": signature,
        "requirements": requirements,
        **fmt.details(obj),
        "python": platform.python_version(),
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return ModelPackage(
        folder=folder,
        framework=framework,
        model_type=model_type,
        files=files,
        signature=signature,
        requirements=requirements,
        onnx=onnx,
        manifest=manifest,
    )


def read_package(folder: str | os.PathLike[str]) -> ModelPackage:
    """The package :func:`package_model` wrote to ``folder`` (in another process, say), as
    it is: nothing is loaded, exported or checked again.

    :raises NotFoundError: ``folder`` has no manifest, or lacks a file the manifest lists.
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    missing = [rel for rel in manifest.get("files", []) if not (folder / rel).is_file()]
    if missing or not manifest.get("files"):
        msg = f"the model package in {str(folder)!r} is incomplete: missing {missing or 'files'}"
        raise NotFoundError(msg)
    return ModelPackage(
        folder=folder,
        framework=manifest["framework"],
        model_type=manifest.get("model_type"),
        files=list(manifest["files"]),
        signature=manifest["signature"],
        requirements=list(manifest.get("requirements") or []),
        onnx=manifest.get("onnx") or {},
        manifest=manifest,
    )


def load_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest (``mlrig-model.json``) of the model package in ``folder``."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        msg = f"no {MANIFEST} in {str(folder)!r}: not an mlrig model package"
        raise NotFoundError(msg)
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        msg = f"{path} is not valid JSON: {exc}"
        raise ValidationError(msg) from exc
    missing = [k for k in ("framework", "native", "signature") if k not in manifest]
    if missing:
        msg = f"{path} lacks {', '.join(missing)}: not an mlrig model manifest"
        raise ValidationError(msg)
    return manifest


def complete_metadata(path: str | os.PathLike[str], metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` completed from the manifest of the package at ``path``, if there is one.

    Runtimes get a version's metadata from the registry; when it lacks the signature (a
    folder loaded directly), the package's own manifest fills in. ``metadata`` wins.
    """
    path = Path(path)
    if "signature" in metadata or not (path.is_dir() and (path / MANIFEST).is_file()):
        return metadata
    return {**load_manifest(path), **metadata}


def load_native(folder: str | os.PathLike[str]) -> Any:
    """Load the native model (estimator, module, Keras model, ModelProto) of a package."""
    manifest = load_manifest(folder)
    return framework_format(manifest["framework"]).load_native(Path(folder), manifest)


def _signature(fmt: FrameworkFormat, obj: Any, sample: Any) -> dict[str, Any]:
    try:
        return fmt.signature(obj, sample)
    except (ValidationError, MissingExtraError):
        raise
    except Exception as exc:
        msg = f"the sample could not be run through the {fmt.name} model: {exc}"
        raise ValidationError(msg) from exc


def _export(
    fmt: FrameworkFormat, obj: Any, folder: Path, sample: Any, signature: dict[str, Any]
) -> dict[str, Any]:
    target = folder / ONNX_FILE
    try:
        facts = fmt.export_onnx(obj, target, sample)
        io = graph_io(require("onnx", extra="onnx").load(str(target)))
    except (SkipExport, MissingExtraError) as exc:
        target.unlink(missing_ok=True)
        return {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # recorded in the manifest: an export never fails packaging
        target.unlink(missing_ok=True)
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    result = {"status": "ok", "path": ONNX_FILE, **facts, **io}
    if fmt.name != "onnx":
        check = check_export(fmt, obj, target, sample, signature)
        result["check"] = check
        if check["status"] in ("mismatch", "failed"):
            # an export that disagrees with the model (or does not run) is not shipped:
            # serving picks ONNX when a version has one, and must not pick a wrong one
            target.unlink(missing_ok=True)
            why = check.get("reason") or f"max_abs_diff {check.get('max_abs_diff')}"
            reason = f"the export's outputs differ from the model's on the sample: {why}"
            if check["status"] == "failed":
                reason = f"the export does not run on the sample: {why}"
            return {"status": "failed", "reason": reason[:500], "check": check}
    return result


def _requirements(fmt: FrameworkFormat, obj: Any, signature: dict[str, Any]) -> list[str]:
    names = list(fmt.distributions)
    root = type(obj).__module__.split(".")[0]
    names += metadata.packages_distributions().get(root, [])
    if (signature.get("inputs") or {}).get("kind") == "dataframe":
        names.append("pandas")
    found: dict[str, str] = {}
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.setdefault(dist.metadata["Name"].lower(), dist.version.split("+")[0])
    return [f"{name}=={version}" for name, version in found.items()]


def _records_as_frame(sample: Any) -> Any:
    """A sample given as records (a list of dicts) becomes a DataFrame."""
    if sample is None or is_dataframe(sample) or not is_records(sample):
        return sample
    pandas = require("pandas", extra="sklearn")
    return pandas.DataFrame.from_records(list(sample))


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
