"""Edge node status, retained on ``topics.names.edge_status(node)`` (also the MQTT will).

v2 adds ``load`` (published about once a second while online): what devices and the DC read
to decide where work runs. A v1 status still decodes (``load`` None).
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field

from topics.codec import ContractError, field, opt_field, pack, unpack

__all__ = ["STATUS_VERSION", "EdgeLoad", "EdgeStatus", "encode_status", "decode_status"]

STATUS_VERSION = 2
_VERSIONS = frozenset({1, 2})


@dataclass(frozen=True, slots=True)
class EdgeLoad:
    """Measured load of one edge node (all figures are estimates over the last seconds).

    ``queue_delay_ms``: how long a request arriving now would wait before its batch starts.
    ``service_ms``: service time per item, per model name. ``utilisation``: busy fraction of
    the worker (0..1). ``capacity_per_s``: items per second the edge can serve at that
    service time. ``queue_depth``: requests waiting now. ``overflow``: fraction of the requests of the
    last seconds that the edge shed or spilled to the DC (a device should look elsewhere).
    """

    queue_delay_ms: float
    service_ms: dict[str, float]
    utilisation: float
    capacity_per_s: float
    queue_depth: int = 0
    overflow: float = 0.0  # fraction of recent requests the edge did not serve itself (shed or spilled)


@dataclass(frozen=True, slots=True)
class EdgeStatus:
    node: str
    online: bool
    at_ms: int
    models: dict[str, str] = dc_field(default_factory=dict)
    load: EdgeLoad | None = None


def encode_status(status: EdgeStatus) -> bytes:
    load = status.load
    return pack("edge_status", STATUS_VERSION, {
        "node": status.node, "online": status.online, "at_ms": status.at_ms, "models": dict(status.models),
        "load": None if load is None else {
            "queue_delay_ms": round(load.queue_delay_ms, 3),
            "service_ms": {k: round(v, 3) for k, v in load.service_ms.items()},
            "utilisation": round(load.utilisation, 4),
            "capacity_per_s": round(load.capacity_per_s, 3),
            "queue_depth": load.queue_depth,
            "overflow": round(load.overflow, 4),
        },
    })


def _load_from_wire(obj: dict[str, object]) -> EdgeLoad:
    num = (int, float)
    service = field(obj, "service_ms", dict)
    if not all(isinstance(k, str) and isinstance(v, num) and not isinstance(v, bool) for k, v in service.items()):
        raise ContractError("bad_field", f"service_ms {service!r}")
    return EdgeLoad(queue_delay_ms=float(field(obj, "queue_delay_ms", num)),
                    service_ms={k: float(v) for k, v in service.items()},
                    utilisation=float(field(obj, "utilisation", num)),
                    capacity_per_s=float(field(obj, "capacity_per_s", num)),
                    queue_depth=field(obj, "queue_depth", int),
                    overflow=float(opt_field(obj, "overflow", num, 0.0)))


def decode_status(payload: bytes) -> EdgeStatus:
    obj = unpack(payload, "edge_status", _VERSIONS, 1 << 16)
    load = opt_field(obj, "load", dict, None)
    return EdgeStatus(node=field(obj, "node", str), online=field(obj, "online", bool),
                      at_ms=field(obj, "at_ms", int), models=dict(field(obj, "models", dict)),
                      load=None if load is None else _load_from_wire(load))
