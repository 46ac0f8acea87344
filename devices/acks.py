"""PUBACK reason codes of a device's QoS 1 publishes (paho, MQTT v5).

Mosquitto 2 answers a publish its ACL denies with PUBACK 0x87 (Not authorized) and drops the
message; a client that ignores the reason code loses every such message in silence.
:class:`AckWatch` records each refusal with its topic; :meth:`AckWatch.check` raises
:class:`PublishRefused`, whose message is one line naming the topic, the reason and the login.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["AckWatch", "PublishRefused"]


class PublishRefused(RuntimeError):
    """The broker refused a publish (PUBACK reason code >= 0x80)."""

    def __init__(self, topic: str, reason: str, code: int, username: str | None) -> None:
        self.topic, self.reason, self.code, self.username = topic, reason, code, username
        who = f"user {username!r}" if username else "an anonymous client"
        super().__init__(f"the broker refused the publish on {topic} to {who}: {reason} (0x{code:02x})"
                         + (" - check the broker's ACL (compose/mosquitto.acl)" if code in (0x87, 0x90) else ""))


class AckWatch:
    """Publishes through a paho client and keeps the first refused one.

    Set as the client's ``on_publish`` (it runs on paho's network thread, inside paho's own lock,
    so it takes only this object's lock and never calls the client, and :meth:`publish` never holds
    that lock while it calls paho). A PUBACK can beat :meth:`publish` to recording its topic: a
    refusal is kept until then; an early success leaves the entry for its message id until the
    id is reused (at most 65535 entries)."""

    def __init__(self, client: mqtt.Client, username: str | None = None) -> None:
        self.client = client
        self.username = username
        self._lock = threading.Lock()
        self._topics: dict[int, str] = {}  # mid -> topic of a QoS > 0 publish not yet acknowledged
        self._early: dict[int, ReasonCode] = {}  # refused before publish() recorded its topic
        self.refused: PublishRefused | None = None
        self.refusals = 0
        client.on_publish = self._on_publish

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        """``client.publish``; a refusal of it is remembered (see :meth:`check`)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos > 0:
            with self._lock:
                if info.mid in self._early:
                    self._settle(info.mid, topic, self._early.pop(info.mid))
                else:
                    self._topics[info.mid] = topic
        return info

    def check(self) -> None:
        """Raise the first refusal seen so far (a :class:`PublishRefused`)."""
        with self._lock:
            refused = self.refused
        if refused is not None:
            raise refused

    def _on_publish(self, _c: object, _u: object, mid: int, reason: ReasonCode | None, _p: object = None) -> None:
        with self._lock:
            topic = self._topics.pop(mid, None)
            if topic is not None:
                self._settle(mid, topic, reason)
            elif reason is not None and reason.is_failure:  # publish() has not recorded its topic yet
                self._early[mid] = reason

    def _settle(self, mid: int, topic: str, reason: ReasonCode | None) -> None:
        if reason is None or not reason.is_failure:
            return
        self.refusals += 1
        if self.refused is None:
            self.refused = PublishRefused(topic, str(reason), int(reason.value), self.username)
