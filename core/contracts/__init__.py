"""The contract of every kind of named backend.

Each kind is one small abstract class; a backend subclasses it and registers the class
under the kind's entry-point group (see :data:`mlrig.backends.KINDS`). Optional
capabilities are separate small Protocols next to the contract they extend.
"""

from mlrig.contracts.executor import Executor, JobHandle, JobSpec, Resources
from mlrig.contracts.monitor import Monitor
from mlrig.contracts.runtime import LoadedModel, ModelRuntime
from mlrig.contracts.search import (
    Choice,
    Constant,
    FloatRange,
    IntRange,
    SearchSpace,
    SearchStrategy,
    Trial,
)
from mlrig.contracts.storage import StorageBackend
from mlrig.contracts.trainer import PermanentError, Trainer, TrainingContext, TrainResult

__all__ = [
    "Choice",
    "Constant",
    "Executor",
    "FloatRange",
    "IntRange",
    "JobHandle",
    "JobSpec",
    "LoadedModel",
    "ModelRuntime",
    "Monitor",
    "PermanentError",
    "Resources",
    "SearchSpace",
    "SearchStrategy",
    "StorageBackend",
    "TrainResult",
    "Trainer",
    "TrainingContext",
    "Trial",
]
