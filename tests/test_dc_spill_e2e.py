"""An overloaded edge spills to a DC inference worker through a real Kafka-protocol broker;
results come back and are published on the device's normal MQTT result topic, naming the DC."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import pytest

from cli.brokers import MosquittoBroker, TansuBroker
from cloud_trainer.dc_inference import DcInferenceWorker
from common.offload_settings import OffloadSettings
from devices.camera import photo_frames
from edge_agent.dc_spill import DcSpill
from inference.vision import build_vision_pipeline
from tests.edge_helpers import agent_settings, collect, running_agent, subscriber
from topics import names
from topics.vision import Frame, decode_result, encode_frame

pytestmark = pytest.mark.integration


async def test_overloaded_edge_spills_to_the_dc_worker(mosquitto: MosquittoBroker, kafka: TansuBroker,
                                                       cache_dir: Path) -> None:
    image = photo_frames(cache_dir)[0]
    settings = agent_settings(mosquitto.port, "spill-agent", group="spill")
    settings.kafka.bootstrap_servers = kafka.bootstrap_servers
    settings.offload = OffloadSettings(dc_spill=True, dc_wan_delay_ms=10.0, dc_initial_latency_ms=100.0,
                                       dc_timeout_ms=20_000.0, dc_group="dc-spill-test", dc_partitions=2)
    worker = DcInferenceWorker(settings.kafka, build_vision_pipeline(settings), "dc-worker-a",
                               group_id="dc-spill-test", partitions=2)
    stop = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(stop))
    spill = DcSpill(settings.kafka, settings.offload, "spill-agent")
    dev = "cam-spill"
    try:
        await asyncio.wait_for(worker.ready.wait(), 60)
        await spill.start()
        async with running_agent(settings) as agent, subscriber(mosquitto.port, names.vision_results(dev)) as sub, \
                aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
            agent.dc = spill
            # the edge has measured a service time far beyond the frames' deadline: it is overloaded
            model = agent.pipeline.slot.current().name
            agent.load.record_batch(model, 1, 0.0, 30.0)
            deadline = int(time.time() * 1000) + 15_000
            for seq in range(4):
                frame = Frame(dev, seq, int(time.time() * 1000), "jpeg", image, deadline_ms=deadline)
                await pub.publish(names.frames(dev), encode_frame(frame), qos=1)
            results = [decode_result(bytes(m.payload)) for m in await collect(sub, 4, timeout_s=60)]
            # the edge recovers (fast batches measured): the next frame is served at the edge again
            for _ in range(60):
                agent.load.record_batch(model, 1, 0.0, 0.001)
            fresh = Frame(dev, 4, int(time.time() * 1000), "jpeg", image, deadline_ms=int(time.time() * 1000) + 15_000)
            await pub.publish(names.frames(dev), encode_frame(fresh), qos=1)
            back = decode_result(bytes((await collect(sub, 1))[0].payload))  # type: ignore[arg-type]
    finally:
        stop.set()
        await spill.stop()
        await asyncio.wait_for(worker_task, 30)
        worker.pipeline.close()
    assert sorted(r.seq for r in results) == [0, 1, 2, 3]
    assert all((r.outcome, r.served_by, r.node) == ("served", "dc", "dc-worker-a") for r in results)
    assert any(f.label == "happy" for r in results for f in r.faces), "the DC ran the real model"
    assert worker.stats.served == 4 and spill.replied == 4 and spill.timeouts == 0
    assert (back.seq, back.served_by, back.node) == (4, "edge", "spill-agent")
    assert agent.metrics.value("edge_request_outcomes_total", stage="vision", outcome="served", served_by="dc") == 4
