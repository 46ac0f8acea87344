"""The whole DC loop in one process, for the end-to-end test and ``bench.loop``.

Edge side: an :class:`~edge_agent.app.EdgeNode` built from settings (the vision pipeline with
FER in a model slot, the ASR slot, hard-example mining, the SQLite outbox and its Kafka
forwarder, the model updater), on its own Mosquitto; the harness drives its vision pipeline
and its miner directly. DC side: the real :class:`cloud_trainer.service.Trainer`. Everything
talks over a real Kafka-protocol broker. The test and the benchmark drive it with the shifted
camera domain and domain-vocabulary speech and measure quality before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.domain_speech import BASE_SENTENCES, speak
from bench.shifted_domain import FaceSources, write_replay_dir
from cli.brokers import MosquittoBroker
from cloud_trainer.asr_adapt import corpus_wer, transcribe
from cloud_trainer.publish import publish_labels
from cloud_trainer.service import Trainer
from common.dc_settings import (
    FilterSpec,
    HardExampleSettings,
    ModelMiningSettings,
    OutboxSettings,
    UpdateSettings,
)
from common.settings import EdgeSettings, KafkaSettings, MqttSettings, Settings, SpeechServiceConfig
from common.trainer_settings import AsrAdaptSettings, FerTrainSettings, TrainerSettings
from edge_agent.app import EdgeNode
from edge_agent.hard_examples import HardExampleReporter
from edge_agent.outbox import Outbox
from edge_agent.updates import ModelUpdater, Refusal
from inference.model_slot import ModelSlot
from inference.vision import FrameJob, VisionPipeline
from models.edge_asr import EdgeAsr, load_edge_asr, vocabulary_from_bytes
from models.fer_teacher import TeacherFer, load_teacher
from topics.dc import Label
from topics.vision import Frame

__all__ = ["LoopConfig", "Traffic", "DcLoop"]

NODE = "edge-e2e"
ASR_BASE_VERSION = "base-vocab"


@dataclass(frozen=True, slots=True)
class LoopConfig:
    fer_min_samples: int = 120
    asr_min_samples: int = 8
    epochs: int = 3
    replay_crops: int = 60
    fer_min_gain: float = 0.05
    asr_min_gain: float = 0.05


@dataclass(slots=True)
class Traffic:
    """Continuous inference while updates land: what was asked, answered, and by which version."""

    submitted: int = 0
    answered: int = 0
    errors: int = 0
    versions: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        return self.submitted - self.answered


class DcLoop:
    """See the module docstring. Build with :meth:`running`."""

    def __init__(self, workdir: Path, bootstrap: str, mqtt_port: int, cache_dir: Path, config: LoopConfig) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self.sources = FaceSources.load(cache_dir)
        replay_dir = write_replay_dir(self.sources, workdir / "replay", config.replay_crops, seed=7)
        self.trainer_settings = TrainerSettings(
            group_id="trainer-e2e", store_url=f"sqlite:///{workdir}/samples.sqlite3",
            registry_dir=workdir / "registry", keys_dir=workdir / "keys", work_dir=workdir / "work",
            torch_threads=1, retrain_interval_s=3600, holdout_percent=30,
            fer=FerTrainSettings(retrain_min_samples=config.fer_min_samples, epochs=config.epochs,
                                 replay_dir=replay_dir, min_gain=config.fer_min_gain, min_holdout=10),
            asr=AsrAdaptSettings(retrain_min_samples=config.asr_min_samples, base_version=ASR_BASE_VERSION,
                                 base_sentences=list(BASE_SENTENCES), min_gain=config.asr_min_gain,
                                 min_holdout=2, revise=False, whisper_model="whisper_tiny_en"),
        )
        self.trainer = Trainer(self.trainer_settings, self.kafka, cache_dir)
        self.teacher: TeacherFer = load_teacher(cache_dir, "cpu")
        self.mqtt_port = mqtt_port
        self.mining = HardExampleSettings(models={
            "fer-mini-xception": ModelMiningSettings(
                filters=[FilterSpec(kind="threshold", threshold=0.7), FilterSpec(kind="margin", threshold=0.3)],
                rate_per_device_s=500, burst_per_device=1000),
            "whisper-vocab": ModelMiningSettings(
                filters=[FilterSpec(kind="threshold", threshold=0.8)], rate_per_device_s=50, burst_per_device=100),
        }, rate_total_s=1000, burst_total=2000, seed=1)
        self.workdir = workdir
        self.node: EdgeNode | None = None
        self.refusals: list[Refusal] = []
        self.applied_at: dict[str, float] = {}
        self.first_hard_at: float | None = None

    def edge_settings(self) -> Settings:
        """The edge node's settings: vision and speech on CPU, mining into the outbox, updates
        verified with the trainer's key, Whisper tiny as the ASR (its vocabulary comes from the
        trainer's registry)."""
        return Settings(
            cache_dir=self.cache_dir, kafka=self.kafka, mqtt=MqttSettings(port=self.mqtt_port),
            edge=EdgeSettings(node_name=NODE, device="cpu", http_host="127.0.0.1", http_port=0),
            speech=SpeechServiceConfig(asr_final_model="whisper_tiny_en", asr_partial_model=None, asr_device="cpu",
                                       asr_threads=1, follow_revisions=False),
            mining=self.mining,
            outbox=OutboxSettings(path=self.workdir / "outbox.sqlite3", backoff_max_s=0.5),
            updates=UpdateSettings(trusted_key_files=[self.trainer_settings.keys_dir / "signing.pub"],
                                   warmup_batches=1))

    async def _start(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        await self.trainer.setup()  # registers the base versions and makes the signing key
        base = self.trainer.registry.current(self.trainer_settings.asr.model)
        assert base is not None
        vocab = vocabulary_from_bytes(self.trainer.registry.artifact(base), base.name, base.version)
        settings = self.edge_settings()
        speech = settings.speech
        asr = await asyncio.to_thread(load_edge_asr, self.cache_dir, speech.asr_final_model, speech.asr_partial_model,
                                      device=speech.asr_device, cpu_threads=speech.asr_threads,
                                      parallel=speech.asr_parallel, vocabulary=vocab)
        self.node = EdgeNode(settings, asr=asr, on_refused=self.refusals.append,
                             on_applied=lambda u: self.applied_at.setdefault(u.name, time.monotonic()))
        tasks = [asyncio.create_task(self.node.run(stop), name="edge-node"),
                 asyncio.create_task(self.trainer.run(stop), name="trainer")]
        started = asyncio.create_task(self.node.started.wait())
        await asyncio.wait([started, tasks[0]], timeout=300, return_when=asyncio.FIRST_COMPLETED)
        if not self.node.started.is_set():
            started.cancel()
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks[0].result()  # the node's failure, if it failed
            raise TimeoutError("edge node did not start within 300 s")
        return tasks

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, workdir: Path, bootstrap: str, cache_dir: Path,
                      config: LoopConfig = LoopConfig()) -> AsyncIterator[DcLoop]:
        mqtt = await asyncio.to_thread(MosquittoBroker().start)
        try:
            loop = await asyncio.to_thread(cls, workdir, bootstrap, mqtt.port, cache_dir, config)
            stop = asyncio.Event()
            tasks = await loop._start(stop)
            try:
                yield loop
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
        finally:
            mqtt.close()

    # --- the edge node's parts ----------------------------------------------------------------

    def _node(self) -> EdgeNode:
        assert self.node is not None, "the loop is not running"
        return self.node

    @property
    def pipeline(self) -> VisionPipeline:
        vision = self._node().vision
        assert vision is not None
        return vision.pipeline

    @property
    def reporter(self) -> HardExampleReporter:
        reporter = self._node().reporter
        assert reporter is not None
        return reporter

    @property
    def outbox(self) -> Outbox:
        outbox = self._node().outbox
        assert outbox is not None
        return outbox

    @property
    def updater(self) -> ModelUpdater | None:
        return self._node().updater

    @property
    def asr_slot(self) -> ModelSlot[EdgeAsr] | None:
        return self._node().asr_slot

    # --- edge traffic -------------------------------------------------------------------------

    def _run_frames(self, frames: Sequence[Frame], batch: int = 16):  # type: ignore[no-untyped-def]
        outcomes = []
        for i in range(0, len(frames), batch):
            outcomes += self.pipeline.run_batch([FrameJob(f, time.monotonic()) for f in frames[i:i + batch]])
        return outcomes

    async def feed_frames(self, frames: Sequence[Frame]) -> int:
        """Run frames through the edge pipeline and mine them; return hard examples sent."""
        def work() -> int:
            sent = 0
            for o in self._run_frames(frames):
                if o.result is not None and o.result.faces:
                    n = self.reporter.offer_faces(o.result, o.crops, o.probs)
                    if n and self.first_hard_at is None:
                        self.first_hard_at = time.monotonic()
                    sent += n
            return sent
        return await asyncio.to_thread(work)

    async def fer_agreement(self, frames: Sequence[Frame]) -> tuple[float, int, set[str]]:
        """Share of detected faces where the serving edge model agrees with the teacher."""
        def work() -> tuple[float, int, set[str]]:
            crops, preds, versions = [], [], set()
            for o in self._run_frames(frames):
                if o.result is not None and o.result.faces:
                    crops += o.crops
                    preds += [int(np.argmax(p)) for p in o.probs]
                    versions.add(o.result.model.version)
            if not crops:
                return float("nan"), 0, versions
            teacher = self.teacher.predict(crops).argmax(axis=1)
            return float(np.mean(np.asarray(preds) == teacher)), len(crops), versions
        return await asyncio.to_thread(work)

    async def run_traffic(self, frames: Sequence[Frame], stop: asyncio.Event, traffic: Traffic,
                          frames_per_s: float = 40.0) -> None:
        """Serve batches of 4 frames at ``frames_per_s`` until ``stop``; every result must come
        back, naming its version."""
        i = 0
        while not stop.is_set():
            try:  # pacing, so live traffic leaves the trainer some CPU
                await asyncio.wait_for(stop.wait(), 4 / frames_per_s)
            except TimeoutError:
                pass
            chunk = [frames[(i + k) % len(frames)] for k in range(4)]
            i += 4
            traffic.submitted += len(chunk)
            try:
                outcomes = await asyncio.to_thread(self.pipeline.run_batch,
                                                   [FrameJob(f, time.monotonic()) for f in chunk])
            except Exception:
                traffic.errors += 1
                continue
            for o in outcomes:
                if o.result is not None:
                    traffic.answered += 1
                    traffic.versions.append(o.result.model.version)

    async def feed_speech(self, sentences: Sequence[str], first_seq: int = 0) -> dict[str, str]:
        """Decode utterances on the edge ASR, mine them by confidence; return key -> truth."""
        assert self.asr_slot is not None
        slot = self.asr_slot

        def work() -> dict[str, str]:
            loaded = slot.current()
            truth: dict[str, str] = {}
            for i, sentence in enumerate(sentences):
                audio = speak(sentence, i)
                result = loaded.model.decode_final(audio)
                pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
                seq = first_seq + i
                if self.reporter.offer_speech(
                        device="radio-1", stream="conv-1.leg1", seq=seq, model=loaded.name,
                        model_version=loaded.version, pcm=pcm, sample_rate=16000, text=result.text,
                        word_confidences=[result.confidence],
                        captured_at_ms=int(time.time() * 1000)):
                    truth[f"{loaded.name}|radio-1|conv-1.leg1|{seq}|0"] = sentence
            return truth
        return await asyncio.to_thread(work)

    async def label_speech(self, truth: dict[str, str]) -> None:
        """What an operator does with ``edge-offload label set``, for every sample."""
        now = int(time.time() * 1000)
        await publish_labels(self.kafka, [Label(k, t, "operator:e2e", now) for k, t in truth.items()])

    async def asr_wer(self, sentences: Sequence[str]) -> tuple[float, str]:
        """WER of the serving edge ASR (final model, serving vocabulary) on ``sentences``."""
        assert self.asr_slot is not None
        loaded = self.asr_slot.current()

        def work() -> float:
            clips = [speak(s, i) for i, s in enumerate(sentences)]
            asr = loaded.model
            return corpus_wer(list(sentences), transcribe(asr.final.asr, clips, asr.vocabulary.prompt or None))
        return await asyncio.to_thread(work), loaded.version
