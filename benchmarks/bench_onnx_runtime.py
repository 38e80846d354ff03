"""Prediction speed of the ``onnx`` runtime on each usable provider, beside ``sklearn``.

    python benchmarks/bench_onnx_runtime.py                 # MLP 64-256-256-10, 65,536-row batches
    python benchmarks/bench_onnx_runtime.py --rows 1024 --singles 50 --json

The script trains an sklearn ``MLPClassifier`` (``--features`` inputs, two hidden layers
of ``--hidden``, 10 classes) on random data, packages it with ``mlrig.formats.package_model``
(native pickle plus the skl2onnx export) and loads the package with:

- the ``sklearn`` runtime (the framework itself: the baseline);
- the ``onnx`` runtime on ``CPUExecutionProvider``;
- the ``onnx`` runtime on ``CUDAExecutionProvider``, when ``cuda_probe()`` says a session
  can really be created there (onnxruntime-gpu, a GPU and the CUDA 13 / cuDNN 9
  libraries); otherwise the row says why not.

For each it times ``--batches`` predictions of a ``--rows``-row batch (rows/s: median) and
``--singles`` one-row predictions (p50/p99 latency), after ``--warmup`` untimed calls of
each, and reports the share of the batch's predictions that equal sklearn's (float32 ONNX
kernels may flip a near-tie).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from _common import summary  # benchmarks/_common.py

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def train(features: int, hidden: int, seed: int = 0) -> tuple[Any, Any]:
    import numpy as np
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, features)).astype("float32")
    y = (x[:, :10].argmax(axis=1)).astype("int64")  # a learnable 10-class target
    model = MLPClassifier(hidden_layer_sizes=(hidden, hidden), max_iter=30, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged after 30 epochs: fine for timing
        model.fit(x, y)
    return model, x


def measure(loaded: Any, batch: Any, single: Any, args: argparse.Namespace) -> dict[str, Any]:
    for _ in range(args.warmup):
        loaded.predict(batch)
        loaded.predict(single)
    batch_s = []
    for _ in range(args.batches):
        start = time.perf_counter()
        loaded.predict(batch)
        batch_s.append(time.perf_counter() - start)
    single_ms = []
    for _ in range(args.singles):
        start = time.perf_counter()
        loaded.predict(single)
        single_ms.append((time.perf_counter() - start) * 1000)
    return {
        "batch_rows_per_s": round(len(batch) / statistics.median(batch_s)),
        "single_row": summary(single_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--rows", type=int, default=65536, help="rows per batch")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--singles", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    import numpy as np

    from mlrig.backends import load_backend
    from mlrig.formats import package_model
    from mlrig.plugins.runtime_onnx import cuda_probe

    model, sample = train(args.features, args.hidden)
    batch = np.random.default_rng(1).normal(size=(args.rows, args.features)).astype("float32")
    expected = model.predict(batch).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        package = package_model(model, Path(tmp) / "pkg", sample=sample[:5])
        cuda_usable, cuda_why = cuda_probe()
        setups: list[tuple[str, str, dict[str, Any]]] = [
            ("sklearn", "sklearn", {}),
            ("onnx cpu", "onnx", {"providers": [CPU]}),
            ("onnx cuda", "onnx", {"providers": [CUDA, CPU]}),
        ]
        results = []
        for label, runtime_name, options in setups:
            if label == "onnx cuda" and not cuda_usable:
                results.append({"name": label, "skipped": cuda_why[:300]})
                continue
            runtime = load_backend("runtimes", runtime_name).from_options(
                options, where=f"runtimes.{runtime_name}"
            )
            loaded = runtime.load(package.folder, package.manifest)
            row = {"name": label, "providers": loaded.describe().get("providers")}
            got = loaded.predict(batch)
            same = sum(a == b for a, b in zip(got, expected, strict=True))
            row["agreement"] = same / len(expected)
            row.update(measure(loaded, batch, batch[:1], args))
            results.append(row)
    report = {
        "model": f"MLP {args.features}-{args.hidden}-{args.hidden}-10",
        "rows_per_batch": args.rows,
        "cuda_usable": cuda_usable,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['model']}, {args.rows:,}-row batches, CUDA usable: {cuda_usable}")
    for row in results:
        if "skipped" in row:
            print(f"  {row['name']:<10} skipped: {row['skipped']}")
            continue
        single = row["single_row"]
        print(
            f"  {row['name']:<10} {row['batch_rows_per_s']:>12,} rows/s   single row "
            f"p50 {single['p50_ms']:.3f} ms  p99 {single['p99_ms']:.3f} ms   "
            f"agrees with sklearn on {row['agreement']:.2%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
