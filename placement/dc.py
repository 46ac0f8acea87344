"""The DC latency model: what a request spilled now would take, edge -> DC -> edge (ms).

Measured, not configured: an EWMA of round trips (a timeout counts as its timeout), starting from
``initial_ms``; while requests are out, at least the age of the oldest one (a DC that stopped
answering is not sent more), plus the requests out x the DC's measured service time per item (the
queue a new request joins there). With nothing out, what the EWMA holds above ``initial_ms``
halves every ``relax_s`` seconds: a DC measured slow once is tried again (else, never sent a
request, it would never be measured fast again).

Pure bookkeeping: every call takes ``now`` (monotonic seconds); the Kafka request/reply that feeds
it is :class:`edge_agent.dc_spill.DcSpill`.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["RELAX_S", "DcLatency"]

RELAX_S = 2.0


class DcLatency:
    """Predicted latency of a spilled request, from the round trips measured so far."""

    def __init__(self, initial_ms: float, now: float, alpha: float = 0.2, relax_s: float = RELAX_S) -> None:
        self.initial_ms = initial_ms
        self.alpha = alpha
        self.relax_s = relax_s
        self.latency_ms = initial_ms  # EWMA of measured round trips
        self.per_item_ms = 0.0  # EWMA of the DC's service time per item (from its replies)
        self.started: dict[Hashable, float] = {}  # request -> when it was sent (s)
        self.idle_since: float | None = now  # no request out since then

    def predict_ms(self, now: float) -> float:
        """What a request spilled at ``now`` is expected to take (see the module docstring)."""
        if not self.started:
            return self._relaxed(now)
        oldest_ms = 1000.0 * max(now - t for t in self.started.values())
        return max(self.latency_ms, oldest_ms) + len(self.started) * self.per_item_ms

    def sent(self, request: Hashable, now: float) -> None:
        """``request`` went out at ``now``."""
        self.latency_ms, self.idle_since = self._relaxed(now), None
        self.started[request] = now

    def finished(self, request: Hashable, now: float, round_trip_ms: float | None = None,
                 per_item_ms: float | None = None) -> None:
        """``request`` came back (its ``round_trip_ms`` measured; a timeout passes its timeout) or was
        given up; ``per_item_ms``: the DC's service time per item in its reply."""
        self.started.pop(request, None)
        if not self.started:
            self.idle_since = now
        if round_trip_ms is not None:
            self.latency_ms += self.alpha * (round_trip_ms - self.latency_ms)
        if per_item_ms is not None:
            self.per_item_ms += self.alpha * (per_item_ms - self.per_item_ms)

    def _relaxed(self, now: float) -> float:
        floor = self.initial_ms
        if self.started or self.idle_since is None or self.latency_ms <= floor:
            return self.latency_ms
        return floor + (self.latency_ms - floor) * 0.5 ** ((now - self.idle_since) / self.relax_s)
