"""``edge-offload tail``: follow result topics; one readable line per message, or JSON."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

import aiomqtt
import msgpack

from topics import names
from topics.codec import ContractError
from topics.deadletter import decode_dead_letter
from topics.status import decode_status
from topics.vision import VisionResult, decode_result

__all__ = ["describe", "format_line", "tail"]


def _vision_line(r: VisionResult) -> str:
    faces = ", ".join(f"{f.label} {f.confidence:.2f} @{f.box[0]},{f.box[1]} {f.box[2]}x{f.box[3]}" for f in r.faces)
    return (f"vision {r.device} #{r.seq} {len(r.faces)} face(s){': ' + faces if faces else ''} "
            f"[{r.model.name} {r.model.version}, batch {r.timing.batch_size}, {r.timing.total_ms:.1f} ms]")


def describe(payload: bytes) -> tuple[str, Any]:
    """(message type, decoded object or plain dict) of any envelope on our topics."""
    try:
        head = msgpack.unpackb(payload, raw=False)
        kind = head.get("type") if isinstance(head, dict) else None
    except Exception:  # noqa: BLE001 - anything undecodable is reported as such
        return "undecodable", {"size": len(payload)}
    decoders: dict[str, Callable[[bytes], Any]] = {
        "vision_result": decode_result,
        "dead_letter": decode_dead_letter,
        "edge_status": decode_status,
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
    return f"{kind} on {topic}: {obj}"


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


async def tail(host: str, port: int, topic_filter: str = names.RESULTS_FILTER, *, as_json: bool = False,
               count: int | None = None, out: TextIO = sys.stdout,
               subscribed: asyncio.Event | None = None) -> int:
    """Print messages matching ``topic_filter`` until ``count`` were printed (or forever).

    ``subscribed`` is set once the subscription is in place.
    """
    printed = 0
    async with aiomqtt.Client(host, port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(topic_filter, qos=1)
        if subscribed is not None:
            subscribed.set()
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, (bytes, bytearray)) else b""
            topic = str(message.topic)
            if as_json:
                kind, obj = describe(bytes(payload))
                out.write(json.dumps({"topic": topic, "type": kind, "message": _jsonable(obj)}) + "\n")
            else:
                out.write(format_line(topic, bytes(payload)) + "\n")
            out.flush()
            printed += 1
            if count is not None and printed >= count:
                break
    return printed


def main(argv: list[str] | None = None) -> int:
    import argparse

    from edge_offload.settings import load_settings

    settings = load_settings()
    p = argparse.ArgumentParser(prog="edge-offload tail", description=__doc__)
    p.add_argument("topic_filter", nargs="?", default=names.RESULTS_FILTER)
    p.add_argument("--host", default=settings.mqtt.host)
    p.add_argument("--port", type=int, default=settings.mqtt.port)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, default=None, help="stop after this many messages")
    args = p.parse_args(argv)
    try:
        asyncio.run(tail(args.host, args.port, args.topic_filter, as_json=args.json, count=args.count))
    except KeyboardInterrupt:
        pass
    return 0
