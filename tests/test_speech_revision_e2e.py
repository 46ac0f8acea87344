"""A low-confidence utterance goes edge -> outbox -> Kafka -> DC (advanced inference) -> Kafka ->
edge, and its revision appears on the conversation's MQTT transcript topic; an operator's
label of it then overrides the DC's (revision 2) there and in the training data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from bench.heldout_speech import HELDOUT, build_heldout_call, piper_available
from cli.brokers import MosquittoBroker, TansuBroker
from cloud_trainer.publish import publish_labels
from cloud_trainer.service import Trainer
from common.dc_settings import FilterSpec, HardExampleSettings, ModelMiningSettings
from common.settings import EdgeSettings, MqttSettings, Settings
from common.trainer_settings import AsrAdaptSettings, FerTrainSettings, TrainerSettings
from devices.audio import LegSource, stream_audio
from edge_agent.app import EdgeNode
from sim.scoring import wer
from sim.speech_corpus import to_8k_int16
from topics import names
from topics.dc import Label
from topics.names import ASR_MODEL
from topics.transcript import TranscriptSegment, decode_segment

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not piper_available(), reason="piper-tts (the bench extra) or its voice missing")]


async def test_low_confidence_speech_comes_back_revised_by_the_dc(
        mosquitto: MosquittoBroker, own_kafka: TansuBroker, cache_dir: Path, tmp_path: Path) -> None:
    conversation, device = "rev-call-1", "tap-9"
    call = build_heldout_call(HELDOUT[8:10], snr_db=5.0)  # unseen speech in loud hum: low confidence
    trainer = Trainer(TrainerSettings(
        group_id="rev-e2e", store_url=f"sqlite:///{tmp_path}/samples.sqlite3", registry_dir=tmp_path / "registry",
        keys_dir=tmp_path / "keys", work_dir=tmp_path / "work", torch_threads=1,
        fer=FerTrainSettings(enabled=False),
        asr=AsrAdaptSettings(retrain_min_samples=1000, revise=True, revise_models=["whisper_base"])),
        _kafka(own_kafka), cache_dir)
    s = Settings(mqtt=MqttSettings(host="127.0.0.1", port=mosquitto.port, client_id="rev-edge"),
                 kafka=_kafka(own_kafka),
                 edge=EdgeSettings(node_name="rev-node", http_host="127.0.0.1", http_port=0, vision=False),
                 mining=HardExampleSettings(models={ASR_MODEL: ModelMiningSettings(
                     filters=[FilterSpec(kind="threshold", threshold=0.99)])}, seed=1))
    s.outbox.path = tmp_path / "outbox.sqlite3"
    s.updates.enabled = False
    s.speech.idle_close_s = 1.5
    node = EdgeNode(s)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(trainer.run(stop)), asyncio.create_task(node.run(stop))]
    seen: list[TranscriptSegment] = []
    arrived = asyncio.Condition()
    try:
        await asyncio.wait_for(node.started.wait(), 60)
        assert node.speech is not None and node.revisions is not None
        await asyncio.wait_for(node.speech.connected.wait(), 20)
        await asyncio.wait_for(node.revisions.connected.wait(), 30)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="rev-sub",
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
                                    client_id="rev-sender")
            n_turns = len(call.turns)
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(
                    lambda: sum(x.revision == 1 for x in seen) >= n_turns), 120)
            # An operator corrects one segment (``edge-offload label``): revision 2 overrides the DC's.
            first = min((x for x in seen if x.revision == 1), key=lambda x: x.seq)
            key = f"{ASR_MODEL}|{device}|{conversation}.{first.leg}|{first.utterance}|0"
            await publish_labels(_kafka(own_kafka), [Label(key, "an operator typed this", "operator:ana", 1)])
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(lambda: any(x.revision == 2 for x in seen)), 60)
            collector.cancel()
        op = [x for x in seen if x.revision == 2]
        assert len(op) == 1 and (op[0].leg, op[0].utterance, op[0].seq) == (first.leg, first.utterance, first.seq)
        assert op[0].source == "operator" and op[0].text == "an operator typed this"
        assert op[0].model.version == "operator:ana"
        # The DC's transcripts are training data now (labels of the stored hard examples).
        consumer, store = trainer.consumer, trainer.store
        assert consumer is not None and store is not None
        await asyncio.wait_for(consumer.wait_until(lambda: consumer.stats.labels >= n_turns), 30)
        labelled = await store.samples(ASR_MODEL, labelled=True)
        sources = {r.key: r.label_source or "" for r in labelled}
        assert len(labelled) >= n_turns and all(x.startswith(("dc:", "operator:")) for x in sources.values())
        await asyncio.wait_for(consumer.wait_until(lambda: consumer.stats.labels >= n_turns + 1), 30)
        assert (await store.get(key)).label == "an operator typed this"  # type: ignore[union-attr]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

    edge = [x for x in seen if x.revision == 0]
    dc = [x for x in seen if x.revision == 1]  # the operator's revision 2 came after all of these
    assert len(edge) == len(dc) == len(call.turns)
    assert all(x.source == "edge" for x in edge) and all(x.source == "dc" for x in dc)
    for rev in dc:  # the same segment: conversation, leg, utterance, seq and speaker
        orig = next(x for x in edge if (x.leg, x.utterance) == (rev.leg, rev.utterance))
        assert (rev.seq, rev.speaker, rev.conversation) == (orig.seq, orig.speaker, orig.conversation)
        assert rev.model.name == "whisper-base" and rev.model.version
        assert rev.words and abs(rev.start_s - orig.start_s) < 1.0
    assert trainer.revisions is not None and trainer.revisions.stats.revised >= len(call.turns)
    ref = " ".join(t.text for t in call.turns)
    dc_text = " ".join(x.text for x in sorted(dc, key=lambda x: x.seq))
    assert wer([ref], [dc_text]) <= 0.2, dc_text
    assert node.speech is not None and node.speech.counters.revisions_published == len(dc) + len(op)


def _kafka(broker: TansuBroker):
    from common.settings import KafkaSettings

    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
