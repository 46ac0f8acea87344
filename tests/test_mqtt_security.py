"""The production EventBus config against real clients: TLS, passwords, per-device ACLs.

A real Mosquitto runs compose/mosquitto-secure.conf and compose/mosquitto.acl (the ``secure_broker``
fixture, cli.brokers.SecureMosquitto). Mosquitto 2.0.11 answers a refused login with CONNACK 0x87 "Not
authorized" and a publish the ACL denies with PUBACK 0x87; a subscription to a filter the user
may not read is granted, but nothing it may not read is delivered.
"""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cli.brokers import SecureMosquitto
from cli.pki import make_pki
from cli.tail import tail
from common.mqtt_security import aiomqtt_connection, configure_paho
from common.settings import MqttSettings
from devices.camera import photo_frames, run_camera
from tests.edge_helpers import agent_settings, running_agent
from topics import names

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87


def _creds(broker: SecureMosquitto, user: str, password: str | None = None, **kw: object) -> MqttSettings:
    client_id = str(kw.pop("client_id", f"t-{user}"))
    return broker.login(user, client_id=client_id, password=password, **{"host": "localhost", **kw})


class PahoProbe:
    """A paho v5 client that records CONNACK, PUBACK and incoming messages, with events to await."""

    def __init__(self, settings: MqttSettings) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv5)
        configure_paho(self.client, settings)
        self.connected = threading.Event()
        self.connack: int | None = None
        self.pubacks: dict[int, int] = {}
        self.acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.connect(settings.host, settings.port)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"

    def _on_connect(self, _c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        self.connack = int(getattr(rc, "value", rc))  # type: ignore[arg-type]
        self.connected.set()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: object, _p: object) -> None:
        with self.acked:
            self.pubacks[mid] = int(getattr(rc, "value", rc))  # type: ignore[arg-type]
            self.acked.notify_all()

    def publish(self, topic: str, payload: bytes) -> int:
        """QoS 1 publish; the PUBACK's MQTT v5 reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.pubacks, timeout=10), "no PUBACK"
            return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_right_credentials_work_end_to_end(secure_broker: SecureMosquitto, cache_dir: Path) -> None:
    """Camera (cam-a) -> edge agent -> operator's `tail`, every hop over TLS with its own login."""
    settings = agent_settings(secure_broker.port, "sec-agent", group="sec")
    settings.mqtt = _creds(secure_broker, "edge-agent", client_id="sec-agent", share_group="sec")
    out = io.StringIO()
    subscribed = asyncio.Event()
    images = photo_frames(cache_dir)[:2]
    async with running_agent(settings):
        operator = asyncio.create_task(tail(_creds(secure_broker, "operator"), [names.vision_results("cam-a")],
                                            count=2, out=out, subscribed=subscribed))
        await asyncio.wait_for(subscribed.wait(), 10)
        loop = asyncio.get_running_loop()
        stats = await loop.run_in_executor(None, lambda: run_camera(
            "localhost", secure_broker.port, "cam-a", images, fps=0, count=2,
            security=_creds(secure_broker, "cam-a")))
        assert await asyncio.wait_for(operator, 60) == 2
    assert stats.frames_sent == 2
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(" vision cam-a #" in line for line in lines)


