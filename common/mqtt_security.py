"""TLS and credentials of every MQTT client, from :class:`~common.settings.MqttSettings`.

One place turns the settings into an :class:`ssl.SSLContext` and a username/password, for the
asyncio clients (aiomqtt: the agent, speech, ``tail``, the demo) and for the paho clients of
the device simulators. The password is read from its ``SecretStr`` only here.
"""

from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as paho

from common.settings import MqttSettings

__all__ = ["tls_context", "credentials", "aiomqtt_connection", "configure_paho"]


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """The client TLS context, or None for plain TCP. Certificates are verified always;
    ``tls_insecure`` only skips the host-name check."""
    if not settings.use_tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(settings.ca_file) if settings.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file is not None:
        ctx.load_cert_chain(str(settings.cert_file), str(settings.key_file) if settings.key_file else None)
    if settings.tls_insecure:
        ctx.check_hostname = False
    return ctx


def credentials(settings: MqttSettings) -> tuple[str | None, str | None]:
    """(username, password) in clear, for the CONNECT packet only."""
    password = settings.password.get_secret_value() if settings.password is not None else None
    return settings.username, password


def aiomqtt_connection(settings: MqttSettings) -> dict[str, Any]:
    """Keyword arguments of ``aiomqtt.Client`` that say where and how to connect."""
    username, password = credentials(settings)
    return {"hostname": settings.host, "port": settings.port, "username": username,
            "password": password, "tls_context": tls_context(settings)}


def configure_paho(client: paho.Client, settings: MqttSettings) -> None:
    """Give a paho client the TLS context and credentials (before ``connect``)."""
    ctx = tls_context(settings)
    if ctx is not None:
        client.tls_set_context(ctx)
    username, password = credentials(settings)
    if username is not None or password is not None:
        client.username_pw_set(username, password)
