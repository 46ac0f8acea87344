"""A fallback frame the edge would shed goes back to its device, which serves it: one final outcome
per frame, and the hand-back is not a result (real Mosquitto, real edge agent, real device models)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import pytest

from cli.brokers import MosquittoBroker
from common.device_settings import DeviceProfileSettings
from common.offload_settings import OffloadSettings
from devices.camera import photo_frames, run_camera
from devices.placer import DevicePlacer
from tests.edge_helpers import agent_settings, collect, running_agent, subscriber
from topics import names
from topics.offload import decode_frame_return
from topics.vision import Frame, decode_result, encode_frame

pytestmark = pytest.mark.integration


def _frame(device: str, seq: int, data: bytes, **kw: object) -> bytes:
    return encode_frame(Frame(device, seq, int(time.time() * 1000), "jpeg", data, **kw))  # type: ignore[arg-type]


async def test_edge_returns_a_fallback_frame_instead_of_shedding_it(mosquitto: MosquittoBroker,
                                                                    cache_dir: Path) -> None:
    image = photo_frames(cache_dir)[0]
    settings = agent_settings(mosquitto.port, "return-agent", group="return")
    settings.offload = OffloadSettings(margin_ms=60_000.0)  # every frame with a deadline misses it here
    dev = "cam-return"
    async with running_agent(settings) as agent, \
            subscriber(mosquitto.port, names.vision_results(dev)) as results, \
            subscriber(mosquitto.port, names.frame_returns(dev)) as returns, \
            aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        await pub.publish(names.frames(dev), _frame(dev, 0, image), qos=1)  # no deadline: served, measured
        first = decode_result(bytes((await collect(results, 1))[0].payload))  # type: ignore[arg-type]
        soon = int(time.time() * 1000) + 30_000
        await pub.publish(names.frames(dev), _frame(dev, 1, image, deadline_ms=soon, fallback=True), qos=1)
        await pub.publish(names.frames(dev), _frame(dev, 2, image, deadline_ms=soon), qos=1)
        ret = decode_frame_return(bytes((await collect(returns, 1))[0].payload))  # type: ignore[arg-type]
        shed = decode_result(bytes((await collect(results, 1))[0].payload))  # type: ignore[arg-type]
    assert (first.seq, first.outcome) == (0, "served")
    assert (ret.device, ret.seq, ret.reason, ret.node) == (dev, 1, "deadline", "return-agent")
    assert (shed.seq, shed.outcome, shed.shed_reason) == (2, "shed", "deadline"), "no outcome for the returned frame"
    assert agent.metrics.value("edge_frames_returned_total", stage="vision", reason="deadline") == 1
    assert agent.metrics.value("edge_messages_shed_total", stage="vision", reason="deadline") == 1


async def test_auto_device_serves_what_the_edge_hands_back(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    settings = agent_settings(mosquitto.port, "return-edge", group="return-auto")
    settings.offload = OffloadSettings(margin_ms=60_000.0)  # the edge hands back every frame it can
    dev = "cam-fallback"
    n = 6
    placer = DevicePlacer("auto", DeviceProfileSettings(deadline_ms=5_000), cache_dir, dev)
    async with running_agent(settings) as agent, subscriber(mosquitto.port, names.vision_results(dev)) as sub, \
            aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        # one frame without a deadline first: the edge serves and times it, so it predicts (and hands
        # back) every frame after it; an edge without a measurement admits every frame
        await pub.publish(names.frames(dev), _frame(dev, 1000, photo_frames(cache_dir)[0]), qos=1)
        warm = decode_result(bytes((await collect(sub, 1))[0].payload))  # type: ignore[arg-type]
        assert (warm.seq, warm.outcome) == (1000, "served")
        loop = asyncio.get_running_loop()
        stats = await loop.run_in_executor(None, lambda: run_camera(
            "127.0.0.1", mosquitto.port, dev, photo_frames(cache_dir)[:2], fps=4, count=n, placer=placer,
            edge_node="return-edge"))
        results = [decode_result(bytes(m.payload)) for m in await collect(sub, n)]  # type: ignore[arg-type]
    assert stats.frames_sent == n
    assert sorted(r.seq for r in results) == list(range(n)), "one final outcome per frame"
    returned = agent.metrics.value("edge_frames_returned_total", stage="vision", reason="deadline")
    assert returned >= 1 and placer.stats.returned == returned
    assert sum(r.served_by == "device" for r in results) >= returned
    assert all(r.outcome == "served" for r in results)


async def test_a_return_not_confirmed_is_given_again_not_decided_again(
        mosquitto: MosquittoBroker, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The return's publish fails once: the session ends, the broker redelivers the frame, and the
    edge answers it with the same return (kept like a result), so the frame still has one outcome."""
    import edge_agent.vision.service as service

    real = service.publish_confirmed
    failed: list[str] = []

    async def flaky(client: aiomqtt.Client, topic: str, payload: bytes, **kw: float) -> None:
        if topic.startswith("offload/v1/returns/") and not failed:
            failed.append(topic)
            raise aiomqtt.MqttError("injected: PUBACK of the return lost")
        await real(client, topic, payload, **kw)

    monkeypatch.setattr(service, "publish_confirmed", flaky)
    image = photo_frames(cache_dir)[0]
    settings = agent_settings(mosquitto.port, "return-again", group="return-again")
    settings.offload = OffloadSettings(margin_ms=60_000.0)  # every frame with a deadline misses it here
    dev = "cam-again"
    async with running_agent(settings) as agent, \
            subscriber(mosquitto.port, names.vision_results(dev)) as results, \
            subscriber(mosquitto.port, names.frame_returns(dev)) as returns, \
            aiomqtt.Client("127.0.0.1", mosquitto.port) as pub:
        await pub.publish(names.frames(dev), _frame(dev, 0, image), qos=1)  # no deadline: served, measured
        await collect(results, 1)
        soon = int(time.time() * 1000) + 30_000
        await pub.publish(names.frames(dev), _frame(dev, 1, image, deadline_ms=soon, fallback=True), qos=1)
        ret = decode_frame_return(bytes((await collect(returns, 1))[0].payload))  # type: ignore[arg-type]
        await pub.publish(names.frames(dev), _frame(dev, 2, image, deadline_ms=soon), qos=1)
        shed = decode_result(bytes((await collect(results, 1))[0].payload))  # type: ignore[arg-type]
    assert failed and (ret.seq, ret.reason) == (1, "deadline")
    assert (shed.seq, shed.outcome) == (2, "shed"), "no outcome for the returned frame"
    assert agent.metrics.value("edge_messages_redelivered_total", stage="vision", outcome="answered_from_unsent") == 1
    assert agent.metrics.value("edge_frames_returned_total", stage="vision", reason="deadline") == 1  # decided once
