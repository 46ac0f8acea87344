"""Speech path benchmark: ``python -m bench.speech --json`` prints one JSON object.

Test audio: the field-radio corpus (:mod:`bench.speech_corpus`) as a two-voice conversation
(espeak-ng ``en-us`` on leg 1, ``en-us+f3`` on leg 2, alternating turns), sent as 20 ms RTP
G.711 packets (``devices.audio.packetize``) into the same per-leg pipeline the service runs
(``LegDecoder`` -> VAD -> ASR -> diarization -> ordered transcript).

- Quality (in process, as fast as the CPU allows): ``wer_domain_lm`` (30 sentences, domain
  LM), ``wer_domain_lm_loss5`` (5 % packet loss), ``wer_generic_lm`` (first 10 sentences,
  PocketSphinx's generic LM), ``der`` (two legs, collar 0.25 s), ``der_one_leg`` (both voices
  on one leg: the diarizer alone separates them), ``rtf`` (CPU seconds per audio second of
  one leg, single thread).
- Capacity: N legs (N/2 conversations) paced in real time through :class:`SpeechEngine`
  (the service minus MQTT, ``worker_threads`` = 2) for ``--seconds``; N grows while the
  leg passes: partial-latency p95 <= ``--max-partial-ms``, no packet dropped for overload and
  no backlog at the end. ``realtime_streams`` is the largest N that passed; latencies are
  reported at that N. Partial latency: newest audio in a partial arrived -> partial handed
  to the publisher. Final latency: last speech sample arrived -> segment released (includes
  the VAD's 0.4 s of trailing silence that ends an utterance).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time

import numpy as np

from bench.scoring import der, wer
from bench.speech_corpus import SENTENCES, Conversation, build_conversation, to_8k_int16
from devices.audio import packetize
from edge_agent.speech.diarize import Diarizer
from edge_agent.speech.pipeline import ConversationTracker, LegStream, PipelineConfig, StepOutput
from edge_agent.speech.service import SpeechEngine, SpeechServiceConfig
from models.asr import AsrModel, build_domain_lm
from models.speaker import SpeakerEncoder
from models.vad import SileroVad
from topics import names
from topics.transcript import TranscriptSegment

__all__ = ["run_conversation", "capacity_trial", "main"]


def _packets(conv: Conversation, loss: float, seed: int, origin: float) -> list[tuple[float, str, bytes]]:
    """All legs' packets as (media time, leg, bytes), interleaved, ``loss`` dropped."""
    rng = random.Random(seed)
    out = []
    for leg, audio in conv.legs.items():
        for t, data in packetize(to_8k_int16(audio), rng=rng, ntp_origin_s=origin):
            if rng.random() >= loss:
                out.append((t, leg, data))
    out.sort(key=lambda p: p[0])
    return out


def run_conversation(conv: Conversation, vad: SileroVad, encoder: SpeakerEncoder, asr: AsrModel, *,
                     loss: float = 0.0, seed: int = 1, conversation: str = "bench") -> tuple[list[TranscriptSegment], float]:
    """Decode a conversation in process (simulated clock); return its segments and CPU seconds."""
    origin = 1_700_000_000.0
    tracker = ConversationTracker(conversation, Diarizer(encoder), PipelineConfig(), clock=lambda: origin)
    streams = {leg: LegStream(conversation, leg, vad, asr, tracker) for leg in conv.legs}
    out = StepOutput()
    t0 = time.process_time()
    for t, leg, data in _packets(conv, loss, seed, origin):
        out.extend(streams[leg].push([(data, origin + t)], origin + t))
    end = origin + conv.duration_s + 1
    for stream in streams.values():
        out.extend(stream.close(end))
    out.segments += tracker.flush(end)
    return sorted(out.segments, key=lambda s: s.start_s), time.process_time() - t0


def _scores(conv: Conversation, segments: list[TranscriptSegment]) -> tuple[float, float]:
    hyp = " ".join(s.text for s in segments)
    ref = " ".join(t.text for t in conv.turns)
    d = der([(t.speaker, t.start_s, t.end_s) for t in conv.turns], [(s.speaker, s.start_s, s.end_s) for s in segments])
    return wer([ref], [hyp]), d


