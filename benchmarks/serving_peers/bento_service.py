"""A minimal BentoML service for the benchmark's sklearn pipeline (run in BentoML's venv).

    BENCH_MODEL=model.pkl BENCH_WORKERS=2 bentoml serve bento_service:BreastCancer --port P

``POST /predict`` with ``{"inputs": [[...], ...]}`` answers the predicted classes, the
shape BentoML's own scikit-learn example uses. The worker count comes from BENCH_WORKERS.
"""

from __future__ import annotations

import os
import pickle

import bentoml
import numpy as np


@bentoml.service(workers=int(os.environ.get("BENCH_WORKERS", "1")))
class BreastCancer:
    """The pipeline, loaded once per worker."""

    def __init__(self) -> None:
        with open(os.environ["BENCH_MODEL"], "rb") as file:
            self.model = pickle.load(file)

    @bentoml.api
    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The predicted class of each row."""
        return self.model.predict(inputs)
