"""Every aiokafka client is built by common.kafka_clients from the settings' SSL/SASL fields.

No TLS/SASL Kafka broker is available offline (Tansu in the tests speaks PLAINTEXT only), so
these tests check the clients the factory builds, and one real round trip in PLAINTEXT.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from cli.pki import make_pki
from common.kafka_clients import (
    connection_kwargs,
    make_admin,
    make_consumer,
    make_producer,
)
from common.settings import KafkaSettings, load_settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("kafka-pki"), ["kafka"], clients=["edge-1"]).dir


def test_plaintext_by_default() -> None:
    kw = connection_kwargs(KafkaSettings(bootstrap_servers="k:9092"))
    assert kw == {"bootstrap_servers": "k:9092", "security_protocol": "PLAINTEXT", "ssl_context": None}


async def test_sasl_ssl_reaches_producer_consumer_and_admin(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_OFFLOAD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("EDGE_OFFLOAD_KAFKA__SSL_CA_FILE", str(pki / "ca.crt"))
    monkeypatch.setenv("EDGE_OFFLOAD_KAFKA__SSL_CERT_FILE", str(pki / "edge-1.crt"))
    monkeypatch.setenv("EDGE_OFFLOAD_KAFKA__SSL_KEY_FILE", str(pki / "edge-1.key"))
    monkeypatch.setenv("EDGE_OFFLOAD_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("EDGE_OFFLOAD_KAFKA__SASL_USERNAME", "edge-1")
    monkeypatch.setenv("EDGE_OFFLOAD_KAFKA__SASL_PASSWORD", "kafka-secret")
    kafka = load_settings().kafka
    assert "kafka-secret" not in repr(kafka) and "kafka-secret" not in kafka.model_dump_json()
    producer = make_producer(kafka, client_id="p")
    consumer = make_consumer(kafka, "t", client_id="c", group_id=None)
    admin = make_admin(kafka, client_id="a")
    try:
        for client in (producer.client, consumer._client, admin._client):
            assert client._security_protocol == "SASL_SSL"
            assert client._sasl_mechanism == "SCRAM-SHA-512"
            assert client._sasl_plain_username == "edge-1"
            assert client._sasl_plain_password == "kafka-secret"
            ctx = client._ssl_context
            assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
            assert any("edge-offload CA" in str(c["subject"]) for c in ctx.get_ca_certs())
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()


def test_sasl_without_credentials_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="sasl_username"):
        connection_kwargs(KafkaSettings(security_protocol="SASL_PLAINTEXT"))


def test_no_client_is_built_outside_the_factory() -> None:
    root = Path(__file__).resolve().parents[1]
    for folder in ("common", "edge_agent", "cloud_trainer", "cli", "devices"):
        for path in (root / folder).rglob("*.py"):
            if path.name == "kafka_clients.py":
                continue
            text = path.read_text()
            for ctor in ("AIOKafkaProducer(", "AIOKafkaConsumer(", "AIOKafkaAdminClient("):
                assert ctor not in text, f"{path}: builds {ctor[:-1]} itself; use common.kafka_clients"


@pytest.mark.integration
async def test_factory_clients_round_trip_plaintext(kafka: object) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap_servers)  # type: ignore[attr-defined]
    from common.kafka_admin import ensure_topics

    await ensure_topics(settings, ["t-factory"])
    producer: AIOKafkaProducer = make_producer(settings, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait("t-factory", b"hello")
    finally:
        await producer.stop()
    consumer: AIOKafkaConsumer = make_consumer(settings, "t-factory", group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await consumer.getone()
        assert record.value == b"hello"
    finally:
        await consumer.stop()
