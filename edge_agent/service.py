"""The edge agent: MQTT frames in, batched FER, results and dead letters out.

Flow per message: decode + validate the envelope on the event loop (cheap), queue it in
the dynamic batcher (bounded), the batch runs in a worker thread, the result is
published with QoS 1 and only then is the input acknowledged to the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiomqtt
import torch

from edge_agent.batcher import DynamicBatcher, Overloaded
from edge_agent.metrics import EdgeMetrics
from edge_agent.model_slot import Loaded, ModelSlot
from edge_agent.mqtt import InOrderAcker, make_client
from edge_agent.vision import FrameJob, FrameOutcome, VisionPipeline
from edge_offload.logs import RateLimitedLog
from edge_offload.settings import Settings
from models.artifacts import path_of
from models.blazeface import load_blazeface
from models.face_detect import BatchDetector, FaceDetector, HaarBatchDetector
from models.fer_edge import FerClassifier, load_edge_fer, resolve_device
from topics import names
from topics.codec import ContractError
from topics.deadletter import DeadLetter, encode_dead_letter
from topics.status import EdgeStatus, encode_status
from topics.vision import decode_frame, encode_result

__all__ = ["EdgeAgent", "build_vision_pipeline"]

log = logging.getLogger("edge_agent")
STAGE = "vision"


def build_vision_pipeline(settings: Settings) -> VisionPipeline:
    """Load the face detector (``vision.detector``) and the edge FER model from the artifact cache."""
    torch.set_num_threads(settings.vision.torch_threads)
    v = settings.vision
    detector: BatchDetector
    if v.detector == "blazeface":
        ranges = ("full", "short") if v.blazeface_short_range else ("full",)
        detector = load_blazeface(settings.cache_dir, device=resolve_device(settings.edge.device),
                                  ranges=ranges, min_face_px=v.min_face_px, max_faces=v.max_faces,
                                  workers=v.detect_workers)
    else:
        cascade = path_of("fer", "haarcascade_frontalface_default.xml", settings.cache_dir)

        def make_detector() -> FaceDetector:
            return FaceDetector(cascade, max_side=v.detect_max_side, scale_factor=v.detect_scale_factor,
                                min_neighbors=v.detect_min_neighbors, min_face_px=v.min_face_px,
                                max_faces=v.max_faces)

        detector = HaarBatchDetector(make_detector, v.preprocess_threads, v.cv_threads)

    fer = load_edge_fer(settings.cache_dir, device=settings.edge.device)
    slot: ModelSlot[FerClassifier] = ModelSlot(Loaded(fer, fer.name, fer.version))
    return VisionPipeline(detector, slot, v, settings.edge.node_name)


def _now_ms() -> int:
    return int(time.time() * 1000)


class EdgeAgent:
    """Runs until ``stop`` is set; reconnects to the broker with backoff, session kept."""

    def __init__(
        self,
        settings: Settings,
        pipeline: VisionPipeline,
        metrics: EdgeMetrics | None = None,
        on_outcome: Callable[[FrameOutcome], None] | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics or EdgeMetrics()
        self._flood_log = RateLimitedLog(log, interval_s=10.0)
        self.on_outcome = on_outcome
        self.connected = asyncio.Event()
        v = settings.vision
        self.batcher: DynamicBatcher[FrameJob, FrameOutcome] = DynamicBatcher(
            pipeline.run_batch,
            max_batch_size=v.max_batch_size,
            max_queue_delay_s=v.max_queue_delay_ms / 1000.0,
            max_pending=max(v.max_pending_frames, settings.mqtt.receive_maximum),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        # Our own bound on messages in the pipeline (see edge_agent.mqtt on Receive Maximum).
        self._in_flight = asyncio.Semaphore(settings.mqtt.receive_maximum)

    # -- lifecycle -------------------------------------------------------------------

    def ready(self) -> bool:
        return self.connected.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        loaded = self.pipeline.slot.current()
        self.metrics.set_model(loaded.name, loaded.version)
        self.batcher.start()
        backoff = 0.2
        try:
            while not stop.is_set():
                try:
                    await self._session(stop)
                    backoff = 0.2
                except aiomqtt.MqttError as exc:
                    log.warning("MQTT connection lost (%s); reconnecting in %.1fs", exc, backoff)
                    try:  # reconnect backoff, cut short by stop
                        await asyncio.wait_for(stop.wait(), backoff)
                    except TimeoutError:
                        pass
                    backoff = min(backoff * 2, 5.0)
        finally:
            await self.batcher.stop()

    async def _session(self, stop: asyncio.Event) -> None:
        s = self.settings
        offline = encode_status(EdgeStatus(s.edge.node_name, False, _now_ms(), self._models()))
        will = aiomqtt.Will(names.edge_status(s.edge.node_name), offline, qos=1, retain=True)
        client = make_client(s.mqtt, will=will,
                             on_drop=lambda: self.metrics.shed.labels(STAGE, "client_queue_full").inc())
        acker = InOrderAcker(client)
        try:
            async with client:
                await client.subscribe(names.shared(s.mqtt.share_group, names.FRAMES_FILTER), qos=1)
                online = EdgeStatus(s.edge.node_name, True, _now_ms(), self._models())
                await client.publish(names.edge_status(s.edge.node_name), encode_status(online), qos=1, retain=True)
                self.connected.set()
                self.metrics.connected.set(1)
                consume = asyncio.create_task(self._consume(client, acker))
                stopping = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({consume, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if consume in done:
                    consume.result()  # raises the MqttError that ended the session
                    return
                consume.cancel()
                await self._drain()
                offline = encode_status(EdgeStatus(s.edge.node_name, False, _now_ms(), self._models()))
                await client.publish(names.edge_status(s.edge.node_name), offline, qos=1, retain=True)
        finally:
            acker.close()
            self.connected.clear()
            self.metrics.connected.set(0)

    async def _drain(self, timeout_s: float = 10.0) -> None:
        """Let in-flight messages finish (results published, inputs acked)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    def _models(self) -> dict[str, str]:
        loaded = self.pipeline.slot.current()
        return {loaded.name: loaded.version}

    # -- per message -------------------------------------------------------------------

    async def _consume(self, client: aiomqtt.Client, acker: InOrderAcker) -> None:
        messages = aiter(client.messages)
        while True:
            await self._in_flight.acquire()  # released when the message is finished
            try:
                message = await anext(messages)
            except BaseException:
                self._in_flight.release()
                raise
            token = acker.received(message)
            task = asyncio.create_task(self._handle(client, acker, token, message, time.monotonic()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _: self._in_flight.release())

    async def _handle(self, client: aiomqtt.Client, acker: InOrderAcker, token: int,
                      message: aiomqtt.Message, received_s: float) -> None:
        try:
            await self._process(client, message, received_s)
        except aiomqtt.MqttError as exc:
            # Publishing failed with the connection: leave the input unacked, the broker redelivers it.
            log.warning("publish failed, input left for redelivery: %s", exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not poison the stream: dead-letter it
            log.exception("internal error on %s", message.topic)
            try:
                await self._dead_letter(client, str(message.topic), _payload(message),
                                        ContractError("internal_error", f"{type(exc).__name__}: {exc}"))
            except aiomqtt.MqttError:
                return
        acker.done(token)

    async def _process(self, client: aiomqtt.Client, message: aiomqtt.Message, received_s: float) -> None:
        topic = str(message.topic)
        payload = _payload(message)
        self.metrics.received.labels(STAGE).inc()
        try:
            frame = decode_frame(payload, self.settings.vision.max_payload_bytes)
            if names.device_of(topic) != frame.device:
                raise ContractError("device_mismatch", f"topic device {names.device_of(topic)!r} != {frame.device!r}")
        except ContractError as exc:
            await self._dead_letter(client, topic, payload, exc)
            return
        try:
            future = self.batcher.submit_nowait(FrameJob(frame, received_s))
        except Overloaded:
            self.metrics.shed.labels(STAGE, "overload").inc()
            self._flood_log.warning("shed", "overload: shed frame %s/%d (counted in edge_messages_shed)",
                                    frame.device, frame.seq)
            return
        self.metrics.queue_depth.labels(STAGE).set(self.batcher.depth)
        outcome = await future
        if outcome.error is not None:
            await self._dead_letter(client, topic, payload, outcome.error)
            return
        result = outcome.result
        assert result is not None
        await client.publish(names.vision_results(frame.device), encode_result(result), qos=1)
        m = self.metrics
        m.published.labels(STAGE).inc()
        m.latency.labels(STAGE).observe(time.monotonic() - received_s)
        m.batch_size.labels(STAGE).observe(result.timing.batch_size)
        m.inference.labels(STAGE).observe(result.timing.inference_ms / 1000.0)
        for face in result.faces:
            m.faces.labels(face.label).inc()
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _dead_letter(self, client: aiomqtt.Client, topic: str, payload: bytes, error: ContractError) -> None:
        self.metrics.rejected.labels(STAGE, error.reason).inc()
        log.info("dead-letter %s: %s", topic, error)
        record = DeadLetter(stage=STAGE, reason=error.reason, detail=error.detail, topic=topic,
                            payload=payload, payload_size=len(payload),
                            node=self.settings.edge.node_name, received_at_ms=_now_ms())
        await client.publish(names.dead_letter(STAGE), encode_dead_letter(record), qos=1)


def _payload(message: aiomqtt.Message) -> bytes:
    p = message.payload
    if isinstance(p, (bytes, bytearray)):
        return bytes(p)
    return b"" if p is None else str(p).encode()
