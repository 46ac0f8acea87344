"""Operator metrics (histograms, model info per slot, outbox/Kafka/updates/mining) and log hygiene."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, generate_latest

from common.dc_settings import HardExampleSettings, OutboxSettings, UpdateSettings
from common.logs import JsonFormatter, RateLimitedLog, setup_logging
from common.settings import KafkaSettings
from edge_agent.metrics import BucketCounts, EdgeMetrics, NodeCollector
from edge_agent.mining import MiningPolicy
from edge_agent.model_handlers import fer_handler
from edge_agent.outbox import KafkaForwarder, Outbox
from edge_agent.updates import ModelHandler, ModelUpdater
from inference.model_slot import Loaded, ModelSlot
from models.fer_edge import FerClassifier, MiniXception

NAME = "fer-mini-xception"


def test_bucket_counts_export_a_histogram_that_aggregates() -> None:
    counts = BucketCounts((0.1, 0.5, 1.0))
    counts.observe_many([0.05, 0.2, 0.2, 0.7, 3.0])
    registry = CollectorRegistry()

    class One:
        def collect(self):  # type: ignore[no-untyped-def]
            yield counts.family("x_latency_seconds", "test")

    registry.register(One())
    v = registry.get_sample_value
    assert v("x_latency_seconds_bucket", {"le": "0.1"}) == 1
    assert v("x_latency_seconds_bucket", {"le": "0.5"}) == 3
    assert v("x_latency_seconds_bucket", {"le": "1.0"}) == 4
    assert v("x_latency_seconds_bucket", {"le": "+Inf"}) == 5 == v("x_latency_seconds_count")
    assert abs(v("x_latency_seconds_sum") - 4.15) < 1e-9


def test_model_info_follows_every_slot_through_a_swap() -> None:
    from common.settings import EdgeSettings, Settings
    from edge_agent.app import EdgeNode

    node = EdgeNode(Settings(edge=EdgeSettings(http_port=0)))
    slot: ModelSlot[FerClassifier] = ModelSlot(Loaded(FerClassifier(MiniXception().eval(), "cpu", NAME, "base"),
                                                      NAME, "base"))
    asr_slot: ModelSlot[object] = ModelSlot(Loaded(object(), "pocketsphinx-en-us", "generic"))
    node.handlers[NAME] = fer_handler(slot, "cpu")
    node.handlers["pocketsphinx-en-us"] = ModelHandler(asr_slot, "lm", lambda data, version: object(),
                                                       lambda model: None)
    node.export_models()
    m = node.metrics
    assert m.value("edge_model_info", model=NAME, version="base") == 1
    assert m.value("edge_model_info", model="pocketsphinx-en-us", version="generic") == 1
    torch.manual_seed(1)
    slot.swap(Loaded(FerClassifier(MiniXception().eval(), "cpu", NAME, "v2"), NAME, "v2"))
    node.export_models()  # what the node does when the updater applied a version
    text = generate_latest(m.registry).decode()
    assert f'edge_model_info{{model="{NAME}",version="v2"}} 1.0' in text
    assert 'version="base"' not in text  # the old series is gone, not left at 1
    assert 'edge_model_info{model="pocketsphinx-en-us",version="generic"} 1.0' in text


async def test_node_collector_exports_outbox_kafka_updates_and_mining(tmp_path: Path) -> None:
    outbox = Outbox(OutboxSettings(path=tmp_path / "o.sqlite3", max_messages=2))
    try:
        for i in range(3):
            outbox.put(f"k{i}", "t", b"x" * 10)
        forwarder = KafkaForwarder(outbox, KafkaSettings(bootstrap_servers="127.0.0.1:1"), outbox.settings)
        slot: ModelSlot[FerClassifier] = ModelSlot(Loaded(FerClassifier(MiniXception().eval(), "cpu", NAME, "b"),
                                                          NAME, "b"))
        updater = ModelUpdater(UpdateSettings(), KafkaSettings(), "n", {NAME: fer_handler(slot, "cpu")})
        updater.stats.refused.update({"stale": 2, "bad_signature": 1})
        policy = MiningPolicy(HardExampleSettings(rate_total_s=0.001, burst_total=1, seed=0))
        for _ in range(3):
            policy.judge(NAME, "cam-1", probs=[1 / 7] * 7)  # maximally unsure: hard; the caps hold back 2
        metrics = EdgeMetrics()
        metrics.registry.register(NodeCollector(outbox=lambda: outbox, forwarder=lambda: forwarder,
                                                updater=lambda: updater, policy=lambda: policy))
        v = metrics.value
        assert v("edge_outbox_depth") == 2 and v("edge_outbox_bytes") == 20
        assert v("edge_outbox_evicted_total") == 1 and v("edge_outbox_enqueued_total") == 3
        assert v("edge_kafka_connected") == 0
        assert v("edge_model_updates_refused_total", reason="stale") == 2
        assert v("edge_model_updates_refused_total", reason="bad_signature") == 1
        assert v("edge_mining_emitted_total", model=NAME) == 1
        assert v("edge_mining_rate_limited_total", model=NAME) == 2
        forwarder.connected.set()
        assert v("edge_kafka_connected") == 1
    finally:
        outbox.close()


def test_rate_limited_log_says_how_many_it_held_back() -> None:
    now = [0.0]
    stream = io.StringIO()
    logger = logging.getLogger("test.flood")
    logger.handlers[:] = [logging.StreamHandler(stream)]
    logger.propagate = False
    flood = RateLimitedLog(logger, interval_s=10.0, clock=lambda: now[0])
    assert flood.warning("shed", "shed frame %d", 1)
    assert not any(flood.warning("shed", "shed frame %d", i) for i in range(2, 50))
    assert flood.warning("other", "another kind")  # keys are limited separately
    now[0] = 10.5
    assert flood.warning("shed", "shed frame %d", 50)
    lines = stream.getvalue().splitlines()
    assert lines == ["shed frame 1", "another kind", "shed frame 50 (48 similar suppressed)"]


def test_json_logs_are_one_object_per_line() -> None:
    record = logging.LogRecord("edge_agent", logging.WARNING, __file__, 1, "queue %s full", ("vision",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING" and entry["logger"] == "edge_agent" and entry["message"] == "queue vision full"
    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    try:
        setup_logging(logging.DEBUG, as_json=True)
        assert isinstance(root.handlers[0].formatter, JsonFormatter) and root.level == logging.DEBUG
    finally:
        root.handlers[:], root.level = before[0], before[1]
