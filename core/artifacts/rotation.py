"""Master-key rotation: re-encrypt the artifacts that an older master key protects.

The procedure (``docs/storage.md``): make the new key ``[storage] master_key``, move the
old one to ``previous_master_keys`` (both can read from then on), run
``mlrig storage rotate-key``, then drop the old key once the report says nothing is left
under it. Each artifact is rewritten whole (its header is bound into the encryption, so
re-wrapping the data key alone would not do), one at a time, so the store stays readable
throughout and a run can be interrupted and started again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlrig.errors import EncryptionKeyError, MlrigError

if TYPE_CHECKING:
    from mlrig.artifacts.record import StoredArtifact
    from mlrig.artifacts.store import ArtifactStore


def rotate_master_key(
    store: ArtifactStore,
    *,
    prefix: str = "",
    dry_run: bool = False,
    on_rewritten: Callable[[StoredArtifact], None] | None = None,
    on_checked: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Rewrite, under the current master key, each artifact below ``prefix`` that is
    encrypted with another one.

    :param dry_run: only count what would be rewritten.
    :param on_rewritten: called with the new record of each rewritten artifact (the
        registry updates its rows with it).
    :param on_checked: called with each key once it is handled (for progress).
    :returns: ``{"master_key_id", "checked", "rewritten", "current", "unencrypted",
        "failed": [{"key", "error"}], "dry_run"}``.
    :raises EncryptionKeyError: no master key is configured to rotate to.
    """
    current = store.master_key_id
    if current is None:
        msg = (
            "no master key to rotate to: set [storage] master_key to the new key and list "
            "the old one in [storage] previous_master_keys (MLRIG_STORAGE__MASTER_KEY, "
            "MLRIG_STORAGE__PREVIOUS_MASTER_KEYS='[\"...\"]')"
        )
        raise EncryptionKeyError(msg)
    report: dict[str, Any] = {
        "master_key_id": current,
        "checked": 0,
        "rewritten": 0,
        "current": 0,
        "unencrypted": 0,
        "failed": [],
        "dry_run": dry_run,
    }
    # Listed first: the rewrites must not run into keys they are writing themselves.
    for key in list(store.list(prefix)):
        report["checked"] += 1
        try:
            encryption = store.header(key).encryption
            if encryption is None:
                report["unencrypted"] += 1
            elif encryption.get("master_key_id") == current:
                report["current"] += 1
            else:
                if not dry_run:
                    stored = store.rewrite(key)
                    if on_rewritten is not None:
                        on_rewritten(stored)
                report["rewritten"] += 1
        except MlrigError as exc:  # one bad object does not stop the others
            report["failed"].append({"key": key, "error": exc.message})
        if on_checked is not None:
            on_checked(key)
    return report
