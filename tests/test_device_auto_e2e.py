"""A camera in ``auto`` follows the edge's published load through a real Mosquitto: frames go to
the edge while it is idle, are served on the device while its queue delay is long, and go back.

The edge status here is published by the test (the real retained-status contract), so the load
the device sees is under the test's control; the device, its models and the broker are real."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from cli.brokers import MosquittoBroker
from common.device_settings import DeviceProfileSettings
from devices.camera import photo_frames, run_camera
from devices.placer import DevicePlacer
from tests.edge_helpers import subscriber
from topics import names
from topics.status import EdgeLoad, EdgeStatus, encode_status
from topics.vision import decode_frame, decode_result

pytestmark = pytest.mark.integration


def _status(queue_ms: float) -> bytes:
    load = EdgeLoad(queue_delay_ms=queue_ms, service_ms={"fer-mini-xception": 20.0}, utilisation=0.9,
                    capacity_per_s=50.0, queue_depth=int(queue_ms / 20))
    return encode_status(EdgeStatus("auto-edge", True, int(time.time() * 1000), {}, load))


async def test_auto_device_switches_with_the_edge_load(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    dev = "cam-auto"
    # share 1 from the start (no slow start): every frame follows the published load alone
    placer = DevicePlacer("auto", DeviceProfileSettings(deadline_ms=500, edge_share_start=1.0), cache_dir, dev)
    stop = threading.Event()
    status_topic = names.edge_status("auto-edge")
    async with subscriber(mosquitto.port, names.frames(dev), names.vision_results(dev)) as sub, \
            aiomqtt.Client("127.0.0.1", mosquitto.port) as edge:
        await edge.publish(status_topic, _status(5.0), qos=1, retain=True)
        loop = asyncio.get_running_loop()
        camera = loop.run_in_executor(None, lambda: run_camera(
            "127.0.0.1", mosquitto.port, dev, photo_frames(cache_dir)[:3], fps=10, seconds=120, stop=stop,
            placer=placer, edge_node="auto-edge"))

        async def until(pred: Callable[[aiomqtt.Message], bool]) -> aiomqtt.Message:
            async for m in sub.messages:
                if pred(m):
                    return m
            raise AssertionError("stream ended")

        def to_edge(m: aiomqtt.Message) -> bool:
            return str(m.topic) == names.frames(dev)

        after = -1  # device results of frames placed before the status changed may still come in

        def on_device(m: aiomqtt.Message) -> bool:
            if str(m.topic) != names.vision_results(dev):
                return False
            r = decode_result(bytes(m.payload))  # type: ignore[arg-type]
            return r.served_by == "device" and r.seq > after

        try:
            first = decode_frame(bytes((await asyncio.wait_for(until(to_edge), 30)).payload), 1 << 23)  # type: ignore[arg-type]
            after = first.seq
            await edge.publish(status_topic, _status(5_000.0), qos=1, retain=True)  # the edge is swamped
            local = decode_result(bytes((await asyncio.wait_for(until(on_device), 60)).payload))  # type: ignore[arg-type]
            await edge.publish(status_topic, _status(5.0), qos=1, retain=True)  # and recovers
            again = decode_frame(bytes((await asyncio.wait_for(until(to_edge), 30)).payload), 1 << 23)  # type: ignore[arg-type]
        finally:
            stop.set()
            stats = await camera
            await edge.publish(status_topic, b"", qos=1, retain=True)
    assert first.deadline_ms == first.captured_at_ms + 500
    assert first.seq < local.seq < again.seq
    assert local.node == dev and local.model.name == "fer-mini-xception"
    assert placer.stats.placements["edge"] >= 2 and placer.stats.placements["local"] >= 1
    assert stats.frames_sent == sum(placer.stats.placements.values())
