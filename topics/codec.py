"""msgpack envelopes: ``{"type": str, "v": int, ...fields}``, decoded with validation.

Every decode error is a :class:`ContractError` carrying a short machine-readable
``reason`` (used as a metric label and in dead-letter records) and a human ``detail``.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import msgpack

__all__ = ["ContractError", "pack", "unpack", "field", "opt_field", "opt_case", "now_ms", "payload_bytes"]

T = TypeVar("T")


class ContractError(ValueError):
    """A message that breaks the contract. ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def pack(kind: str, version: int, fields: dict[str, Any]) -> bytes:
    """Encode one envelope."""
    return msgpack.packb({"type": kind, "v": version, **fields}, use_bin_type=True)


def unpack(payload: bytes, kind: str, versions: frozenset[int], max_bytes: int) -> dict[str, Any]:
    """Decode and check the envelope of a ``kind`` message; return its map."""
    if len(payload) > max_bytes:
        raise ContractError("oversize", f"{len(payload)} bytes > limit {max_bytes}")
    if not payload:
        raise ContractError("invalid_msgpack", "empty payload")
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=1 << 16,
            max_array_len=1 << 16,
            max_map_len=1 << 10,
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise ContractError("invalid_msgpack", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise ContractError("invalid_msgpack", f"top level is {type(obj).__name__}, not a map")
    got_kind = obj.get("type")
    if got_kind != kind:
        raise ContractError("wrong_type", f"expected type {kind!r}, got {got_kind!r}")
    version = obj.get("v")
    if type(version) is not int or version not in versions:  # not True, 1.0, a list or a map
        raise ContractError("unsupported_version", f"{kind} v={version!r}, supported {sorted(versions)}")
    return obj


def field(obj: dict[str, Any], key: str, kind: type[T] | tuple[type, ...]) -> T:
    """A required field of the given type (bool is not accepted as int)."""
    if key not in obj:
        raise ContractError("missing_field", key)
    value = obj[key]
    if isinstance(value, bool) and kind is not bool:
        raise ContractError("bad_field", f"{key}: bool where {kind} expected")
    if not isinstance(value, kind):
        raise ContractError("bad_field", f"{key}: {type(value).__name__} where {kind} expected")
    return value  # type: ignore[return-value]


def opt_field(obj: dict[str, Any], key: str, kind: type[T] | tuple[type, ...], default: T) -> T:
    """An optional field: absent or None gives ``default``."""
    if obj.get(key) is None:
        return default
    return field(obj, key, kind)


def opt_case(obj: dict[str, Any], key: str = "case_id") -> str | None:
    """An optional id field (``case_id``; absent in older versions: None) that must be safe as a topic level."""
    from topics.names import check_id

    case = opt_field(obj, key, str, None)
    if case is not None:
        try:
            check_id(case, key)
        except ValueError as exc:
            raise ContractError("bad_field", str(exc)) from None
    return case


def now_ms() -> int:
    """Wall-clock time in milliseconds: the unit of every ``*_ms`` timestamp of the contract."""
    return int(time.time() * 1000)


def payload_bytes(payload: object) -> bytes:
    """An MQTT message payload as bytes (aiomqtt hands over bytes, or str/int/float/None)."""
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()
