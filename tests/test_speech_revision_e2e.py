"""A low-confidence utterance goes edge -> outbox -> Kafka -> DC (advanced inference) -> Kafka ->
edge, and its revision appears on the conversation's MQTT transcript topic; an operator's
label of it then overrides the DC's (revision 2) there and in the training data.

One W3C trace follows each segment the whole way: the edge's MQTT segment (user property
``traceparent``), its hard-example record, the DC's revision and label records (Kafka headers,
with ``schema`` and ``schema-version``) and the revised segment on MQTT share one trace id."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from bench.heldout_speech import HELDOUT, build_heldout_call, piper_available
from cli.brokers import MosquittoBroker, TansuBroker
from cloud_trainer.publish import publish_labels
from cloud_trainer.service import Trainer
from common import tracing
from common.trainer_settings import AsrAdaptSettings, FerTrainSettings, TrainerSettings
from devices.audio import LegSource, stream_audio
from edge_agent.app import EdgeNode
from sim.scoring import wer
from sim.speech_corpus import to_8k_int16
from tests.edge_helpers import speech_node_settings
from topics import names
from topics.dc import Label
from topics.names import ASR_MODEL, KAFKA_HARD_EXAMPLES, KAFKA_LABELS, KAFKA_SPEECH_REVISIONS
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
    node = EdgeNode(speech_node_settings(mosquitto.port, _kafka(own_kafka), tmp_path, "rev"))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(trainer.run(stop)), asyncio.create_task(node.run(stop))]
    seen: list[TranscriptSegment] = []
    traces: dict[tuple[str, int, int], str | None] = {}  # (leg, utterance, revision) -> MQTT trace id
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
                    seg = decode_segment(m.payload)
                    traces[(seg.leg, seg.utterance, seg.revision)] = tracing.trace_id(tracing.from_mqtt(m.properties))
                    seen.append(seg)
                    async with arrived:
                        arrived.notify_all()

            collector = asyncio.create_task(collect())
            legs = [LegSource(name=leg, samples=to_8k_int16(audio)) for leg, audio in call.legs.items()]
            await asyncio.to_thread(stream_audio, "127.0.0.1", mosquitto.port, device=device,
                                    conversation=conversation, legs=legs, speed=4.0, seed=3,
                                    client_id="rev-sender")
            n_turns = len(call.turns)
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(lambda: sum(x.revision == 0 for x in seen) >= n_turns), 120)
            service = trainer.revisions
            assert service is not None
            await asyncio.wait_for(service.wait_until(
                lambda: service.stats.revised + service.stats.kept >= n_turns), 120)
            published = service.stats.revised
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(lambda: sum(x.revision == 1 for x in seen) >= published), 60)
            # An operator corrects one segment (``edge-offload label``): revision 2 overrides the DC's.
            first = min((x for x in seen if x.revision == 0), key=lambda x: x.seq)
            key = f"{ASR_MODEL}|{device}|{conversation}.{first.leg}|{first.utterance}|0"
            await publish_labels(_kafka(own_kafka), [Label(key, "an operator typed this", "operator:ana", 1)])
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(lambda: any(x.revision == 2 for x in seen)), 60)
            collector.cancel()
        op = [x for x in seen if x.revision == 2]
        assert len(op) == 1 and (op[0].leg, op[0].utterance, op[0].seq) == (first.leg, first.utterance, first.seq)
        assert op[0].source == "operator" and op[0].text == "an operator typed this"
        assert op[0].model.version == "operator:ana"
        # The DC's published transcripts are training data now (labels of the stored hard examples).
        consumer, store = trainer.consumer, trainer.store
        assert consumer is not None and store is not None
        await asyncio.wait_for(consumer.wait_until(lambda: consumer.stats.labels >= published + 1), 30)
        labelled = await store.samples(ASR_MODEL, labelled=True)
        sources = {r.key: r.label_source or "" for r in labelled}
        assert len(labelled) >= published and all(x.startswith(("dc:", "operator:")) for x in sources.values())
        assert (await store.get(key)).label == "an operator typed this"  # type: ignore[union-attr]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

    edge = [x for x in seen if x.revision == 0]
    dc = [x for x in seen if x.revision == 1]  # the operator's revision 2 came after all of these
    assert len(edge) == len(call.turns) and len(dc) == published <= len(edge)
    assert all(x.source == "edge" for x in edge) and all(x.source == "dc" for x in dc)
    for rev in dc:  # the same segment: conversation, leg, utterance, seq and speaker
        orig = next(x for x in edge if (x.leg, x.utterance) == (rev.leg, rev.utterance))
        assert (rev.seq, rev.speaker, rev.conversation) == (orig.seq, orig.speaker, orig.conversation)
        assert rev.model.name == "whisper-base" and rev.model.version
        assert rev.words and abs(rev.start_s - orig.start_s) < 1.0
    # Never worse: the final transcript (each segment's latest DC revision) against the edge's.
    ref = " ".join(t.text for t in call.turns)
    latest = {x.seq: x.text for x in sorted(edge + dc, key=lambda x: x.revision)}
    edge_text = " ".join(x.text for x in sorted(edge, key=lambda x: x.seq))
    final_text = " ".join(latest[s] for s in sorted(latest))
    assert wer([ref], [final_text]) <= wer([ref], [edge_text]), (edge_text, final_text)
    assert wer([ref], [final_text]) <= 0.2, final_text
    assert node.speech is not None and node.speech.counters.revisions_published == len(dc) + len(op)

    # The trace: MQTT segment -> hard example -> DC revision + label -> revised MQTT segment.
    for rev in dc:
        edge_trace = traces[(rev.leg, rev.utterance, 0)]
        assert edge_trace is not None and traces[(rev.leg, rev.utterance, 1)] == edge_trace
    records = await _records(own_kafka.bootstrap_servers, KAFKA_HARD_EXAMPLES, KAFKA_SPEECH_REVISIONS, KAFKA_LABELS)
    for topic, schema in ((KAFKA_HARD_EXAMPLES, b"hard_example"), (KAFKA_SPEECH_REVISIONS, b"speech_revision"),
                          (KAFKA_LABELS, b"label")):
        assert records[topic] and all(h.get("schema") == schema and h.get("schema-version", b"").isdigit()
                                      and tracing.valid(h.get("traceparent", b"").decode())
                                      for h in records[topic]), (topic, records[topic][:1])
    mqtt_traces = {t for (_, _, revision), t in traces.items() if revision == 0}
    hard = [tracing.trace_id(h["traceparent"].decode()) for h in records[KAFKA_HARD_EXAMPLES]]
    assert hard and set(hard) <= mqtt_traces  # each hard example continues its segment's trace
    dc_revisions = [tracing.trace_id(h["traceparent"].decode()) for h in records[KAFKA_SPEECH_REVISIONS]]
    # ... and so does the DC's answer, where it gives one (it publishes nothing where the edge's
    # hypothesis stands: the never-worse rule); an operator's label continues the label's trace
    labels = [tracing.trace_id(h["traceparent"].decode()) for h in records[KAFKA_LABELS]]
    assert set(dc_revisions) <= set(hard) | set(labels)
    assert {traces[(rev.leg, rev.utterance, 0)] for rev in dc} <= set(dc_revisions)
    spans = {h["traceparent"] for h in records[KAFKA_HARD_EXAMPLES] + records[KAFKA_SPEECH_REVISIONS]}
    assert len(spans) == len(records[KAFKA_HARD_EXAMPLES]) + len(records[KAFKA_SPEECH_REVISIONS])  # new span per hop


async def _records(bootstrap: str, *topics: str) -> dict[str, list[dict[str, bytes]]]:
    """The headers of every record on ``topics`` (read from the start to the end, no group)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # metadata: the partitions of each topic
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: dict[str, list[dict[str, bytes]]] = {t: [] for t in topics}
        while any([await consumer.position(tp) < offset for tp, offset in end.items()]):
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, rs in batch.items():
                out[tp.topic] += [dict(r.headers) for r in rs]
    finally:
        await consumer.stop()
    return out


def _kafka(broker: TansuBroker):
    from common.settings import KafkaSettings

    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
