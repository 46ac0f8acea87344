"""The malformed-input corpus: every bad input gets its reason code, a counter and a dead
letter, never ``internal_error``; bad packets on new leg topics open no leg and cost no memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import msgpack
import pytest

from cli.brokers import MosquittoBroker
from common.settings import Settings, SpeechServiceConfig
from devices.camera import photo_frames
from edge_agent.speech.service import SpeechService
from models.edge_asr import load_edge_asr
from models.speaker import SpeakerEncoder
from models.vad import SileroVad
from tests.edge_helpers import agent_settings, running_agent
from tests.faults.helpers import following, frame_payload, rss_mib
from topics import names
from topics.codec import ContractError, unpack
from topics.deadletter import decode_dead_letter
from topics.rtp import NTP64_EXT_ID, ONE_BYTE_PROFILE, build_one_byte_extensions, build_rtp, parse_rtp

RSS_GROWTH_BOUND_MIB = 50
PCMU = bytes(160)
LONG_ID = "d" * 200


def _frame_envelope(**fields: object) -> bytes:
    base = {"type": "frame", "v": 1, "device": "cam-corpus", "seq": 0, "captured_at_ms": 1,
            "encoding": "jpeg", "size": 3, "data": b"\xff\xd8\xff"}
    base.update(fields)
    return msgpack.packb(base, use_bin_type=True)


# ------------------------------------------------------------------ units: the wire contract

@pytest.mark.parametrize("device,reason", [("kamera-\u00fc", "bad_device_id"), ("", "bad_device_id"),
                                           (LONG_ID, "bad_device_id")])
def test_bad_device_ids_in_frames_topics_have_reason_codes(device: str, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        names.device_of(f"{names.ROOT}/frames/{device}")
    assert info.value.reason == reason


@pytest.mark.parametrize("version", [[1], {"v": 1}, True, 1.0, "1", None])
def test_version_must_be_an_int(version: object) -> None:
    with pytest.raises(ContractError) as info:
        unpack(_frame_envelope(v=version), "frame", frozenset({1}), 1 << 20)
    assert info.value.reason == "unsupported_version"


@pytest.mark.parametrize("topic,reason", [
    (f"{names.ROOT}/audio/dev/conv/", "bad_leg_id"),
    (f"{names.ROOT}/audio/dev/c\u00f6nv/leg1", "bad_conversation_id"),
    (f"{names.ROOT}/audio/{LONG_ID}/conv/leg1", "bad_device_id"),
    (f"{names.ROOT}/audio/dev/conv", "bad_topic"),
])
def test_bad_audio_topics_have_reason_codes(topic: str, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        names.parse_audio(topic)
    assert info.value.reason == reason


def _audio_corpus() -> list[tuple[str, bytes]]:
    """(reason expected, packet) - each sent on a fresh leg topic."""
    def ext(data: bytes) -> bytes:
        return build_rtp(PCMU, payload_type=0, sequence=1, timestamp=2, ssrc=3, extension_profile=ONE_BYTE_PROFILE,
                         extension_data=data)

    rtcp = bytearray(build_rtp(PCMU, payload_type=0, sequence=1, timestamp=2, ssrc=3))
    rtcp[1] = 200
    return [
        ("oversize", build_rtp(bytes(65535 - 12), payload_type=0, sequence=1, timestamp=2, ssrc=3)),
        ("bad_extension", ext(bytes([0x2F, 1, 2, 3]))),  # element overruns the extension
        ("bad_extension", ext(build_one_byte_extensions({NTP64_EXT_ID: b"1234"}))),  # NTP-64 of 4 bytes
        ("truncated", b"\x00\x01junk"),
        ("bad_version", b"\x40" + bytes(20)),
        ("rtcp_packet", bytes(rtcp)),
        ("unknown_payload_type", build_rtp(PCMU, payload_type=96, sequence=1, timestamp=2, ssrc=3)),
        ("empty_payload", build_rtp(b"", payload_type=0, sequence=1, timestamp=2, ssrc=3)),
    ]


@pytest.mark.parametrize("reason,packet", _audio_corpus())
def test_rtp_corpus_is_rejected_at_parse(reason: str, packet: bytes) -> None:
    with pytest.raises(ContractError) as info:
        parse_rtp(packet)
    assert info.value.reason == reason


def test_good_ntp_extension_still_parses() -> None:
    data = build_rtp(PCMU, payload_type=0, sequence=1, timestamp=2, ssrc=3, extension_profile=ONE_BYTE_PROFILE,
                     extension_data=build_one_byte_extensions({NTP64_EXT_ID: bytes(8)}))
    assert parse_rtp(data).payload == PCMU


# ------------------------------------------------------------------ through real Mosquitto

@contextlib.asynccontextmanager
async def _dead_letters(port: int, stage: str) -> AsyncIterator[tuple[list[str], asyncio.Event]]:
    reasons: list[str] = []
    async with following(port, names.dead_letter(stage),
                         lambda payload: reasons.append(decode_dead_letter(payload).reason)) as changed:
        yield reasons, changed


async def _until(n: int, got: list[str], changed: asyncio.Event, timeout_s: float = 60) -> None:
    async def wait() -> None:
        while len(got) < n:
            changed.clear()
            await changed.wait()

    await asyncio.wait_for(wait(), timeout_s)


@pytest.mark.integration
async def test_vision_corpus_is_dead_lettered_with_reasons(mosquitto: MosquittoBroker, cache_dir: Path) -> None:
    device = "cam-corpus"
    topic = names.frames(device)
    corpus = [
        ("bad_device_id", f"{names.ROOT}/frames/kamera-\u00fc", _frame_envelope(device="kamera-\u00fc")),
        ("bad_device_id", f"{names.ROOT}/frames/", _frame_envelope(device="")),
        ("bad_device_id", f"{names.ROOT}/frames/{LONG_ID}", _frame_envelope(device=LONG_ID)),
        ("unsupported_version", topic, _frame_envelope(v=[1])),
        ("unsupported_version", topic, _frame_envelope(v={"major": 1})),
        ("unsupported_version", topic, _frame_envelope(v=True)),
        ("unsupported_version", topic, _frame_envelope(v=1.0)),
    ]
    good = photo_frames(cache_dir)[0]
    async with running_agent(agent_settings(mosquitto.port, "corpus-agent", group="corpus")) as agent, \
            _dead_letters(mosquitto.port, "vision") as (reasons, changed):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
            results = await pub.subscribe(names.vision_results(device), qos=1)
            assert results
            for _, t, payload in corpus:
                await pub.publish(t, payload, qos=1)
            await pub.publish(topic, frame_payload(device, 7, good), qos=1)
            await _until(len(corpus), reasons, changed)
            result = await asyncio.wait_for(anext(aiter(pub.messages)), 60)  # still serving
            assert str(result.topic) == names.vision_results(device)
        m = agent.metrics
        internal = m.value("edge_messages_rejected_total", stage="vision", reason="internal_error")
        counted = {r: m.value("edge_messages_rejected_total", stage="vision", reason=r) for r in set(reasons)}
    assert Counter(reasons) == Counter(r for r, _, _ in corpus)
    assert internal == 0
    assert counted == dict(Counter(reasons))


@pytest.mark.integration
async def test_audio_corpus_on_new_legs_opens_no_leg_and_costs_no_memory(mosquitto: MosquittoBroker,
                                                                        settings: Settings, cache_dir: Path) -> None:
    cfg = settings.model_copy(deep=True)
    cfg.mqtt.port = mosquitto.port
    cfg.mqtt.client_id = "speech-corpus"
    service = SpeechService(cfg, config=SpeechServiceConfig(idle_close_s=2.0),
                            asr=load_edge_asr(cache_dir, "whisper_tiny_en", "whisper_tiny_en", device="cpu"),
                            vad=SileroVad(),
                            encoder=SpeakerEncoder("cpu"))
    await asyncio.wait_for(service.load(), 120)  # model warm-up: CPU work, bounded apart from the connection
    stop_service = asyncio.Event()
    running = asyncio.create_task(service.run(stop_service))
    corpus = _audio_corpus()
    bad_topics = [("bad_leg_id", f"{names.ROOT}/audio/dev/conv/"),
                  ("bad_conversation_id", f"{names.ROOT}/audio/dev/c\u00f6nv/leg1"),
                  ("bad_device_id", f"{names.ROOT}/audio/{LONG_ID}/conv/leg1")]
    rounds, sent = 21, 0
    try:
        await asyncio.wait_for(service.connected.wait(), 30)
        assert service.engine is not None
        async with _dead_letters(mosquitto.port, "audio") as (reasons, changed), \
                aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
            rss0 = 0.0
            for r in range(rounds):
                for i, (_, packet) in enumerate(corpus):
                    await pub.publish(names.audio("dev", f"corpus-{r}-{i}", "leg1"), packet, qos=1)
                for _, t in bad_topics:
                    await pub.publish(t, PCMU, qos=1)
                sent += len(corpus) + len(bad_topics)
                await _until(sent, reasons, changed)
                if r == 0:  # first round warms up lazily allocated state
                    rss0 = rss_mib()
            growth = rss_mib() - rss0
        c = service.counters
    finally:
        stop_service.set()
    await running
    expected = Counter([reason for reason, _ in corpus + bad_topics] * rounds)
    print(f"\naudio corpus: {sent} bad packets on {rounds * len(corpus)} new leg topics, legs opened "
          f"{c.legs_opened}, dead letters {len(reasons)}, RSS growth {growth:.1f} MiB")
    assert Counter(reasons) == expected
    assert c.legs_opened == 0 and c.worker_errors == 0
    assert c.packets_rejected == dict(expected)
    assert c.bad_topics == rounds * len(bad_topics)
    assert growth < RSS_GROWTH_BOUND_MIB
