"""One worker of the ``tensorflow`` trainer: ``python -m mlrig.plugins._tf_worker RUN_DIR``.

Started by :mod:`mlrig.plugins.trainer_tensorflow` in the job process, one per worker of
the cluster, with ``TF_CONFIG`` in its environment. It builds the strategy
(``MultiWorkerMirroredStrategy`` for several workers, ``MirroredStrategy`` for one), the
user's model inside its scope and the user's data, sharded per worker, and runs
``model.fit`` with:

- a backup (:class:`ClusterBackup`, a ``keras.callbacks.BackupAndRestore``) written by the
  chief into ``RUN_DIR/backup`` at each epoch end and read by every worker at start, so a
  relaunched cluster resumes at the epoch after the last backup;
- the relay (:class:`Relay`, over :mod:`mlrig.plugins._distributed`'s files): the chief
  appends each epoch's logs as metric lines (the job process logs them); at each epoch end
  the chief reads the stop file and the cluster agrees on it through an all-reduce, so
  every worker stops after the same epoch.

Files in RUN_DIR: ``spec.json`` (written by the job process); per worker I: ``pid-I``,
``started-I`` (its strategy built: its class, replicas and cluster, as JSON),
``joining-I`` (its data built, at the first collective), ``ready-I`` (past it: the cluster
is up), ``error-I.json`` (the user's code failed: exit status 3), ``weights-I.npz`` (its
final weights, with ``dump_weights``); from the chief: ``metrics.jsonl`` (the relay's),
``events.jsonl`` (restored/epoch/stopped/saved), ``backup/``, and at the end
``model.keras`` and ``sample.npy``; from the job process: ``stop``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

#: exit status of a worker whose user code failed (error-I.json says how)
EXIT_USER_ERROR = 3
INSTALL = "pip install 'mlrig[tensorflow]' where the worker runs"


class UserCodeError(Exception):
    """The user's module failed: ``where`` names the step (load, build_model...)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def load_module(ref: str) -> Any:
    """The user's module (:func:`mlrig.plugins._distributed.load_user_module`)."""
    from mlrig.errors import ValidationError
    from mlrig.plugins._distributed import load_user_module

    try:
        return load_user_module(ref)
    except ValidationError as exc:
        raise UserCodeError("load", exc.message) from None


def _call(module: Any, name: str, params: dict[str, Any], ref: str) -> Any:
    from mlrig.errors import ValidationError
    from mlrig.plugins._distributed import require_function

    try:
        function = require_function(module, name, spec=ref)
    except ValidationError as exc:
        raise UserCodeError(name, exc.message) from None
    try:
        return function(dict(params))
    except Exception as exc:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:800]
        raise UserCodeError(name, f"{name}(params) raised {text}") from exc


def record_error(run_dir: Path, index: int, message: str) -> None:
    """A failure of the user's code, as :class:`mlrig.plugins._distributed.RelayDir` reads
    it back (permanent: no relaunch can fix it)."""
    from mlrig.plugins._distributed import RelayDir, atomic_write

    record = {
        "rank": index,
        "message": message,
        "traceback": traceback.format_exc()[-4000:],
        "permanent": True,
    }
    atomic_write(RelayDir(run_dir).error(index), json.dumps(record))


# --- data ------------------------------------------------------------------------------------


def _split_arrays(data: Any, validation_split: float) -> tuple[Any, Any, Any]:
    """(train, validation, sample) from ``(x, y)`` arrays: the last rows are validation."""
    import numpy as np

    x, y = (np.asarray(a) for a in data)
    if x.dtype.kind == "f":
        x = x.astype("float32")
    if len(x) != len(y):
        msg = f"build_dataset returned x and y of different lengths ({len(x)} and {len(y)})"
        raise UserCodeError("build_dataset", msg)
    cut = len(x) - int(len(x) * validation_split)
    return (x[:cut], y[:cut]), (x[cut:], y[cut:]) if cut < len(x) else None, x[:8]


