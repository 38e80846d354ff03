"""Check an ONNX export against the native model on the sample (needs onnxruntime)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from mlrig.formats._base import FrameworkFormat
from mlrig.formats._signature import as_array, head
from mlrig.formats.batches import onnx_feeds, signature_columns


def check_export(
    fmt: FrameworkFormat, obj: Any, target: Path, sample: Any, signature: dict[str, Any]
) -> dict[str, Any]:
    """Run sample rows through both models: ``{"status": "ok"|"mismatch"|..., ...}``."""
    if sample is None:
        return {"status": "skipped", "reason": "no sample given"}
    if importlib.util.find_spec("onnxruntime") is None:
        return {"status": "skipped", "reason": "onnxruntime is not installed"}
    import numpy as np
    import onnxruntime

    rows = head(sample, 32)
    try:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(target), sess_options=options, providers=["CPUExecutionProvider"]
        )
        feeds = onnx_feeds(session.get_inputs(), rows, signature_columns(signature))
        exported = np.asarray(session.run(None, feeds)[0])
        native = _first(fmt.predict(obj, rows))
    except Exception as exc:  # recorded, never fatal
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
    if exported.size != native.size:
        shapes = f"{list(exported.shape)} != {list(native.shape)}"
        return {"status": "mismatch", "reason": f"output shapes differ: {shapes}"}
    exported = exported.reshape(native.shape)
    result: dict[str, Any] = {"rows": len(native)}
    if native.dtype.kind in "fc":
        diff = float(np.max(np.abs(exported.astype("float64") - native))) if native.size else 0.0
        same = bool(np.allclose(exported, native, rtol=1e-3, atol=1e-5))
        result["max_abs_diff"] = diff
    else:
        same = bool(np.array_equal(exported.astype(native.dtype), native))
    return {"status": "ok" if same else "mismatch", **result}


def _first(output: Any) -> Any:
    if isinstance(output, dict):
        output = next(iter(output.values()))
    elif isinstance(output, list | tuple) and output and hasattr(output[0], "shape"):
        output = output[0]
    return as_array(output)
