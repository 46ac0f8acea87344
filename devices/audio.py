"""Field-unit simulator for intercepted calls: RTP (G.711) over MQTT, one raw packet per message.

Legs come from WAV files (any rate/channels, converted to 8 kHz mono) or from the RTP flows
of a packet capture. WAV legs get real RTP: sequence numbers from a random start, a random
SSRC and initial timestamp, 20 ms packets, the marker bit on the first packet of each
talkspurt, and an RFC 6051 NTP-64 header extension (id :data:`NTP64_EXT_ID`) with the
sampling time of each packet's first sample, so the edge can align legs even when this
simulator sends faster than real time. All legs share one start; ``offset_s`` delays a leg.

Impairments (seeded): packet loss, reordering (a packet is held back 1..``reorder_max``
packets) and jitter (uniform extra delay of 0..``jitter_ms``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import soxr
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from scipy.io import wavfile

from common.errors import BrokerUnreachable
from common.mqtt_security import configure_paho
from common.settings import MqttSettings
from devices.acks import AckWatch, PublishRefused
from devices.pcap import PcapRecord, read_pcap, write_pcap
from topics import g711, names
from topics.rtp import (
    CLOCK_RATE,
    NTP64_EXT_ID,
    ONE_BYTE_PROFILE,
    PAYLOAD_TYPES,
    RtpError,
    build_one_byte_extensions,
    build_rtp,
    parse_rtp,
    unix_to_ntp64,
)

__all__ = [
    "CODECS",
    "PTIME_S",
    "LegSource",
    "Impairments",
    "LegReport",
    "StreamReport",
    "load_wav",
    "wav_leg",
    "pcap_legs",
    "packetize",
    "stream_audio",
    "write_pcap",
    "PcapRecord",
    "main",
]

CODECS: dict[str, int] = {name: pt for pt, name in PAYLOAD_TYPES.items()}
PTIME_S = 0.02
_FRAME = round(PTIME_S * CLOCK_RATE)


@dataclass(frozen=True, slots=True)
class LegSource:
    """One leg to send: 8 kHz int16 mono ``samples``, or captured RTP ``packets`` as
    ``(media_time_s, rtp_bytes)`` with times relative to the leg's first packet."""

    name: str
    samples: np.ndarray | None = None
    packets: tuple[tuple[float, bytes], ...] | None = None
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        names.check_id(self.name, "leg")
        if (self.samples is None) == (self.packets is None):
            raise ValueError(f"leg {self.name!r}: give samples or packets, not both or neither")
        if self.offset_s < 0:
            raise ValueError(f"leg {self.name!r}: offset_s {self.offset_s} < 0")


@dataclass(frozen=True, slots=True)
class Impairments:
    """Network trouble to inject; all draws come from one RNG seeded with ``seed``."""

    loss: float = 0.0
    reorder: float = 0.0
    reorder_max: int = 3
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.loss < 1 and 0 <= self.reorder <= 1 and self.reorder_max >= 1 and self.jitter_ms >= 0):
            raise ValueError(f"invalid impairments {self}")


@dataclass(slots=True)
class LegReport:
    """What was sent on one leg. ``origin_s``: Unix time of the leg's first sample as written
    in the NTP extension (None without it); ``dropped_seqs``: sequence numbers lost on purpose."""

    leg: str
    topic: str
    ssrc: int
    first_seq: int
    first_timestamp: int
    packets: int = 0
    sent: int = 0
    dropped: int = 0
    reordered: int = 0
    audio_s: float = 0.0
    origin_s: float | None = None
    dropped_seqs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class StreamReport:
    device: str
    conversation: str
    legs: dict[str, LegReport]
    start_unix_s: float
    seconds: float = 0.0

    def as_json(self) -> str:
        return json.dumps({**asdict(self), "legs": {k: {**asdict(v), "dropped_seqs": len(v.dropped_seqs)}
                                                     for k, v in self.legs.items()}})


# --------------------------------------------------------------------------- sources

