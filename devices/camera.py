"""Camera simulator: JPEG frames over MQTT (paho-mqtt, QoS 1) at a set rate, status on its twin.

Frames come from a folder of images, or are made from the real photos in the artifact
cache (astronaut, group photo) in several sizes, crops, mirror images and exposures.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from common.errors import BrokerUnreachable
from common.mqtt_security import configure_paho
from common.settings import MqttSettings
from devices.acks import AckWatch, PublishRefused
from devices.placer import DevicePlacer, Prepared
from models.artifacts import path_of
from topics import names
from topics.codec import now_ms
from topics.kubeedge import twin_update, twin_update_topic
from topics.vision import Frame, encode_frame, encode_result

__all__ = ["CameraStats", "face_test_photos", "load_folder", "photo_frames", "run_camera", "main"]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


@dataclass(slots=True)
class CameraStats:
    """What the camera did. ``sent_at`` maps seq -> wall-clock ms of capture."""

    device: str
    frames_sent: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    sent_at: dict[int, int] = field(default_factory=dict)


def _jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def _read_photo(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return image


def load_folder(folder: Path, max_side: int = 640) -> list[bytes]:
    """Every image in ``folder`` re-encoded as JPEG no larger than ``max_side``."""
    frames = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        frames.append(_jpeg(_fit(image, max_side)))
    if not frames:
        raise ValueError(f"no readable images in {folder}")
    return frames


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def photo_frames(cache_dir: Path, max_side: int = 640) -> list[bytes]:
    """Variants of the real photos: full, mirrored, darker, brighter, cropped."""
    photos = [
        _read_photo(path_of("photos_astronaut", "astronaut.png", cache_dir)),
        _read_photo(path_of("photos_group", "t1.jpg", cache_dir)),
    ]
    frames: list[bytes] = []
    for photo in photos:
        base = _fit(photo, max_side)
        h, w = base.shape[:2]
        variants = [
            base,
            cv2.flip(base, 1),
            cv2.convertScaleAbs(base, alpha=0.8, beta=-10),
            cv2.convertScaleAbs(base, alpha=1.15, beta=10),
            base[: int(h * 0.8), int(w * 0.1):],
        ]
        frames.extend(_jpeg(v) for v in variants)
    return frames


# Face boxes (x, y, w, h) in the pinned photos, from BlazeFace full range run by ai-edge-litert.
_CLOSE_UP_FACES = (
    ("photos_astronaut", "astronaut.png", (174, 70, 105, 105)),
    ("photos_group", "t1.jpg", (457, 290, 115, 115)),
    ("photos_group", "t1.jpg", (52, 275, 117, 116)),
)


def face_test_photos(cache_dir: Path, close_up_side: int = 480) -> list[tuple[str, np.ndarray, int]]:
    """(name, BGR image, faces in it): the group photo (6), the astronaut (1) and close-ups.

    A close-up is one face's box cropped so the face fills the whole frame, scaled to
    ``close_up_side`` px: what a camera a hand's length from a face sees.
    """
    out: list[tuple[str, np.ndarray, int]] = []
    for name, basename, count in (("photos_group", "t1.jpg", 6), ("photos_astronaut", "astronaut.png", 1)):
        out.append((basename, _read_photo(path_of(name, basename, cache_dir)), count))
    for i, (name, basename, (x, y, w, h)) in enumerate(_CLOSE_UP_FACES):
        photo = _read_photo(path_of(name, basename, cache_dir))
        face = photo[y:y + h, x:x + w]
        size = (close_up_side, round(close_up_side * h / w))
        out.append((f"close-up-{i}-{basename}", cv2.resize(face, size, interpolation=cv2.INTER_LINEAR), 1))
    return out


def run_camera(
    host: str,
    port: int,
    device: str,
    images: Sequence[bytes],
    *,
    fps: float,
    count: int | None = None,
    seconds: float | None = None,
    qos: int = 1,
    namespace: str = "default",
    stop: threading.Event | None = None,
    start_seq: int = 0,
    security: MqttSettings | None = None,
    connect_timeout_s: float = 10.0,
    placer: DevicePlacer | None = None,
    edge_node: str = "edge-node-1",
    case_id: str | None = None,
) -> CameraStats:
    """Publish frames until ``count`` frames or ``seconds`` pass (or ``stop``); fps <= 0: no pacing.

    ``security``: TLS and credentials (its host and port are not used). Raises
    :class:`ConnectRefused` when the broker refuses the connection (e.g. not authorised)
    or sends no CONNACK within ``connect_timeout_s``, and :class:`~devices.acks.PublishRefused` when it
    refuses a publish (PUBACK >= 0x80, e.g. 0x87: the ACL denies the topic; QoS 1 only).
    ``placer``: offloading policy (``devices.placer``): frames carry its deadline, each is sent whole,
    as crops, or served on the device and reported; it reads the load of ``edge_node`` from that edge's
    retained status, waiting up to the profile's ``status_wait_s`` for the first one before it starts."""
    if not images:
        raise ValueError("no images to send")
    if count is None and seconds is None:
        raise ValueError("give count or seconds")
    names.check_id(device, "device")
    stats = CameraStats(device=device)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"camera-{device}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(64)
    client.max_queued_messages_set(0)
    if security is not None:
        configure_paho(client, security)
    acks = AckWatch(client, security.username if security is not None else None)
    connack: list[ReasonCode] = []
    answered = threading.Event()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object = None) -> None:
        connack.append(reason)
        answered.set()

    client.on_connect = on_connect
    twin_topic = twin_update_topic(namespace, device)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        if not answered.wait(connect_timeout_s):
            raise ConnectRefused(f"no CONNACK from {host}:{port} within {connect_timeout_s:.0f} s")
        if connack[0].is_failure:
            raise ConnectRefused(f"{host}:{port} refused the connection: {connack[0]}")
        if placer is not None:
            status_topic, results_topic = names.edge_status(edge_node), names.vision_results(device)
            returns_topic = names.frame_returns(device)

            def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
                if m.topic == status_topic:
                    placer.on_status(bytes(m.payload))
                elif m.topic == results_topic:
                    placer.on_result(bytes(m.payload))
                elif m.topic == returns_topic and (back := placer.on_return(bytes(m.payload))) is not None:
                    placer.submit(back, "local", deliver)  # the edge handed it back: serve it here

            client.on_message = on_message
            if placer.policy == "auto":  # shed replies cut the edge share ahead of the next status
                client.subscribe(results_topic, qos=1)
                client.subscribe(returns_topic, qos=1)
            client.subscribe(status_topic, qos=1)
        acks.publish(twin_topic, twin_update({"status": "online", "fps": float(fps)}, now_ms()), qos=1)
        if placer is not None:
            placer.wait_status(status_topic)  # the edge's retained status, or a warning and a fallback
        period = 1.0 / fps if fps > 0 else 0.0
        t0 = time.monotonic()
        deadline = t0 + seconds if seconds is not None else float("inf")
        last: mqtt.MQTTMessageInfo | None = None
        sent_lock = threading.Lock()  # the device's workers publish too
        late_sends: list[mqtt.MQTTMessageInfo] = []

        def deliver(prep: Prepared) -> None:  # a device worker finished its part of a frame
            if prep.frame is not None:
                payload = encode_frame(prep.frame)
                info = acks.publish(names.frames(device), payload, qos=qos)
            else:
                assert prep.result is not None
                payload = b""  # served (or shed) on the device: only the report goes out
                info = acks.publish(names.vision_results(device), encode_result(prep.result), qos=qos)
            with sent_lock:
                stats.bytes_sent += len(payload)
                late_sends.append(info)

        seq = start_seq
        while (count is None or stats.frames_sent < count) and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            acks.check()
            data = images[seq % len(images)]
            captured = now_ms()
            frame = Frame(device=device, seq=seq, captured_at_ms=captured, encoding="jpeg", data=data,
                          case_id=case_id)
            payload = b""
            if placer is None:
                payload = encode_frame(frame)
                last = acks.publish(names.frames(device), payload, qos=qos)
            else:
                frame = dataclasses.replace(frame, deadline_ms=captured + placer.profile.deadline_ms)
                placement = placer.place(frame)
                if placer.fallback and placement != "local":  # the edge may hand it back
                    frame = dataclasses.replace(frame, fallback=True)
                    placer.sent_fallback(frame)
                if placement == "edge":
                    payload = encode_frame(frame)
                    last = acks.publish(names.frames(device), payload, qos=qos)
                else:  # the device's cores do their part off this loop: capture stays on schedule
                    placer.submit(frame, placement, deliver)
            stats.sent_at[seq] = captured
            stats.frames_sent += 1
            with sent_lock:
                stats.bytes_sent += len(payload)
            seq += 1
            if period:
                next_at = t0 + stats.frames_sent * period
                delay = next_at - time.monotonic()
                if delay > 0:
                    if stop is not None:
                        stop.wait(delay)
                    else:
                        time.sleep(delay)  # pacing the device's frame rate
        if placer is not None:
            placer.settle(placer.profile.deadline_ms / 1000.0 + 5.0)  # outcomes or returns of frames out
            placer.drain()
        for info in [*late_sends, *([last] if last is not None else [])]:
            info.wait_for_publish(timeout=30)
        acks.check()
        stats.seconds = time.monotonic() - t0
        status = {"status": "idle", "frames_sent": stats.frames_sent}
        acks.publish(twin_topic, twin_update(status, now_ms()), qos=1).wait_for_publish(timeout=10)
        acks.check()
    finally:
        if placer is not None:
            placer.drain()  # a refusal or an error left frames in the device's workers
        client.loop_stop()
        client.disconnect()
    return stats


