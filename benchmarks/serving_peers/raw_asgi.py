"""The baseline: a hand-written raw ASGI app calling the sklearn pipeline.

    BENCH_MODEL=model.pkl uvicorn raw_asgi:app --workers 2 --no-access-log

No framework: it reads the body, decodes ``{"inputs": [[...], ...]}`` with orjson, runs
``predict_proba`` once (the predictions are the arg-max class, as mlrig answers both) and
writes ``{"predictions": [...], "probabilities": [[...]]}``. Any GET answers 200 (the
benchmark's readiness probe). Bad input answers 400; it is a baseline, not a server.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import orjson

with open(os.environ["BENCH_MODEL"], "rb") as _file:
    MODEL = pickle.load(_file)
CLASSES = MODEL.classes_.tolist()
_JSON = [(b"content-type", b"application/json")]


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
            proba = MODEL.predict_proba(x)
            predictions = [CLASSES[i] for i in proba.argmax(axis=1)]
            out = orjson.dumps({"predictions": predictions, "probabilities": proba.tolist()})
        except Exception as exc:
            status, out = 400, orjson.dumps({"error": str(exc)})
    headers = [*_JSON, (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": out})
