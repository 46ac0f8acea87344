"""One edge node process: vision agent, speech service and the DC loop's edge side.

- vision (:class:`VisionService`) and speech (:class:`SpeechService`) serve MQTT;
- hard-example mining judges every result (in a one-thread executor, off the event loop)
  and puts hard cases into the durable outbox, which :class:`KafkaForwarder` drains to
  the DC with acks=all;
- :class:`ModelUpdater` follows the model-updates topic and hot-swaps verified versions
  into the model slots that vision and speech read per batch / per utterance;
- one health endpoint: ``/readyz`` is ready when every enabled part is.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import tracing
from common.component import Component, numbers, run_components
from common.logs import bind_context
from common.runtime import freeze_loaded_objects
from common.settings import Settings
from edge_agent.dc_spill import DcSpill
from edge_agent.hard_examples import HardExampleReporter, speech_pcm
from edge_agent.health import HealthServer
from edge_agent.metrics import EdgeMetrics, NodeCollector
from edge_agent.mining import MiningPolicy
from edge_agent.model_handlers import asr_handler, fer_handler
from edge_agent.outbox import KafkaForwarder, Outbox
from edge_agent.speech.pipeline import Utterance
from edge_agent.speech.revisions import RevisionFollower
from edge_agent.speech.service import SpeechService, default_asr, register_metrics, segment_traceparent
from edge_agent.speech.stream import SAMPLE_RATE
from edge_agent.updates import ModelHandler, ModelUpdater, Refusal
from edge_agent.vision.service import VisionService
from inference.model_slot import Loaded, ModelSlot
from inference.vision import FrameOutcome, build_vision_pipeline
from models.edge_asr import EdgeAsr
from topics import names
from topics.codec import now_ms
from topics.dc import ModelUpdate
from topics.names import ASR_MODEL

__all__ = ["EdgeNode"]

log = logging.getLogger("edge_agent")


class EdgeNode:
    """Runs what ``settings.edge`` enables; ``/readyz`` is ready when every part is.

    ``asr``: the starting speech model (default: the one ``settings.speech`` names, see
    :func:`default_asr`); ``on_applied`` / ``on_refused`` observe model updates."""

    def __init__(self, settings: Settings, *, asr: EdgeAsr | None = None,
                 on_applied: Callable[[ModelUpdate], None] | None = None,
                 on_refused: Callable[[Refusal], None] | None = None) -> None:
        self.settings = settings
        self._starting_asr = asr
        self._on_applied = on_applied
        self._on_refused = on_refused
        self.metrics = EdgeMetrics()
        self.vision: VisionService | None = None
        self.dc_spill: DcSpill | None = None
        self.speech: SpeechService | None = None
        self.asr_slot: ModelSlot[EdgeAsr] | None = None
        self.outbox: Outbox | None = None
        self.forwarder: KafkaForwarder | None = None
        self.reporter: HardExampleReporter | None = None
        self.updater: ModelUpdater | None = None
        self.revisions: RevisionFollower | None = None
        self._mining_pool = ThreadPoolExecutor(1, thread_name_prefix="mining")
        self.metrics.registry.register(NodeCollector(
            outbox=lambda: self.outbox, forwarder=lambda: self.forwarder, updater=lambda: self.updater,
            policy=lambda: self.reporter.policy if self.reporter is not None else None))
        self.handlers: dict[str, ModelHandler[Any]] = {}
        self.health = HealthServer(settings.edge.http_host, settings.edge.http_port,
                                   self.metrics.registry, self.ready, self.live)
        self.started = asyncio.Event()
        self.components: list[Component] = []  # in start order; run together by run()
        self.frozen_objects = 0  # objects moved out of GC scans once the models are loaded

    def ready(self) -> bool:
        """Started, and every component serves (those that need only Kafka always do)."""
        return self.started.is_set() and all(c.ready() for c in self.components)

    def live(self) -> bool:
        """Liveness: no component is stuck with work pending (see ``delivery.liveness_stall_s``)."""
        return all(c.live() for c in self.components)

    def stats(self) -> dict[str, dict[str, float]]:
        """Every component's figures, by component name."""
        return {c.name: numbers(c.stats) for c in self.components}

    def _mine(self, outcome: FrameOutcome) -> None:
        """Hand a published result to the miner, off the event loop (serial, never blocks it)."""
        if self.reporter is not None and outcome.result is not None and outcome.probs is not None:
            self._mining_pool.submit(contextvars.copy_context().run,  # the frame's trace goes along
                                     self.reporter.offer_faces, outcome.result, outcome.crops, outcome.probs)

    def mine_speech(self, topic: str, utterance: Utterance) -> None:
        """Judge one finished utterance by its calibrated confidence (called in a speech worker
        thread). A hard example carries the audio (with the neighbouring audio the leg had at
        hand: ``Utterance.lead``/``tail``), the edge hypothesis, the stream
        ``conversation.leg``, the utterance number and the serving model's name/version."""
        if self.reporter is None or not utterance.result.words:
            return
        pcm, lead_s, tail_s = speech_pcm(utterance.samples, utterance.lead, utterance.tail, SAMPLE_RATE)
        device, conversation, _ = names.parse_audio(topic)
        self.reporter.offer_speech(
            device=device, stream=f"{conversation}.{utterance.leg}",
            seq=utterance.utterance, model=ASR_MODEL, model_version=utterance.model.version,
            pcm=pcm, sample_rate=SAMPLE_RATE, text=utterance.result.text,
            word_confidences=[utterance.result.confidence],
            captured_at_ms=now_ms(), lead_s=lead_s, tail_s=tail_s,
            traceparent=tracing.child(segment_traceparent(conversation, utterance.leg, utterance.utterance)))

    def _refused(self, refusal: Refusal) -> None:
        log.debug("model update refused: %s", refusal)  # ModelUpdater logs and counts it
        if self._on_refused is not None:
            self._on_refused(refusal)

    def _applied(self, update: ModelUpdate) -> None:
        """A hot swap: ``edge_model_info`` follows every slot."""
        self.export_models()
        if self._on_applied is not None:
            self._on_applied(update)

    def export_models(self) -> None:
        """``edge_model_info`` names the version every model slot serves now (old series removed)."""
        for handler in self.handlers.values():
            current = handler.slot.current()
            self.metrics.set_model(current.name, current.version)

    async def run(self, stop: asyncio.Event) -> None:
        """Build the components ``settings`` enables (models loaded), then run them all until ``stop``."""
        s = self.settings
        node = s.edge.node_name
        bind_context(node=node)  # every task started below logs with node=...
        await self.health.start()
        handlers = self.handlers
        components = self.components
        try:
            if s.mining.enabled:
                self.outbox = Outbox(s.outbox)
                self.reporter = HardExampleReporter(MiningPolicy(s.mining), self.outbox, node)
                self.forwarder = KafkaForwarder(self.outbox, s.kafka, s.outbox)
                components.append(self.forwarder)
            if s.edge.vision:
                pipeline = await asyncio.to_thread(build_vision_pipeline, s)
                if s.offload.dc_spill:  # frames that would miss their deadline go to the DC workers
                    self.dc_spill = DcSpill(s.kafka, s.offload, node)
                    components.append(self.dc_spill)
                self.vision = VisionService(s, pipeline, self.metrics, on_outcome=self._mine, dc=self.dc_spill)
                handlers[pipeline.slot.current().name] = fer_handler(
                    pipeline.slot, s.edge.device, s.vision.max_batch_size)
                components.append(self.vision)
            if s.edge.speech:
                asr = (self._starting_asr if self._starting_asr is not None
                       else await asyncio.to_thread(default_asr, s.speech, s.cache_dir))
                vocab = asr.vocabulary
                self.asr_slot = ModelSlot(Loaded(asr, vocab.name, vocab.version))
                slot = self.asr_slot
                handlers[vocab.name] = asr_handler(slot)
                self.speech = SpeechService(s, asr=lambda: slot.current().model, on_utterance=self.mine_speech)
                register_metrics(self.speech.counters, self.metrics.registry)
                await self.speech.load()
                components.append(self.speech)
            self.export_models()
            if self.speech is not None and s.mining.enabled and s.speech.follow_revisions:
                self.revisions = RevisionFollower(s.kafka, node, self.speech.publish_revision)
                components.append(self.revisions)
            if s.updates.enabled and handlers:
                self.updater = ModelUpdater(s.updates, s.kafka, node, handlers, on_refused=self._refused,
                                            on_applied=self._applied)
                components.append(self.updater)
            self.frozen_objects = freeze_loaded_objects()  # models loaded: keep GC scans short
            self.started.set()
            log.info("edge node %s up (%s), http on %d", node, ", ".join(c.name for c in components),
                     self.health.port)
            await run_components(components, stop)
        finally:
            if self.speech is not None:
                self.speech.close()  # done by its run; here too if it never ran
            if self.asr_slot is not None:  # every vocabulary version shares these Whisper threads
                self.asr_slot.current().model.close()
            if self.vision is not None:
                self.vision.pipeline.close()
            self._mining_pool.shutdown(wait=True)
            if self.outbox is not None:
                self.outbox.close()
            await self.health.stop()
