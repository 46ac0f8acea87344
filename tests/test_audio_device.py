"""Field-unit audio simulator: WAV/pcap sources, RTP packetisation, impairments, and the whole
signal path through a real Mosquitto into LegDecoder."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import soxr
from paho.mqtt.enums import CallbackAPIVersion
from scipy.io import wavfile

from cli.brokers import MosquittoBroker
from devices import audio
from devices.audio import Impairments, LegSource, load_wav, packetize, pcap_legs, stream_audio, write_pcap
from devices.pcap import PcapRecord, _ipv4_udp, read_pcap
from edge_agent.speech.stream import SAMPLE_RATE, LegDecoder, PcmChunk
from topics import g711, names
from topics.rtp import NTP64_EXT_ID, ntp64_to_unix, one_byte_extensions, parse_rtp

SENTENCE = "The shipment arrives at the northern warehouse on Tuesday night, bring the documents."


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    path = tmp_path_factory.mktemp("speech") / "sentence.wav"
    subprocess.run(["espeak-ng", "-w", str(path), SENTENCE], check=True, capture_output=True)
    return path


# --------------------------------------------------------------------------- sources

@pytest.mark.parametrize(("rate", "dtype", "channels"), [
    (44100, np.float32, 2), (16000, np.int16, 1), (22050, np.int32, 2), (8000, np.uint8, 1)])
def test_load_wav_any_rate_and_channels(tmp_path: Path, rate: int, dtype: type, channels: int) -> None:
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    if dtype == np.float32:
        data = tone.astype(np.float32)
    elif dtype == np.uint8:
        data = np.round(tone * 127 + 128).astype(np.uint8)
    else:
        data = np.round(tone * np.iinfo(dtype).max).astype(dtype)
    if channels == 2:
        data = np.stack([data, data], axis=1)
    path = tmp_path / "tone.wav"
    wavfile.write(path, rate, data)
    x = load_wav(path)
    assert x.dtype == np.int16 and x.ndim == 1
    assert abs(len(x) - 8000) <= 1
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 8000 / len(x) - 440) < 2
    assert 0.45 < np.abs(x[200:-200]).max() / 32768 < 0.55


def test_packetize_makes_real_rtp() -> None:
    x = (np.sin(np.arange(8000) / 5) * 10000).astype(np.int16)
    pk = packetize(x, codec="pcma", ssrc=0xCAFE, first_seq=65530, first_timestamp=2**32 - 320,
                   ntp_origin_s=1_700_000_000.0)
    assert len(pk) == 50
    parsed = [parse_rtp(d) for _, d in pk]
    assert [p.sequence for p in parsed[:8]] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1]
    assert all((b.timestamp - a.timestamp) % 2**32 == 160 for a, b in zip(parsed, parsed[1:]))
    assert {p.ssrc for p in parsed} == {0xCAFE} and {p.payload_type for p in parsed} == {8}
    assert [p.marker for p in parsed] == [True] + [False] * 49
    assert b"".join(p.payload for p in parsed) == g711.alaw_encode(x)
    ntp = [ntp64_to_unix(one_byte_extensions(p)[NTP64_EXT_ID]) for p in parsed]
    np.testing.assert_allclose(np.diff(ntp), 0.02, atol=1e-6)
    assert [t for t, _ in pk][:3] == [0.0, 0.02, 0.04]


def test_packetize_random_start_differs_per_seed() -> None:
    x = np.zeros(1600, dtype=np.int16)
    a = parse_rtp(packetize(x, rng=random.Random(1))[0][1])
    b = parse_rtp(packetize(x, rng=random.Random(2))[0][1])
    assert (a.ssrc, a.sequence, a.timestamp) != (b.ssrc, b.sequence, b.timestamp)


def test_packetize_silence_suppression_marks_talkspurts() -> None:
    loud = (np.sin(np.arange(1600) / 3) * 8000).astype(np.int16)
    x = np.concatenate([loud, np.zeros(3200, dtype=np.int16), loud])
    parsed = [parse_rtp(d) for _, d in packetize(x, dtx_dbfs=-50, first_seq=10, first_timestamp=0)]
    assert len(parsed) == 20
    assert [p.sequence for p in parsed] == list(range(10, 30))  # sequence stays contiguous
    assert parsed[10].timestamp - parsed[9].timestamp == 160 + 3200  # the clock keeps running
    assert [i for i, p in enumerate(parsed) if p.marker] == [0, 10]


def test_impairments_are_seeded_and_bounded() -> None:
    pk = packetize(np.zeros(160 * 2000, dtype=np.int16), first_seq=0)
    imp = Impairments(loss=0.05, reorder=0.1, reorder_max=3, jitter_ms=0)

    def run(seed: int) -> tuple[list[int], audio.LegReport]:
        report = audio.LegReport(leg="a", topic="t", ssrc=0, first_seq=0, first_timestamp=0)
        sched = sorted(audio._schedule(pk, 0.0, imp, random.Random(seed), report))
        return [parse_rtp(d).sequence for _, d in sched], report

    order, report = run(7)
    assert order == run(7)[0] and order != run(8)[0]
    assert 60 <= report.dropped <= 140 and len(order) == 2000 - report.dropped
    assert sorted(report.dropped_seqs) == sorted(set(range(2000)) - set(order))
    assert 140 <= report.reordered <= 260
    assert max(max(order[:i + 1]) - s for i, s in enumerate(order)) <= 3  # displacement bound


# --------------------------------------------------------------------------- pcap

def _records() -> list[PcapRecord]:
    x = (np.sin(np.arange(1600) / 4) * 9000).astype(np.int16)
    recs = [PcapRecord(100.0 + t, "10.0.0.1", 4000, "10.0.0.2", 5000, d)
            for t, d in packetize(x, ssrc=1, first_seq=1, first_timestamp=0)]
    recs += [PcapRecord(100.5 + t, "10.0.0.2", 5000, "10.0.0.1", 4000, d)
             for t, d in packetize(x, codec="pcma", ssrc=2, first_seq=1, first_timestamp=0)]
    recs.append(PcapRecord(100.01, "10.0.0.1", 5060, "10.0.0.2", 5060, b"INVITE sip:bob@example.com SIP/2.0\r\n"))
    recs.append(PcapRecord(100.02, "10.0.0.1", 4001, "10.0.0.2", 5001, bytes.fromhex("80c80006") + bytes(24)))
    return sorted(recs, key=lambda r: r.time_s)


@pytest.mark.parametrize("linktype", ["ethernet", "sll", "raw"])
def test_pcap_round_trip(tmp_path: Path, linktype: str) -> None:
    recs = _records()
    path = tmp_path / "call.pcap"
    assert write_pcap(path, recs, linktype=linktype) == len(recs)
    back = read_pcap(path)
    assert [(r.src, r.sport, r.dst, r.dport, r.payload) for r in back] == \
           [(r.src, r.sport, r.dst, r.dport, r.payload) for r in recs]
    np.testing.assert_allclose([r.time_s for r in back], [r.time_s for r in recs], atol=1e-6)


def test_pcapng_with_nanosecond_interface_and_vlan(tmp_path: Path) -> None:
    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    rec = _records()[0]
    ip = _ipv4_udp(rec)
    frame = bytes(12) + b"\x81\x00\x00\x07" + b"\x08\x00" + ip  # 802.1Q-tagged Ethernet
    ts = 1_700_000_000_123_456_789
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HHB3x", 9, 1, 9) + bytes(4))
    epb = block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame)
    path = tmp_path / "call.pcapng"
    path.write_bytes(shb + idb + epb)
    (back,) = read_pcap(path)
    assert (back.src, back.sport, back.payload) == (rec.src, rec.sport, rec.payload)
    assert back.time_s == pytest.approx(1_700_000_000.123456789, abs=1e-6)


def test_pcap_legs_one_per_rtp_flow(tmp_path: Path) -> None:
    path = tmp_path / "call.pcap"
    write_pcap(path, _records())
    legs = {leg.name: leg for leg in pcap_legs(path)}
    assert sorted(legs) == ["10.0.0.1_4000", "10.0.0.2_5000"]  # SIP and RTCP skipped
    assert legs["10.0.0.1_4000"].offset_s == pytest.approx(0.0)
    assert legs["10.0.0.2_5000"].offset_s == pytest.approx(0.5)
    assert legs["10.0.0.2_5000"].packets is not None and len(legs["10.0.0.2_5000"].packets) == 10
    assert parse_rtp(legs["10.0.0.2_5000"].packets[0][1]).payload_type == 8


def test_leg_source_validation() -> None:
    with pytest.raises(ValueError):
        LegSource(name="a")
    with pytest.raises(ValueError):
        LegSource(name="bad/leg", samples=np.zeros(10, dtype=np.int16))


# --------------------------------------------------------------------------- through the broker

class Collector:
    """Subscribes to leg topics and decodes each leg live, as the edge would."""

    def __init__(self, port: int, topics: dict[str, str], conversation: str) -> None:
        self.decoders = {leg: LegDecoder(conversation, leg) for leg in topics}
        self.leg_of = {topic: leg for leg, topic in topics.items()}
        self.chunks: dict[str, list[PcmChunk]] = {leg: [] for leg in topics}
        self.raw: dict[str, list[bytes]] = {leg: [] for leg in topics}
        self.rejected: list = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{conversation}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics.values()])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        leg = self.leg_of[msg.topic]
        res = self.decoders[leg].push(msg.payload, time.time())
        with self._cond:
            self.raw[leg].append(msg.payload)
            self.chunks[leg] += res.chunks
            self.rejected += res.rejected
            self._cond.notify_all()

    def wait_for(self, counts: dict[str, int], timeout: float = 20.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: all(len(self.raw[k]) >= n for k, n in counts.items()), timeout)
        assert ok, {k: len(v) for k, v in self.raw.items()}

    def finish(self) -> dict[str, np.ndarray]:
        self.client.disconnect()
        self.client.loop_stop()
        out = {}
        for leg, dec in self.decoders.items():
            self.chunks[leg] += dec.flush(time.time() + 10, final=True)
            for a, b in zip(self.chunks[leg], self.chunks[leg][1:]):
                assert b.start_s == pytest.approx(a.end_s), "chunks of a leg are contiguous"
            out[leg] = np.concatenate([c.samples for c in self.chunks[leg]])
        return out


def _best_correlation(y: np.ndarray, ref: np.ndarray, lag: int) -> float:
    n = min(len(y), len(ref) - lag)
    return float(np.corrcoef(y[:n], ref[lag:lag + n])[0, 1])


def test_speech_through_mosquitto_with_loss_and_reordering(mosquitto: MosquittoBroker, speech_wav: Path) -> None:
    device, conversation = "tap-it1", "call-it1"
    topic = names.audio(device, conversation, "caller")
    collector = Collector(mosquitto.port, {"caller": topic}, conversation)
    report = stream_audio("127.0.0.1", mosquitto.port, device=device, conversation=conversation,
                          legs=[audio.wav_leg("caller", speech_wav)], codec="pcmu", speed=0, seed=11,
                          impairments=Impairments(loss=0.05, reorder=0.05, reorder_max=3), qos=1)
    leg = report.legs["caller"]
    assert leg.dropped >= 3 and leg.reordered >= 3 and leg.sent == leg.packets - leg.dropped
    collector.wait_for({"caller": leg.sent})
    y = collector.finish()["caller"]
    dec = collector.decoders["caller"]
    c = dec.counters

    # The injected loss shows in the counters: every hole between the first and last packet
    # received is counted lost (a packet that came too late is both lost and late).
    seqs = sorted((parse_rtp(d).sequence - leg.first_seq) % 65536 for d in collector.raw["caller"])
    inside = [s for s in ((q - leg.first_seq) % 65536 for q in leg.dropped_seqs) if seqs[0] < s < seqs[-1]]
    assert c.lost == len(inside) + c.late and len(inside) >= 3
    assert c.played == leg.sent - c.late and c.concealed >= 160 * len(inside)
    assert c.reordered + c.late >= 1 and collector.rejected == [] and c.bad == {}

    # Length: the whole sentence, minus at most the packets dropped at its very ends.
    ref8 = load_wav(speech_wav)
    ref = soxr.resample(ref8.astype(np.float32) / 32768, 8000, SAMPLE_RATE)
    edge_loss = (len(leg.dropped_seqs) - len(inside)) * 320
    assert len(ref) - edge_loss - 320 <= len(y) <= len(ref) + 320

    # Alignment from the NTP extension, then the waveform: strongly correlated with the original.
    lag = round((dec.origin_s - leg.origin_s) * SAMPLE_RATE)
    assert 0 <= lag <= edge_loss
    corr = _best_correlation(y, ref, lag)
    assert corr > 0.9, corr
    assert _best_correlation(y, ref, lag + 40) < corr - 0.2  # and only at that alignment


def test_two_legs_from_the_cli_align_on_the_shared_clock(mosquitto: MosquittoBroker, speech_wav: Path,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    device, conversation = "tap-it2", "call-it2"
    topics = {leg: names.audio(device, conversation, leg) for leg in ("a", "b")}
    collector = Collector(mosquitto.port, topics, conversation)
    rc = audio.main(["--host", "127.0.0.1", "--port", str(mosquitto.port), "--device", device,
                     "--conversation", conversation, "--leg", f"a={speech_wav}", "--leg", f"b={speech_wav}@0.5",
                     "--codec", "pcma", "--speed", "0", "--seed", "3", "--qos", "0"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    collector.wait_for({leg: report["legs"][leg]["sent"] for leg in topics})
    y = collector.finish()
    chunks = collector.chunks
    # Both legs start at 0 on their own clocks; the shared clock puts b 0.5 s after a.
    assert chunks["a"][0].start_s == chunks["b"][0].start_s == 0.0
    assert chunks["b"][0].origin_s - chunks["a"][0].origin_s == pytest.approx(0.5, abs=1e-4)
    assert chunks["a"][0].ssrc != chunks["b"][0].ssrc
    assert np.corrcoef(y["a"], y["b"][:len(y["a"])])[0, 1] > 0.99  # same speech, PCMA, no loss


def test_pcap_replay_keeps_the_captured_rtp(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    path = tmp_path / "call.pcap"
    recs = _records()
    write_pcap(path, recs, linktype="sll")
    legs = pcap_legs(path)
    device, conversation = "tap-it3", "call-it3"
    topics = {leg.name: names.audio(device, conversation, leg.name) for leg in legs}
    collector = Collector(mosquitto.port, topics, conversation)
    report = stream_audio("127.0.0.1", mosquitto.port, device=device, conversation=conversation,
                          legs=legs, speed=0, seed=1)
    collector.wait_for({k: v.sent for k, v in report.legs.items()})
    collector.finish()
    for leg in legs:
        sent = [parse_rtp(d) for _, d in leg.packets or ()]
        got = [parse_rtp(d) for d in collector.raw[leg.name]]
        assert [(p.ssrc, p.sequence, p.timestamp, p.payload) for p in got] == \
               [(p.ssrc, p.sequence, p.timestamp, p.payload) for p in sent]
        assert all(NTP64_EXT_ID in one_byte_extensions(p) for p in got)  # stamped with capture time
    assert collector.decoders["10.0.0.2_5000"].origin_s - collector.decoders["10.0.0.1_4000"].origin_s == \
        pytest.approx(0.5, abs=1e-4)


def test_paced_sending_with_jitter(mosquitto: MosquittoBroker) -> None:
    device, conversation = "tap-it4", "call-it4"
    x = (np.sin(np.arange(16000) * 2 * np.pi * 300 / 8000) * 12000).astype(np.int16)  # 2 s tone
    topic = names.audio(device, conversation, "a")
    collector = Collector(mosquitto.port, {"a": topic}, conversation)
    report = stream_audio("127.0.0.1", mosquitto.port, device=device, conversation=conversation,
                          legs=[LegSource(name="a", samples=x)], speed=10, seed=5,
                          impairments=Impairments(jitter_ms=50))
    assert 0.19 <= report.seconds < 1.0  # 2 s of audio at 10x real time
    collector.wait_for({"a": report.legs["a"].sent})
    y = collector.finish()["a"]
    c = collector.decoders["a"].counters
    assert c.reordered > 0 and c.lost == 0 and c.late == 0  # 50 ms jitter fits the 60 ms buffer
    np.testing.assert_allclose(y[:-48], soxr.resample(g711.ulaw_decode(g711.ulaw_encode(x)) / 32768,
                                                       8000, 16000)[:len(y) - 48], atol=0.02)
