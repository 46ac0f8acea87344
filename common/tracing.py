"""W3C Trace Context (``traceparent``) and the headers of every Kafka record.

A trace starts at an MQTT input (a camera frame, a speech segment): from the input's MQTT v5
user property ``traceparent`` when the device sent one, else minted at the edge. It rides on
the Kafka records the input causes (hard examples, spilled frames) and on what the DC answers
(revisions, labels, DC results): each hop keeps the trace id and takes a new span id, and the
edge's MQTT output carries it again as a user property.

Every Kafka record carries the headers ``schema`` (the envelope type), ``schema-version``
(its ``v``) and ``traceparent``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import msgpack
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["TRACEPARENT", "SCHEMA", "SCHEMA_VERSION", "new_traceparent", "child", "trace_id", "valid",
           "derived", "current", "bind", "use", "schema_of", "kafka_headers", "from_headers", "mqtt_properties",
           "from_mqtt"]

TRACEPARENT = "traceparent"
SCHEMA = "schema"
SCHEMA_VERSION = "schema-version"

_FORMAT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_SALT = os.urandom(16)  # derived trace ids differ between processes and runs
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)


def _span_id() -> str:
    span = os.urandom(8).hex()
    return span if span != "0" * 16 else "0" * 15 + "1"


def new_traceparent() -> str:
    """A new trace (sampled flag set)."""
    return f"00-{os.urandom(16).hex()}-{_span_id()}-01"


def valid(traceparent: str | None) -> bool:
    """True for a version-00 traceparent with non-zero ids."""
    m = _FORMAT.match(traceparent or "")
    return bool(m) and m.group(1) != "0" * 32 and m.group(2) != "0" * 16  # type: ignore[union-attr]


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid traceparent, else None."""
    return traceparent[3:35] if traceparent is not None and valid(traceparent) else None


def child(traceparent: str | None) -> str:
    """The next hop of ``traceparent``: same trace id and flags, a new span id (a new trace if invalid)."""
    if traceparent is None or not valid(traceparent):
        return new_traceparent()
    return f"00-{traceparent[3:35]}-{_span_id()}-{traceparent[-2:]}"


def derived(*identity: object) -> str:
    """A traceparent that this process derives again from the same ``identity`` (a segment's
    conversation, leg and utterance): the MQTT segment and its hard example share the trace."""
    digest = hashlib.sha256(_SALT + "|".join(map(str, identity)).encode()).hexdigest()
    trace, span = digest[:32], digest[32:48]
    return f"00-{trace}-{span}-01" if valid(f"00-{trace}-{span}-01") else new_traceparent()


def current() -> str | None:
    """The traceparent in force here (see :func:`use`)."""
    return _CURRENT.get()


def bind(traceparent: str | None) -> None:
    """Make ``traceparent`` current for the rest of this task (or thread)."""
    _CURRENT.set(traceparent)


@contextlib.contextmanager
def use(traceparent: str | None) -> Iterator[None]:
    """Make ``traceparent`` current for the block."""
    token = _CURRENT.set(traceparent)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def schema_of(payload: bytes) -> tuple[str, int] | None:
    """(type, v) of a msgpack envelope, read from its first two entries (never the whole payload)."""
    try:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(payload), 1))
        unpacker.feed(payload)
        n = unpacker.read_map_header()
        fields: dict[str, object] = {}
        for _ in range(min(n, 2)):
            key = unpacker.unpack()
            fields[str(key)] = unpacker.unpack()
    except Exception:
        return None
    kind, version = fields.get("type"), fields.get("v")
    return (kind, version) if isinstance(kind, str) and type(version) is int else None


def kafka_headers(payload: bytes, traceparent: str | None = None) -> list[tuple[str, bytes]]:
    """The headers of a Kafka record: schema, schema-version (from the envelope) and traceparent
    (``traceparent``, else the current one, else a new trace)."""
    headers: list[tuple[str, bytes]] = []
    schema = schema_of(payload)
    if schema is not None:
        headers += [(SCHEMA, schema[0].encode()), (SCHEMA_VERSION, str(schema[1]).encode())]
    tp = traceparent if valid(traceparent) else current()
    headers.append((TRACEPARENT, (tp if tp is not None and valid(tp) else new_traceparent()).encode()))
    return headers


def from_headers(headers: Iterable[tuple[str, bytes]] | None) -> str | None:
    """The valid traceparent among a Kafka record's headers, else None."""
    for key, value in headers or ():
        if key == TRACEPARENT:
            try:
                text = bytes(value).decode("ascii")
            except (UnicodeDecodeError, TypeError):
                return None
            return text if valid(text) else None
    return None


def mqtt_properties(traceparent: str | None) -> Properties | None:
    """PUBLISH properties with the ``traceparent`` user property (None without a valid one)."""
    if traceparent is None or not valid(traceparent):
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = (TRACEPARENT, traceparent)
    return props


def from_mqtt(properties: object) -> str | None:
    """The valid ``traceparent`` user property of a received MQTT v5 message, else None."""
    pairs: Sequence[tuple[str, str]] = getattr(properties, "UserProperty", None) or ()
    for key, value in pairs:
        if key == TRACEPARENT and valid(value):
            return value
    return None
