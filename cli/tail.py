"""``edge-offload tail``: follow result topics; one readable line per message, or JSON."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiomqtt
import msgpack

from common.errors import BrokerUnreachable
from common.mqtt_security import aiomqtt_connection
from common.settings import MqttSettings, load_settings, use_config_file
from topics import names
from topics.codec import ContractError, payload_bytes
from topics.deadletter import decode_dead_letter
from topics.offload import decode_frame_return
from topics.status import decode_status
from topics.vision import VisionResult, decode_result

__all__ = ["DEFAULT_FILTERS", "describe", "format_line", "tail", "build_parser", "mqtt_from_args", "main"]


def _vision_line(r: VisionResult) -> str:
    if r.outcome == "shed":
        return f"vision {r.device} #{r.seq} SHED by {r.node} ({r.shed_reason}) after {r.timing.total_ms:.1f} ms"
    faces = ", ".join(f"{f.label} {f.confidence:.2f} @{f.box[0]},{f.box[1]} {f.box[2]}x{f.box[3]}" for f in r.faces)
    where = "" if r.served_by == "edge" else f" served by {r.served_by} {r.node}"
    return (f"vision {r.device} #{r.seq} {len(r.faces)} face(s){': ' + faces if faces else ''}{where} "
            f"[{r.model.name} {r.model.version}, batch {r.timing.batch_size}, {r.timing.total_ms:.1f} ms]")


def describe(payload: bytes) -> tuple[str, Any]:
    """(message type, decoded object or plain dict) of any envelope on our topics."""
    try:
        head = msgpack.unpackb(payload, raw=False)
        kind = head.get("type") if isinstance(head, dict) else None
    except Exception:
        return "undecodable", {"size": len(payload)}
    decoders: dict[str, Callable[[bytes], Any]] = {
        "vision_result": decode_result,
        "dead_letter": decode_dead_letter,
        "edge_status": decode_status,
        "frame_return": decode_frame_return,
    }
    try:
        from topics import transcript  # speech results, when that contract is present

        decoders["transcript_segment"] = transcript.decode_segment
        decoders["partial_transcript"] = transcript.decode_partial
    except (ImportError, AttributeError):
        pass
    decoder = decoders.get(kind or "")
    if decoder is None:
        return str(kind), head
    try:
        return str(kind), decoder(payload)
    except ContractError as exc:
        return "invalid", {"type": kind, "error": str(exc)}


def format_line(topic: str, payload: bytes) -> str:
    """One human-readable line for a message."""
    kind, obj = describe(payload)
    if isinstance(obj, VisionResult):
        return _vision_line(obj)
    if kind == "dead_letter":
        return f"dead-letter {obj.stage} {obj.reason}: {obj.detail} ({obj.topic}, {obj.payload_size} B)"
    if kind == "frame_return":  # not an outcome: the device serves the frame and publishes that
        return f"returned {obj.device} #{obj.seq} by {obj.node} ({obj.reason}): the device serves it, not an outcome"
    if kind == "edge_status":
        return f"edge {obj.node} {'online' if obj.online else 'OFFLINE'} models={obj.models}"
    if kind == "transcript_segment":
        line = (f"transcript {obj.conversation} {obj.speaker} [{obj.start_s:.2f}-{obj.end_s:.2f}] "
                f"{obj.text!r} ({obj.confidence:.2f})")
        if getattr(obj, "revision", 0):  # a later version of a segment already shown
            line += (f" REVISED r{obj.revision} of {obj.leg}#{obj.utterance} seq {obj.seq} "
                     f"by {obj.source} {obj.model.name}/{obj.model.version}")
        return line
    if kind == "partial_transcript":
        return f"partial {obj.conversation} {obj.speaker} {obj.text!r}"
    return f"{kind} on {topic}: {_jsonable(obj)}"  # bytes show as their size, never raw


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return {"bytes": len(obj)}
    return obj


DEFAULT_FILTERS: tuple[str, ...] = (names.RESULTS_FILTER, names.DEAD_LETTER_FILTER, f"{names.ROOT}/edge/+/status")


def _stamp(at_s: float) -> str:
    return datetime.fromtimestamp(at_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def tail(mqtt: MqttSettings, topic_filters: Sequence[str] = DEFAULT_FILTERS, *, as_json: bool = False,
               count: int | None = None, qos: int = 1, timestamps: bool = True, out: TextIO = sys.stdout,
               subscribed: asyncio.Event | None = None) -> int:
    """Print messages matching ``topic_filters`` until ``count`` were printed (or forever).

    Connects as ``mqtt`` says (TLS, credentials); ``subscribed`` is set once the subscriptions
    are in place. A subscription the broker refuses (ACL) is an error, not a silent no-op.
    """
    printed = 0
    async with aiomqtt.Client(**aiomqtt_connection(mqtt), identifier=mqtt.client_id,
                              protocol=aiomqtt.ProtocolVersion.V5, keepalive=mqtt.keepalive_s) as client:
        for topic_filter in topic_filters:
            granted = await client.subscribe(topic_filter, qos=qos)
            _check_granted(topic_filter, granted)
        if subscribed is not None:
            subscribed.set()
        async for message in client.messages:
            payload = payload_bytes(message.payload)
            topic = str(message.topic)
            now = time.time()
            if as_json:
                kind, obj = describe(bytes(payload))
                line = json.dumps({"received_at": _stamp(now), "topic": topic, "type": kind,
                                   "message": _jsonable(obj)})
            else:
                line = format_line(topic, bytes(payload))
                if timestamps:
                    line = f"{_stamp(now)} {line}"
            out.write(line + "\n")
            out.flush()
            printed += 1
            if count is not None and printed >= count:
                break
    return printed


def _check_granted(topic_filter: str, granted: Any) -> None:
    """Raise if the SUBACK refused the subscription (MQTT v5 reason code >= 0x80)."""
    for code in granted if isinstance(granted, (list, tuple)) else [granted]:
        value = getattr(code, "value", code)
        if isinstance(value, int) and value >= 0x80:
            name = code.getName() if hasattr(code, "getName") else hex(value)
            raise PermissionError(f"subscription to {topic_filter} refused: {name}")


def _version() -> str:
    try:
        return importlib.metadata.version("edge-offload")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _positive(value: str) -> int:
    """An integer >= 1 (``-C 0`` would wait forever for nothing)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """mosquitto_sub habits: ``-h`` host, ``-p`` port, ``-t`` filter (repeatable), ``--help`` help."""
    p = argparse.ArgumentParser(
        prog="edge-offload tail", add_help=False,
        description="Follow result, dead-letter and edge-status topics; one line per message.",
        epilog="Defaults come from the settings (EDGE_OFFLOAD_MQTT__*, --config FILE). "
               "Image and audio bytes are never printed, only their size.")
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("--version", action="version", version=f"edge-offload {_version()}")
    p.add_argument("-h", "--host", help="broker host")
    p.add_argument("-p", "--port", type=int, help="broker port")
    p.add_argument("-t", "--topic", action="append", default=[], metavar="FILTER",
                   help="topic filter, repeatable (default: results, dead letters, edge status)")
    p.add_argument("filters", nargs="*", metavar="FILTER", help="more topic filters")
    p.add_argument("-u", "--username")
    p.add_argument("-P", "--password", help="prefer EDGE_OFFLOAD_MQTT__PASSWORD: argv is visible to ps")
    p.add_argument("--cafile", type=Path, help="CA certificate: connect over TLS")
    p.add_argument("--cert", type=Path, help="client certificate (mutual TLS)")
    p.add_argument("--key", type=Path, help="client private key")
    p.add_argument("--insecure", action="store_true", help="do not check the broker's host name")
    p.add_argument("-i", "--id", dest="client_id", help="client id (default: edge-offload-tail-PID)")
    p.add_argument("-q", "--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("-C", "--count", type=_positive, default=None, help="exit after this many messages (>= 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--no-timestamps", dest="timestamps", action="store_false",
                   help="leave out the receive time")
    p.add_argument("--config", type=Path, help="TOML settings file")
    return p


def mqtt_from_args(args: argparse.Namespace, base: MqttSettings) -> MqttSettings:
    """The settings' MQTT section with the command line's overrides applied (validated)."""
    update: dict[str, Any] = {"client_id": args.client_id or f"edge-offload-tail-{os.getpid()}"}
    for key, value in (("host", args.host), ("port", args.port), ("username", args.username),
                       ("password", args.password), ("ca_file", args.cafile), ("cert_file", args.cert),
                       ("key_file", args.key)):
        if value is not None:
            update[key] = value
    if args.insecure:
        update["tls_insecure"] = True
    return MqttSettings.model_validate({**base.model_dump(), **update})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config is not None:
        use_config_file(args.config)
    mqtt = mqtt_from_args(args, load_settings().mqtt)
    filters = [*args.topic, *args.filters] or list(DEFAULT_FILTERS)
    try:
        asyncio.run(tail(mqtt, filters, as_json=args.json, count=args.count, qos=args.qos,
                         timestamps=args.timestamps))
    except KeyboardInterrupt:
        pass
    except aiomqtt.MqttError as exc:
        raise BrokerUnreachable("mqtt", f"{mqtt.host}:{mqtt.port}", exc) from None
    return 0