async def test_wrong_password_anonymous_and_untrusted_ca_are_refused(secure_broker: SecureMosquitto,
                                                                     tmp_path: Path) -> None:
    wrong = _creds(secure_broker, "operator", password="not-the-password")
    with pytest.raises(aiomqtt.MqttCodeError) as refused:
        async with aiomqtt.Client(**aiomqtt_connection(wrong), protocol=aiomqtt.ProtocolVersion.V5):
            pass
    assert int(getattr(refused.value.rc, "value", refused.value.rc)) in (0x86, NOT_AUTHORIZED)
    anonymous = MqttSettings(host="localhost", port=secure_broker.port, ca_file=secure_broker.pki.ca_cert)
    with pytest.raises(aiomqtt.MqttCodeError):
        async with aiomqtt.Client(**aiomqtt_connection(anonymous), protocol=aiomqtt.ProtocolVersion.V5):
            pass
    other_ca = make_pki(tmp_path / "other", ["localhost"]).ca_cert
    untrusted = _creds(secure_broker, "operator", ca_file=other_ca)
    with pytest.raises(aiomqtt.MqttError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        async with aiomqtt.Client(**aiomqtt_connection(untrusted), protocol=aiomqtt.ProtocolVersion.V5):
            pass
    plain = MqttSettings(host="localhost", port=secure_broker.port, username="operator",
                         password=secure_broker.users["operator"])  # type: ignore[arg-type]
    with pytest.raises(aiomqtt.MqttError):  # the listener speaks TLS only
        async with aiomqtt.Client(**aiomqtt_connection(plain), protocol=aiomqtt.ProtocolVersion.V5, timeout=5):
            pass


def test_device_cannot_publish_as_another_device(secure_broker: SecureMosquitto) -> None:
    cam_a = PahoProbe(_creds(secure_broker, "cam-a"))
    try:
        assert cam_a.connack == 0
        assert cam_a.publish(names.frames("cam-b"), b"forged") == NOT_AUTHORIZED
        assert cam_a.publish(names.audio("cam-b", "call-1", "caller"), b"forged") == NOT_AUTHORIZED
        assert cam_a.publish(names.vision_results("cam-b"), b"forged result") == NOT_AUTHORIZED
        assert cam_a.publish(names.frame_returns("cam-a"), b"forged return") == NOT_AUTHORIZED
        assert cam_a.publish(names.edge_status("edge-node-1"), b"forged status") == NOT_AUTHORIZED
        assert cam_a.publish("$hw/events/device/default/cam-b/twin/update", b"{}") == NOT_AUTHORIZED
        # its own topics are allowed (0x10: accepted, nobody subscribed)
        assert cam_a.publish(names.frames("cam-a"), b"own") < 0x80
        assert cam_a.publish("$hw/events/device/default/cam-a/twin/update", b"{}") < 0x80
        assert cam_a.publish(names.vision_results("cam-a"), b"served on the device") < 0x80
    finally:
        cam_a.close()


async def test_operator_cannot_read_audio_or_frames_nor_publish(secure_broker: SecureMosquitto) -> None:
    """The operator subscribes to audio, frames and results; a device's audio and frame are routed before a
    result (each PUBACKed first), yet the operator's first message is the result."""
    op = _creds(secure_broker, "operator")
    async with aiomqtt.Client(**aiomqtt_connection(op), identifier="t-operator-all",
                              protocol=aiomqtt.ProtocolVersion.V5) as operator:
        for topic_filter in (names.AUDIO_FILTER, names.FRAMES_FILTER, names.RESULTS_FILTER):
            await operator.subscribe(topic_filter, qos=1)  # granted: Mosquitto filters on delivery
        tap = PahoProbe(_creds(secure_broker, "tap-a"))
        agent = PahoProbe(_creds(secure_broker, "edge-agent"))
        try:
            assert tap.publish(names.audio("tap-a", "call-9", "caller"), b"\x80" * 172) < 0x80
            assert tap.publish(names.frames("tap-a"), b"jpeg") < 0x80
            assert agent.publish(names.transcript("call-9"), b"result") < 0x80
        finally:
            tap.close()
            agent.close()
        first = await asyncio.wait_for(anext(aiter(operator.messages)), 10)
        assert str(first.topic) == names.transcript("call-9")
    operator_probe = PahoProbe(_creds(secure_broker, "operator", client_id="t-operator-pub"))
    try:
        assert operator_probe.publish(names.vision_results("cam-a"), b"forged") == NOT_AUTHORIZED
        assert operator_probe.publish(names.frames("cam-a"), b"forged") == NOT_AUTHORIZED
    finally:
        operator_probe.close()


@pytest.mark.parametrize("media_filter, media_topic", [(names.CLIPS_FILTER, names.audio_clip("call-9")),
                                                      (names.THUMBNAILS_FILTER, names.thumbnail("tap-a"))])
async def test_clips_and_thumbnails_only_from_the_edge_agent_only_to_the_archive(
        secure_broker: SecureMosquitto, media_filter: str, media_topic: str) -> None:
    """Segments' audio clips and frame thumbnails (opt-in at the edge): the edge agent may write them and the
    archive read them; a device cannot forge one and an operator (``tail``) never receives one, though
    subscribed."""
    async with aiomqtt.Client(**aiomqtt_connection(_creds(secure_broker, "operator")), identifier="t-op-clips",
                              protocol=aiomqtt.ProtocolVersion.V5) as operator, \
            aiomqtt.Client(**aiomqtt_connection(_creds(secure_broker, "archive")), identifier="t-archive-clips",
                           protocol=aiomqtt.ProtocolVersion.V5) as archive:
        for client in (operator, archive):
            await client.subscribe(media_filter, qos=1)
            await client.subscribe(names.TRANSCRIPT_FILTER, qos=1)
        tap = PahoProbe(_creds(secure_broker, "tap-a"))
        agent = PahoProbe(_creds(secure_broker, "edge-agent"))
        try:
            assert tap.publish(media_topic, b"forged") == NOT_AUTHORIZED
            assert agent.publish(media_topic, b"media") < 0x80
            assert agent.publish(names.transcript("call-9"), b"result") < 0x80
        finally:
            tap.close()
            agent.close()
        first = await asyncio.wait_for(anext(aiter(archive.messages)), 10)
        assert (str(first.topic), first.payload) == (media_topic, b"media")
        first = await asyncio.wait_for(anext(aiter(operator.messages)), 10)
        assert str(first.topic) == names.transcript("call-9")
