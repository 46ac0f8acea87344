"""/metrics, /healthz and /readyz of the DC processes (trainer, dc-worker), like the edge's.

Liveness is progress: each process counts the steps of its main loop in a :class:`Progress`
(a poll served or found empty, a trainer pass, a Kafka reconnect attempt), and ``/healthz``
fails once no step has finished for ``stall_s`` seconds: a wedged loop, not a flag, fails it.
``/readyz`` answers 200 once the process has done real work (models loaded, Kafka joined).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from common.health import HealthServer

__all__ = ["Progress", "StatsCollector", "health_server"]


class Progress:
    """Steps finished by a main loop, and when the last one finished."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.steps = 0
        self.last_step = clock()  # a loop that never finishes a step stalls from its start

    def step(self) -> None:
        self.steps += 1
        self.last_step = self._clock()

    def age_s(self) -> float:
        """Seconds since the last finished step (or since the start)."""
        return self._clock() - self.last_step

    def live(self, stall_s: float) -> bool:
        return self.age_s() < stall_s


class StatsCollector(Collector):
    """Counters read from a stats dataclass at scrape time, plus the loop's progress."""

    def __init__(self, prefix: str, progress: Progress, stats: Callable[[], dict[str, float]],
                 labels: dict[str, str]) -> None:
        self.prefix = prefix
        self.progress = progress
        self.stats = stats
        self.labels = labels

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        names, values = list(self.labels), list(self.labels.values())
        steps = CounterMetricFamily(f"{self.prefix}_loop_steps", "main-loop steps finished", labels=names)
        steps.add_metric(values, self.progress.steps)
        yield steps
        age = GaugeMetricFamily(f"{self.prefix}_last_step_age_seconds", "seconds since the last finished step",
                                labels=names)
        age.add_metric(values, self.progress.age_s())
        yield age
        for key, value in self.stats().items():
            family = CounterMetricFamily(f"{self.prefix}_{key}", key.replace("_", " "), labels=names)
            family.add_metric(values, float(value))
            yield family


def health_server(host: str, port: int, collector: Collector, progress: Progress, stall_s: float,
                  ready: Callable[[], bool]) -> HealthServer:
    """The edge's :class:`HealthServer` on a fresh registry holding ``collector``."""
    registry = CollectorRegistry()
    registry.register(collector)
    return HealthServer(host, port, registry, ready, lambda: progress.live(stall_s))