def load_wav(path: Path | str) -> np.ndarray:
    """A WAV file (integer or float PCM, any rate and channel count) as 8 kHz mono int16."""
    rate, data = wavfile.read(str(path))
    x = np.asarray(data)
    if x.dtype == np.uint8:
        x = (x.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / float(-np.iinfo(x.dtype).min)
    else:
        x = x.astype(np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != CLOCK_RATE:
        x = soxr.resample(x, rate, CLOCK_RATE, quality="HQ")
    return np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def wav_leg(name: str, path: Path | str, offset_s: float = 0.0) -> LegSource:
    """A leg that speaks the WAV file ``path``."""
    return LegSource(name=name, samples=load_wav(path), offset_s=offset_s)


def pcap_legs(path: Path | str) -> list[LegSource]:
    """One leg per RTP flow (source address, port and SSRC) in a capture, G.711 packets only.

    Legs are named ``{src}_{sport}`` (with ``_{n}`` added for further SSRCs of one source) and
    keep their capture timing: ``offset_s`` is the flow's first packet after the capture's first."""
    flows: dict[tuple[str, int, int], list[PcapRecord]] = {}
    for rec in read_pcap(path):
        try:
            packet = parse_rtp(rec.payload)
        except RtpError:
            continue  # SIP, RTCP, DNS, other codecs ...
        flows.setdefault((rec.src, rec.sport, packet.ssrc), []).append(rec)
    if not flows:
        raise ValueError(f"{path}: no G.711 RTP flows found")
    t0 = min(r.time_s for recs in flows.values() for r in recs)
    legs = []
    seen: dict[str, int] = {}
    for (src, sport, _ssrc), recs in flows.items():
        base = f"{src.replace(':', '-')}_{sport}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        first = recs[0].time_s
        legs.append(LegSource(name=base if n == 0 else f"{base}_{n}", offset_s=first - t0,
                              packets=tuple((r.time_s - first, r.payload) for r in recs)))
    return legs


# --------------------------------------------------------------------------- packets

def packetize(samples: np.ndarray, *, codec: str = "pcmu", rng: random.Random | None = None,
              ntp_origin_s: float | None = None, dtx_dbfs: float | None = None,
              ssrc: int | None = None, first_seq: int | None = None,
              first_timestamp: int | None = None) -> list[tuple[float, bytes]]:
    """8 kHz int16 samples as 20 ms RTP packets ``(media_time_s, bytes)``.

    Random SSRC, first sequence number and first timestamp unless given. ``ntp_origin_s``
    (Unix time of sample 0) adds the NTP-64 extension to every packet. ``dtx_dbfs``: frames
    quieter than this are not sent (silence suppression; the next packet has the marker bit)."""
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} not in {sorted(CODECS)}")
    rng = rng or random.Random()
    ssrc = rng.getrandbits(32) if ssrc is None else ssrc
    seq = rng.getrandbits(16) if first_seq is None else first_seq
    ts0 = rng.getrandbits(32) if first_timestamp is None else first_timestamp
    x = np.asarray(samples, dtype=np.int16)
    if len(x) % _FRAME:
        x = np.concatenate([x, np.zeros(_FRAME - len(x) % _FRAME, dtype=np.int16)])
    floor = None if dtx_dbfs is None else 32768.0 * 10 ** (dtx_dbfs / 20)
    out = []
    talkspurt = True
    for start in range(0, len(x), _FRAME):
        frame = x[start:start + _FRAME]
        if floor is not None and np.sqrt(np.mean(frame.astype(np.float64) ** 2)) < floor:
            talkspurt = True
            continue
        ext: dict[str, object] = {}
        if ntp_origin_s is not None:
            ext = {"extension_profile": ONE_BYTE_PROFILE,
                   "extension_data": build_one_byte_extensions(
                       {NTP64_EXT_ID: unix_to_ntp64(ntp_origin_s + start / CLOCK_RATE)})}
        out.append((start / CLOCK_RATE, build_rtp(
            g711.encode(codec, frame), payload_type=CODECS[codec], sequence=seq, timestamp=ts0 + start,
            ssrc=ssrc, marker=talkspurt, **ext)))  # type: ignore[arg-type]
        seq = (seq + 1) & 0xFFFF
        talkspurt = False
    return out


def _stamp_ntp(data: bytes, unix_s: float) -> bytes:
    """A captured packet re-sent with the NTP-64 extension (left as is if it has one)."""
    p = parse_rtp(data)
    if p.extension:
        return data
    return build_rtp(p.payload, payload_type=p.payload_type, sequence=p.sequence, timestamp=p.timestamp,
                     ssrc=p.ssrc, marker=p.marker, csrcs=p.csrcs, extension_profile=ONE_BYTE_PROFILE,
                     extension_data=build_one_byte_extensions({NTP64_EXT_ID: unix_to_ntp64(unix_s)}))


def _schedule(packets: list[tuple[float, bytes]], offset_s: float, imp: Impairments, rng: random.Random,
              report: LegReport) -> list[tuple[float, bytes]]:
    """Send times (media time + offset + jitter + reordering hold-back) of the packets not lost."""
    out = []
    for i, (t, data) in enumerate(packets):
        if imp.loss and rng.random() < imp.loss:
            report.dropped += 1
            report.dropped_seqs.append(int.from_bytes(data[2:4], "big"))
            continue
        at = offset_s + t + (rng.uniform(0, imp.jitter_ms / 1000) if imp.jitter_ms else 0.0)
        if imp.reorder and rng.random() < imp.reorder and i + 1 < len(packets):
            hold = rng.randint(1, imp.reorder_max)
            nxt = packets[min(i + hold, len(packets) - 1)][0]
            at += nxt - t + 1e-4  # just after the packet ``hold`` places later
            report.reordered += 1
        out.append((at, data))
    return out


# --------------------------------------------------------------------------- sending

def stream_audio(host: str, port: int, *, device: str, conversation: str, legs: Sequence[LegSource],
                 codec: str = "pcmu", speed: float = 1.0, impairments: Impairments | None = None,
                 seed: int | None = None, qos: int = 1, ntp: bool = True, dtx_dbfs: float | None = None,
                 client_id: str | None = None, stop: threading.Event | None = None,
                 connect_timeout_s: float = 10.0, security: MqttSettings | None = None,
                 case_id: str | None = None) -> StreamReport:
    """Publish every leg's RTP packets on ``names.audio(device, conversation, leg)``, all legs
    interleaved on one connection. ``speed``: 1 = real time, 2 = twice as fast, 0 = no pacing.
    Returns once every message is handed to the broker (QoS 1: acknowledged); raises
    :class:`~devices.acks.PublishRefused` when the broker refuses one (e.g. PUBACK 0x87: the ACL).
    ``security``: TLS and credentials (its host and port are not used). ``case_id``: the case (warrant)
    of the call, sent as the MQTT v5 user property ``names.CASE_PROPERTY`` of every packet."""
    if qos not in (0, 1):
        raise ValueError(f"qos {qos} not 0 or 1")
    if speed < 0:
        raise ValueError(f"speed {speed} < 0")
    if not legs or len({leg.name for leg in legs}) != len(legs):
        raise ValueError("give one or more legs with distinct names")
    props: Properties | None = None
    if case_id is not None:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [(names.CASE_PROPERTY, names.check_id(case_id, "case_id"))]
    imp = impairments or Impairments()
    rng = random.Random(seed)
    start_unix = time.time()
    report = StreamReport(device=device, conversation=conversation, legs={}, start_unix_s=start_unix)
    timeline: list[tuple[float, int, str, bytes]] = []
    for leg in legs:
        origin = start_unix + leg.offset_s if ntp else None
        if leg.samples is not None:
            packets = packetize(leg.samples, codec=codec, rng=rng, ntp_origin_s=origin, dtx_dbfs=dtx_dbfs)
        else:
            assert leg.packets is not None
            packets = [(t, _stamp_ntp(d, origin + t) if origin is not None else d) for t, d in leg.packets]
        if not packets:
            continue
        first = parse_rtp(packets[0][1])
        topic = names.audio(device, conversation, leg.name)
        lr = LegReport(leg=leg.name, topic=topic, ssrc=first.ssrc, first_seq=first.sequence,
                       first_timestamp=first.timestamp, packets=len(packets), origin_s=origin,
                       audio_s=packets[-1][0] + len(parse_rtp(packets[-1][1]).payload) / CLOCK_RATE)
        report.legs[leg.name] = lr
        timeline += [(at, len(timeline) + k, topic, data)
                     for k, (at, data) in enumerate(_schedule(packets, leg.offset_s, imp, rng, lr))]
    timeline.sort()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"audio-{device}-{conversation}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(256)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    failure: list[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            failure.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    if security is not None:
        configure_paho(client, security)
    acks = AckWatch(client, security.username if security is not None else None)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(connect_timeout_s) or failure:
            raise ConnectionError(f"MQTT connect to {host}:{port} failed: {failure or 'timeout'}")
        infos = []
        t0 = time.monotonic()
        by_topic = {lr.topic: lr for lr in report.legs.values()}
        for at, _, topic, data in timeline:
            if stop is not None and stop.is_set():
                break
            acks.check()
            if speed > 0:
                delay = t0 + at / speed - time.monotonic()
                if delay > 0:
                    if stop is not None:
                        stop.wait(delay)
                    else:
                        time.sleep(delay)  # pacing the media clock
            infos.append(acks.publish(topic, data, qos=qos, properties=props))
            by_topic[topic].sent += 1
        for info in infos:
            info.wait_for_publish(timeout=30)
        acks.check()
        report.seconds = time.monotonic() - t0
    finally:
        client.disconnect()
        client.loop_stop()
    return report


# --------------------------------------------------------------------------- CLI

def _leg_arg(value: str) -> tuple[str, Path, float]:
    name, sep, rest = value.partition("=")
    if not sep or not rest:
        raise argparse.ArgumentTypeError(f"--leg wants NAME=WAV[@OFFSET_S], got {value!r}")
    path, _, offset = rest.partition("@")
    try:
        return names.check_id(name, "leg"), Path(path), float(offset) if offset else 0.0
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """``edge-offload device audio``: send one conversation, print a JSON report."""
    from common.settings import load_settings

    settings = load_settings()
    p = argparse.ArgumentParser(prog="edge-offload device audio", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=settings.mqtt.host)
    p.add_argument("--port", type=int, default=settings.mqtt.port)
    p.add_argument("--device", default="tap-1")
    p.add_argument("--conversation", default=None, help="conversation id (default: a random call-XXXXXXXX)")
    p.add_argument("--leg", action="append", type=_leg_arg, default=[], metavar="NAME=WAV[@OFFSET_S]",
                   help="one leg per WAV file (repeatable); @OFFSET_S starts it later")
    p.add_argument("--pcap", type=Path, help="replay the G.711 RTP flows of a capture, one leg per flow")
    p.add_argument("--codec", choices=sorted(CODECS), default="pcmu")
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    p.add_argument("--loss", type=float, default=0.0, help="packet loss probability")
    p.add_argument("--reorder", type=float, default=0.0, help="probability a packet is held back")
    p.add_argument("--reorder-max", type=int, default=3, help="held back by at most this many packets")
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--dtx-dbfs", type=float, default=None, help="suppress frames quieter than this")
    p.add_argument("--no-ntp", action="store_true", help="leave out the NTP-64 header extension")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--case", default=settings.device_profile.case_id,
                   help="case (warrant) id of the call (default: device_profile.case_id)")
    args = p.parse_args(argv)
    if bool(args.leg) == bool(args.pcap):
        p.error("give --leg NAME=WAV (one or more) or --pcap FILE")
    legs = pcap_legs(args.pcap) if args.pcap else [wav_leg(n, path, off) for n, path, off in args.leg]
    conversation = args.conversation or f"call-{random.Random(args.seed).getrandbits(32):08x}"
    try:
        report = stream_audio(
            args.host, args.port, device=args.device, conversation=conversation, legs=legs, codec=args.codec,
            speed=args.speed, seed=args.seed, qos=args.qos, ntp=not args.no_ntp, dtx_dbfs=args.dtx_dbfs,
            impairments=Impairments(loss=args.loss, reorder=args.reorder, reorder_max=args.reorder_max,
                                    jitter_ms=args.jitter_ms), security=settings.mqtt,
            case_id=args.case)
    except PublishRefused as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # refused, unreachable, unknown host
        raise BrokerUnreachable("mqtt", f"{args.host}:{args.port}", exc) from None
    print(report.as_json(), flush=True)
    return 0
