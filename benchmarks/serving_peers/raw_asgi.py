"""The baseline: a hand-written raw ASGI app calling the sklearn pipeline (or its ONNX export).

    BENCH_MODEL=model.pkl uvicorn raw_asgi:app --workers 2 --no-access-log
    BENCH_ONNX=model.onnx BENCH_THREADS=1 uvicorn raw_asgi:app --no-access-log

No framework: it reads the body, decodes ``{"inputs": [[...], ...]}`` with orjson, runs
the model once and writes ``{"predictions": [...], "probabilities": [[...]]}``. With
BENCH_MODEL: sklearn's ``predict_proba`` (the predictions are the arg-max class); with
BENCH_ONNX: one onnxruntime ``run`` of the ONNX export mlrig serves (label and
probabilities, ``BENCH_THREADS`` intra-op threads), the floor of mlrig's own overhead.
Any GET answers 200 (the benchmark's readiness probe). Bad input answers 400; it is a
baseline, not a server.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import orjson

_JSON = [(b"content-type", b"application/json")]


def _sklearn(path: str) -> Any:
    with open(path, "rb") as file:
        model = pickle.load(file)
    classes = model.classes_.tolist()

    def infer(x: np.ndarray) -> tuple[list[Any], list[list[float]]]:
        proba = model.predict_proba(x)
        return [classes[i] for i in proba.argmax(axis=1)], proba.tolist()

    return infer


def _onnx(path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", "1"))
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    [feed] = session.get_inputs()
    dtype = np.float32 if feed.type == "tensor(float)" else np.float64
    name = feed.name

    def infer(x: np.ndarray) -> tuple[list[Any], list[list[float]]]:
        labels, proba = session.run(None, {name: x.astype(dtype, copy=False)})
        return labels.tolist(), proba.tolist()

    return infer


INFER = _onnx(os.environ["BENCH_ONNX"]) if "BENCH_ONNX" in os.environ else None
INFER = INFER or _sklearn(os.environ["BENCH_MODEL"])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The whole server: one route for any POST, 200 for any GET."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    status, out = 200, b'{"status":"ok"}'
    if scope["method"] == "POST":
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            x = np.asarray(orjson.loads(body)["inputs"], dtype=np.float64)
            predictions, probabilities = INFER(x)
            out = orjson.dumps({"predictions": predictions, "probabilities": probabilities})
        except Exception as exc:
            status, out = 400, orjson.dumps({"error": str(exc)})
    headers = [*_JSON, (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": out})
