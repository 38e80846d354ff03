"""Artifact storage above the backends: keys, streaming, hashing, compression, encryption.

>>> store = platform.artifacts
>>> stored = store.put("models/churn/3/model.onnx", Path("model.onnx"))
>>> row.metadata = stored.to_metadata()          # size, sha256, compression, encryption
>>> with store.open(stored.key, expected_sha256=stored.sha256) as f: ...
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
