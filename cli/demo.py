"""``edge-offload demo``: the whole pipeline on this machine, on embedded defaults.

Starts a real Mosquitto and a Kafka-protocol broker (Tansu) on free ports, the DC trainer
and an edge node (vision + speech + hard-example mining + model updates). The Mosquitto runs the
production EventBus configuration (:class:`cli.brokers.SecureMosquitto`): TLS, a password per user
and the shipped ACL file; each party logs in as its own user (``edge-agent``, ``operator``, the
device ids). A camera publishes the real photos under policy ``auto`` (it places each frame on
the edge or on itself from the edge's published load); a field unit streams a two-voice radio
conversation (espeak-ng, G.711 over RTP, 2 % packet loss); an operator follows the result topics;
hard examples travel over Kafka into the trainer's sample store. The archive (broker user
``archive``) stores every result in a store that outlives the demo (``store_url``), and the
operator console serves it (``console_url``). Prints readable result lines
and ends with one JSON summary line (``broker_security``: ``tls+acl``, or ``none`` with
``secure=False``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from archive.console import RunningConsole
from cli.brokers import MosquittoBroker, SecureMosquitto, TansuBroker
from cli.tail import format_line
from cloud_trainer.service import Trainer
from common.settings import EdgeSettings, KafkaSettings, MqttSettings, Settings
from devices.audio import Impairments, LegSource, stream_audio
from devices.camera import photo_frames, run_camera
from devices.placer import DevicePlacer
from edge_agent.app import EdgeNode
from edge_agent.mqtt import make_client
from topics import names
from topics.codec import payload_bytes
from topics.transcript import decode_segment
from topics.vision import decode_result

__all__ = ["DemoSummary", "run_demo"]

log = logging.getLogger("cli.demo")

CAMERA = "cam-demo"
FIELD_UNIT = "tap-demo"
CONVERSATION = "call-demo"
CASE = "case-demo"  # the case (warrant) the demo's camera and field unit belong to


class _Archive:
    """The demo's archive service and operator console (see docs/operator-console.md)."""

    def __init__(self, s: Settings) -> None:
        from archive.service import ArchiveService

        store_path = s.cache_dir / "demo" / "archive.sqlite3"
        for old in store_path.parent.glob(f"{store_path.name}*"):  # each demo starts a fresh store (kept after it)
            old.unlink()
        self.url = f"sqlite:///{store_path}"
        self.service = ArchiveService(s, store_url=self.url)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.service.run(self.stop))
        self.console: RunningConsole | None = None

    async def start(self, s: Settings) -> None:
        import secrets

        from archive.cli import hash_password
        from archive.console import start_console

        await asyncio.wait_for(self.service.ready.wait(), 30)
        password = secrets.token_urlsafe(9)
        store = self.service.store()
        await asyncio.to_thread(store.add_operator, "demo", hash_password(password), "operator", [CASE])
        self.console = await start_console(s, store)
        print(f"demo: console {self.console.url} (log in as demo / {password}); store {self.url}", flush=True)

    async def finish(self, summary: DemoSummary, segments: int) -> None:
        """Wait (30 s at most) until the store holds what the operator saw; fill the summary; stop."""
        store = self.service.store()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            counts = await asyncio.to_thread(store.counts)
            if counts["segments"] >= segments and counts["results"] >= summary.results:
                break
            await asyncio.sleep(0.1)
        counts = await asyncio.to_thread(store.counts)
        summary.store_url, summary.stored_segments, summary.stored_results = self.url, counts["segments"], counts[
            "results"]
        summary.console_url = self.console.url if self.console is not None else ""
        if self.console is not None:
            await self.console.stop()
        self.stop.set()
        await self.task


@dataclass
class DemoSummary:
    frames_sent: int = 0
    results: int = 0
    served_by: dict[str, int] = field(default_factory=dict)  # edge / device / none (shed)
    placements: dict[str, int] = field(default_factory=dict)  # the camera's auto choices
    faces: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    speech_turns_sent: int = 0
    transcript_segments: int = 0
    speakers: list[str] = field(default_factory=list)
    wer: float | None = None
    hard_examples_sent: int = 0
    dc_samples_stored: int = 0
    serving_versions: dict[str, str] = field(default_factory=dict)
    broker_security: str = "tls+acl"
    store_url: str = ""
    stored_segments: int = 0
    stored_results: int = 0
    console_url: str = ""
    seconds: float = 0.0

    def as_json(self) -> str:
        return json.dumps(self.__dict__)


