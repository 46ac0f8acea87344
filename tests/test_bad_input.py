"""Bad input is counted, dead-lettered with its reason, and the agent keeps serving."""

from __future__ import annotations

from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cli.brokers import MosquittoBroker
from common.settings import VisionSettings
from devices.camera import photo_frames
from tests.edge_helpers import agent_settings, collect, running_agent, subscriber
from topics import names
from topics.deadletter import decode_dead_letter
from topics.vision import Frame, decode_result, encode_frame

pytestmark = pytest.mark.integration

DEVICE = "cam-bad"


def _frame(data: bytes, seq: int = 0, encoding: str = "jpeg", device: str = DEVICE) -> bytes:
    return encode_frame(Frame(device=device, seq=seq, captured_at_ms=1, encoding=encoding, data=data))


def _envelope(**fields: object) -> bytes:
    base = {"type": "frame", "v": 1, "device": DEVICE, "seq": 0, "captured_at_ms": 1,
            "encoding": "jpeg", "size": 3, "data": b"\xff\xd8\xff"}
    base.update(fields)
    return msgpack.packb(base, use_bin_type=True)


def _png_header(width: int, height: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big")
            + b"\x08\x00\x00\x00\x00")


def _cases(good_jpeg: bytes) -> list[tuple[str, str, bytes]]:
    """(reason expected, topic, payload)."""
    topic = names.frames(DEVICE)
    return [
        ("invalid_msgpack", topic, b"\xc1\xc1 not msgpack"),
        ("invalid_msgpack", topic, msgpack.packb([1, 2, 3])),
        ("wrong_type", topic, _envelope(type="audio")),
        ("unsupported_version", topic, _envelope(v=99)),
        ("missing_field", topic, msgpack.packb({"type": "frame", "v": 1, "device": DEVICE}, use_bin_type=True)),
        ("bad_field", topic, _envelope(seq="seven")),
        ("bad_image", topic, _frame(b"GIF89a definitely not a jpeg")),
        ("bad_image", topic, _frame(b"\xff\xd8\xff\xe0" + b"\x00" * 64)),  # JPEG magic, garbage after
        ("empty_image", topic, _envelope(size=0, data=b"")),
        ("empty_image", topic, _frame(_png_header(0, 480), encoding="png")),
        ("image_too_large", topic, _frame(_png_header(100_000, 100_000), encoding="png")),
        ("oversize", topic, _frame(good_jpeg * 40)),
        ("device_mismatch", topic, _frame(good_jpeg, device="cam-other")),
    ]


async def test_each_kind_of_bad_input_is_dead_lettered(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    good = photo_frames(cache_dir)[0]
    cases = _cases(good)
    vision = VisionSettings(max_payload_bytes=len(good) * 4)
    async with running_agent(agent_settings(mosquitto.port, "bad-input-agent", group="bad", vision=vision)) as agent:
        async with subscriber(mosquitto.port, names.dead_letter("vision"), names.vision_results(DEVICE)) as sub:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.connect("127.0.0.1", mosquitto.port)
            client.loop_start()
            try:
                for _, topic, payload in cases:
                    client.publish(topic, payload, qos=1).wait_for_publish(10)
                # a good frame after all that garbage is still served
                client.publish(names.frames(DEVICE), _frame(good, seq=42), qos=1).wait_for_publish(10)
            finally:
                client.loop_stop()
                client.disconnect()
            messages = await collect(sub, len(cases) + 1)
    dead = [decode_dead_letter(bytes(m.payload)) for m in messages if str(m.topic) == names.dead_letter("vision")]
    results = [decode_result(bytes(m.payload)) for m in messages if str(m.topic) == names.vision_results(DEVICE)]
    assert [r.seq for r in results] == [42]
    assert sorted(d.reason for d in dead) == sorted(reason for reason, _, _ in cases)
    for d in dead:
        assert d.stage == "vision" and d.node == "bad-input-agent" and d.detail
        assert d.payload_size >= len(d.payload)
    expected: dict[str, int] = {}
    for reason, _, _ in cases:
        expected[reason] = expected.get(reason, 0) + 1
    for reason, n in expected.items():
        assert agent.metrics.value("edge_messages_rejected_total", stage="vision", reason=reason) == n
