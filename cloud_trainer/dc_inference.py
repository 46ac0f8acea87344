"""The DC inference worker: frames spilled by edges in, results back to the edge that asked.

A Kafka consumer group member (``offload.dc_group``): run more workers to scale (up to the
partitions of ``offload.dc-frames``). Each poll's records are one batch for the same vision
pipeline the edge runs (same model version), served in a worker thread; the replies are
produced (acks=all) before the offsets are committed, so a crash replays, never loses, a frame.
A record that is no request is counted (``stats.bad``), logged and dead-lettered on
``offload.dc-dead-letters`` (a ``topics.deadletter`` record, stage ``dc_inference``, keeping up to
64 KiB of the payload), also produced before its offset is committed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass

from cloud_trainer.health import Progress, StatsCollector, health_server
from common import tracing
from common.kafka_clients import make_consumer, make_producer
from common.retry import Restarter
from common.runtime import freeze_loaded_objects
from common.settings import KafkaSettings, Settings
from common.tracing import kafka_headers
from inference.vision import FrameJob, VisionPipeline
from topics.codec import ContractError, now_ms
from topics.deadletter import DeadLetter, encode_dead_letter
from topics.offload import (
    KAFKA_DC_DEAD_LETTERS,
    KAFKA_DC_FRAMES,
    KAFKA_DC_RESULTS,
    MAX_DC_BYTES,
    DcReply,
    DcRequest,
    decode_dc_request,
    encode_dc_reply,
)

__all__ = ["DcInferenceWorker", "DcWorkerStats", "run_dc_worker"]

log = logging.getLogger("cloud_trainer.dc_inference")


@dataclass
class DcWorkerStats:
    served: int = 0
    errors: int = 0  # frames answered with an error (bad image ...)
    bad: int = 0  # records that are no request (counted, logged, dead-lettered, skipped)
    batches: int = 0
    busy_s: float = 0.0  # seconds of model work: the DC GPU/CPU seconds the cost model charges
    restarts: int = 0


class DcInferenceWorker:
    """Serves spilled frames until ``stop`` is set; Kafka trouble rebuilds the clients."""

    def __init__(self, kafka: KafkaSettings, pipeline: VisionPipeline, worker_id: str, *,
                 group_id: str = "dc-inference", partitions: int = 4, max_batch: int = 16,
                 progress: Progress | None = None) -> None:
        self.kafka = kafka
        self.pipeline = pipeline
        self.worker_id = worker_id
        self.group_id = group_id
        self.partitions = partitions
        self.max_batch = max_batch
        self.stats = DcWorkerStats()
        self.ready = asyncio.Event()  # set once the worker has joined its group
        self.progress = progress or Progress()  # steps of the poll loop: /healthz

    def serve(self, requests: list[DcRequest]) -> list[DcReply]:
        """One batch through the model (blocking: call it in a worker thread)."""
        started = time.monotonic()
        jobs = [FrameJob(r.frame, started) for r in requests]
        outcomes = self.pipeline.run_batch(jobs)
        self.stats.busy_s += time.monotonic() - started
        self.stats.batches += 1
        replies = []
        for req, outcome in zip(requests, outcomes, strict=True):
            if outcome.result is not None:
                result = dataclasses.replace(outcome.result, node=self.worker_id, served_by="dc")
                replies.append(DcReply(req.request_id, req.reply_to, result=result))
                self.stats.served += 1
            else:
                reason = outcome.error.reason if outcome.error is not None else "internal_error"
                replies.append(DcReply(req.request_id, req.reply_to, error=reason))
                self.stats.errors += 1
        return replies

    async def run(self, stop: asyncio.Event) -> None:
        def counted(_: BaseException) -> None:
            self.stats.restarts += 1
            self.progress.step()  # a reconnect attempt: the loop is not wedged

        restarter = Restarter(f"dc worker {self.worker_id}", log, 1.0, 1.0, on_restart=counted)

        async def serve() -> None:
            consumer = producer = None
            try:
                producer = make_producer(self.kafka, client_id=f"{self.kafka.client_id}-{self.worker_id}",
                                         acks="all", enable_idempotence=self.kafka.enable_idempotence,
                                         max_request_size=MAX_DC_BYTES)
                await producer.start()
                consumer = make_consumer(
                    self.kafka, KAFKA_DC_FRAMES, client_id=f"{self.kafka.client_id}-{self.worker_id}",
                    group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                    max_poll_records=self.max_batch, max_partition_fetch_bytes=MAX_DC_BYTES,
                    fetch_max_wait_ms=20, metadata_max_age_ms=5000)
                await consumer.start()
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=self.max_batch)
                    self.ready.set()
                    restarter.healthy()
                    self.progress.step()
                    records = [r for rs in batch.values() for r in rs]
                    if not records:
                        continue
                    decoded = [(r.value, self._decode(r.value), tracing.from_headers(r.headers)) for r in records]
                    requests = [req for _, req, _ in decoded if isinstance(req, DcRequest)]
                    traces = {req.request_id: trace for _, req, trace in decoded if isinstance(req, DcRequest)}
                    sends = []
                    for value, err, trace in decoded:
                        if isinstance(err, ContractError):
                            dead = self._dead_letter(value, err)
                            sends.append(await producer.send(KAFKA_DC_DEAD_LETTERS, dead, key=self.worker_id.encode(),
                                                             headers=kafka_headers(dead, tracing.child(trace))))
                    if requests:
                        replies = await asyncio.to_thread(self.serve, requests)
                        for rep in replies:
                            reply = encode_dc_reply(rep)
                            trace = tracing.child(traces.get(rep.request_id))
                            sends.append(await producer.send(KAFKA_DC_RESULTS, reply, key=rep.reply_to.encode(),
                                                             headers=kafka_headers(reply, trace)))
                    for fut in sends:
                        await fut  # acks=all before the offsets move
                    await asyncio.wait_for(consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs}),
                                           30.0)
                    self.progress.step()
            finally:
                for client in (consumer, producer):
                    if client is not None:
                        try:
                            await asyncio.wait_for(client.stop(), 5.0)
                        except Exception as exc:
                            log.debug("dc worker %s: closing a Kafka client: %s", self.worker_id, exc)

        await restarter.run(serve, stop)

    def _decode(self, value: bytes | None) -> DcRequest | ContractError:
        try:
            if value is None:
                raise ContractError("empty", "record without a value")
            return decode_dc_request(value)
        except ContractError as exc:
            self.stats.bad += 1
            log.warning("dc worker %s: dead-lettered a record that is no request: %s", self.worker_id, exc)
            return exc

    def _dead_letter(self, value: bytes | None, error: ContractError) -> bytes:
        payload = value or b""
        return encode_dead_letter(DeadLetter(stage="dc_inference", reason=error.reason, detail=error.detail,
                                             topic=KAFKA_DC_FRAMES, payload=payload, payload_size=len(payload),
                                             node=self.worker_id, received_at_ms=now_ms()))


async def run_dc_worker(settings: Settings, worker_id: str, stop: asyncio.Event) -> DcWorkerStats:
    """Load the edge's vision pipeline (same model version) and serve until ``stop``, with
    /metrics, /healthz and /readyz on ``offload.dc_http_port`` from the start (ready once joined)."""
    # the edge's own pipeline builder
    from inference.vision import build_vision_pipeline

    o = settings.offload
    progress = Progress()
    workers: list[DcInferenceWorker] = []
    collector = StatsCollector("edge_offload_dc_worker", progress,
                               lambda: dataclasses.asdict(workers[0].stats) if workers else {},
                               {"worker": worker_id})
    health = health_server(o.dc_http_host, o.dc_http_port, collector, progress, o.dc_liveness_stall_s,
                           lambda: bool(workers) and workers[0].ready.is_set())
    await health.start()
    log.info("dc worker %s: /metrics, /healthz, /readyz on port %d", worker_id, health.port)
    try:
        pipeline = await asyncio.to_thread(build_vision_pipeline, settings)
        freeze_loaded_objects()  # model loaded: keep later GC scans short
        worker = DcInferenceWorker(settings.kafka, pipeline, worker_id, group_id=o.dc_group,
                                   partitions=o.dc_partitions, max_batch=o.dc_max_batch, progress=progress)
        workers.append(worker)
        try:
            await worker.run(stop)
        finally:
            pipeline.close()
    finally:
        await health.stop()
    return worker.stats