class ConnectRefused(ConnectionError):
    """The broker refused the camera's connection (its CONNACK reason) or never answered."""


def main(argv: list[str] | None = None) -> int:
    from common.settings import load_settings

    settings = load_settings()
    p = argparse.ArgumentParser(prog="edge-offload device camera", description=__doc__)
    p.add_argument("--host", default=settings.mqtt.host)
    p.add_argument("--port", type=int, default=settings.mqtt.port)
    p.add_argument("--device", default="cam-1")
    p.add_argument("--images", type=Path, help="folder of images (default: the real photos)")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--policy", choices=("edge", "crops", "local", "auto"), default=None,
                   help="offloading: send the full frame, only face crops, run FER on the device, or choose "
                        "per frame from the edge's load, the link and the energy budget (default: plain frames)")
    p.add_argument("--edge-node", default=settings.edge.node_name, help="the edge whose status --policy reads")
    p.add_argument("--case", default=settings.device_profile.case_id,
                   help="case (warrant) id the frames belong to (default: device_profile.case_id)")
    args = p.parse_args(argv)
    images = load_folder(args.images) if args.images else photo_frames(settings.cache_dir)
    seconds = args.seconds if args.seconds is not None or args.count is not None else 10.0
    try:
        stats = run_camera(args.host, args.port, args.device, images, fps=args.fps,
                           count=args.count, seconds=seconds, qos=args.qos, security=settings.mqtt,
                           placer=None if args.policy is None else
                           DevicePlacer(args.policy, settings.device_profile, settings.cache_dir, args.device),
                           edge_node=args.edge_node, case_id=args.case)
    except (ConnectRefused, OSError) as exc:  # refused, unreachable, unknown host
        raise BrokerUnreachable("mqtt", f"{args.host}:{args.port}", exc) from None
    except PublishRefused as exc:
        print(f"edge-offload device camera: error: {exc}", file=sys.stderr)
        return 1
    print(f"sent {stats.frames_sent} frames ({stats.bytes_sent} bytes) in {stats.seconds:.1f}s")
    return 0
