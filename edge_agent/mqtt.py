"""MQTT session plumbing for the edge agent: persistent v5 sessions and in-order manual acks.

QoS 1 messages are acknowledged only after their result (or dead-letter record) is
published, so a crash or a restart never loses a message the broker thinks we own:
the broker redelivers it. We announce an MQTT v5 *Receive Maximum*, but do not rely on
it: Mosquitto 2.0.11 (Debian 12) lets a whole window through for every PUBACK (measured:
receive maximum 20, one ack -> 40 messages, four acks -> 100). The agent therefore bounds
its own in-flight work, and the client's local queue is bounded with counted overflow
(an overflowed message stays unacknowledged: the broker redelivers it next session).
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import Callable

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_offload.mqtt_security import aiomqtt_connection
from edge_offload.settings import MqttSettings

__all__ = ["connect_properties", "make_client", "InOrderAcker", "CountingQueue"]


class CountingQueue(asyncio.Queue):  # type: ignore[type-arg]
    """aiomqtt's incoming queue, bounded, calling ``on_drop`` for every message it refuses."""

    def __init__(self, maxsize: int = 0, on_drop: Callable[[], None] | None = None) -> None:
        super().__init__(maxsize)
        self._on_drop = on_drop

    def put_nowait(self, item: object) -> None:
        try:
            super().put_nowait(item)
        except asyncio.QueueFull:
            if self._on_drop is not None:
                self._on_drop()
            raise


def connect_properties(settings: MqttSettings) -> Properties:
    """CONNECT properties: keep the session ``session_expiry_s``, at most ``receive_maximum`` in flight."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = settings.session_expiry_s
    props.ReceiveMaximum = settings.receive_maximum
    return props


def make_client(
    settings: MqttSettings,
    *,
    client_id: str | None = None,
    will: aiomqtt.Will | None = None,
    persistent: bool = True,
    manual_ack: bool = True,
    queue_size: int | None = None,
    on_drop: Callable[[], None] | None = None,
) -> aiomqtt.Client:
    """An MQTT v5 client; ``persistent`` keeps the session across reconnects and restarts.

    TLS and credentials come from ``settings`` (:mod:`edge_offload.mqtt_security`)."""
    client = aiomqtt.Client(
        **aiomqtt_connection(settings),
        identifier=client_id or settings.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=connect_properties(settings),
        keepalive=settings.keepalive_s,
        will=will,
        queue_type=functools.partial(CountingQueue, on_drop=on_drop),  # type: ignore[arg-type]
        max_queued_incoming_messages=queue_size or settings.receive_maximum * 16,
    )
    client.pending_calls_threshold = settings.receive_maximum * 4  # publishes in flight are expected
    if manual_ack:
        # aiomqtt has no manual-ack API yet; paho (which it wraps) does.
        client._client.manual_ack_set(True)  # noqa: SLF001
    return client


class InOrderAcker:
    """Sends PUBACKs in the order the PUBLISHes arrived (MQTT 4.6.0-2), as each finishes.

    One acker belongs to one connection: after :meth:`close` (the connection dropped)
    acks are discarded, and the broker redelivers those messages on the next session.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._pending: OrderedDict[int, tuple[int, int, bool]] = OrderedDict()
        self._next = 0
        self._closed = False

    def received(self, message: aiomqtt.Message) -> int:
        """Register an incoming message; return the token to pass to :meth:`done`."""
        token = self._next
        self._next += 1
        self._pending[token] = (message.mid, message.qos, False)
        return token

    def done(self, token: int) -> None:
        """Mark a message processed; ack every finished message at the head of the line."""
        if self._closed or token not in self._pending:
            return
        mid, qos, _ = self._pending[token]
        self._pending[token] = (mid, qos, True)
        while self._pending:
            first = next(iter(self._pending))
            mid, qos, finished = self._pending[first]
            if not finished:
                break
            del self._pending[first]
            if qos > 0:
                self._client._client.ack(mid, qos)  # noqa: SLF001

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self._closed = True
        self._pending.clear()
