"""Settings come from env and a TOML file; `tail` prints what operators need."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cli.brokers import MosquittoBroker
from cli.tail import format_line, tail
from common.settings import MqttSettings, load_settings
from topics import names
from topics.offload import FrameReturn, encode_frame_return
from topics.vision import Face, ModelRef, Timing, VisionResult, encode_result


def test_env_overrides_file_overrides_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('[mqtt]\nport = 1999\nclient_id = "from-file"\n[vision]\nmax_batch_size = 8\n')
    monkeypatch.setenv("EDGE_OFFLOAD_CONFIG", str(config))
    monkeypatch.setenv("EDGE_OFFLOAD_MQTT__PORT", "2001")
    s = load_settings()
    assert s.mqtt.port == 2001
    assert s.mqtt.client_id == "from-file"
    assert s.vision.max_batch_size == 8
    assert s.vision.max_queue_delay_ms == 4.0


def test_invalid_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_OFFLOAD_VISION__MAX_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="max_batch_size"):
        load_settings()


def _result(seq: int) -> VisionResult:
    return VisionResult("cam-t", seq, 1, "node-t", ModelRef("fer", "v9"), Timing(1, 2, 3, 4, 12.5),
                        (Face((10, 20, 30, 40), "happy", (0.0, 0.0, 0.0, 0.95, 0.05, 0.0, 0.0)),))


def test_format_line_is_readable() -> None:
    line = format_line(names.vision_results("cam-t"), encode_result(_result(4)))
    assert line == "vision cam-t #4 1 face(s): happy 0.95 @10,20 30x40 [fer v9, batch 2, 12.5 ms]"
    assert format_line("x", b"\xc1garbage").startswith("undecodable")
    shed = dataclasses.replace(_result(5), faces=(), outcome="shed", served_by="none", shed_reason="deadline")
    assert format_line(names.vision_results("cam-t"), encode_result(shed)).startswith(
        "vision cam-t #5 SHED by ")
    back = FrameReturn("cam-t", 6, 1, "edge-1", "deadline", 2)
    line = format_line(names.frame_returns("cam-t"), encode_frame_return(back))
    assert line.startswith("returned cam-t #6 by edge-1 (deadline)") and "not an outcome" in line


def test_tail_shows_a_dc_revision_as_a_revision() -> None:
    from topics.transcript import TranscriptSegment, TranscriptWord, encode_segment

    seg = TranscriptSegment("call-1", "leg2", 4, 7, "S2", 1.0, 2.0, "the harbor", 0.6,
                            (TranscriptWord("the", 1.0, 1.2, 0.6), TranscriptWord("harbor", 1.2, 2.0, 0.6)),
                            ModelRef("whisper-tiny.en", "w"), 800.0)
    first = format_line(names.transcript("call-1"), encode_segment(seg))
    assert "REVISED" not in first and "'the harbor'" in first
    revised = format_line(names.transcript("call-1"), encode_segment(dataclasses.replace(
        seg, text="the harbour", revision=1, source="dc", model=ModelRef("whisper-base", "b1"))))
    assert revised.endswith("REVISED r1 of leg2#4 seq 7 by dc whisper-base/b1") and "'the harbour'" in revised


@pytest.mark.integration
async def test_tail_follows_results_as_json(mosquitto: MosquittoBroker) -> None:
    out = io.StringIO()
    subscribed = asyncio.Event()
    task = asyncio.create_task(tail(MqttSettings(port=mosquitto.port, client_id="tail-json"), [names.RESULTS_FILTER],
                                    as_json=True, count=2,
                                    out=out, subscribed=subscribed))
    await asyncio.wait_for(subscribed.wait(), 10)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        for seq in range(2):
            client.publish(names.vision_results("cam-t"), encode_result(_result(seq)), qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    assert await asyncio.wait_for(task, 10) == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["type"] for line in lines] == ["vision_result", "vision_result"]
    assert lines[0]["message"]["faces"][0]["label"] == "happy"
    assert lines[0]["message"]["model"]["version"] == "v9"
