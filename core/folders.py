"""Local folders filled once and shared by processes: the serving cache and the model cache
of ``mlrig.load_model`` build a version's folder beside it, then publish it in one rename,
so a reader never sees half a folder and two processes filling the same one both win."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["publish_folder", "scratch_beside"]


def scratch_beside(folder: Path) -> Path:
    """A fresh, hidden path next to ``folder`` to fill before :func:`publish_folder`."""
    return folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def publish_folder(scratch: Path, folder: Path, *, marker: str, content: str) -> Path:
    """Make the filled ``scratch`` the complete ``folder``: write its ``marker`` file (what
    readers check for), drop an incomplete leftover of ``folder`` (a crash mid-fill), then
    rename. A complete copy another process published meanwhile is as good as ours.

    :returns: ``folder``.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / marker).write_text(content + "\n")
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(scratch, folder)
    except OSError:
        if not (folder / marker).is_file():  # not another process's complete copy
            raise
    return folder