def _conversation(seconds: float) -> tuple[list[str], dict[str, np.ndarray]]:
    """As many radio turns (alternating voices) as fit in about ``seconds`` of audio."""
    from sim.speech_corpus import SENTENCES, build_conversation, to_8k_int16

    n = max(2, min(len(SENTENCES), int(seconds / 3.2)))
    conv = build_conversation(SENTENCES[:n])
    return [t.text for t in conv.turns], {leg: to_8k_int16(a) for leg, a in conv.legs.items()}


async def run_demo(settings: Settings, seconds: float, fps: float = 10.0, show: int = 4,
                   secure: bool = True) -> DemoSummary:
    """Run vision and speech end to end for about ``seconds`` and summarise what came out.
    ``secure=False``: an anonymous plain-TCP Mosquitto instead of the production configuration."""
    from sim.scoring import wer
    from sim.speech_corpus import SENTENCES, espeak_available

    summary = DemoSummary(broker_security=SecureMosquitto.security if secure else "none")
    latencies: list[float] = []
    labels: Counter[str] = Counter()
    served_by: Counter[str] = Counter()
    segments = []
    t0 = time.monotonic()
    broker = SecureMosquitto(devices=(CAMERA, FIELD_UNIT)) if secure else MosquittoBroker()

    def login(user: str, client_id: str) -> MqttSettings:
        if isinstance(broker, SecureMosquitto):
            return broker.login(user, client_id=client_id)
        return MqttSettings(host="127.0.0.1", port=broker.port, client_id=client_id)

    with broker, TansuBroker() as kafka_broker, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "radio-corpus.txt"
        corpus.write_text("\n".join(SENTENCES) + "\n")
        s = settings.model_copy(deep=True, update={
            "mqtt": login("edge-agent", "demo-edge-agent"),
            "kafka": KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers),
            "edge": EdgeSettings(node_name="demo-edge", http_host="127.0.0.1", http_port=0,
                                 speech=espeak_available()),
        })
        s.speech.corpus_path = corpus  # the edge's vocabulary prompt for this radio net
        s.speech.idle_close_s = 2.0
        s.outbox.path = work / "edge-outbox.sqlite3"
        s.updates.work_dir = work / "edge-models"
        t = s.trainer
        t.store_url, t.registry_dir = f"sqlite:///{work}/samples.sqlite3", work / "registry"
        t.keys_dir, t.work_dir, t.asr.enabled = work / "keys", work / "trainer-work", False
        trainer = Trainer(t, s.kafka, s.cache_dir)
        s.updates.trusted_key_files = [t.keys_dir / "signing.pub"]  # the edge trusts this DC's key
        node = EdgeNode(s)
        stop_node = asyncio.Event()
        trainer_task = asyncio.create_task(trainer.run(stop_node))
        node_task = asyncio.create_task(node.run(stop_node))
        await asyncio.wait_for(node.started.wait(), 120)
        if node.vision is not None:
            await asyncio.wait_for(node.vision.connected.wait(), 30)
        if node.speech is not None:
            await asyncio.wait_for(node.speech.connected.wait(), 30)
        print(f"demo: mosquitto {broker.url} ({summary.broker_security}), kafka {kafka_broker.bootstrap_servers}; "
              f"edge node up (metrics http://127.0.0.1:{node.health.port}/metrics)", flush=True)
        s_archive = s.model_copy(update={"mqtt": login("archive", "demo-archive")})
        archive = _Archive(s_archive)
        await archive.start(s_archive)

        script: list[str] = []
        legs: dict[str, np.ndarray] = {}
        if node.speech is not None:
            script, legs = await asyncio.to_thread(_conversation, seconds)
            summary.speech_turns_sent = len(script)
        operator = make_client(login("operator", "demo-operator"), persistent=False, manual_ack=False)
        placer = DevicePlacer("auto", s.device_profile, s.cache_dir, CAMERA)
        images = photo_frames(s.cache_dir)
        loop = asyncio.get_running_loop()
        async with operator:
            for topic in (names.vision_results(CAMERA), names.dead_letter("vision"), names.dead_letter("audio"),
                          names.transcript(CONVERSATION)):
                await operator.subscribe(topic, qos=1)
            camera = loop.run_in_executor(None, lambda: run_camera(
                "127.0.0.1", broker.port, CAMERA, images, fps=fps, seconds=seconds,
                security=login(CAMERA, f"camera-{CAMERA}"), placer=placer, edge_node=s.edge.node_name,
                case_id=CASE))
            field_unit = None
            if legs:
                sources = [LegSource(name=leg, samples=audio) for leg, audio in legs.items()]
                field_unit = loop.run_in_executor(None, lambda: stream_audio(
                    "127.0.0.1", broker.port, device=FIELD_UNIT, conversation=CONVERSATION, legs=sources,
                    speed=1.0, impairments=Impairments(loss=0.02), seed=1,
                    security=login(FIELD_UNIT, f"audio-{FIELD_UNIT}"), case_id=CASE))
            conversation_done = (asyncio.ensure_future(node.speech.engine.conversation_closed())
                                 if node.speech is not None and node.speech.engine is not None else None)
            shown = Counter[str]()
            progress = asyncio.Event()
            expected_segments: list[int] = []

            async def read() -> None:
                async for message in operator.messages:
                    topic = str(message.topic)
                    payload = payload_bytes(message.payload)
                    if topic in (names.dead_letter("vision"), names.dead_letter("audio")):
                        summary.errors += 1
                    elif topic == names.transcript(CONVERSATION):
                        segments.append(decode_segment(payload))
                        print("  " + format_line(topic, payload), flush=True)
                    else:
                        result = decode_result(payload)
                        summary.results += 1
                        served_by[result.served_by] += 1
                        summary.faces += len(result.faces)
                        labels.update(f.label for f in result.faces)
                        latencies.append(time.time() * 1000 - result.captured_at_ms)
                        if shown["vision"] < show:
                            shown["vision"] += 1
                            print("  " + format_line(topic, payload), flush=True)
                    progress.set()

            def complete() -> bool:
                vision_done = summary.results + summary.errors >= summary.frames_sent
                speech_done = not expected_segments or len(segments) >= expected_segments[0]
                return vision_done and speech_done

            async def wait_complete() -> None:
                while not complete():
                    progress.clear()
                    await progress.wait()

            reader = asyncio.create_task(read())
            stats = await camera
            summary.frames_sent = stats.frames_sent
            summary.placements = dict(placer.stats.placements)
            try:
                if field_unit is not None and conversation_done is not None:
                    await field_unit
                    _, n_segments = await asyncio.wait_for(conversation_done, 60)
                    expected_segments.append(n_segments)
                await asyncio.wait_for(wait_complete(), 60)
            except TimeoutError:
                log.warning("results still missing after 60 s")
            finally:
                reader.cancel()
        if node.outbox is not None and node.forwarder is not None:  # let the outbox drain to the DC
            outbox = node.outbox
            try:
                await asyncio.wait_for(node.forwarder.wait_until(lambda: outbox.pending == 0), 30)
                sent, consumer = outbox.stats.sent, trainer.consumer
                if consumer is not None:
                    await asyncio.wait_for(consumer.wait_until(lambda: consumer.stats.stored >= sent), 30)
            except TimeoutError:
                log.warning("hard examples still on their way to the DC")
            summary.hard_examples_sent = outbox.stats.sent
        if trainer.store is not None:
            models = (names.FER_MODEL, names.ASR_MODEL)
            summary.dc_samples_stored = sum([await trainer.store.count(name) for name in models])
        if node.vision is not None:
            current = node.vision.pipeline.slot.current()
            summary.serving_versions[current.name] = current.version
        if node.asr_slot is not None:
            asr = node.asr_slot.current()
            summary.serving_versions[asr.name] = asr.version
        await archive.finish(summary, len(segments))
        stop_node.set()
        await node_task
        await trainer_task
    summary.seconds = round(time.monotonic() - t0, 2)
    summary.labels = dict(labels.most_common())
    summary.served_by = dict(served_by.most_common())
    if latencies:
        summary.p50_ms = round(float(np.percentile(latencies, 50)), 2)
        summary.p99_ms = round(float(np.percentile(latencies, 99)), 2)
    summary.transcript_segments = len(segments)
    summary.speakers = sorted({seg.speaker for seg in segments})
    if script:
        spoken = sorted(segments, key=lambda seg: seg.start_s)  # legs finish in any order
        summary.wer = round(wer([" ".join(script)], [" ".join(seg.text for seg in spoken)]), 3)
    return summary
