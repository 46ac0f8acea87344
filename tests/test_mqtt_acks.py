"""Manual QoS 1 acks go through :class:`edge_agent.mqtt.MqttClient`, the one place that reaches
aiomqtt's private paho client; against a real Mosquitto an unacknowledged message is redelivered
to the persistent session and an acknowledged one is not."""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import aiomqtt
import pytest

from cli.brokers import MosquittoBroker
from common.settings import Settings
from edge_agent import mqtt as edge_mqtt
from edge_agent.mqtt import MqttClient, make_client

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("common", "topics", "models", "sim", "devices", "edge_agent", "cloud_trainer", "cli")
PRIVATE = {"_client", "_disconnected"}  # aiomqtt.Client's wrapped paho client and connection-lost future


def _private_uses(tree: ast.AST) -> list[ast.Attribute]:
    """``x._client.<anything>`` and ``x._disconnected``: reaching into an aiomqtt client."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "_disconnected":
            out.append(node)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "_client":
            out.append(node)
    return out


def test_only_mqtt_client_reaches_into_aiomqtt() -> None:
    inside = {id(n) for n in _private_uses(ast.parse(inspect.getsource(MqttClient)))}
    assert inside, "MqttClient is where the private attributes are used"
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            uses = _private_uses(ast.parse(path.read_text()))
            if path == Path(edge_mqtt.__file__).resolve():
                # Same count as in the class alone: nothing else in the module uses them.
                assert len(uses) == len(inside), f"{path}: aiomqtt internals used outside MqttClient"
            else:
                assert not uses, f"{path}:{uses[0].lineno}: use edge_agent.mqtt.MqttClient"


async def test_ack_needs_manual_ack_mode(settings: Settings) -> None:
    client = make_client(settings.mqtt, client_id="ack-mode", manual_ack=False)
    with pytest.raises(RuntimeError, match="manual_ack"):
        client.ack(1, 1)


async def _receive_one(client: MqttClient, timeout_s: float = 10.0) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(aiter(client.messages)), timeout_s)


@pytest.mark.integration
async def test_unacked_message_is_redelivered_acked_one_is_not(mosquitto: MosquittoBroker, settings: Settings) -> None:
    cfg = settings.mqtt.model_copy(update={"port": mosquitto.port, "client_id": "acks-pinned"})
    topic = "edge-offload-test/acks/pinned"

    async def publish(payload: bytes) -> None:
        async with make_client(cfg, client_id="acks-publisher", persistent=False, manual_ack=False) as pub:
            await pub.publish(topic, payload, qos=1)

    async with make_client(cfg) as client:  # persistent session, manual acks
        await client.subscribe(topic, qos=1)
    await publish(b"first")

    async with make_client(cfg) as client:
        first = await _receive_one(client)
        assert first.payload == b"first"  # received, never acknowledged: the broker still owns it
    async with make_client(cfg) as client:
        again = await _receive_one(client)
        assert again.payload == b"first", "an unacknowledged message is redelivered"
        client.ack(again.mid, again.qos)
        # A SUBSCRIBE/SUBACK round trip after the PUBACK: the broker handles packets in order,
        # so it has processed the ack before we disconnect.
        await client.subscribe(topic, qos=1)
    await publish(b"second")
    async with make_client(cfg) as client:
        nxt = await _receive_one(client)
        assert nxt.payload == b"second", "the acknowledged message is not redelivered"
        client.ack(nxt.mid, nxt.qos)
        await client.unsubscribe(topic)
