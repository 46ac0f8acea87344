"""A camera frame's W3C trace comes back on its result (real Mosquitto, real edge agent)."""

from __future__ import annotations

import time
from pathlib import Path

import aiomqtt
import pytest

from cli.brokers import MosquittoBroker
from common import tracing
from devices.camera import photo_frames
from tests.edge_helpers import agent_settings, collect, running_agent, subscriber
from topics import names
from topics.vision import Frame, decode_result, encode_frame

pytestmark = pytest.mark.integration


async def test_result_continues_the_frames_traceparent(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    image = photo_frames(cache_dir)[0]
    dev = "cam-trace"
    parent = tracing.new_traceparent()
    async with running_agent(agent_settings(mosquitto.port, "trace-agent", group="trace")), \
            subscriber(mosquitto.port, names.vision_results(dev)) as results, \
            aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
        for seq, props in ((0, tracing.mqtt_properties(parent)), (1, None)):
            frame = encode_frame(Frame(dev, seq, int(time.time() * 1000), "jpeg", image))
            await pub.publish(names.frames(dev), frame, qos=1, properties=props)
        got = {decode_result(bytes(m.payload)).seq: tracing.from_mqtt(m.properties)  # type: ignore[arg-type]
               for m in await collect(results, 2)}
    assert tracing.trace_id(got[0]) == tracing.trace_id(parent) and got[0] != parent  # same trace, next span
    assert tracing.valid(got[1]) and tracing.trace_id(got[1]) != tracing.trace_id(parent)  # a trace of its own
