"""Process helpers for tests that kill things."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a reaper (PID 1 in a container may not reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/status") as fh:
        state = next(line for line in fh if line.startswith("State:"))
    return "zombie" not in state
