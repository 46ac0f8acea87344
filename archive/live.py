"""Live events for the console: MQTT result topics -> per-viewer queues, filtered by case.

:class:`LiveHub` holds one plain (clean-session) MQTT subscription to transcripts, partials,
vision results and edge status, decodes each message and hands it, as a small JSON-able dict,
to every subscriber allowed to see it: an event with a case goes only to viewers assigned to
that case; an event without a case only to administrators; edge status (no case data) to all.
A viewer whose queue is full loses the event (counted); the page then reloads its view from
the store, which is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from archive.store import Access, is_all
from common.mqtt_security import aiomqtt_connection
from common.retry import Restarter
from common.settings import MqttSettings
from topics import names
from topics.codec import ContractError, payload_bytes
from topics.status import decode_status
from topics.transcript import decode_partial, decode_segment
from topics.vision import decode_result

__all__ = ["LiveHub", "Viewer", "allowed"]

log = logging.getLogger(__name__)

_FILTERS = (names.TRANSCRIPT_FILTER, names.PARTIAL_FILTER, names.VISION_RESULTS_FILTER, names.EDGE_STATUS_FILTER)


def allowed(access: Access, event: dict[str, Any]) -> bool:
    """May a viewer with ``access`` see ``event``?"""
    if event["type"] == "status":
        return True
    if isinstance(access, frozenset):
        return event.get("case_id") is not None and event["case_id"] in access
    return is_all(access)


@dataclass(eq=False)
class Viewer:
    access: Access
    conversation: str | None = None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(256))
    dropped: int = 0


def event_of(topic: str, payload: bytes) -> dict[str, Any]:
    """One MQTT message -> a console event (raises ContractError for bad input)."""
    if names.matches(names.TRANSCRIPT_FILTER, topic):
        s = decode_segment(payload)
        return {"type": "segment", "conversation": s.conversation, "leg": s.leg, "utterance": s.utterance,
                "revision": s.revision, "source": s.source, "speaker": s.speaker, "text": s.text,
                "confidence": s.confidence, "case_id": s.case_id}
    if names.matches(names.PARTIAL_FILTER, topic):
        p = decode_partial(payload)
        return {"type": "partial", "conversation": p.conversation, "leg": p.leg, "utterance": p.utterance,
                "speaker": p.speaker, "text": p.text, "case_id": p.case_id}
    if names.matches(names.VISION_RESULTS_FILTER, topic):
        r = decode_result(payload)
        return {"type": "result", "device": r.device, "seq": r.seq, "faces": len(r.faces), "case_id": r.case_id}
    st = decode_status(payload)
    return {"type": "status", "node": st.node, "online": st.online}


class LiveHub:
    """``await run(stop)``; viewers :meth:`join` and :meth:`leave`."""

    def __init__(self, mqtt: MqttSettings, client_id: str) -> None:
        self.mqtt = mqtt
        self.client_id = client_id
        self.viewers: set[Viewer] = set()
        self.ready = asyncio.Event()
        self.bad = 0

    def join(self, access: Access, conversation: str | None = None) -> Viewer:
        viewer = Viewer(access, conversation)
        self.viewers.add(viewer)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    def publish(self, event: dict[str, Any]) -> None:
        for v in list(self.viewers):
            if not allowed(v.access, event):
                continue
            if v.conversation is not None and event.get("conversation") not in (None, v.conversation):
                continue
            try:
                v.queue.put_nowait(event)
            except asyncio.QueueFull:
                v.dropped += 1

    async def run(self, stop: asyncio.Event) -> None:
        restarter = Restarter("console live feed", log, 0.2, 5.0, errors=(aiomqtt.MqttError,))

        async def session() -> None:
            try:
                async with aiomqtt.Client(**aiomqtt_connection(self.mqtt), identifier=self.client_id,
                                          protocol=aiomqtt.ProtocolVersion.V5,
                                          keepalive=self.mqtt.keepalive_s) as client:
                    for f in _FILTERS:
                        await client.subscribe(f, qos=0)
                    self.ready.set()
                    restarter.healthy()
                    reader = asyncio.ensure_future(self._read(client))
                    stopping = asyncio.ensure_future(stop.wait())
                    try:
                        await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for task in (reader, stopping):
                            task.cancel()
                            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                                await task
                    if reader.done() and not reader.cancelled() and reader.exception() is not None:
                        raise reader.exception()  # type: ignore[misc]
                    if not stop.is_set():
                        raise aiomqtt.MqttError("the live feed's messages ended")
            finally:
                self.ready.clear()

        await restarter.run(session, stop)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                event = event_of(message.topic.value, payload_bytes(message.payload))
            except ContractError:
                self.bad += 1
                continue
            self.publish(event)
