"""Prometheus metrics of one edge agent (own registry, so several agents fit one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["EdgeMetrics"]

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


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
        self.faces = Counter("edge_faces", "faces classified", ["label"], registry=r)
        self.batch_size = Histogram("edge_batch_size", "frames per batch", ["stage"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.latency = Histogram("edge_latency_seconds", "received -> result published", ["stage"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("edge_inference_seconds", "model forward time per batch", ["stage"],
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("edge_queue_depth", "items waiting for a batch", ["stage"], registry=r)
        self.model_info = Gauge("edge_model_info", "serving model version (value 1)", ["model", "version"],
                                registry=r)
        self.connected = Gauge("edge_mqtt_connected", "1 while connected to the MQTT broker", registry=r)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if never touched); for tests and summaries."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got
