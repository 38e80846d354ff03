"""Registered models for serving tests and benchmarks.

Every helper fits a small model on a bundled or generated data set, packages it with
:func:`mlrig.formats.package_model` (native artifact, ONNX export where a converter
exists, signature, requirements) through :func:`mlrig.registry.packaging.register_model`,
and returns the registered version view. The fitted model and its inputs come from
functions of their own (cached: a test can compare the served predictions with the
framework's own without refitting), so ``register_*`` can be called many times cheaply::

    from mlrig.testing.serving import breast_cancer_data, breast_cancer_estimator
    from mlrig.testing.serving import register_breast_cancer_model

    version = register_breast_cancer_model(platform)            # "bc" version 1
    newer = register_breast_cancer_model(platform, variant=1)   # "bc" version 2, other answers
    x = breast_cancer_data().x
    expected = breast_cancer_estimator().predict_proba(x)

``register_torch_model`` and ``register_tf_model`` do the same with a small torch and
Keras network on the same data (``breast_cancer_torch_model``/``breast_cancer_keras_model``
give the fitted networks, ``torch_predict_proba``/``keras_predict_proba`` their own
answers). torch and TensorFlow are imported only by the helpers that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from mlrig.security import Principal

if TYPE_CHECKING:
    import numpy as np

    from mlrig.platform import Platform

#: who registers the test models (the registry wants an actor with write permission)
ACTOR = Principal(name="tests", role="admin")

#: regularisation per variant: different versions of "the same" model answer differently
#: (probabilities differ), so a test can tell which version served a request
_VARIANT_C = (1.0, 0.01, 100.0)


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (float64, (N, F)), targets ``y`` and the feature names."""

    x: np.ndarray
    y: np.ndarray
    feature_names: list[str]

    @property
    def x32(self) -> np.ndarray:
        """``x`` as float32, what the ONNX export and the torch/TF models take."""
        import numpy as np

        return np.ascontiguousarray(self.x, dtype=np.float32)

    @property
    def frame(self) -> Any:
        """``x`` as a pandas DataFrame with the feature names as columns."""
        import pandas as pd

        return pd.DataFrame(self.x, columns=self.feature_names)


@lru_cache(maxsize=1)
def breast_cancer_data() -> Dataset:
    """sklearn's breast cancer data set: 569 rows, 30 numeric features, 2 classes."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return Dataset(x=data.data, y=data.target, feature_names=[str(n) for n in data.feature_names])


@lru_cache(maxsize=2 * len(_VARIANT_C))
def breast_cancer_estimator(variant: int = 0, *, named: bool = False) -> Any:
    """A fitted ``StandardScaler + LogisticRegression`` pipeline.

    By default it is fitted on the numpy array (it predicts on plain arrays without
    feature-name warnings); ``named=True`` fits it on the DataFrame, so it knows the
    feature names. ``variant`` picks another regularisation: the same features, other
    probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = breast_cancer_data()
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=_VARIANT_C[variant % len(_VARIANT_C)], max_iter=1000)
    )
    return model.fit(data.frame if named else data.x, data.y)


def register_breast_cancer_model(
    platform: Platform,
    name: str = "bc",
    *,
    variant: int = 0,
    named: bool = False,
    actor: Principal = ACTOR,
    **version: Any,
) -> dict[str, Any]:
    """Register the breast cancer pipeline as a new version of ``name``; return its view.

    The version holds ``model.joblib``, ``model.onnx`` and the manifest; its signature is a
    float64 tensor of 30 features, or with ``named=True`` a dataframe signature naming
    the 30 columns (``"mean radius"``...; for column and record inputs). Call it again
    (``variant=1`` for other answers) for a second version, e.g. to move an alias in a
    rolling-update test. ``version`` passes more fields to the registry (``version="v2"``,
    ``tags``, ``metrics``...).
    """
    package = _breast_cancer_package(variant, named)
    version.setdefault("tags", {"testing": "breast_cancer", "variant": str(variant)})
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


@cache
def _breast_cancer_package(variant: int, named: bool) -> Any:
    """The pipeline packaged once per process (native model, ONNX export, manifest): the
    export and its check cost more than the registration that copies the files."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from mlrig.formats import package_model

    data = breast_cancer_data()
    model = breast_cancer_estimator(variant, named=named)
    sample = data.frame.head(20) if named else data.x[:20]
    folder = Path(tempfile.mkdtemp(prefix="mlrig-bc-package-"))
    atexit.register(shutil.rmtree, folder, True)
    return package_model(model, folder / "pkg", sample=sample)


# -- torch and TensorFlow ----------------------------------------------------------------------


def _scaling() -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float32): the networks fold them into their
    first layer, so they take raw features like the sklearn pipeline does."""
    x = breast_cancer_data().x32
    return x.mean(axis=0), x.std(axis=0)