def _as_datasets(data: Any, validation_split: float) -> tuple[Any, Any, Any]:
    """(train, validation or None, sample rows) as unbatched tf.data datasets."""
    import numpy as np
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        data = (data, None)
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], tf.data.Dataset)
        and (data[1] is None or isinstance(data[1], tf.data.Dataset))
    ):
        train, validation = data
        first = next(iter(train.take(8).batch(8)))
        return train, validation, np.asarray(first[0])
    if isinstance(data, (tuple, list)) and len(data) == 2:
        (x, y), validation, sample = _split_arrays(data, validation_split)
        train = tf.data.Dataset.from_tensor_slices((x, y))
        if validation is not None:
            validation = tf.data.Dataset.from_tensor_slices(validation)
        return train, validation, sample
    msg = (
        "build_dataset must return (x, y) arrays, a tf.data.Dataset of (x, y) elements or "
        f"a (train, validation) pair of them, got {type(data).__name__}"
    )
    raise UserCodeError("build_dataset", msg)


def _distributed(dataset: Any, global_batch: int) -> tuple[Any, int]:
    """The dataset batched by the global batch and repeated, with its steps per epoch.

    Keras hands it to the strategy's ``experimental_distribute_dataset`` with DATA
    auto-sharding: each worker reads the whole dataset and keeps its part of each batch
    (global batch / workers rows), so every worker runs the same number of steps (a worker
    with one step more would wait on the others forever)."""
    import tensorflow as tf

    count = int(dataset.cardinality())
    if count < 0:
        msg = "build_dataset's tf.data.Dataset must have a known length (use .take(n))"
        raise UserCodeError("build_dataset", msg)
    steps = count // global_batch
    if steps < 1:
        msg = f"{count} rows is less than one batch of {global_batch} (batch_size)"
        raise UserCodeError("build_dataset", msg)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batched = dataset.batch(global_batch, drop_remainder=True).repeat()
    return batched.with_options(options), steps


# --- callbacks -------------------------------------------------------------------------------


def _backup_class() -> type:
    import keras

    class ClusterBackup(keras.callbacks.BackupAndRestore):
        """``BackupAndRestore`` for a cluster on one file system: the chief writes each
        backup into a new folder ``epoch-N`` and then points ``latest`` at it (an atomic
        rename: a worker killed mid-write leaves the previous backup whole); every worker
        restores from the chief's folder. Backups are kept after training (the job
        process checkpoints them); the job process removes them."""

        def __init__(self, backup_dir: str, *, chief: bool, events: Relay) -> None:
            super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
            self.chief = chief
            self.events = events
            self.restored_epoch: int | None = None

        def _load_model(self) -> None:
            folder = read_latest(Path(self.backup_dir))
            if folder is None:
                return
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(str(folder / "latest.weights.h5"))
            meta = json.loads((folder / "training_metadata.json").read_text())
            self.model._initial_epoch = int(meta["epoch"])
            self.restored_epoch = int(meta["epoch"])
            self.events.write({"event": "restored", "epoch": self.restored_epoch})

        def _save_model(self) -> None:
            if not self.chief:
                return
            root = Path(self.backup_dir)
            folder = root / f"epoch-{self._current_epoch:06d}"
            tmp = root / f".tmp-{folder.name}"
            tmp.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(str(tmp / "latest.weights.h5"), overwrite=True)
            meta = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
            (tmp / "training_metadata.json").write_text(json.dumps(meta))
            if folder.exists():
                _rmtree(folder)
            os.replace(tmp, folder)
            _write_json(root / "latest.json", {"folder": folder.name})
            for old in sorted(root.glob("epoch-*"))[:-2]:  # the last two stay
                _rmtree(old)

    return ClusterBackup


