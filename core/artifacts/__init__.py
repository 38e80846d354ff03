"""Artifact storage above the backends: keys, streaming, hashing, compression, encryption.

Typical use (``platform.artifacts`` is the store built from the config)::

    with store.atomic() as tx:
        stored = tx.put("models/churn/3/model.onnx", Path("model.onnx"))
        save_row(stored.to_metadata())  # size, sha256, compression, wrapped data key
    with store.open(stored.key, expected_sha256=stored.sha256) as f:
        ...

See ``docs/storage.md`` for the configuration, the object format and the key rules.
"""

from mlrig.artifacts.atomic import ArtifactTransaction
from mlrig.artifacts.crypto import generate_master_key, master_key_id, parse_master_key
from mlrig.artifacts.keys import normalize_key, normalize_prefix
from mlrig.artifacts.record import StoredArtifact
from mlrig.artifacts.store import ArtifactStore

__all__ = [
    "ArtifactStore",
    "ArtifactTransaction",
    "StoredArtifact",
    "generate_master_key",
    "master_key_id",
    "normalize_key",
    "normalize_prefix",
    "parse_master_key",
]
