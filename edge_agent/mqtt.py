"""MQTT session plumbing for the edge agent: persistent v5 sessions and in-order manual acks.

QoS 1 messages are acknowledged only after their result (or dead-letter record) is
published, so a crash or a restart never loses a message the broker thinks we own:
the broker redelivers it. We announce an MQTT v5 *Receive Maximum*, but do not rely on
it: Mosquitto 2.0.11 (Debian 12) lets a whole window through for every PUBACK (measured:
receive maximum 20, one ack -> 40 messages, four acks -> 100). The agent therefore bounds
its own in-flight work, and the client's local queue is bounded with counted overflow
(QoS 0 first; an overflowed QoS 1 message stays unacknowledged, so the agent ends the session
and the broker redelivers it on the next one).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.mqtt_security import aiomqtt_connection
from common.settings import MqttSettings
from topics.names import CASE_PROPERTY

__all__ = ["MqttClient", "connect_properties", "make_client", "InOrderAcker", "CountingQueue", "ArrivalQueue",
           "SessionLost", "publish_confirmed", "case_property"]


def case_property(message: aiomqtt.Message) -> str | None:
    """The case (warrant) id a publisher put in the MQTT v5 user property ``names.CASE_PROPERTY``."""
    props = message.properties
    for key, value in getattr(props, "UserProperty", None) or ():
        if key == CASE_PROPERTY:
            return str(value)
    return None


class CountingQueue(asyncio.Queue):
    """aiomqtt's incoming queue, bounded, calling ``on_drop`` for every message it refuses.

    QoS 0 messages are refused once ``maxsize`` messages wait; QoS 1 messages only once
    ``maxsize + qos1_headroom`` wait, so a QoS 0 flood cannot crowd them out. A refused QoS 1
    message is never acknowledged and keeps its slot of the broker's in-flight window for the
    whole session, so ``on_unacked_drop`` is called too: the owner must end the session (the
    broker then redelivers it) or the window would fill with holes and delivery stop.
    """

    def __init__(self, maxsize: int = 0, on_drop: Callable[[], None] | None = None,
                 qos1_headroom: int = 0, on_unacked_drop: Callable[[], None] | None = None) -> None:
        super().__init__(0)  # the bounds are enforced in put_nowait, per QoS
        self.limit = maxsize
        self.qos1_limit = maxsize + qos1_headroom if maxsize else 0
        self._on_drop = on_drop
        self._on_unacked_drop = on_unacked_drop

    def _wrap(self, item: object) -> object:
        return item

    def put_nowait(self, item: object) -> None:
        qos = getattr(item, "qos", 0)
        limit = self.qos1_limit if qos > 0 else self.limit
        if limit and self.qsize() >= limit:
            if self._on_drop is not None:
                self._on_drop()
            if qos > 0 and self._on_unacked_drop is not None:
                self._on_unacked_drop()
            raise asyncio.QueueFull
        super().put_nowait(self._wrap(item))


class ArrivalQueue(CountingQueue):
    """A :class:`CountingQueue` that stamps each message with its arrival time: it holds
    ``(arrival_s, message)`` pairs (so ``client.messages`` yields pairs), and calls
    ``on_arrival(message, arrival_s)`` as the message arrives, before it waits in the queue."""

    def __init__(self, maxsize: int = 0, on_drop: Callable[[], None] | None = None,
                 on_arrival: Callable[[aiomqtt.Message, float], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(maxsize, on_drop)
        self._on_arrival = on_arrival
        self._clock = clock

    def _wrap(self, item: object) -> object:
        now = self._clock()
        if self._on_arrival is not None:
            self._on_arrival(item, now)  # type: ignore[arg-type]
        return (now, item)


def connect_properties(settings: MqttSettings) -> Properties:
    """CONNECT properties: keep the session ``session_expiry_s``, at most ``receive_maximum`` in flight."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = settings.session_expiry_s
    props.ReceiveMaximum = settings.receive_maximum
    return props


