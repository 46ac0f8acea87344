"""Kafka outage: the broker stops while the edge keeps mining (and even restarts); after the
broker is back, every hard example is in the trainer's store exactly once.

Tansu keeps its log (and the group's offsets) in memory, so the trainer catches up before
the broker stops, and a restarted Tansu numbers the topic from offset 0 again. Until the
trainer's consumer rejoins the (forgotten) group, it may still fetch from its old position;
a real Kafka never moves offsets back, but here fewer messages are produced during the
outage than before it, so that old position lies beyond the new log and sees nothing.
What the test checks is the edge's part: it holds everything unacknowledged, across its
own restart, and resends it; the trainer's store keeps each hard example once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cli.brokers import TansuBroker
from cloud_trainer.consumer import SampleConsumer
from cloud_trainer.store import open_store
from common.dc_settings import OutboxSettings
from common.settings import KafkaSettings
from edge_agent.outbox import KafkaForwarder, Outbox
from topics.dc import HardExample, encode_hard_example
from topics.names import KAFKA_HARD_EXAMPLES


def _example(seq: int) -> HardExample:
    return HardExample(device="cam-outage", model="fer-mini-xception", model_version="v0", kind="face",
                       seq=seq, item=0, encoding="png", data=b"crop-%d" % seq, result="sad",
                       confidences=(0.3, 0.7), reasons=("threshold",), node="edge-1", captured_at_ms=seq)


def _put(box: Outbox, seqs: range) -> None:
    for seq in seqs:
        ex = _example(seq)
        box.put(ex.key, KAFKA_HARD_EXAMPLES, encode_hard_example(ex), ex.device.encode())


async def test_every_hard_example_arrives_once_across_an_outage(tmp_path: Path, own_kafka: TansuBroker) -> None:
    kafka = KafkaSettings(bootstrap_servers=own_kafka.bootstrap_servers)
    settings = OutboxSettings(path=tmp_path / "outbox.sqlite3", backoff_max_s=0.3, send_timeout_s=1.5)
    store = await open_store(f"sqlite:///{tmp_path}/store.sqlite3")
    consumer = SampleConsumer(store, kafka, "trainer-outage")
    stop_dc, stop_edge = asyncio.Event(), asyncio.Event()
    dc_task = asyncio.create_task(consumer.run(stop_dc))
    box = Outbox(settings)
    fw = KafkaForwarder(box, kafka, settings)
    edge_task = asyncio.create_task(fw.run(stop_edge))
    try:
        _put(box, range(0, 120))
        await asyncio.wait_for(consumer.wait_until(lambda: consumer.stats.stored == 120), 30)

        own_kafka.stop()
        _put(box, range(120, 160))
        _put(box, range(0, 10))  # the edge mines some old frames again (e.g. after an MQTT redelivery)
        await asyncio.wait_for(fw.wait_until(lambda: box.stats.send_errors >= 2), 30)
        assert box.pending == 50  # nothing unacknowledged was dropped

        # The edge restarts during the outage: the outbox is on disk.
        stop_edge.set()
        await asyncio.wait_for(edge_task, 10)
        box.close()
        box = Outbox(settings)
        assert box.pending == 50
        fw = KafkaForwarder(box, kafka, settings)
        stop_edge = asyncio.Event()
        edge_task = asyncio.create_task(fw.run(stop_edge))
        _put(box, range(160, 180))

        own_kafka.start()
        try:
            await asyncio.wait_for(consumer.wait_until(lambda: consumer.stats.stored == 180), 60)
        except TimeoutError:
            raise AssertionError(f"after the restart: {consumer.stats}, outbox {box.stats}, "
                                 f"pending {box.pending}") from None
        await asyncio.wait_for(fw.wait_until(lambda: box.pending == 0), 30)
        keys = await store.keys("fer-mini-xception")
        assert len(keys) == len(set(keys)) == 180
        assert set(keys) == {_example(s).key for s in range(180)}
        assert consumer.stats.duplicates >= 10  # the re-mined ones were stored once
        assert box.stats.evicted == 0 and box.stats.dead_lettered == 0
    finally:
        stop_edge.set()
        stop_dc.set()
        await asyncio.wait_for(asyncio.gather(edge_task, dc_task), 30)
        box.close()
        await store.close()
