"""``edge-offload archive``: results from MQTT into the store, nothing lost.

The service holds a persistent MQTT v5 session (QoS 1, manual acks) on the vision result,
transcript segment, audio clip and thumbnail (both opt-in at the edge), edge status and device
twin topics. Messages are handled one at a time: each is written to the store and only then
acknowledged. A store write that fails ends the session without acknowledging, so the broker
redelivers the message once the service is back; idempotent writes make the redelivery
harmless. A message that breaks the contract is counted, dead-lettered (stage ``archive``) and
acknowledged. A retention purge runs every
``archive.purge_every_s``, its deletions counted per data class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from prometheus_client import CollectorRegistry, Counter, Gauge

from archive.store import Store, open_store
from common.retry import Restarter
from common.settings import Settings
from edge_agent.mqtt import MqttClient, make_client
from topics import names
from topics.clip import decode_clip
from topics.codec import ContractError, now_ms, payload_bytes
from topics.deadletter import DeadLetter, encode_dead_letter
from topics.kubeedge import decode_twin_update
from topics.status import decode_status
from topics.thumbnail import decode_thumbnail
from topics.transcript import decode_segment
from topics.vision import decode_result

__all__ = ["ArchiveService", "ArchiveCounts", "SUBSCRIPTIONS"]

log = logging.getLogger(__name__)

SUBSCRIPTIONS = (names.VISION_RESULTS_FILTER, names.TRANSCRIPT_FILTER, names.CLIPS_FILTER, names.THUMBNAILS_FILTER,
                 names.EDGE_STATUS_FILTER, names.TWIN_UPDATE_FILTER)


@dataclass
class ArchiveCounts:
    """What the service did (also exported as Prometheus metrics)."""

    received: dict[str, int] = field(default_factory=dict)  # by kind
    stored: dict[str, int] = field(default_factory=dict)  # new rows, by kind
    duplicates: dict[str, int] = field(default_factory=dict)  # redelivered, already stored
    rejected: dict[str, int] = field(default_factory=dict)  # by reason
    store_errors: int = 0
    sessions: int = 0
    purged: dict[str, int] = field(default_factory=dict)


def _kind(topic: str) -> str:
    if names.matches(names.VISION_RESULTS_FILTER, topic):
        return "vision_result"
    if names.matches(names.TRANSCRIPT_FILTER, topic):
        return "segment"
    if names.matches(names.CLIPS_FILTER, topic):
        return "audio_clip"
    if names.matches(names.THUMBNAILS_FILTER, topic):
        return "thumbnail"
    if names.matches(names.EDGE_STATUS_FILTER, topic):
        return "edge_status"
    if names.matches(names.TWIN_UPDATE_FILTER, topic):
        return "device_status"
    return "other"


class ArchiveService:
    """``await run(stop)`` until ``stop`` is set; ``ready`` is set while subscribed."""

    def __init__(self, settings: Settings, *, store_url: str | None = None,
                 registry: CollectorRegistry | None = None, store_factory: Callable[[str], Store] = open_store) -> None:
        self.settings = settings
        self.store_url = store_url or settings.archive.store_url
        self.counts = ArchiveCounts()
        self.ready = asyncio.Event()
        self._handled = asyncio.Condition()  # notified after each message (wait_until)
        self._store_factory = store_factory
        self._store: Store | None = None
        self._last_purge = 0.0
        self._registry = registry or CollectorRegistry()
        self._m_received = Counter("edge_offload_archive_received", "messages received", ["kind"],
                                   registry=self._registry)
        self._m_stored = Counter("edge_offload_archive_stored", "new rows stored", ["kind"], registry=self._registry)
        self._m_dupes = Counter("edge_offload_archive_duplicates", "redelivered messages already stored", ["kind"],
                                registry=self._registry)
        self._m_rejected = Counter("edge_offload_archive_rejected", "messages that break the contract (dead-lettered)",
                                   ["reason"], registry=self._registry)
        self._m_store_errors = Counter("edge_offload_archive_store_errors", "store writes that failed (the session "
                                       "ends unacknowledged; the broker redelivers)", registry=self._registry)
        self._m_purged = Counter("edge_offload_archive_purged", "rows deleted by the retention purge",
                                 ["data_class"], registry=self._registry)
        self._m_ready = Gauge("edge_offload_archive_ready", "1 while subscribed", registry=self._registry)

    @property
    def registry(self) -> CollectorRegistry:
        return self._registry

    def store(self) -> Store:
        """The store, opened on first use (and again after a failure closed it)."""
        if self._store is None:
            self._store = self._store_factory(self.store_url)
        return self._store

    def _drop_store(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None

    async def run(self, stop: asyncio.Event) -> None:
        a = self.settings.archive

        def restarted(exc: BaseException) -> None:
            if not isinstance(exc, aiomqtt.MqttError):  # a failed write (redelivered) or a store that won't open
                self._drop_store()

        restarter = Restarter("archive", log, 0.2, 5.0, on_restart=restarted)

        async def session() -> None:
            try:
                await asyncio.to_thread(self.store)
                client = make_client(self.settings.mqtt, client_id=a.client_id, persistent=True, manual_ack=True)
                async with client:
                    self.counts.sessions += 1
                    for topic_filter in SUBSCRIPTIONS:
                        await client.subscribe(topic_filter, qos=a.subscribe_qos)
                    self.ready.set()
                    self._m_ready.set(1)
                    restarter.healthy()
                    await self._consume(client, stop)
            finally:
                self.ready.clear()
                self._m_ready.set(0)

        try:
            await restarter.run(session, stop)
        finally:
            self._drop_store()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every handled message."""
        async with self._handled:
            await self._handled.wait_for(predicate)

    async def _consume(self, client: MqttClient, stop: asyncio.Event) -> None:
        messages = client.messages.__aiter__()
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        nxt: asyncio.Future[Any] | None = None
        try:
            while not stop.is_set():
                if nxt is None:
                    nxt = asyncio.ensure_future(messages.__anext__())
                done, _ = await asyncio.wait({nxt, stopping}, timeout=min(60.0, self.settings.archive.purge_every_s),
                                             return_when=asyncio.FIRST_COMPLETED)
                if nxt in done:
                    message, nxt = nxt.result(), None
                    await self._handle(client, message)
                    async with self._handled:
                        self._handled.notify_all()
                await self._maybe_purge()
        finally:
            stopping.cancel()
            if nxt is not None:
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await nxt

    async def _handle(self, client: MqttClient, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = payload_bytes(message.payload)
        kind = _kind(topic)
        c = self.counts
        c.received[kind] = c.received.get(kind, 0) + 1
        self._m_received.labels(kind).inc()
        try:
            write = self._decode(kind, topic, payload)
        except ContractError as exc:
            c.rejected[exc.reason] = c.rejected.get(exc.reason, 0) + 1
            self._m_rejected.labels(exc.reason).inc()
            await client.publish(names.dead_letter("archive"), encode_dead_letter(DeadLetter(
                stage="archive", reason=exc.reason, detail=exc.detail, topic=topic, payload=payload,
                payload_size=len(payload), node=self.settings.archive.client_id, received_at_ms=now_ms())), qos=1)
            client.ack(message.mid, message.qos)
            return
        try:
            new = await asyncio.to_thread(write, self.store())
        except Exception as exc:
            c.store_errors += 1
            self._m_store_errors.inc()
            raise _StoreFailed(f"{type(exc).__name__}: {exc}") from exc
        if new:
            c.stored[kind] = c.stored.get(kind, 0) + 1
            self._m_stored.labels(kind).inc()
        else:
            c.duplicates[kind] = c.duplicates.get(kind, 0) + 1
            self._m_dupes.labels(kind).inc()
        client.ack(message.mid, message.qos)  # only once it is in the store

    @staticmethod
    def _decode(kind: str, topic: str, payload: bytes) -> Callable[[Store], bool]:
        """Decode one message; the store write it asks for."""
        if kind == "vision_result":
            result = decode_result(payload)
            return lambda s: s.put_result(result)
        if kind == "segment":
            segment = decode_segment(payload)
            return lambda s: s.put_segment(segment)
        if kind == "audio_clip":
            clip = decode_clip(payload)
            if topic != names.audio_clip(clip.conversation):
                raise ContractError("bad_topic", f"clip of {clip.conversation!r} on {topic[:120]!r}")
            return lambda s: s.put_clip(clip)
        if kind == "thumbnail":
            thumb = decode_thumbnail(payload)
            if topic != names.thumbnail(thumb.device):
                raise ContractError("device_mismatch", f"thumbnail of {thumb.device!r} on {topic[:120]!r}")
            return lambda s: s.put_thumbnail(thumb)
        if kind == "edge_status":
            status = decode_status(payload)
            return lambda s: s.put_edge_status(status)
        if kind == "device_status":
            device, stamp, values = decode_twin_update(topic, payload)
            online = values.get("status", "online") == "online"
            return lambda s: s.put_status("device", device, online, stamp, values)
        raise ContractError("bad_topic", f"not an archived topic: {topic[:120]!r}")

    async def _maybe_purge(self) -> None:
        a = self.settings.archive
        if time.monotonic() - self._last_purge < a.purge_every_s:
            return
        self._last_purge = time.monotonic()
        await self.purge()

    async def purge(self) -> dict[str, int]:
        """Run the retention purge now; rows deleted per data class (counted in metrics)."""
        a = self.settings.archive
        day_ms = 86_400_000
        now = now_ms()
        cutoffs = {"transcripts": now - int(a.keep_transcripts_days * day_ms),
                   "face_results": now - int(a.keep_face_results_days * day_ms),
                   "audio": now - int(a.keep_audio_days * day_ms),
                   "thumbnails": now - int(a.keep_thumbnails_days * day_ms),
                   "status": now - int(a.keep_status_days * day_ms)}
        done = await asyncio.to_thread(self.store().purge, cutoffs)
        for data_class, n in done.items():
            self.counts.purged[data_class] = self.counts.purged.get(data_class, 0) + n
            self._m_purged.labels(data_class).inc(n)
        return done


class _StoreFailed(Exception):
    """A store write failed: end the session unacknowledged."""
