"""A user module for the ``tensorflow`` trainer: a small dense network on a linear target.

    mlrig experiments create keras-demo --trainer tensorflow \
        --param module=examples/distributed/keras_regression.py \
        --param workers=2 --param epochs=5 --cpus 2 --start

``build_model`` runs inside the distribution strategy's scope; every hyperparameter of the
experiment reaches both functions as ``params``.
"""

import numpy as np

FEATURES = 8


def build_model(params):
    """A compiled Keras model."""
    import keras

    width = int(params.get("width", 32))
    model = keras.Sequential(
        [
            keras.Input(shape=(FEATURES,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def build_dataset(params):
    """(x, y) arrays; the trainer keeps ``validation_split`` of them for validation."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(int(params.get("samples", 4096)), FEATURES)).astype("float32")
    y = (x @ np.linspace(-1.0, 1.0, FEATURES)).astype("float32")
    return x, y