@lru_cache(maxsize=len(_VARIANT_C))
def breast_cancer_torch_model(variant: int = 0) -> Any:
    """A fitted torch MLP (``nn.Sequential``: 30 -> 16 -> 2 logits, in eval mode) on the
    breast cancer data; the feature scaling is folded into the first layer. ``variant``
    seeds another network (other probabilities)."""
    import torch

    data = breast_cancer_data()
    mean, std = _scaling()
    torch.manual_seed(variant)
    first = torch.nn.Linear(30, 16)
    model = torch.nn.Sequential(first, torch.nn.ReLU(), torch.nn.Linear(16, 2))
    x, y = torch.from_numpy(data.x32), torch.from_numpy(data.y).long()
    scaled = (x - torch.from_numpy(mean)) / torch.from_numpy(std)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(200):  # full-batch steps: well under a second, deterministic
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(scaled), y).backward()
        optimiser.step()
    with torch.no_grad():  # fold the scaling in: W (x - m) / s + b = (W / s) x + (b - W m / s)
        weight = first.weight / torch.from_numpy(std)
        first.bias -= weight @ torch.from_numpy(mean)
        first.weight.copy_(weight)
    return model.eval()


def torch_predict_proba(model: Any, x: np.ndarray) -> np.ndarray:
    """The torch model's own class probabilities for ``x`` (softmax of its logits)."""
    import torch

    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x.astype("float32"))), dim=1).numpy()


def register_torch_model(
    platform: Platform,
    name: str = "bc-torch",
    *,
    variant: int = 0,
    actor: Principal = ACTOR,
    **version: Any,
) -> dict[str, Any]:
    """Register :func:`breast_cancer_torch_model` (``model.pt`` + ``state_dict.pt`` +
    ``model.pt2`` + ``model.onnx``) as a classifier version of ``name``; return its view.

    Its signature is a float32 tensor of 30 features; ``model_type`` is
    ``"classification"`` (so the torch runtime serves class labels and probabilities)."""
    from mlrig.registry.packaging import register_model

    model = breast_cancer_torch_model(variant)
    version.setdefault("model_type", "classification")
    version.setdefault("tags", {"testing": "breast_cancer_torch", "variant": str(variant)})
    sample = breast_cancer_data().x32[:20]
    return register_model(platform, model, name=name, actor=actor, sample=sample, **version)


@lru_cache(maxsize=len(_VARIANT_C))
def breast_cancer_keras_model(variant: int = 0) -> Any:
    """A fitted Keras MLP (30 -> 16 -> 2 softmax) on the breast cancer data; the feature
    scaling is folded into the first layer (a ``Normalization`` layer would export to ONNX
    with its mean and variance as extra graph inputs). ``variant`` seeds another one."""
    from mlrig.formats._tensorflow import _tf

    _tf()  # imports tensorflow with its start-up lines kept off stderr
    import keras

    data = breast_cancer_data()
    mean, std = _scaling()
    keras.utils.set_random_seed(variant)
    first = keras.layers.Dense(16, activation="relu")
    model = keras.Sequential(
        [keras.Input((30,)), first, keras.layers.Dense(2, activation="softmax")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit((data.x32 - mean) / std, data.y, epochs=20, batch_size=64, verbose=0)
    kernel, bias = first.get_weights()  # x W / s + (b - (m / s) W): the same on raw x
    first.set_weights([kernel / std[:, None], bias - (mean / std) @ kernel])
    return model


def keras_predict_proba(model: Any, x: np.ndarray) -> np.ndarray:
    """The Keras model's own class probabilities for ``x``."""
    return model.predict(x.astype("float32"), verbose=0)


def register_tf_model(
    platform: Platform,
    name: str = "bc-tf",
    *,
    variant: int = 0,
    actor: Principal = ACTOR,
    **version: Any,
) -> dict[str, Any]:
    """Register :func:`breast_cancer_keras_model` (``model.keras`` + ``model.onnx``) as a
    classifier version of ``name``; return its view. Its signature is a float32 tensor of
    30 features; ``model_type`` is ``"classification"``."""
    from mlrig.registry.packaging import register_model

    model = breast_cancer_keras_model(variant)
    version.setdefault("model_type", "classification")
    version.setdefault("tags", {"testing": "breast_cancer_tf", "variant": str(variant)})
    sample = breast_cancer_data().x32[:20]
    return register_model(platform, model, name=name, actor=actor, sample=sample, **version)
