"""MQTT TLS settings become the right SSL context and credentials, for aiomqtt and paho alike."""

from __future__ import annotations

import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cli.pki import make_pki
from common.mqtt_security import (
    aiomqtt_connection,
    configure_paho,
    credentials,
    tls_context,
)
from common.settings import MqttSettings, reference


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), ["localhost"], clients=["cam-1"]).dir


def test_plain_by_default_and_tls_when_a_ca_is_given(pki_dir: Path) -> None:
    assert tls_context(MqttSettings()) is None
    assert aiomqtt_connection(MqttSettings())["tls_context"] is None
    ctx = tls_context(MqttSettings(ca_file=pki_dir / "ca.crt"))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert tls_context(MqttSettings(tls=True)) is not None  # the system's CAs


def test_insecure_skips_only_the_host_name(pki_dir: Path) -> None:
    ctx = tls_context(MqttSettings(ca_file=pki_dir / "ca.crt", tls_insecure=True))
    assert ctx is not None and not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_client_certificate_is_loaded_and_a_wrong_key_is_an_error(pki_dir: Path) -> None:
    good = MqttSettings(ca_file=pki_dir / "ca.crt", cert_file=pki_dir / "cam-1.crt", key_file=pki_dir / "cam-1.key")
    assert tls_context(good) is not None
    wrong = good.model_copy(update={"key_file": pki_dir / "server.key"})
    with pytest.raises(ssl.SSLError):
        tls_context(wrong)


def test_password_is_secret_until_the_connect_packet(pki_dir: Path) -> None:
    s = MqttSettings(username="cam-1", password="pw-123", ca_file=pki_dir / "ca.crt")  # type: ignore[arg-type]
    assert "pw-123" not in repr(s) and "pw-123" not in str(s.model_dump())
    assert credentials(s) == ("cam-1", "pw-123")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    configure_paho(client, s)
    assert client._username == b"cam-1" and client._password == b"pw-123"
    assert client._ssl_context is not None


def test_reference_lists_every_security_setting() -> None:
    names = {row[0] for row in reference()}
    for field in ("MQTT__USERNAME", "MQTT__PASSWORD", "MQTT__CA_FILE", "MQTT__CERT_FILE", "MQTT__KEY_FILE",
                  "MQTT__TLS", "MQTT__TLS_INSECURE", "KAFKA__SECURITY_PROTOCOL", "KAFKA__SSL_CA_FILE",
                  "KAFKA__SASL_MECHANISM", "KAFKA__SASL_USERNAME", "KAFKA__SASL_PASSWORD",
                  "UPDATES__STATE_FILE", "TRAINER__SERVE_HOST", "TRAINER__SERVE_MAX_BYTES",
                  "TRAINER__PUBLIC_KEY_FILE"):
        assert f"EDGE_OFFLOAD_{field}" in names, field
