"""The broker fixtures are real: MQTT v5 round trip through Mosquitto, produce/consume through Tansu."""

from __future__ import annotations

import aiomqtt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from cli.brokers import MosquittoBroker, TansuBroker


async def test_mosquitto_round_trip(mosquitto: MosquittoBroker) -> None:
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe("t/round-trip", qos=1)
        await client.publish("t/round-trip", b"hello", qos=1)
        async for message in client.messages:
            assert message.payload == b"hello"
            break


async def test_tansu_produce_consume(kafka: TansuBroker) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait("t-round-trip", b"hello", key=b"k")
        assert meta.offset >= 0
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer("t-round-trip", bootstrap_servers=kafka.bootstrap_servers,
                                group_id="g-round-trip", auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        record = await consumer.getone()
        assert record.value == b"hello"
    finally:
        await consumer.stop()
