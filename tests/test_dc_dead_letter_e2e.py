"""A record on offload.dc-frames that is no request is dead-lettered by the DC inference worker
(real Kafka-protocol broker); the requests around it are still served."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from cli.brokers import TansuBroker
from cloud_trainer.dc_inference import DcInferenceWorker
from common.kafka_clients import make_consumer, make_producer
from common.settings import KafkaSettings, Settings
from devices.camera import photo_frames
from inference.vision import build_vision_pipeline
from topics.deadletter import decode_dead_letter
from topics.offload import (
    KAFKA_DC_DEAD_LETTERS,
    KAFKA_DC_FRAMES,
    KAFKA_DC_RESULTS,
    MAX_DC_BYTES,
    DcRequest,
    decode_dc_reply,
    encode_dc_request,
)
from topics.vision import Frame

pytestmark = pytest.mark.integration


async def _read_one(kafka: KafkaSettings, topic: str, timeout_s: float = 60.0) -> bytes:
    consumer = make_consumer(kafka, client_id=f"test-{topic}", group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    if r.value is not None:
                        return bytes(r.value)
        raise AssertionError(f"nothing on {topic} within {timeout_s} s")
    finally:
        await consumer.stop()


async def test_bad_record_is_dead_lettered_and_good_ones_served(own_kafka: TansuBroker, cache_dir: Path) -> None:
    settings = Settings()
    settings.kafka.bootstrap_servers = own_kafka.bootstrap_servers
    worker = DcInferenceWorker(settings.kafka, build_vision_pipeline(settings), "dc-dlq-worker",
                               group_id="dc-dlq-test", partitions=1)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    producer = make_producer(settings.kafka, acks="all", max_request_size=MAX_DC_BYTES)
    try:
        await asyncio.wait_for(worker.ready.wait(), 60)
        await producer.start()
        frame = Frame("cam-dlq", 1, int(time.time() * 1000), "jpeg", photo_frames(cache_dir)[0])
        await producer.send_and_wait(KAFKA_DC_FRAMES, b"\xc1 not msgpack", key=b"cam-dlq")
        await producer.send_and_wait(KAFKA_DC_FRAMES, encode_dc_request(DcRequest("req-1", "edge-x", 1, frame)),
                                     key=b"cam-dlq")
        dead = decode_dead_letter(await _read_one(settings.kafka, KAFKA_DC_DEAD_LETTERS))
        reply = decode_dc_reply(await _read_one(settings.kafka, KAFKA_DC_RESULTS))
    finally:
        stop.set()
        await producer.stop()
        await asyncio.wait_for(task, 30)
        worker.pipeline.close()
    assert (dead.stage, dead.reason, dead.topic, dead.node) == ("dc_inference", "invalid_msgpack", KAFKA_DC_FRAMES,
                                                                "dc-dlq-worker")
    assert dead.payload == b"\xc1 not msgpack" and dead.payload_size == len(dead.payload)
    assert reply.request_id == "req-1" and reply.result is not None and reply.result.served_by == "dc"
    assert worker.stats.bad == 1 and worker.stats.served == 1
