"""What the ``torch`` and ``tensorflow`` runtimes share: reading a batch into a float
array, and turning a network's output into predictions (and class probabilities).

A model is a classifier when its metadata says so (``model_type = "classification"`` in
the version or the manifest, set with ``register_model(..., model_type="classification")``).
Its output is then read as class scores, ``(N, C)`` rows or ``(N,)``/``(N, 1)`` for a
binary model: as probabilities when the network ends in a softmax/sigmoid (the runtime
looks at its last layer), else as logits (softmax/sigmoid applied). Where the last layer
tells nothing, a ``(N, C)`` row that already is a distribution is kept and any other gets
a softmax, row by row (so a row's answer never depends on the rows batched with it), and
a binary output is read as a logit. The ``output`` option of the runtime overrides this.
``predict`` returns the class labels (``classes`` of the metadata, else the class
indices), ``predict_proba`` the probabilities. Any other model returns its output as
is: one value per row for ``(N,)`` or ``(N, 1)`` outputs, a list per row otherwise.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Literal

from mlrig.contracts.runtime import LoadedModel
from mlrig.errors import ValidationError
from mlrig.formats.batches import fit_shape, signature_columns, to_array

#: how a classifier's raw output is read: "auto" (from the last layer, else see above),
#: "logits" or "probabilities"
OutputKind = Literal["auto", "logits", "probabilities"]

_TOLERANCE = 1e-4  # rows summing to 1 within this are taken as probabilities


def merged_metadata(manifest: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """The manifest completed by the caller's metadata (a registry version view): the
    caller wins where it has a value, the manifest's sections (native, onnx...) stay."""
    return {**manifest, **{k: v for k, v in metadata.items() if v is not None}}


def input_spec(metadata: dict[str, Any]) -> tuple[str | None, list[int] | None]:
    """The input dtype and shape the signature records (``(None, None)`` when unknown)."""
    inputs = (metadata.get("signature") or {}).get("inputs") or {}
    if inputs.get("kind") == "tensor":
        return inputs.get("dtype"), inputs.get("shape")
    if inputs.get("kind") == "dataframe":
        columns = inputs.get("columns") or []
        return "float32", [-1, len(columns)]
    return None, None


class TensorModel(LoadedModel):
    """A network taking one float tensor ``(N, ...)``; subclasses run the forward pass."""

    batching_helps = True

    def __init__(self, metadata: dict[str, Any], *, dtype: str) -> None:
        self.columns = signature_columns(metadata.get("signature"))
        self.dtype = dtype
        _, shape = input_spec(metadata)
        self.shape = shape

    @abstractmethod
    def forward(self, array: Any) -> Any:
        """Run the network on a numpy array; return its output as a numpy array."""

    def predict(self, batch: Any) -> list[Any]:
        """The network's output, one entry per row of ``batch``."""
        return _rows(self._scores(batch))

    def _scores(self, batch: Any) -> Any:
        import numpy as np

        array = to_array(batch, self.columns, self.dtype)
        if array.ndim == 0 or array.size == 0:
            msg = "the batch is empty: send at least one row"
            raise ValidationError(msg)
        if self.shape:
            shape = [None if d == -1 else d for d in self.shape]
            if array.ndim == len(shape) and any(
                d is not None and d != n for d, n in zip(shape[1:], array.shape[1:], strict=True)
            ):  # rows of the wrong width: never silently re-cut into other rows
                expected = [-1 if d is None else d for d in shape]
                msg = f"batch has shape {list(array.shape)}; the model expects {expected}"
                raise ValidationError(msg)
            array = fit_shape(array, shape, "input")
        return np.asarray(self.forward(np.ascontiguousarray(array)))


class TensorClassifierModel(TensorModel):
    """A network whose output is class scores: predictions are class labels."""

    def __init__(
        self,
        metadata: dict[str, Any],
        *,
        dtype: str,
        output: OutputKind,
        ends_in: Literal["logits", "probabilities"] | None = None,
    ) -> None:
        TensorModel.__init__(self, metadata, dtype=dtype)  # not super(): framework mix-ins
        #: "logits", "probabilities", or "auto" (decided row by row)
        self.output = ends_in if output == "auto" and ends_in else output
        classes = metadata.get("classes")
        self._classes = list(classes) if classes else None

    @property
    def classes(self) -> list[Any] | None:
        """The class labels (from the metadata), in the order of ``predict_proba``."""
        return self._classes

    def predict(self, batch: Any) -> list[Any]:
        """Per row, the most probable class (its label, or its index)."""
        return class_labels(self._probabilities(batch), self._classes)

    def predict_proba(self, batch: Any) -> list[list[float]]:
        """Per row, the probability of each class."""
        return self._probabilities(batch).tolist()

    def predict_with_proba(self, batch: Any) -> tuple[list[Any], list[list[float]]]:
        """Labels and probabilities from one forward pass (serving wants both)."""
        proba = self._probabilities(batch)
        return class_labels(proba, self._classes), proba.tolist()

    def _probabilities(self, batch: Any) -> Any:
        return class_probabilities(self._scores(batch), self.output)


def class_probabilities(scores: Any, output: str) -> Any:
    """A classifier's raw output ``(N, C)``, ``(N, 1)`` or ``(N,)`` as ``(N, C)`` class
    probabilities (float64), read as ``output`` says ("logits", "probabilities", "auto")."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1):
        positive = scores.reshape(-1)
        if output != "probabilities":  # "auto" reads a binary output as a logit
            positive = 1.0 / (1.0 + np.exp(-positive))
        return np.stack([1.0 - positive, positive], axis=1)
    if scores.ndim != 2:
        msg = f"a classifier's output should be (rows, classes); this one is {scores.shape}"
        raise ValidationError(msg)
    if output == "probabilities":
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))  # a stable softmax
    softmax = shifted / shifted.sum(axis=1, keepdims=True)
    if output == "logits":
        return softmax
    distribution = np.all((scores >= 0) & (scores <= 1), axis=1) & (
        np.abs(scores.sum(axis=1) - 1.0) <= _TOLERANCE
    )  # row by row: a row's answer must not depend on its batch
    return np.where(distribution[:, None], scores, softmax)


def class_labels(probabilities: Any, classes: list[Any] | None) -> list[Any]:
    """Per row, the most probable class: its label from ``classes``, else its index."""
    index = probabilities.argmax(axis=1).tolist()
    return index if classes is None else [classes[i] for i in index]


def _rows(values: Any) -> list[Any]:
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]  # regressors' (N, 1): one value per row
    return values.tolist()
