"""The edge's path to the DC inference workers (implements :class:`edge_agent.admission.DcPath`).

A spilled frame goes to ``offload.dc-frames``; this edge reads ``offload.dc-results`` (no
group: every edge sees every reply and keeps those addressed to it) and hands each reply to the
request waiting for it. The WAN between edge and DC is SIMULATED here by
``offload.dc_wan_delay_ms`` one way, added before the send and before the reply is handed over.
The latency that admission control compares with a deadline is measured: an EWMA of round
trips (a timeout counts as its timeout), starting from ``offload.dc_initial_latency_ms``; while
requests are out, at least the age of the oldest one (a DC that stopped answering is not sent
more), plus the requests out x the DC's measured service time per item (the queue a new
request joins there). With nothing out, what the EWMA holds above the initial latency halves
every ``_RELAX_S`` seconds: a DC measured slow once is tried again (else, never sent a frame, it
would never be measured fast again).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from aiokafka import TopicPartition

from common import tracing
from common.kafka_clients import make_consumer, make_producer
from common.offload_settings import OffloadSettings
from common.settings import KafkaSettings
from common.tracing import kafka_headers
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

__all__ = ["DcSpill"]

log = logging.getLogger("edge_agent.dc_spill")
_RELAX_S = 2.0


class DcSpill:
    """Kafka request/reply to the DC workers, with measured latency. ``start`` before use."""

    def __init__(self, kafka: KafkaSettings, offload: OffloadSettings, node: str, alpha: float = 0.2) -> None:
        self.kafka = kafka
        self.settings = offload
        self.node = node
        self.alpha = alpha
        self._latency_ms = offload.dc_initial_latency_ms
        self._pending: dict[str, asyncio.Future[DcReply]] = {}
        self._started: dict[str, float] = {}  # request id -> monotonic s it was submitted
        self._per_item_ms = 0.0  # EWMA of the DC's service time per item (from its replies)
        self._idle_since: float | None = time.monotonic()  # no request out since then
        self._producer = make_producer(kafka, client_id=f"{kafka.client_id}-{node}-spill", acks="all",
                                       enable_idempotence=kafka.enable_idempotence, max_request_size=MAX_DC_BYTES)
        self._consumer = make_consumer(kafka, client_id=f"{kafka.client_id}-{node}-spill-replies", group_id=None,
                                       auto_offset_reset="latest", fetch_max_wait_ms=20)
        self._reader: asyncio.Task[None] | None = None
        self.sent = 0
        self.replied = 0
        self.timeouts = 0
        self.late = 0  # replies that came after their request gave up (counted, dropped)
        self.bad = 0

    def latency_ms(self) -> float | None:
        now = time.monotonic()
        if not self._started:
            return self._relaxed(now)
        oldest_ms = 1000.0 * max(now - t for t in self._started.values())
        return max(self._latency_ms, oldest_ms) + len(self._started) * self._per_item_ms

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        tp = TopicPartition(KAFKA_DC_RESULTS, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_end(tp)
        await self._consumer.position(tp)  # positioned before the first request goes out
        self._reader = asyncio.create_task(self._read(), name="dc-spill-replies")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        for client in (self._consumer, self._producer):
            try:
                await asyncio.wait_for(client.stop(), 5.0)
            except Exception as exc:
                log.debug("closing a Kafka client: %s", exc)

    async def submit(self, frame: Frame) -> VisionResult | None:
        """Serve ``frame`` in the DC: its result, or None (timeout, DC error) - counted here."""
        s = self.settings
        request_id = uuid.uuid4().hex
        future: asyncio.Future[DcReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        started = time.monotonic()
        self._latency_ms, self._idle_since = self._relaxed(started), None
        self._started[request_id] = started
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
            self._observe(s.dc_timeout_ms)
            return None
        finally:
            self._pending.pop(request_id, None)
            self._started.pop(request_id, None)
            if not self._started:
                self._idle_since = time.monotonic()
        self.replied += 1
        self._observe(1000.0 * (time.monotonic() - started))
        if reply.result is not None:
            t = reply.result.timing
            per_item = (t.preprocess_ms + t.inference_ms) / max(t.batch_size, 1)
            self._per_item_ms += self.alpha * (per_item - self._per_item_ms)
        return reply.result

    def _relaxed(self, now: float) -> float:
        floor = self.settings.dc_initial_latency_ms
        if self._started or self._idle_since is None or self._latency_ms <= floor:
            return self._latency_ms
        return floor + (self._latency_ms - floor) * 0.5 ** ((now - self._idle_since) / _RELAX_S)

    def _observe(self, ms: float) -> None:
        self._latency_ms += self.alpha * (ms - self._latency_ms)

    async def _read(self) -> None:
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
