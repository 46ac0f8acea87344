"""KubeEdge device topics and their JSON formats (twin updates, mapper data updates)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping

from topics.codec import ContractError
from topics.names import check_id

__all__ = ["twin_update_topic", "device_data_topic", "twin_update", "device_data_update", "decode_twin_update"]


def twin_update_topic(namespace: str, name: str) -> str:
    """``$hw/events/device/{namespace}/{name}/twin/update`` (KubeEdge v1.17+ form)."""
    return f"$hw/events/device/{check_id(namespace, 'namespace')}/{check_id(name, 'device')}/twin/update"


def device_data_topic(device: str) -> str:
    """The mapper convention for device data: ``$ke/events/device/{device}/data/update``."""
    return f"$ke/events/device/{check_id(device, 'device')}/data/update"


def _typed(value: object) -> tuple[str, str]:
    if isinstance(value, bool):
        return ("true" if value else "false"), "boolean"
    if isinstance(value, int):
        return str(value), "int"
    if isinstance(value, float):
        return repr(value), "float"
    return str(value), "string"


def twin_update(reported: Mapping[str, object], timestamp_ms: int) -> bytes:
    """A twin update: each property's ``actual`` value as a string with its type."""
    twin = {}
    for key, value in reported.items():
        text, kind = _typed(value)
        twin[key] = {"actual": {"value": text}, "metadata": {"type": kind}}
    return json.dumps(
        {"event_id": str(uuid.uuid4()), "timestamp": timestamp_ms, "twin": twin},
        separators=(",", ":"),
    ).encode()


def device_data_update(values: Mapping[str, object], timestamp_ms: int) -> bytes:
    """A mapper data update: ``{"event_id","timestamp","data":{prop:{value,metadata}}}``."""
    data = {}
    for key, value in values.items():
        text, kind = _typed(value)
        data[key] = {"value": text, "metadata": {"timestamp": timestamp_ms, "type": kind}}
    return json.dumps(
        {"event_id": str(uuid.uuid4()), "timestamp": timestamp_ms, "data": data},
        separators=(",", ":"),
    ).encode()


def decode_twin_update(topic: str, payload: bytes) -> tuple[str, int, dict[str, str]]:
    """A twin update -> (device, timestamp ms, each property's actual value as a string).

    Raises :class:`~topics.codec.ContractError` for another topic or a malformed body."""
    parts = topic.split("/")
    if len(parts) != 7 or parts[:3] != ["$hw", "events", "device"] or parts[5:] != ["twin", "update"]:
        raise ContractError("bad_topic", f"not a twin update topic: {topic[:120]!r}")
    try:
        device = check_id(parts[4], "device")
        obj = json.loads(payload)
        stamp = obj.get("timestamp")
        twin = obj["twin"]
        values = {str(k): str(v["actual"]["value"]) for k, v in twin.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ContractError("bad_twin_update", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        raise ContractError("bad_twin_update", f"timestamp {stamp!r}")
    return device, stamp, values