def read_latest(root: Path) -> Path | None:
    """The folder of the last whole backup under ``root``, or None."""
    try:
        name = json.loads((root / "latest.json").read_text())["folder"]
    except (OSError, ValueError, KeyError):
        return None
    folder = root / name
    return folder if (folder / "training_metadata.json").is_file() else None


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class Relay:
    """The chief's side of the relay: epoch metrics and the stop file through
    :class:`mlrig.plugins._distributed.WorkerRelay`, the trainer's own events (restored,
    stopped, saved) into ``events.jsonl``. Other workers write nothing."""

    def __init__(self, run_dir: Path, *, index: int) -> None:
        from mlrig.plugins._distributed import WorkerRelay

        self.worker = WorkerRelay(run_dir, rank=index)
        self.path = run_dir / "events.jsonl"
        self.chief = index == 0

    def write(self, event: dict[str, Any]) -> None:
        if not self.chief:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(event) + "\n")
            fh.flush()

    def log_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        if not self.chief:
            return
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        validation = {k: v for k, v in logs.items() if k.startswith("val_")}
        if train:
            self.worker.log_metrics(train, step=epoch, epoch=epoch, kind="train")
        if validation:
            self.worker.log_metrics(validation, step=epoch, epoch=epoch, kind="validation")
        self.write({"event": "epoch", "epoch": epoch})

    def stop_requested(self) -> bool:
        return self.chief and self.worker.stop_requested()


def _relay_class() -> type:
    import keras
    import tensorflow as tf

    class RelayCallback(keras.callbacks.Callback):
        """Epoch logs to the job process (chief only) and the cluster-wide stop decision:
        the chief reads the stop file, an all-reduce (a sum of 0s and 1s) tells every
        worker the chief's answer, so all of them stop after the same epoch."""

        def __init__(self, strategy: Any, relay: Relay) -> None:
            super().__init__()
            self.strategy = strategy
            self.relay = relay
            self.stopped_at: int | None = None
            self.last_logs: dict[str, float] = {}

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            values = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
            self.last_logs = values
            self.relay.log_epoch(epoch, values)
            if agree(self.strategy, self.relay.stop_requested()):
                self.model.stop_training = True
                self.stopped_at = epoch
                self.relay.write({"event": "stopped", "epoch": epoch})

    del tf
    return RelayCallback


def agree(strategy: Any, flag: bool) -> bool:
    """Whether any worker says ``flag`` (an all-reduce over the cluster)."""
    import tensorflow as tf

    value = tf.constant(1.0 if flag else 0.0)
    per_replica = strategy.run(lambda: tf.identity(value))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)) > 0


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _patch_symbolic_build(model: Any, strategy: Any) -> None:
    """Keras 3 (3.15) builds a model under a strategy from the first batch reduced over
    the replicas with ``strategy.reduce`` on the whole ``(x, y)`` structure, which
    ``MultiWorkerMirroredStrategy`` refuses (``PerReplica`` cannot become a tensor): build
    it from this worker's part of that batch instead (only its shapes matter)."""
    import tensorflow as tf
    from keras import tree

    original = model._maybe_symbolic_build

    def local(value: Any) -> Any:
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def build(iterator: Any = None, data_batch: Any = None) -> Any:
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(local, next(batches))
                break
        return original(data_batch=data_batch)

    model._maybe_symbolic_build = build


def _patch_multi_worker_reduce() -> None:
    """Keras 3 (3.15) reduces a step's logs over a multi-worker cluster with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalar logs (the loss): reduce
    scalars with ``axis=None`` (the mean over the workers), the rest as Keras does."""
    from keras import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "mlrig_patched", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction not in ("auto", "mean") or not trainer._collective_all_reduce_multi_worker(
            strategy
        ):
            return original(values, strategy, reduction)

        def one(value: Any) -> Any:
            local = value
            if trainer._is_per_replica_instance(value):
                local = strategy.experimental_local_results(value)[0]
            axis = 0 if len(getattr(local, "shape", ())) else None
            return strategy.reduce("MEAN", value, axis=axis)

        return tree.map_structure(one, values)

    reduce_per_replica.mlrig_patched = True  # type: ignore[attr-defined]
    trainer.reduce_per_replica = reduce_per_replica


# --- the run ---------------------------------------------------------------------------------


def _quiet_tensorflow(threads: int) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf


