"""The one place that builds aiokafka clients: bootstrap servers plus SSL / SASL from settings.

Every producer, consumer and admin client of the edge (outbox, model updates) and the DC
(trainer consumer, announcement and label producers, topic set-up) comes from here, so
``kafka.security_protocol`` and its certificates and credentials apply to all of them.
The SASL password is read from its ``SecretStr`` only here.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from common.settings import KafkaSettings

__all__ = ["ssl_context", "connection_kwargs", "make_producer", "make_consumer", "make_admin"]


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (None for PLAINTEXT and SASL_PLAINTEXT)."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(kafka.ssl_ca_file) if kafka.ssl_ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if kafka.ssl_cert_file is not None:
        ctx.load_cert_chain(str(kafka.ssl_cert_file), str(kafka.ssl_key_file) if kafka.ssl_key_file else None)
    ctx.check_hostname = kafka.ssl_check_hostname
    return ctx


def connection_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments shared by aiokafka's producer, consumer and admin client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
        "ssl_context": ssl_context(kafka),
    }
    if kafka.security_protocol.startswith("SASL_"):
        if kafka.sasl_username is None or kafka.sasl_password is None:
            raise ValueError(f"kafka.security_protocol {kafka.security_protocol} needs "
                             "kafka.sasl_username and kafka.sasl_password")
        kwargs.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                      sasl_plain_password=kafka.sasl_password.get_secret_value())
    return kwargs


def make_producer(kafka: KafkaSettings, **kwargs: Any) -> AIOKafkaProducer:
    """An (unstarted) producer; ``kwargs`` add producer options (acks, client_id, ...)."""
    return AIOKafkaProducer(**connection_kwargs(kafka), **kwargs)


def make_consumer(kafka: KafkaSettings, *topics: str, **kwargs: Any) -> AIOKafkaConsumer:
    """An (unstarted) consumer of ``topics``; ``kwargs`` add consumer options."""
    return AIOKafkaConsumer(*topics, **connection_kwargs(kafka), **kwargs)


def make_admin(kafka: KafkaSettings, **kwargs: Any) -> AIOKafkaAdminClient:
    """An (unstarted) admin client."""
    return AIOKafkaAdminClient(**connection_kwargs(kafka), **kwargs)
