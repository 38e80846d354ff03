"""The autoscaling policy of ``mlrig serve``: a pure object the supervisor feeds with
per-replica samples and asks for a replica count.

Rules (the ``[serving]`` keys in brackets):

- **up**: when the mean in-flight requests per replica stay above ``target_in_flight`` or
  the worst p99 latency stays above ``target_p99_ms`` for a whole
  ``scale_up_window_seconds``, grow to the count that brings in-flight per replica under
  the target (at least one more), within the bounds;
- **down**: when the load would fit one replica fewer with room to spare (below
  ``low_watermark`` of both targets on ``current - 1`` replicas) for a whole
  ``scale_down_cooldown_seconds``, and no change happened within that cooldown, shrink by
  one;
- between the two thresholds nothing happens (hysteresis), so steady load causes no
  flapping; a count outside ``[min, max]`` is brought back at once.

The policy has no clock and no I/O: ``now`` is passed in, which keeps it testable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReplicaSample:
    """What one ready replica measured over the last report interval."""

    #: mean number of requests being served at once (Little's law: busy time / interval)
    in_flight: float
    #: p99 request latency in milliseconds; None when no request finished
    p99_ms: float | None = None
    #: requests finished in the interval
    requests: int = 0


@dataclass
class AutoscalePolicy:
    """Decides the replica count from load samples; see the module docstring."""

    min_replicas: int
    max_replicas: int
    target_in_flight: float = 8.0
    target_p99_ms: float = 100.0
    scale_up_window_seconds: float = 10.0
    scale_down_cooldown_seconds: float = 60.0
    #: the share of the targets the load must stay under on one replica fewer to scale down
    low_watermark: float = 0.5
    _hot_since: float | None = field(default=None, init=False, repr=False)
    _cold_since: float | None = field(default=None, init=False, repr=False)
    _last_change: float | None = field(default=None, init=False, repr=False)
    #: why the last change was decided (for the supervisor's log line)
    reason: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(
                f"replica bounds must satisfy 1 <= min <= max (got {self.min_replicas}, "
                f"{self.max_replicas})"
            )

    @property
    def enabled(self) -> bool:
        """Whether the bounds leave anything to decide."""
        return self.min_replicas < self.max_replicas

    def decide(
        self, now: float, samples: Sequence[ReplicaSample], current: int | None = None
    ) -> int:
        """The replica count wanted now.

        :param now: a monotonic time in seconds
        :param samples: one per ready replica, from the last report interval
        :param current: the replica count now (default: ``len(samples)``)
        """
        current = len(samples) if current is None else current
        if current < self.min_replicas or current > self.max_replicas:
            self._changed(now, f"outside the bounds [{self.min_replicas}, {self.max_replicas}]")
            return min(max(current, self.min_replicas), self.max_replicas)
        if not samples or current < 1:
            return current
        load = sum(s.in_flight for s in samples)
        per_replica = load / current
        p99s = [s.p99_ms for s in samples if s.p99_ms is not None]
        p99 = max(p99s) if p99s else None

        hot = per_replica > self.target_in_flight or (p99 is not None and p99 > self.target_p99_ms)
        if hot and current < self.max_replicas:
            self._cold_since = None
            if self._hot_since is None:
                self._hot_since = now
            if now - self._hot_since >= self.scale_up_window_seconds:
                wanted = max(current + 1, math.ceil(load / self.target_in_flight))
                wanted = min(wanted, self.max_replicas)
                self._changed(
                    now,
                    f"in-flight per replica {per_replica:.1f} (target {self.target_in_flight:g})"
                    f", p99 {_ms(p99)} (target {self.target_p99_ms:g} ms)",
                )
                return wanted
            return current
        self._hot_since = None

        fewer = current - 1
        cold = (
            fewer >= self.min_replicas
            and load / fewer < self.target_in_flight * self.low_watermark
            and (p99 is None or p99 < self.target_p99_ms * self.low_watermark)
        )
        if not cold:
            self._cold_since = None
            return current
        if self._cold_since is None:
            self._cold_since = now
        quiet = now - self._cold_since >= self.scale_down_cooldown_seconds
        settled = (
            self._last_change is None or now - self._last_change >= self.scale_down_cooldown_seconds
        )
        if quiet and settled:
            self._changed(
                now,
                f"in-flight {load:.1f} fits {fewer} replica(s) for "
                f"{self.scale_down_cooldown_seconds:g} s",
            )
            self._cold_since = now  # still quiet: the next step counts from this one
            return fewer
        return current

    def _changed(self, now: float, reason: str) -> None:
        # A change restarts both clocks: the next step needs a full window/cooldown of its
        # own, measured on the new replica count.
        self._last_change = now
        self._hot_since = None
        self._cold_since = None
        self.reason = reason


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"