async def _capacity(n: int, seconds: float, conv: Conversation, vad: SileroVad, encoder: SpeakerEncoder,
                    asr: AsrModel, threads: int) -> dict[str, object]:
    sent: list[int] = []

    async def sink(out: StepOutput, topic: str) -> None:
        sent.append(len(out.partials) + len(out.segments))

    engine = SpeechEngine(vad=vad, encoder=encoder, asr=asr, sink=sink,
                          config=SpeechServiceConfig(worker_threads=threads, idle_close_s=1.0))
    # Each conversation starts at another point of the script, so utterances do not line up.
    legs = []
    total = int(seconds / 0.02)
    for i in range(n):
        c, leg = divmod(i, 2)
        name = list(conv.legs)[leg]
        shift = int((c * 3.7 % conv.duration_s) * 16000)
        audio = np.roll(conv.legs[name], -shift)
        pk = packetize(to_8k_int16(audio), rng=random.Random(i), ntp_origin_s=time.time())[:total]
        legs.append((names.audio("bench", f"conv{c}", name), pk))
    t0 = time.monotonic()
    for k in range(total):
        now = time.time()
        for topic, pk in legs:
            engine.submit(topic, pk[k][1], now)
        delay = t0 + (k + 1) * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the media clock
    backlog = engine.backlog
    c = engine.counters
    partial_p95 = c.p95(c.partial_latency_s)
    final_p95 = c.p95(c.final_latency_s)
    await engine.close()
    return {"streams": n, "partial_latency_p95_ms": round(partial_p95 * 1000, 1),
            "final_latency_p95_ms": round(final_p95 * 1000, 1), "partials": len(c.partial_latency_s),
            "overload_drops": c.packets_overload, "backlog_packets": backlog,
            "wall_s": round(time.monotonic() - t0, 2)}


def capacity_trial(n: int, seconds: float, conv: Conversation, vad: SileroVad, encoder: SpeakerEncoder,
                   asr: AsrModel, threads: int = 2) -> dict[str, object]:
    """N legs in real time for ``seconds``; latency percentiles and drops."""
    return asyncio.run(_capacity(n, seconds, conv, vad, encoder, asr, threads))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.speech", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the only output)")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each capacity trial")
    ap.add_argument("--streams", type=str, default="4,8,12,16,20,24", help="capacity trials, ascending")
    ap.add_argument("--max-partial-ms", type=float, default=1000.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer sentences, one capacity trial at 8 streams")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    n_sent = 12 if args.quick else len(SENTENCES)
    conv = build_conversation(SENTENCES[:n_sent])
    conv_generic = build_conversation(SENTENCES[:min(10, n_sent)])
    conv_one = build_conversation(SENTENCES[:min(12, n_sent)], one_leg=True)
    domain = build_domain_lm(SENTENCES)
    asr = domain.model(version="bench-domain")
    vad = SileroVad()
    encoder = SpeakerEncoder("cpu")

    segs, cpu = run_conversation(conv, vad, encoder, asr)
    wer_domain, der_two = _scores(conv, segs)
    rtf = cpu / (conv.duration_s * len(conv.legs))
    segs, _ = run_conversation(conv, vad, encoder, asr, loss=0.05, seed=5)
    wer_loss, der_loss = _scores(conv, segs)
    segs, _ = run_conversation(conv_generic, vad, encoder, AsrModel(version="generic"))
    wer_generic, _ = _scores(conv_generic, segs)
    segs, _ = run_conversation(conv_one, vad, encoder, asr)
    wer_one, der_one = _scores(conv_one, segs)

    trials = []
    best: dict[str, object] | None = None
    plan = [8] if args.quick else [int(s) for s in args.streams.split(",")]
    for n in plan:
        trial = capacity_trial(n, args.seconds, conv, vad, encoder, asr, args.threads)
        trial["ok"] = (trial["partial_latency_p95_ms"] <= args.max_partial_ms  # type: ignore[operator]
                       and trial["overload_drops"] == 0 and trial["backlog_packets"] <= 2 * n)
        trials.append(trial)
        if not args.json:
            print(json.dumps(trial), file=sys.stderr)
        if not trial["ok"]:
            break
        best = trial
    result = {
        "realtime_streams": best["streams"] if best else 0,
        "rtf": round(rtf, 4),
        "partial_latency_p95_ms": best["partial_latency_p95_ms"] if best else None,
        "final_latency_p95_ms": best["final_latency_p95_ms"] if best else None,
        "wer_domain_lm": round(wer_domain, 4),
        "wer_domain_lm_loss5": round(wer_loss, 4),
        "wer_generic_lm": round(wer_generic, 4),
        "der": round(der_two, 4),
        "der_loss5": round(der_loss, 4),
        "der_one_leg": round(der_one, 4),
        "wer_one_leg": round(wer_one, 4),
        "sentences": n_sent,
        "audio_s_per_leg": round(conv.duration_s, 1),
        "oov_words": {w: p for w, (p, _) in domain.oov.items()},
        "capacity_trials": trials,
        "trial_seconds": args.seconds,
        "cpus": os.cpu_count(),
        "asr": f"{asr.name}/{asr.version}",
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
