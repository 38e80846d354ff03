"""Hand out a worker's CPUs, GPUs and memory to its jobs, never more than it declared."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from mlrig.contracts.executor import Resources
from mlrig.errors import ValidationError

#: what a job gets when it declares nothing
DEFAULT_REQUEST = {"cpus": 1, "gpus": 0, "memory_mb": 0}


def visible_gpus() -> tuple[int, ...]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else none.

    Workers on GPU machines declare theirs with ``mlrig worker --gpus 0,1`` or
    ``[executor] max_gpus``; guessing from the hardware would hand out busy devices.
    """
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        return ()


def total_memory_mb() -> int:
    """Physical memory of this machine in MiB."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    except (ValueError, OSError, AttributeError):
        return 0


def parse_request(resources: dict[str, Any] | None) -> dict[str, int]:
    """A job's resource request with defaults, validated."""
    request = {**DEFAULT_REQUEST, **(resources or {})}
    out = {}
    for key in DEFAULT_REQUEST:
        value = request[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            msg = f"resources.{key} must be a non-negative integer, got {value!r}"
            raise ValidationError(msg)
        out[key] = value
    return out


@dataclass
class Capacity:
    """What a worker may hand out."""

    cpus: tuple[int, ...] = field(default_factory=lambda: tuple(sorted(os.sched_getaffinity(0))))
    gpus: tuple[int, ...] = field(default_factory=visible_gpus)
    memory_mb: int = field(default_factory=total_memory_mb)


class ResourceAllocator:
    """Thread-safe bookkeeping of the free CPUs, GPUs and memory of one worker."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._free_cpus = list(capacity.cpus)
        self._free_gpus = list(capacity.gpus)
        self._free_memory = capacity.memory_mb
        self._held: dict[Any, tuple[list[int], list[int], int]] = {}

    def fits(self, resources: dict[str, Any] | None) -> bool:
        """Whether a job asking for ``resources`` can start now."""
        try:
            request = parse_request(resources)
        except ValidationError:
            return False
        with self._lock:
            return (
                request["cpus"] <= len(self._free_cpus)
                and request["gpus"] <= len(self._free_gpus)
                and request["memory_mb"] <= self._free_memory
            )

    def could_ever_fit(self, resources: dict[str, Any] | None) -> bool:
        """Whether this worker could run the job at all (with every resource free)."""
        request = parse_request(resources)
        return (
            request["cpus"] <= len(self.capacity.cpus)
            and request["gpus"] <= len(self.capacity.gpus)
            and request["memory_mb"] <= self.capacity.memory_mb
        )

    def allocate(self, owner: Any, resources: dict[str, Any] | None) -> Resources:
        """Take the resources for ``owner``; :class:`ValidationError` if they are not free."""
        request = parse_request(resources)
        with self._lock:
            if (
                request["cpus"] > len(self._free_cpus)
                or request["gpus"] > len(self._free_gpus)
                or request["memory_mb"] > self._free_memory
            ):
                msg = f"not enough free resources for {request}"
                raise ValidationError(msg)
            cpus = [self._free_cpus.pop(0) for _ in range(request["cpus"])]
            gpus = [self._free_gpus.pop(0) for _ in range(request["gpus"])]
            self._free_memory -= request["memory_mb"]
            self._held[owner] = (cpus, gpus, request["memory_mb"])
        memory = request["memory_mb"] * 1024 * 1024 or None
        return Resources(cpus=tuple(cpus), gpus=tuple(gpus), memory_bytes=memory)

    def release(self, owner: Any) -> None:
        """Give back what ``owner`` held (no-op if nothing)."""
        with self._lock:
            cpus, gpus, memory = self._held.pop(owner, ([], [], 0))
            self._free_cpus = sorted(self._free_cpus + cpus)
            self._free_gpus = sorted(self._free_gpus + gpus)
            self._free_memory += memory

    def free(self) -> dict[str, Any]:
        with self._lock:
            return {
                "cpus": list(self._free_cpus),
                "gpus": list(self._free_gpus),
                "memory_mb": self._free_memory,
            }
