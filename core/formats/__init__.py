"""Model formats: package a model (sklearn, torch, TensorFlow/Keras, ONNX) into a folder.

:func:`package_model` writes the native artifact, an ONNX export where a converter
exists, and a manifest (``mlrig-model.json``) with the framework, the input/output
signature inferred from a sample, the package requirements and the export's status;
:func:`load_native` loads the model back. No framework is imported by ``import
mlrig.formats``: each is imported inside the functions that need it.
"""

from mlrig.formats._detect import FRAMEWORKS, MANIFEST, detect_framework, detect_framework_of_path
from mlrig.formats._package import (
    ModelPackage,
    complete_metadata,
    load_manifest,
    load_native,
    package_model,
    read_package,
)

__all__ = [
    "FRAMEWORKS",
    "MANIFEST",
    "ModelPackage",
    "complete_metadata",
    "detect_framework",
    "detect_framework_of_path",
    "load_manifest",
    "load_native",
    "package_model",
    "read_package",
]
