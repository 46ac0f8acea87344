"""The edge's path to the DC inference workers (implements :class:`DcPath`).

A spilled frame goes to ``offload.dc-frames``; this edge reads ``offload.dc-results`` (no
group: every edge sees every reply and keeps those addressed to it) and hands each reply to the
request waiting for it. The WAN between edge and DC is SIMULATED here by
``offload.dc_wan_delay_ms`` one way, added before the send and before the reply is handed over.
The latency that the placement decision compares with a deadline is measured here and modelled by
:class:`placement.dc.DcLatency` (the decision itself is :func:`placement.edge.decide`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from common import tracing
from common.kafka_clients import make_consumer, make_producer
from common.offload_settings import OffloadSettings
from common.retry import Restarter
from common.settings import KafkaSettings
from common.tracing import kafka_headers
from placement.dc import DcLatency
from topics.codec import ContractError
from topics.offload import (
    KAFKA_DC_FRAMES,
    KAFKA_DC_RESULTS,
    MAX_DC_BYTES,
    DcReply,
    DcRequest,
    decode_dc_reply,
    encode_dc_request,
)
from topics.vision import Frame, VisionResult

__all__ = ["DcPath", "DcSpill", "DcSpillStats"]

log = logging.getLogger("edge_agent.dc_spill")


@dataclass(frozen=True, slots=True)
class DcSpillStats:
    sent: int
    replied: int
    timeouts: int
    late: int  # replies after their request gave up
    bad: int  # replies that break the contract
    reader_restarts: int
    latency_ms: float  # predicted now


class DcPath(Protocol):
    """The edge's way to the DC inference workers."""

    def latency_ms(self) -> float | None:
        """Predicted end-to-end latency of a spilled frame (None: unknown, do not spill)."""

    async def submit(self, frame: Frame) -> VisionResult | None:
        """Serve ``frame`` in the DC; its result (``served_by="dc"``) or None if it did not come back in time."""


class DcSpill:
    """Kafka request/reply to the DC workers, with measured latency: a component (``run(stop)``), or
    ``start``/``stop`` around its use. It predicts no latency (so nothing is spilled) until started."""

    name = "dc_spill"

    def __init__(self, kafka: KafkaSettings, offload: OffloadSettings, node: str, alpha: float = 0.2) -> None:
        self.kafka = kafka
        self.settings = offload
        self.node = node
        self.model = DcLatency(offload.dc_initial_latency_ms, time.monotonic(), alpha)
        self._pending: dict[str, asyncio.Future[DcReply]] = {}
        self._producer = make_producer(kafka, client_id=f"{kafka.client_id}-{node}-spill", acks="all",
                                       enable_idempotence=kafka.enable_idempotence, max_request_size=MAX_DC_BYTES)
        self._consumer = self._replies_consumer()
        self._reader: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.reader = Restarter("DC replies reader", log, 0.2, 5.0)  # .restarts: how often it failed
        self._reopen = False  # the reader failed: its next run starts from a fresh consumer
        self._open = False  # started and not stopped
        self.sent = 0
        self.replied = 0
        self.timeouts = 0
        self.late = 0  # replies that came after their request gave up (counted, dropped)
        self.bad = 0

    def latency_ms(self) -> float | None:
        return self.model.predict_ms(time.monotonic()) if self._open else None

    def ready(self) -> bool:
        return self._open

    def live(self) -> bool:
        return True  # a stuck DC times its requests out: measured in the latency, not a stall here

    @property
    def stats(self) -> DcSpillStats:
        return DcSpillStats(self.sent, self.replied, self.timeouts, self.late, self.bad, self.reader.restarts,
                            self.model.predict_ms(time.monotonic()))

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def _replies_consumer(self) -> AIOKafkaConsumer:
        return make_consumer(self.kafka, client_id=f"{self.kafka.client_id}-{self.node}-spill-replies",
                             group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=20)

    async def _open_replies(self) -> None:
        await self._consumer.start()
        tp = TopicPartition(KAFKA_DC_RESULTS, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_end(tp)
        await self._consumer.position(tp)  # positioned before the first request goes out

    async def start(self) -> None:
        await self._producer.start()
        await self._open_replies()
        self._reader = asyncio.create_task(self.reader.run(self._read, self._stopping), name="dc-spill-replies")
        self._open = True

    async def stop(self) -> None:
        self._open = False
        self._stopping.set()
        if self._reader is not None:
            self._reader.cancel()
        for client in (self._consumer, self._producer):
            await _close(client)

    async def submit(self, frame: Frame) -> VisionResult | None:
        """Serve ``frame`` in the DC: its result, or None (timeout, DC error) - counted here."""
        s = self.settings
        request_id = uuid.uuid4().hex
        future: asyncio.Future[DcReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        started = time.monotonic()
        self.model.sent(request_id, started)
        try:
            await asyncio.sleep(s.dc_wan_delay_ms / 1000.0)  # simulated WAN, edge -> DC
            req = DcRequest(request_id, self.node, int(time.time() * 1000), frame, frame.deadline_ms)
            payload = encode_dc_request(req)
            headers = kafka_headers(payload, tracing.child(tracing.current()))  # the frame's trace goes on
            await asyncio.wait_for(self._producer.send_and_wait(KAFKA_DC_FRAMES, payload, key=frame.device.encode(),
                                                                headers=headers), s.dc_timeout_ms / 1000.0)
            self.sent += 1
            remaining = s.dc_timeout_ms / 1000.0 - (time.monotonic() - started)
            reply = await asyncio.wait_for(future, max(remaining, 0.001))
        except TimeoutError:
            self.timeouts += 1
            self.model.finished(request_id, time.monotonic(), round_trip_ms=s.dc_timeout_ms)
            return None
        except BaseException:
            self.model.finished(request_id, time.monotonic())
            raise
        finally:
            self._pending.pop(request_id, None)
        self.replied += 1
        now = time.monotonic()
        per_item: float | None = None
        if reply.result is not None:
            t = reply.result.timing
            per_item = (t.preprocess_ms + t.inference_ms) / max(t.batch_size, 1)
        self.model.finished(request_id, now, round_trip_ms=1000.0 * (now - started), per_item_ms=per_item)
        return reply.result

    async def _read(self) -> None:
        """Hand each reply to its waiting request; restarted by ``self.reader`` after a failure, on a fresh
        consumer at the end of the topic (replies missed meanwhile time their requests out)."""
        if self._reopen:
            old, self._consumer = self._consumer, self._replies_consumer()
            await _close(old)
            await self._open_replies()
        self._reopen = True  # from here, any exit is a failure: the loop never returns
        self.reader.healthy()
        delay_s = self.settings.dc_wan_delay_ms / 1000.0
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    try:
                        if record.value is None:
                            raise ContractError("empty", "record without a value")
                        reply = decode_dc_reply(record.value)
                    except ContractError as exc:
                        self.bad += 1
                        log.warning("skipped a DC reply that breaks the contract: %s", exc)
                        continue
                    if reply.reply_to != self.node:
                        continue
                    future = self._pending.get(reply.request_id)
                    if future is None:
                        self.late += 1
                        continue
                    loop.call_later(delay_s, _resolve, future, reply)  # simulated WAN, DC -> edge


def _resolve(future: asyncio.Future[DcReply], reply: DcReply) -> None:
    if not future.done():
        future.set_result(reply)


async def _close(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(client.stop(), 5.0)
    except Exception as exc:
        log.debug("closing a Kafka client: %s", exc)
