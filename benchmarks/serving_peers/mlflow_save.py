"""Save the benchmark's pickled sklearn pipeline as an MLflow model (run in MLflow's venv).

    python mlflow_save.py model.pkl OUT_DIR

``mlflow models serve -m OUT_DIR --env-manager local`` then serves it. No signature: MLflow
then skips schema enforcement, its fastest path for ``{"inputs": [[...]]}``.
"""

from __future__ import annotations

import pickle
import sys

import mlflow.sklearn

with open(sys.argv[1], "rb") as file:
    model = pickle.load(file)
mlflow.sklearn.save_model(model, sys.argv[2])
