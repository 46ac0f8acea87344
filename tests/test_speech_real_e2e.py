"""A real two-leg call (human recordings, sim.real_speech dev clips) through Mosquitto, the edge,
Tansu and the DC: the final transcript (the edge's segments with the DC's published revisions)
is no worse than the edge's, leg by leg."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from cli.brokers import MosquittoBroker, TansuBroker
from cloud_trainer.service import Trainer
from common.settings import KafkaSettings
from common.trainer_settings import AsrAdaptSettings, FerTrainSettings, TrainerSettings
from devices.audio import Impairments, LegSource, stream_audio
from edge_agent.app import EdgeNode
from sim.real_speech import build_call, load_clips
from sim.scoring import wer
from sim.speech_corpus import to_8k_int16
from tests.edge_helpers import speech_node_settings
from topics import names
from topics.transcript import TranscriptSegment, decode_segment

pytestmark = [pytest.mark.integration]

# Party a: one speaker's spontaneous and high-pitched speech, a filler turn; party b: a LibriVox
# reader and a card-game command, each on its own leg.
PARTY_A = ["mfa_thoughts", "acoustic_corpus_4", "acoustic_corpus_5", "falsetto"]
PARTY_B = ["librivox_0890", "cards_003"]


async def test_a_real_call_is_never_made_worse_by_the_dc(
        mosquitto: MosquittoBroker, own_kafka: TansuBroker, cache_dir: Path, tmp_path: Path) -> None:
    conversation, device = "real-call-1", "tap-real"
    call = build_call(load_clips(cache_dir), PARTY_A, PARTY_B, seed=5)
    kafka = KafkaSettings(bootstrap_servers=own_kafka.bootstrap_servers)
    trainer = Trainer(TrainerSettings(
        group_id="real-e2e", store_url=f"sqlite:///{tmp_path}/samples.sqlite3", registry_dir=tmp_path / "registry",
        keys_dir=tmp_path / "keys", work_dir=tmp_path / "work", torch_threads=1,
        fer=FerTrainSettings(enabled=False),
        asr=AsrAdaptSettings(retrain_min_samples=1000, revise=True, revise_models=["base", "tiny.en"])),
        kafka, cache_dir)
    node = EdgeNode(speech_node_settings(mosquitto.port, kafka, tmp_path, "real"))  # every segment to the DC
    stop = asyncio.Event()
    tasks = [asyncio.create_task(trainer.run(stop)), asyncio.create_task(node.run(stop))]
    seen: list[TranscriptSegment] = []
    arrived = asyncio.Condition()
    try:
        await asyncio.wait_for(node.started.wait(), 60)
        assert node.speech is not None and node.revisions is not None
        await asyncio.wait_for(node.speech.connected.wait(), 20)
        await asyncio.wait_for(node.revisions.connected.wait(), 30)
        service = trainer.revisions
        assert service is not None
        counters = node.speech.counters
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="real-sub",
                                  protocol=aiomqtt.ProtocolVersion.V5) as sub:
            await sub.subscribe(names.transcript(conversation), qos=1)

            async def collect() -> None:
                async for m in sub.messages:
                    assert isinstance(m.payload, bytes)
                    seen.append(decode_segment(m.payload))
                    async with arrived:
                        arrived.notify_all()

            collector = asyncio.create_task(collect())
            legs = [LegSource(name=leg, samples=to_8k_int16(audio)) for leg, audio in call.legs.items()]
            await asyncio.to_thread(stream_audio, "127.0.0.1", mosquitto.port, device=device,
                                    conversation=conversation, legs=legs, speed=4.0, seed=3,
                                    impairments=Impairments(loss=0.01),
                                    client_id="real-sender")
            # The call closes on the edge (its segments are all published), then the DC judges every
            # one of them: wait_until is re-checked on the DC's progress, so the edge's part comes first.
            assert node.speech.engine is not None
            name, n_segments = await asyncio.wait_for(node.speech.engine.conversation_closed(), 120)
            assert name == conversation and n_segments == counters.segments_published > 0
            await asyncio.wait_for(service.wait_until(
                lambda: service.stats.revised + service.stats.kept >= counters.segments_published), 240)
            published = service.stats.revised
            # every hard example carried the leg's audio around its utterance (hard example v2)
            assert service.stats.with_context == service.stats.revised + service.stats.kept
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(
                    lambda: sum(x.revision == 0 for x in seen) >= counters.segments_published
                    and sum(x.revision == 1 for x in seen) >= published), 60)
            collector.cancel()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

    edge = sorted((x for x in seen if x.revision == 0), key=lambda x: x.start_s)
    dc = [x for x in seen if x.revision == 1]
    assert {x.leg for x in edge} == set(call.legs)  # both parties were heard
    # Speaker labels true to the call: each party one label, the two parties two labels.
    labels = {leg: {x.speaker for x in edge if x.leg == leg} for leg in call.legs}
    assert all(len(v) == 1 for v in labels.values()) and len(set().union(*labels.values())) == 2, labels
    assert all(any((e.leg, e.utterance) == (r.leg, r.utterance) for e in edge) for r in dc)
    latest = {(x.leg, x.utterance): x.text for x in sorted(edge + dc, key=lambda x: x.revision)}
    refs, edge_hyps, final_hyps = [], [], []
    for leg in call.legs:
        refs.append(" ".join(t.text for t in call.turns if t.leg == leg))
        edge_hyps.append(" ".join(x.text for x in edge if x.leg == leg))
        final_hyps.append(" ".join(latest[(x.leg, x.utterance)] for x in edge if x.leg == leg))
    edge_wer, final_wer = wer(refs, edge_hyps), wer(refs, final_hyps)
    assert final_wer <= edge_wer, (edge_hyps, final_hyps)
    assert edge_wer <= 0.35, edge_hyps  # a real decode of the call, not an empty one