class MqttClient(aiomqtt.Client):
    """aiomqtt's client plus the two things aiomqtt 2.x keeps private: manual QoS 1 acks
    (paho's documented ``Client.manual_ack_set`` / ``Client.ack``) and the future that completes
    when the connection drops. This class is the only code that reaches aiomqtt's wrapped paho
    client (``_client``) and that future (``_disconnected``); tests/test_mqtt_acks.py pins both
    that and the behaviour (an unacknowledged message is redelivered, an acknowledged one is not).
    """

    def __init__(self, *args: Any, manual_ack: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.manual_ack = manual_ack
        if manual_ack:
            self._client.manual_ack_set(True)

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge message ``mid`` (manual acks only; a no-op for QoS 0)."""
        if not self.manual_ack:
            raise RuntimeError("ack() needs a client made with manual_ack=True")
        self._client.ack(mid, qos)

    @property
    def disconnected(self) -> asyncio.Future[None]:
        """Completes (with the error) when the current connection drops."""
        return self._disconnected


def make_client(
    settings: MqttSettings,
    *,
    client_id: str | None = None,
    will: aiomqtt.Will | None = None,
    persistent: bool = True,
    manual_ack: bool = True,
    queue_size: int | None = None,
    on_drop: Callable[[], None] | None = None,
    on_unacked_drop: Callable[[], None] | None = None,
    queue_type: Callable[[int], asyncio.Queue[Any]] | None = None,
) -> MqttClient:
    """An MQTT v5 client; ``persistent`` keeps the session across reconnects and restarts.

    TLS and credentials come from ``settings`` (:mod:`common.mqtt_security`). The
    incoming queue is a bounded :class:`CountingQueue` unless ``queue_type`` builds another
    (called with the bound, ``queue_size``). A non-persistent client starts clean and
    announces no session expiry or Receive Maximum (the broker's defaults apply)."""
    if queue_type is None:
        queue_type = functools.partial(CountingQueue, on_drop=on_drop, qos1_headroom=settings.receive_maximum * 16,
                                       on_unacked_drop=on_unacked_drop)
    client = MqttClient(
        **aiomqtt_connection(settings),
        manual_ack=manual_ack,
        identifier=client_id or settings.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=connect_properties(settings) if persistent else None,
        keepalive=settings.keepalive_s,
        will=will,
        queue_type=queue_type,
        max_queued_incoming_messages=queue_size or settings.receive_maximum * 16,
    )
    client.pending_calls_threshold = settings.receive_maximum * 4  # publishes in flight are expected
    return client


class SessionLost(aiomqtt.MqttError):
    """The session ended (or was declared stuck) before a publish was confirmed."""


def session_gone(client: MqttClient) -> bool:
    """True once ``client``'s connection has dropped (its local queue may still hold messages)."""
    return client.disconnected.done()


async def publish_confirmed(client: MqttClient, topic: str, payload: bytes, *, qos: int = 1,
                            deadline_s: float = 60.0, properties: Properties | None = None) -> None:
    """Publish once and wait for the broker's PUBACK for as long as the session lives.

    aiomqtt's own publish gives up after 10 s although paho keeps the message in flight, which
    is how a broker stall used to wedge the agent. Here a QoS 1 publish is never re-sent on the
    same connection (MQTT 5 forbids it; a copy would be a duplicate result), it is waited for.
    Raises :class:`SessionLost` when the connection drops first, or after ``deadline_s`` (the
    caller must then end the session so that the broker redelivers what is unacknowledged).
    """
    if session_gone(client):
        raise SessionLost("session gone before publish")
    publish = asyncio.ensure_future(client.publish(topic, payload, qos=qos, timeout=math.inf,
                                                   properties=properties))
    gone = client.disconnected
    try:
        done, _ = await asyncio.wait({publish, gone}, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        publish.cancel()
        raise
    if publish in done:
        publish.result()  # raises MqttCodeError if paho refused it (not connected)
        return
    publish.cancel()
    if gone in done:
        raise SessionLost("connection lost while waiting for PUBACK")
    raise SessionLost(f"no PUBACK within {deadline_s:.0f} s")


class InOrderAcker:
    """Sends PUBACKs in the order the PUBLISHes arrived (MQTT 4.6.0-2), as each finishes.

    One acker belongs to one connection: after :meth:`close` (the connection dropped)
    acks are discarded, and the broker redelivers those messages on the next session.
    One unfinished message holds back every ack behind it, so its owner must either call
    :meth:`done` or end the session (the agent does one or the other for every message);
    ``last_progress_s`` tells liveness when the head of the line last moved.
    """

    def __init__(self, client: MqttClient) -> None:
        self._mqtt = client
        self._pending: OrderedDict[int, tuple[int, int, bool]] = OrderedDict()
        self._next = 0
        self._closed = False
        self.last_progress_s = time.monotonic()
        self.acked = 0

    def received(self, message: aiomqtt.Message) -> int:
        """Register an incoming message; return the token to pass to :meth:`done`."""
        token = self._next
        self._next += 1
        if not self._pending:  # the line was empty: its head starts waiting now
            self.last_progress_s = time.monotonic()
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
            self.last_progress_s = time.monotonic()
            if qos > 0:
                self._mqtt.ack(mid, qos)
                self.acked += 1

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._pending.clear()