def run(run_dir: Path) -> int:
    spec = json.loads((run_dir / "spec.json").read_text())
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    index = int(config.get("task", {}).get("index", 0))
    workers = int(spec["workers"])
    chief = index == 0
    (run_dir / f"pid-{index}").write_text(str(os.getpid()))
    try:
        tf = _quiet_tensorflow(int(spec.get("threads", 1)))
    except ImportError as exc:  # on every relaunch the same: not worth a retry
        record_error(run_dir, index, f"TensorFlow does not import here ({exc}): {INSTALL}")
        return EXIT_USER_ERROR
    import keras

    if workers > 1:
        _patch_multi_worker_reduce()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.MirroredStrategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    started = {
        "strategy": type(strategy).__name__,  # MultiWorkerMirrored's is CollectiveAllReduce
        "replicas": strategy.num_replicas_in_sync,
        "cluster": resolver.cluster_spec().as_dict() if resolver is not None else None,
        "task": [resolver.task_type, resolver.task_id] if resolver is not None else None,
    }
    _write_json(run_dir / f"started-{index}", started)
    params = spec["params"]
    try:
        if spec.get("seed") is not None:
            keras.utils.set_random_seed(int(spec["seed"]) % 2**31)
        module = load_module(spec["module"])
        data = _call(module, "build_dataset", params, spec["module"])
        train, validation, sample = _as_datasets(data, float(spec["validation_split"]))
        # variables made in the scope are broadcast from the chief: a collective
        (run_dir / f"joining-{index}").write_text(str(time.time()))
        with strategy.scope():
            model = _call(module, "build_model", params, spec["module"])
            if not isinstance(model, keras.Model):
                msg = f"build_model returned {type(model).__name__}, not a keras.Model"
                raise UserCodeError("build_model", msg)
            if getattr(model, "optimizer", None) is None or not model.compiled:
                msg = "build_model must return a compiled model (call model.compile(...))"
                raise UserCodeError("build_model", msg)
            if not model.built:
                model.build((None, *sample.shape[1:]))
    except UserCodeError as exc:
        record_error(run_dir, index, exc.message)
        traceback.print_exc()
        return EXIT_USER_ERROR
    except Exception as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:800]
        record_error(run_dir, index, message)
        traceback.print_exc()
        return EXIT_USER_ERROR
    agree(strategy, False)  # the first collective: every worker has joined
    (run_dir / f"ready-{index}").write_text(str(time.time()))

    batch = int(spec["batch_size"])
    train_data, steps = _distributed(train, batch)
    fit: dict[str, Any] = {"steps_per_epoch": steps}
    if validation is not None and int(validation.cardinality()) >= batch:
        fit["validation_data"], fit["validation_steps"] = _distributed(validation, batch)
    _patch_symbolic_build(model, strategy)
    relay = Relay(run_dir, index=index)
    backup = _backup_class()(str(run_dir / "backup"), chief=chief, events=relay)
    relayer = _relay_class()(strategy, relay)
    try:
        model.fit(
            train_data, epochs=int(spec["epochs"]), callbacks=[backup, relayer], verbose=0, **fit
        )
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError):
        raise  # a peer went away: exit 1, the job process relaunches the cluster
    except Exception as exc:  # the user's model or data: relaunching cannot fix it
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:800]
        record_error(run_dir, index, message)
        traceback.print_exc()
        return EXIT_USER_ERROR
    if spec.get("dump_weights"):
        import numpy as np

        weights = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
        np.savez(run_dir / f"weights-{index}.npz", **weights)
    if chief:
        import numpy as np

        tmp = run_dir / ".model.keras"
        model.save(str(tmp))
        np.save(run_dir / "sample.npy", np.asarray(sample))
        os.replace(tmp, run_dir / "model.keras")
        relay.write({"event": "saved", "stopped_at": relayer.stopped_at, "logs": relayer.last_logs})
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mlrig.plugins._tf_worker RUN_DIR", file=sys.stderr)
        raise SystemExit(2)
    from mlrig.engine.launcher import die_with_parent

    die_with_parent()  # the job process is the parent; no worker outlives it
    parent = os.environ.get("MLRIG_TF_PARENT")
    if parent and os.getppid() != int(parent):
        raise SystemExit(1)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(run(Path(args[0])))


if __name__ == "__main__":
    main()
