"""Edge node status, retained on ``topics.names.edge_status(node)`` (also the MQTT will)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field

from topics.codec import field, pack, unpack

__all__ = ["STATUS_VERSION", "EdgeStatus", "encode_status", "decode_status"]

STATUS_VERSION = 1


@dataclass(frozen=True, slots=True)
class EdgeStatus:
    node: str
    online: bool
    at_ms: int
    models: dict[str, str] = dc_field(default_factory=dict)


def encode_status(status: EdgeStatus) -> bytes:
    return pack("edge_status", STATUS_VERSION, {
        "node": status.node, "online": status.online, "at_ms": status.at_ms, "models": dict(status.models),
    })


def decode_status(payload: bytes) -> EdgeStatus:
    obj = unpack(payload, "edge_status", frozenset({STATUS_VERSION}), 1 << 16)
    return EdgeStatus(node=field(obj, "node", str), online=field(obj, "online", bool),
                      at_ms=field(obj, "at_ms", int), models=dict(field(obj, "models", dict)))
