"""Prometheus metrics of one edge agent (own registry, so several agents fit one process).

Latencies are histograms (``_bucket``/``_sum``/``_count``), so p95s can be computed across
nodes with ``histogram_quantile``. Parts that keep their own plain counters (the outbox, the
Kafka forwarder, the model updater, hard-example mining, speech) are read at scrape time by
:class:`NodeCollector`.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

__all__ = ["LATENCY_BUCKETS", "EdgeMetrics", "BucketCounts", "NodeCollector"]

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_LATENCY_BUCKETS = LATENCY_BUCKETS


class EdgeMetrics:
    """Counters, gauges and histograms exported on ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter("edge_messages_received", "MQTT messages received", ["stage"], registry=r)
        self.rejected = Counter("edge_messages_rejected", "messages rejected as bad input (dead-lettered)",
                                ["stage", "reason"], registry=r)
        self.shed = Counter("edge_messages_shed", "messages shed under overload", ["stage", "reason"], registry=r)
        self.abandoned = Counter("edge_messages_abandoned", "inputs left unacked for redelivery "
                                 "(their session ended first)", ["stage", "reason"], registry=r)
        self.redelivered = Counter("edge_messages_redelivered", "redelivered inputs answered without "
                                   "recomputation", ["stage", "outcome"], registry=r)
        self.published = Counter("edge_results_published", "results published", ["stage"], registry=r)
        self.thumbnails = Counter("edge_thumbnails_published", "frame thumbnails published for the archive "
                                  "(vision.publish_thumbnails)", registry=r)
        self.wan_bytes = Counter("edge_offload_wan_bytes", "bytes of spilled frames and their results over "
                                 "the WAN to the DC", registry=r)
        self.offload_cost = Counter("edge_offload_cost", "cost of requests by where they were served (cost "
                                    "model, offload.* prices)", ["served_by"], registry=r)
        self.outcomes = Counter("edge_request_outcomes", "published outcome of each request: served (by edge, "
                                "dc) or shed", ["stage", "outcome", "served_by"], registry=r)
        self.returned = Counter("edge_frames_returned", "fallback frames handed back to their device instead of "
                                "shed (the device publishes their outcome)", ["stage", "reason"], registry=r)
        self.faces = Counter("edge_faces", "faces classified", ["label"], registry=r)
        self.batch_size = Histogram("edge_batch_size", "frames per batch", ["stage"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.latency = Histogram("edge_latency_seconds", "received -> result published", ["stage"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("edge_inference_seconds", "model forward time per batch", ["stage"],
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("edge_queue_depth", "items waiting for a batch", ["stage"], registry=r)
        self.model_info = Gauge("edge_model_info", "serving model version (value 1), one series per model slot",
                                ["model", "version"], registry=r)
        self.connected = Gauge("edge_mqtt_connected", "1 while connected to the MQTT broker", registry=r)
        self._models: dict[str, str] = {}
        self._models_lock = threading.Lock()

    def set_model(self, model: str, version: str) -> None:
        """``edge_model_info{model, version} 1`` for the version now serving; the old series goes."""
        with self._models_lock:
            old = self._models.get(model)
            if old is not None and old != version:
                self.model_info.remove(model, old)
            self._models[model] = version
            self.model_info.labels(model, version).set(1)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if never touched); for tests and summaries."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got


class BucketCounts:
    """Cumulative histogram counts kept by a part that has no prometheus objects of its own.

    Thread-safe; :meth:`family` turns them into a ``HistogramMetricFamily`` at scrape time.
    """

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def observe_many(self, values: Iterable[float]) -> None:
        with self._lock:
            for v in values:
                self._counts[bisect.bisect_left(self.buckets, v)] += 1
                self._sum += v

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, n in zip([*map(str, self.buckets), "+Inf"], counts):
            running += n
            cumulative.append((bound, running))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=total)


class NodeCollector:
    """The DC loop's edge side at scrape time: outbox, Kafka, model updates, mining.

    Each source is a callable returning the object or None (a part that is off is left out).
    """

    def __init__(self, *, outbox: Callable[[], Any], forwarder: Callable[[], Any],
                 updater: Callable[[], Any], policy: Callable[[], Any]) -> None:
        self._outbox, self._forwarder, self._updater, self._policy = outbox, forwarder, updater, policy

    def collect(self) -> Iterator[Any]:
        outbox = self._outbox()
        if outbox is not None:
            st = outbox.stats
            yield GaugeMetricFamily("edge_outbox_depth", "hard examples waiting for Kafka", value=outbox.pending)
            yield GaugeMetricFamily("edge_outbox_bytes", "bytes waiting for Kafka", value=outbox.pending_bytes)
            for name, value, doc in (("evicted", st.evicted, "oldest evicted: outbox full"),
                                     ("enqueued", st.enqueued, "hard examples put in the outbox"),
                                     ("sent", st.sent, "hard examples acknowledged by Kafka"),
                                     ("dead_lettered", st.dead_lettered, "refused by Kafka (e.g. too large)"),
                                     ("send_errors", st.send_errors, "failed produce rounds")):
                yield CounterMetricFamily(f"edge_outbox_{name}", doc, value=value)
        forwarder = self._forwarder()
        if forwarder is not None:
            yield GaugeMetricFamily("edge_kafka_connected", "1 while the outbox's Kafka producer is up",
                                    value=1.0 if forwarder.connected.is_set() else 0.0)
        updater = self._updater()
        if updater is not None:
            refused = CounterMetricFamily("edge_model_updates_refused", "model announcements refused",
                                          labels=["reason"])
            for reason, n in sorted(updater.stats.refused.items()):
                refused.add_metric([reason], n)
            yield refused
            yield CounterMetricFamily("edge_model_updates_applied", "model versions swapped in",
                                      value=updater.stats.applied)
        policy = self._policy()
        if policy is not None:
            limited = CounterMetricFamily("edge_mining_rate_limited", "hard examples held back by the rate caps",
                                          labels=["model"])
            emitted = CounterMetricFamily("edge_mining_emitted", "hard examples sent to the outbox",
                                          labels=["model"])
            for model, miner in sorted(policy.miners.items()):
                limited.add_metric([model], miner.stats.rate_limited)
                emitted.add_metric([model], miner.stats.emitted)
            yield limited
            yield emitted
