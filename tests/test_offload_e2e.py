"""Offloading at the edge on a real Mosquitto: every request ends in one published outcome."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import pytest

from cli.brokers import MosquittoBroker
from common.offload_settings import OffloadSettings
from common.settings import VisionSettings
from devices.camera import photo_frames
from tests.edge_helpers import agent_settings, collect, running_agent, subscriber
from topics import names
from topics.status import decode_status
from topics.vision import Frame, decode_result, encode_frame

pytestmark = pytest.mark.integration


def _frame(device: str, seq: int, data: bytes, **kw: object) -> bytes:
    return encode_frame(Frame(device, seq, int(time.time() * 1000), "jpeg", data, **kw))  # type: ignore[arg-type]


async def test_outcomes_and_load_status(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    image = photo_frames(cache_dir)[0]
    settings = agent_settings(mosquitto.port, "offload-agent", group="offload")
    settings.offload = OffloadSettings(status_interval_s=0.2)
    dev = "cam-offload"
    async with running_agent(settings) as agent, \
            subscriber(mosquitto.port, names.vision_results(dev)) as sub, \
            subscriber(mosquitto.port, names.edge_status("offload-agent")) as status_sub, \
            aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        await pub.publish(names.frames(dev), _frame(dev, 0, image), qos=1)
        await pub.publish(names.frames(dev), _frame(dev, 1, image, deadline_ms=1), qos=1)  # long past
        results = {r.seq: r for r in (decode_result(bytes(m.payload)) for m in await collect(sub, 2))}
        # the status carries the measured load once a batch has run
        async def loaded() -> float:
            async for m in status_sub.messages:
                st = decode_status(bytes(m.payload))  # type: ignore[arg-type]
                if st.online and st.load is not None and st.load.service_ms:
                    return st.load.service_ms["fer-mini-xception"]
            raise AssertionError("status stream ended")
        service_ms = await asyncio.wait_for(loaded(), 30)
    assert (results[0].outcome, results[0].served_by, results[0].shed_reason) == ("served", "edge", None)
    assert (results[1].outcome, results[1].served_by, results[1].shed_reason) == ("shed", "none", "deadline_passed")
    assert service_ms > 0
    assert agent.metrics.value("edge_messages_shed_total", stage="vision", reason="deadline_passed") == 1
    assert agent.metrics.value("edge_request_outcomes_total", stage="vision", outcome="served",
                               served_by="edge") == 1


async def test_latest_wins_supersedes_queued_frames(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    image = photo_frames(cache_dir)[0]
    n = 20
    settings = agent_settings(mosquitto.port, "latest-agent", group="latest",
                              vision=VisionSettings(max_batch_size=1))
    dev = "cam-latest"
    async with running_agent(settings), subscriber(mosquitto.port, names.vision_results(dev)) as sub, \
            aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        for seq in range(n):
            await pub.publish(names.frames(dev), _frame(dev, seq, image, latest_wins=True), qos=1)
        results = [decode_result(bytes(m.payload)) for m in await collect(sub, n)]
    assert sorted(r.seq for r in results) == list(range(n)), "every frame has exactly one outcome"
    by_seq = {r.seq: r for r in results}
    assert by_seq[n - 1].outcome == "served", "the newest frame is always served"
    superseded = [r for r in results if r.outcome == "shed"]
    assert superseded and all(r.shed_reason == "superseded" for r in superseded)
