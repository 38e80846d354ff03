"""What the database keeps about a stored artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlrig.artifacts.format import FORMAT_VERSION


@dataclass(frozen=True)
class StoredArtifact:
    """The result of :meth:`ArtifactStore.put <mlrig.artifacts.ArtifactStore.put>`.

    :param key: the normalised key the object is stored under.
    :param size: size in bytes of the original artifact.
    :param sha256: hex sha256 of the original artifact.
    :param stored_size: bytes the object takes in the store (header, compression,
        encryption and trailer included).
    :param compression: ``"none"`` or ``"zstd"``.
    :param encryption: ``None``, or the envelope facts: algorithm, key wrap, wrapped data
        key (base64), master key fingerprint, segment size, nonce prefix.
    """

    key: str
    size: int
    sha256: str
    stored_size: int
    compression: str
    encryption: dict[str, Any] | None = field(default=None)

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-able dict for the database (no secret in it: the data key is wrapped)."""
        return {
            "format": FORMAT_VERSION,
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "stored_size": self.stored_size,
            "compression": self.compression,
            "encryption": dict(self.encryption) if self.encryption else None,
        }

    @classmethod
    def from_metadata(cls, data: dict[str, Any]) -> StoredArtifact:
        """The inverse of :meth:`to_metadata`."""
        return cls(
            key=data["key"],
            size=int(data["size"]),
            sha256=data["sha256"],
            stored_size=int(data["stored_size"]),
            compression=data["compression"],
            encryption=data.get("encryption"),
        )
