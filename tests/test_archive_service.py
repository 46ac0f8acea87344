"""The archive service against a real Mosquitto with the shipped persistence config: every
result kind is stored, bad input is dead-lettered, and a store restart, a failing store and a
broker restart lose nothing (persistent session, QoS 1, ack after the write)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest

from archive.service import ArchiveService
from archive.store import ALL, SearchQuery, SqliteStore, Store, open_store
from cli.brokers import MosquittoBroker
from common.archive_settings import ArchiveSettings
from common.settings import MqttSettings, Settings
from tests.faults.helpers import shipped_persistence
from topics import names
from topics.clip import AudioClip, encode_clip
from topics.deadletter import decode_dead_letter
from topics.kubeedge import twin_update, twin_update_topic
from topics.status import EdgeStatus, encode_status
from topics.thumbnail import Thumbnail, encode_thumbnail
from topics.transcript import ModelRef, TranscriptSegment, encode_segment
from topics.vision import Timing, VisionResult, encode_result

pytestmark = pytest.mark.integration


def _settings(port: int, url: str, client_id: str = "archive-test") -> Settings:
    return Settings(mqtt=MqttSettings(host="127.0.0.1", port=port, client_id="unused", receive_maximum=16),
                    archive=ArchiveSettings(store_url=url, client_id=client_id, http_port=0))


def _segment(i: int, case: str = "case-a") -> bytes:
    return encode_segment(TranscriptSegment(
        conversation=f"call-{i % 3}", leg="leg1", utterance=i, seq=i, speaker="S1", start_s=float(i), end_s=i + 1.0,
        text=f"word{i} convoy", confidence=0.9, words=(), model=ModelRef("whisper", "v1"), latency_ms=1.0,
        case_id=case, device="tap-1"))


def _result(i: int) -> bytes:
    return encode_result(VisionResult(device="cam-1", seq=i, captured_at_ms=i, node="edge-1",
                                      model=ModelRef("fer", "v1"), timing=Timing(1.0, 1, 1.0, 1.0, 3.0),
                                      case_id="case-a"))


_THUMB = Thumbnail("cam-1", 1, 4, 3, 640, 480, b"\xff\xd8\xff" + b"\x01" * 100, case_id="case-a")


async def _publish(port: int, items: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{time.monotonic_ns()}",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        for topic, payload in items:
            await client.publish(topic, payload, qos=1)


def _segments(ids: range) -> list[tuple[str, bytes]]:
    return [(names.transcript(f"call-{i % 3}"), _segment(i)) for i in ids]


async def _until(service: ArchiveService, what: Callable[[], bool], timeout_s: float = 30.0) -> None:
    await asyncio.wait_for(service.wait_until(what), timeout_s)


@contextlib.asynccontextmanager
async def _running(service: ArchiveService) -> AsyncIterator[ArchiveService]:
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 15)
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def _stored(url: str) -> int:
    with open_store(url) as store:
        return store.counts()["segments"]


async def test_every_kind_is_stored_and_bad_input_is_dead_lettered(own_mosquitto: MosquittoBroker,
                                                                   tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.sqlite3"
    port = own_mosquitto.port
    service = ArchiveService(_settings(port, url))
    async with aiomqtt.Client("127.0.0.1", port, identifier="dl-reader") as dl:
        await dl.subscribe(names.dead_letter("archive"), qos=1)
        async with _running(service):
            await _publish(port, [
                *_segments(range(3)), (names.transcript("call-0"), _segment(0)),  # a duplicate
                (names.vision_results("cam-1"), _result(1)),
                (names.edge_status("edge-1"), encode_status(EdgeStatus("edge-1", True, 1234))),
                (twin_update_topic("default", "cam-1"), twin_update({"status": "online"}, 99)),
                (names.transcript("call-9"), b"\x93not a segment"),
                (names.audio_clip("call-0"), encode_clip(AudioClip("call-0", "leg1", 0, 0.0, 0.5, b"\x01\x00" * 8000,
                                                                   case_id="case-a", device="tap-1"))),
                (names.audio_clip("call-1"), encode_clip(AudioClip("call-0", "leg1", 1, 0.0, 0.5, b"\x01\x00",
                                                                   case_id="case-a"))),  # on another's topic
                (names.thumbnail("cam-1"), encode_thumbnail(_THUMB)),
                (names.thumbnail("cam-2"), encode_thumbnail(_THUMB)),  # another camera's topic
            ])
            await _until(service, lambda: sum(service.counts.received.values()) == 12)
            message = await asyncio.wait_for(anext(aiter(dl.messages)), 10)
    assert decode_dead_letter(bytes(message.payload)).stage == "archive"  # type: ignore[arg-type]
    c = service.counts
    assert c.stored == {"segment": 3, "vision_result": 1, "edge_status": 1, "device_status": 1, "audio_clip": 1,
                        "thumbnail": 1}
    assert c.duplicates == {"segment": 1}
    assert c.rejected == {"invalid_msgpack": 1, "bad_topic": 1, "device_mismatch": 1}
    with open_store(url) as store:
        assert len(store.search(SearchQuery("convoy"), ALL)) == 3
        assert store.search(SearchQuery("convoy"), ALL)[0].case_id == "case-a"
        assert [(s.kind, s.name, s.online) for s in store.inventory()] == [("device", "cam-1", True),
                                                                           ("edge", "edge-1", True)]
        assert [r.device for r in store.latest_results(frozenset({"case-a"}))] == ["cam-1"]
        clip = store.clip("call-0", "leg1", 0, frozenset({"case-a"}))
        assert clip is not None and clip.pcm == b"\x01\x00" * 8000 and clip.device == "tap-1"
        thumb = store.thumbnail("cam-1", 1, frozenset({"case-a"}))
        assert thumb is not None and thumb.jpeg == _THUMB.jpeg


class _FlakyStore(SqliteStore):
    """A real SQLite store whose first ``failures`` segment writes fail (a store outage)."""

    failures = 3

    def put_segment(self, seg: TranscriptSegment, at_ms: int | None = None) -> bool:
        if _FlakyStore.failures > 0:
            _FlakyStore.failures -= 1
            raise OSError("store down")
        return super().put_segment(seg, at_ms)


async def test_store_restart_store_outage_and_broker_restart_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.sqlite3"
    with MosquittoBroker(persistence=shipped_persistence()) as broker:
        port = broker.port
        service = ArchiveService(_settings(port, url))
        async with _running(service):
            await _publish(port, _segments(range(0, 50)))
            await _until(service, lambda: service.counts.stored.get("segment", 0) == 50)
        # the archive (and its store) is down: the broker keeps its session's messages
        await _publish(port, _segments(range(50, 100)))
        assert _stored(url) == 50
        service = ArchiveService(_settings(port, url))
        async with _running(service):
            await _until(service, lambda: _stored(url) == 100)
        # a store that fails: the session ends unacknowledged and the broker redelivers
        flaky = ArchiveService(_settings(port, url), store_factory=lambda u: _FlakyStore(u[len("sqlite:///"):]))
        async with _running(flaky):
            await _publish(port, _segments(range(100, 150)))
            await _until(flaky, lambda: _stored(url) == 150)
            assert flaky.counts.store_errors == 3 and flaky.counts.sessions >= 2
            # the broker restarts (SIGTERM: it saves its store); what it acknowledged survives
            await _publish(port, _segments(range(150, 200)))
            broker.send_signal(signal.SIGTERM)
            broker.start()
            await _publish(port, _segments(range(200, 250)))
            await _until(flaky, lambda: _stored(url) == 250, timeout_s=60)
    with open_store(url) as store:
        stored = {h.utterance for h in store.search(SearchQuery(limit=1000), ALL)}
    assert stored == set(range(250))


def test_store_factory_default_is_open_store() -> None:
    service = ArchiveService(_settings(1, "sqlite:///:memory:"))
    assert isinstance(service.store(), Store)
