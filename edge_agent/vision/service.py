"""The edge agent: MQTT frames in, batched FER, results and dead letters out.

Flow per message: decode + validate the envelope on the event loop (cheap), queue it in
the dynamic batcher (bounded), the batch runs in a worker thread, the result is
published with QoS 1 and only then is the input acknowledged to the broker.

Faults: every message either ends acknowledged (result or dead letter confirmed by the
broker) or ends its session, so the in-order acker is never blocked by one message. When
the session drops, work on its messages stops (queued frames are skipped, not computed) and
the broker redelivers them next session; a result already computed is kept and answers its
redelivered input instead of being recomputed or thrown away. A redelivered input whose
result was confirmed is answered again: after a broker crash the redelivery means the broker
lost state, possibly that result too (at least once, never "acked but lost").
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiomqtt

from common import tracing
from common.logs import RateLimitedLog, bind_context
from common.settings import Settings
from edge_agent.batcher import DynamicBatcher, Overloaded
from edge_agent.dc_spill import DcPath
from edge_agent.metrics import EdgeMetrics
from edge_agent.mqtt import SessionLost, make_client, publish_confirmed
from edge_agent.mqtt_session import Connection, MqttSession, RedeliveryCache, Status
from inference.images import thumbnail_jpeg
from inference.vision import FrameJob, FrameOutcome, VisionPipeline
from placement.cost import request_cost
from placement.edge import Request, Return, Serve, Shed, Spill, View, deadline_of, decide, on_dc_failure, on_overload
from placement.load import LoadEstimator
from topics import names
from topics.codec import ContractError, now_ms, payload_bytes
from topics.deadletter import DeadLetter, encode_dead_letter
from topics.offload import FrameReturn, encode_frame_return
from topics.status import EdgeLoad, EdgeStatus, encode_status
from topics.thumbnail import Thumbnail, encode_thumbnail
from topics.vision import Frame, ModelRef, decode_frame, encode_result, shed_result

__all__ = ["VisionService", "VisionStats"]

log = logging.getLogger("edge_agent")
STAGE = "vision"


def _device_or_none(topic: str) -> str | None:
    """The camera a frames topic names, None for a malformed topic (dead-lettered later)."""
    try:
        return names.device_of(topic)
    except ValueError:
        return None


_SESSION_LOST = ContractError("session_lost", "the session of this frame ended before its batch ran")
_SUPERSEDED = ContractError("superseded", "a newer latest-wins frame of this device arrived")


@dataclass(frozen=True, slots=True)
class VisionStats:
    connected: bool
    queue_depth: int
    in_flight: int  # messages being handled
    unsent_results: int  # computed answers kept for their redelivered input


@dataclass(slots=True)
class _Unsent:
    """A computed answer whose publish the session did not confirm: a result (``outcome``), or a
    frame return (``outcome`` None), given again, not recomputed, when the input is redelivered."""

    topic: str
    payload: bytes
    outcome: FrameOutcome | None


class VisionService:
    """Runs until ``stop`` is set; reconnects to the broker with backoff, session kept (a
    :class:`common.component.Component`)."""

    name = "vision"

    def __init__(
        self,
        settings: Settings,
        pipeline: VisionPipeline,
        metrics: EdgeMetrics | None = None,
        on_outcome: Callable[[FrameOutcome], None] | None = None,
        dc: DcPath | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics or EdgeMetrics()
        self._flood_log = RateLimitedLog(log, interval_s=10.0)
        self.on_outcome = on_outcome
        s, delivery = settings, settings.delivery
        self.session = MqttSession(
            "MQTT session",
            lambda on_unacked_drop, will: make_client(
                s.mqtt, will=will, on_drop=lambda: self.metrics.shed.labels(STAGE, "client_queue_full").inc(),
                on_unacked_drop=on_unacked_drop),
            [(names.shared(s.mqtt.share_group, names.FRAMES_FILTER), 1)], manual_ack=True,
            status=Status(names.edge_status(s.edge.node_name), self._status), on_connected=self.metrics.connected.set)
        self.connected = self.session.connected
        # answers not confirmed, given again (not recomputed) when their input is redelivered
        self.unsent: RedeliveryCache[_Unsent] = RedeliveryCache(
            delivery.unsent_results, lambda: self.metrics.shed.labels(STAGE, "unsent_results_full").inc())
        v = settings.vision
        self.batcher: DynamicBatcher[FrameJob, FrameOutcome] = DynamicBatcher(
            self._run_batch,
            max_batch_size=v.max_batch_size,
            max_queue_delay_s=v.max_queue_delay_ms / 1000.0,
            max_pending=max(v.max_pending_frames, settings.mqtt.receive_maximum),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        # Our own bound on messages in the pipeline (see edge_agent.mqtt on Receive Maximum).
        self._in_flight = asyncio.Semaphore(settings.mqtt.receive_maximum)
        self._job_session: dict[int, Connection] = {}  # id(FrameJob) -> its connection, while queued
        self._batch_started_s: float | None = None  # set while a batch runs in the worker
        self._batch_ended_s = 0.0  # when the worker finished its last batch
        o = settings.offload
        self.load = LoadEstimator(o.load_alpha, o.load_window_s)  # measured load: admission + status
        self.dc = dc  # given: frames that would miss their deadline here may be spilled to the DC
        self._latest_seq: dict[str, int] = {}  # device -> newest latest-wins seq received
        self._ahead = asyncio.Semaphore(v.max_batch_size)  # frames preprocessed before their batch

    # -- lifecycle -------------------------------------------------------------------

    def ready(self) -> bool:
        return self.connected.is_set()

    def live(self) -> bool:
        """False when acks or the batch worker made no progress for ``liveness_stall_s`` with work pending."""
        stall = self.settings.delivery.liveness_stall_s
        now = time.monotonic()
        started = self._batch_started_s
        if started is not None and now - started > stall:
            return False
        sess = self.session.current
        if sess is not None and not sess.ended and sess.acker is not None and sess.acker.in_flight > 0:
            return now - sess.acker.last_progress_s <= stall
        return True

    @property
    def stats(self) -> VisionStats:
        """Gauges of now (its counters are Prometheus metrics: ``self.metrics``)."""
        return VisionStats(self.connected.is_set(), self.batcher.depth, len(self._tasks), len(self.unsent))

    async def run(self, stop: asyncio.Event) -> None:
        loaded = self.pipeline.slot.current()
        self.metrics.set_model(loaded.name, loaded.version)
        self.batcher.start()
        try:
            await self.session.run(stop, self._serve)
        finally:
            await self.batcher.stop()

    def _status(self, online: bool) -> bytes:
        s = self.settings
        return encode_status(EdgeStatus(s.edge.node_name, online, now_ms(), self._models()))

    async def _serve(self, sess: Connection, stop: asyncio.Event) -> None:
        """One connection: consume until it drops (raises) or ``stop``; then let in-flight messages finish."""
        consume = asyncio.create_task(self._consume(sess))
        reporting = asyncio.create_task(self._report_load(sess.client))
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({consume, stopping}, return_when=asyncio.FIRST_COMPLETED)
            reporting.cancel()
            if consume in done:
                consume.result()  # raises the MqttError that ended the connection
                return
            consume.cancel()
            await self._drain()
        finally:
            for task in (consume, reporting, stopping):
                task.cancel()

    async def _drain(self, timeout_s: float = 10.0) -> None:
        """Let in-flight messages finish (results published, inputs acked)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def _report_load(self, client: aiomqtt.Client) -> None:
        """Refresh the retained status with the measured load every ``offload.status_interval_s``."""
        s = self.settings
        while True:
            await asyncio.sleep(s.offload.status_interval_s)
            status = EdgeStatus(s.edge.node_name, True, now_ms(), self._models(), self._load_now())
            await client.publish(names.edge_status(s.edge.node_name), encode_status(status), qos=1, retain=True)

    def _load_now(self) -> EdgeLoad:
        return self.load.snapshot(self.pipeline.slot.current().name, self.batcher.depth)

    def _models(self) -> dict[str, str]:
        loaded = self.pipeline.slot.current()
        return {loaded.name: loaded.version}

    def _run_batch(self, jobs: Sequence[FrameJob]) -> list[FrameOutcome]:
        """The batcher's work (worker thread): frames of a session that has ended are skipped."""
        started = self._batch_started_s = time.monotonic()
        try:
            out = [FrameOutcome(job, error=_SESSION_LOST) for job in jobs]
            live = [i for i, job in enumerate(jobs)
                    if (sess := self._job_session.get(id(job))) is not None and sess.live]
            for i in [i for i in live if self._superseded(jobs[i].frame)]:
                out[i] = FrameOutcome(jobs[i], error=_SUPERSEDED)
                live.remove(i)
            if live:
                self.load.batch_started(len(live), started)
                for i, outcome in zip(live, self.pipeline.run_batch([jobs[i] for i in live]), strict=True):
                    out[i] = outcome
                waited = sum(started - jobs[i].received_s for i in live) / len(live)
                # the batch's time as its frames see it: from when the worker was free and one of
                # them was waiting (the event loop's hand-over between batches included) to its end
                began = min(started, max(self._batch_ended_s, min(jobs[i].received_s for i in live)))
                ended = self._batch_ended_s = time.monotonic()
                self.load.record_batch(self.pipeline.slot.current().name, len(live), began, ended, waited)
                for i in live:
                    job = jobs[i]
                    if job.admitted_s is not None and job.predicted_s is not None:
                        self.load.record_completion(job.predicted_s, ended - job.admitted_s)
            return out
        finally:
            self._batch_started_s = None

    def _superseded(self, frame: Frame) -> bool:
        return frame.latest_wins and self._latest_seq.get(frame.device, frame.seq) > frame.seq

    # -- per message -------------------------------------------------------------------

    async def _consume(self, sess: Connection) -> None:
        messages = aiter(sess.client.messages)
        while True:
            await self._in_flight.acquire()  # released when the message is finished
            try:
                message = await anext(messages)
                if not sess.live:  # aiomqtt hands out its local queue even after the connection dropped
                    raise SessionLost("connection lost; the local queue is left for redelivery")
            except BaseException:
                self._in_flight.release()
                raise
            assert sess.acker is not None  # a manual-ack session
            token = sess.acker.received(message)
            task = asyncio.create_task(self._handle(sess, token, message, time.monotonic()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _: self._in_flight.release())

    async def _handle(self, sess: Connection, token: int, message: aiomqtt.Message, received_s: float) -> None:
        """Finish one message: ack it, or (its publish not confirmed) end the session, never neither."""
        bind_context(device=_device_or_none(str(message.topic)))  # this task's log lines name the camera
        # The frame's trace (the device's traceparent user property, else a new one): on its result,
        # its spilled DC request and its hard examples.
        tracing.bind(tracing.from_mqtt(message.properties) or tracing.new_traceparent())
        try:
            await self._process(sess, message, received_s)
        except aiomqtt.MqttError as exc:
            self._abandon(sess, exc)
            return
        except Exception as exc:
            log.exception("internal error on %s", message.topic)
            try:
                await self._dead_letter(sess, str(message.topic), payload_bytes(message.payload),
                                        ContractError("internal_error", f"{type(exc).__name__}: {exc}"))
            except aiomqtt.MqttError as exc2:
                self._abandon(sess, exc2)
                return
        assert sess.acker is not None
        sess.acker.done(token)

    def _abandon(self, sess: Connection, exc: BaseException) -> None:
        """Leave the input unacked and end the session: the broker redelivers it next session."""
        self.metrics.abandoned.labels(STAGE, "session_lost").inc()
        if not sess.broken.is_set():
            log.warning("publish not confirmed (%s): ending the session, inputs left for redelivery", exc)
        sess.broken.set()

    async def _process(self, sess: Connection, message: aiomqtt.Message, received_s: float) -> None:
        if not sess.live:
            raise SessionLost("session ended before this message was handled")
        topic = str(message.topic)
        payload = payload_bytes(message.payload)
        self.metrics.received.labels(STAGE).inc()
        key = hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=16).digest()
        unsent = self.unsent.take(key)
        if unsent is not None:  # a redelivered input whose result was computed last session
            self.metrics.redelivered.labels(STAGE, "answered_from_unsent").inc()
            await self._publish_result(sess, key, unsent)
            return
        try:
            device = names.device_of(topic)  # the topic first: a bad device id is bad_device_id
            frame = decode_frame(payload, self.settings.vision.max_payload_bytes)
            if device != frame.device:
                raise ContractError("device_mismatch", f"topic device {device!r} != {frame.device!r}")
        except ContractError as exc:
            await self._dead_letter(sess, topic, payload, exc)
            return
        if frame.latest_wins and frame.seq > self._latest_seq.get(frame.device, -1):
            self._latest_seq[frame.device] = frame.seq
        o = self.settings.offload
        request = Request(deadline_of(frame.deadline_ms, frame.captured_at_ms, o.default_deadline_ms), frame.fallback)
        raw_s: float | None = None  # the model's predicted completion, before the bias correction
        if o.admission and request.deadline_ms is not None:  # the placement decision (placement.edge)
            model = self.pipeline.slot.current().name
            raw_s = self.load.predict_s(model, self.batcher.depth, self.batcher.max_batch_size, corrected=False)
            predicted_s = None if raw_s is None else self.load.corrected(raw_s)
            dc = self.dc
            view = View(None if predicted_s is None else 1000.0 * predicted_s,
                        None if dc is None or frame.fallback else dc.latency_ms(), o.margin_ms)
            decision = decide(request, view, time.time() * 1000.0)
            self.load.record_admission(not isinstance(decision, Serve))
            if isinstance(decision, Spill) and dc is not None:
                served = await dc.submit(frame)
                if served is not None:
                    outcome = FrameOutcome(FrameJob(frame, received_s), served)
                    wan = len(payload) + len(encode_result(served))
                    self.metrics.wan_bytes.inc(wan)
                    self.metrics.offload_cost.labels("dc").inc(request_cost(
                        o, dc_s=served.timing.inference_ms / 1000.0, wan_bytes=wan).total)
                    await self._publish_result(sess, key, _Unsent(names.vision_results(frame.device),
                                                                  encode_result(served), outcome))
                    return
                decision = on_dc_failure(decision)
            if isinstance(decision, Return):
                await self._return(sess, key, frame, decision.reason)
                return
            if isinstance(decision, Shed):
                await self._shed(sess, key, FrameJob(frame, received_s), decision.reason)
                return
        job = FrameJob(frame, received_s)
        if raw_s is not None:
            job.admitted_s, job.predicted_s = time.monotonic(), raw_s
        batched = await self._through_batcher(sess, key, job, topic, payload)
        if batched is None:  # shed, returned or dead-lettered on the way
            return
        if batched.error is _SESSION_LOST:
            raise SessionLost("session ended while the frame waited for its batch")
        if batched.error is _SUPERSEDED:
            await self._shed(sess, key, batched.job, "superseded")
            return
        if batched.error is not None:
            await self._dead_letter(sess, topic, payload, batched.error)
            return
        result = batched.result
        assert result is not None
        unsent = _Unsent(names.vision_results(frame.device), encode_result(result), batched)
        await self._publish_result(sess, key, unsent)

    async def _through_batcher(self, sess: Connection, key: bytes, job: FrameJob, topic: str,
                               payload: bytes) -> FrameOutcome | None:
        """The frame's batch outcome; None when it was shed or returned (overload) or dead-lettered
        (bad image).

        Up to ``vision.max_batch_size`` frames are preprocessed as they arrive (decode + the
        detector's per-frame step, in the preprocessing threads), so the batch's critical path
        is only the batched work; frames beyond that wait as bytes and their batch decodes them,
        which bounds the decoded images held to about two batches.
        """
        ahead = not self._ahead.locked()
        if ahead:
            await self._ahead.acquire()  # free now: returns at once
        try:
            if ahead:
                loop = asyncio.get_running_loop()
                job.pre = await loop.run_in_executor(self.pipeline.pool, self.pipeline.preprocess, job.frame)
                if job.pre.error is not None:
                    await self._dead_letter(sess, topic, payload, job.pre.error)
                    return None
            try:
                future = self.batcher.submit_nowait(job)
            except Overloaded:
                job.pre = None
                decision = on_overload(Request(None, job.frame.fallback))
                if isinstance(decision, Return):
                    await self._return(sess, key, job.frame, decision.reason)
                    return None
                self._flood_log.warning("shed", "overload: shed frame %s/%d (counted in edge_messages_shed)",
                                        job.frame.device, job.frame.seq)
                await self._shed(sess, key, job, decision.reason)
                return None
            self._job_session[id(job)] = sess
            try:
                self.metrics.queue_depth.labels(STAGE).set(self.batcher.depth)
                return await future
            finally:
                self._job_session.pop(id(job), None)
                job.pre = None  # the decoded image is not needed past its batch (crops keep what they use)
        finally:
            if ahead:
                self._ahead.release()

    async def _publish_result(self, sess: Connection, key: bytes, unsent: _Unsent) -> None:
        try:
            await publish_confirmed(sess.client, unsent.topic, unsent.payload,
                                    deadline_s=self.settings.delivery.publish_deadline_s,
                                    properties=tracing.mqtt_properties(tracing.child(tracing.current())))
        except aiomqtt.MqttError:
            self.unsent.keep(key, unsent)  # the redelivered input gets this result, not a recomputation
            raise
        if unsent.outcome is None:  # a frame return: not an outcome
            return
        result = unsent.outcome.result
        assert result is not None
        if self.settings.vision.publish_thumbnails and result.outcome == "served":
            await self._publish_thumbnail(sess, unsent.outcome.job.frame)
        m = self.metrics
        m.published.labels(STAGE).inc()
        m.outcomes.labels(STAGE, result.outcome, result.served_by).inc()
        if result.served_by != "edge":  # shed, or served in the DC: not an edge inference
            return
        m.latency.labels(STAGE).observe(time.monotonic() - unsent.outcome.job.received_s)
        m.offload_cost.labels("edge").inc(request_cost(
            self.settings.offload, edge_s=(result.timing.preprocess_ms + result.timing.inference_ms) / 1000.0
            / max(result.timing.batch_size, 1)).total)
        m.batch_size.labels(STAGE).observe(result.timing.batch_size)
        m.inference.labels(STAGE).observe(result.timing.inference_ms / 1000.0)
        for face in result.faces:
            m.faces.labels(face.label).inc()
        if self.on_outcome is not None:
            self.on_outcome(unsent.outcome)

    async def _publish_thumbnail(self, sess: Connection, frame: Frame) -> None:
        """Opt-in: a small JPEG of a served frame for the archive's camera tile (topics.thumbnail)."""
        v = self.settings.vision
        try:
            jpeg, w, h, fw, fh = await asyncio.get_running_loop().run_in_executor(
                self.pipeline.pool, thumbnail_jpeg, frame.data, frame.encoding, v.max_image_pixels,
                v.thumbnail_max_side)
        except ContractError as exc:  # the frame was served, so it decodes; counted if not
            self.metrics.rejected.labels("thumbnail", exc.reason).inc()
            return
        await publish_confirmed(sess.client, names.thumbnail(frame.device), encode_thumbnail(Thumbnail(
            frame.device, frame.seq, w, h, fw, fh, jpeg, case_id=frame.case_id)),
            deadline_s=self.settings.delivery.publish_deadline_s)
        self.metrics.thumbnails.inc()

    async def _shed(self, sess: Connection, key: bytes, job: FrameJob, reason: str) -> None:
        """Not served: the request's outcome (shed, with its reason) is published on its result topic."""
        self.metrics.shed.labels(STAGE, reason).inc()
        loaded = self.pipeline.slot.current()
        waited_ms = 1000.0 * (time.monotonic() - job.received_s)
        result = shed_result(job.frame, self.settings.edge.node_name, ModelRef(loaded.name, loaded.version),
                             reason, waited_ms)
        await self._publish_result(sess, key, _Unsent(names.vision_results(job.frame.device),
                                                      encode_result(result), FrameOutcome(job, result)))

    async def _return(self, sess: Connection, key: bytes, frame: Frame, reason: str) -> None:
        """A ``fallback`` frame the edge would shed goes back to its device, which serves it and
        publishes its outcome: the edge publishes none (a return is not an outcome). A return whose
        publish is not confirmed is kept like a result: the redelivered frame gets the same return,
        not a new decision (which could serve it here too: two outcomes)."""
        self.metrics.returned.labels(STAGE, reason).inc()
        ret = FrameReturn(frame.device, frame.seq, frame.captured_at_ms, self.settings.edge.node_name, reason, now_ms())
        await self._publish_result(sess, key, _Unsent(names.frame_returns(frame.device), encode_frame_return(ret),
                                                      None))

    async def _dead_letter(self, sess: Connection, topic: str, payload: bytes, error: ContractError) -> None:
        self.metrics.rejected.labels(STAGE, error.reason).inc()
        log.info("dead-letter %s: %s", topic, error)
        record = DeadLetter(stage=STAGE, reason=error.reason, detail=error.detail, topic=topic,
                            payload=payload, payload_size=len(payload),
                            node=self.settings.edge.node_name, received_at_ms=now_ms())
        await publish_confirmed(sess.client, names.dead_letter(STAGE), encode_dead_letter(record),
                                deadline_s=self.settings.delivery.publish_deadline_s)
