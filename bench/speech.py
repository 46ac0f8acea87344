"""Speech path benchmark: ``python -m bench.speech --json`` prints one JSON object.

First the real recordings (:mod:`bench.real_speech`, :mod:`sim.real_speech`): ``wer_real_edge``,
``wer_real_final`` (after the DC's revisions), ``wer_real_call_*``, ``wer_real_conference_*``,
``wer_real_read_*`` on the dev part, the same keys with ``_heldout`` on the held-out part, and
the speaker figures of ``bench.real_speech.SPEAKER_HOOKS``. Synthetic voices come after.

All calls go as 20 ms RTP G.711 packets (``devices.audio.packetize``) into the same per-leg
pipeline the service runs (``LegDecoder`` -> VAD -> Whisper partials/finals -> diarization
-> ordered transcript). WER is :func:`models.text.wer` (one normalisation on both sides).

- Held-out quality (sentences no model, prompt or vocabulary saw; :mod:`bench.heldout_speech`):
  a two-speaker call in Piper's natural voice (and a pitched copy), background noise at
  10 dB SNR, G.711, 2 % packet loss. ``wer_heldout_edge``: the edge's final segments;
  ``wer_heldout_dc``: the same transcript after the DC revised the segments the miner sent
  (confidence below ``--mine-below``; :class:`cloud_trainer.speech_revise.SpeechReviser`:
  Whisper base + tiny.en, beam 5, temperature fallback, conversation context);
  ``wer_heldout_edge_babble``: babble instead of hum; ``wer_heldout_espeak_edge``: four
  espeak-ng voices, clean G.711. ``der``: the held-out call, collar 0.25 s.
- Field corpus (espeak-ng, two voices, the radio net's sentences as vocabulary prompt):
  ``wer_field_prompt``, ``der_field``, ``der_one_leg`` (both voices on one leg, marked shared).
- Capacity: N legs (N/2 conversations of the held-out call) paced in real time through
  :class:`SpeechEngine` (the service minus MQTT) for ``--seconds``, at every N of ``--streams``
  (2 to 16: the degradation curve, ``capacity_trials``). A trial passes with partial-latency
  p95 <= ``--max-partial-ms``, final-latency p95 <=
  ``--max-final-ms``, no packet dropped for overload, and the packets queued when the last one
  arrived all handled within the final bound (``drain_s``; :func:`trial_ok`).
  ``realtime_streams`` is the largest N before the first that failed; latencies are reported at that N.
  Partial latency: newest audio in a partial arrived -> partial handed to the publisher.
  Final latency: last speech sample arrived -> segment released (includes the VAD's 0.4 s
  of trailing silence that ends an utterance).
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

from bench.heldout_speech import ESPEAK_VOICES, HELDOUT, PIPER, build_heldout_call, check_heldout
from bench.record import add_record_flag, finish, start
from cloud_trainer.speech_revise import SpeechReviser
from common.settings import load_settings
from common.speech_settings import DiarizerConfig
from devices.audio import packetize
from edge_agent.speech.diarize import Diarizer
from edge_agent.speech.pipeline import ConversationTracker, LegStream, PipelineConfig, StepOutput, Utterance
from edge_agent.speech.service import SpeechEngine, SpeechServiceConfig, warm_up
from models.edge_asr import AsrVocabulary, EdgeAsr, load_edge_asr, load_whisper, prompt_from_sentences
from models.speaker import SpeakerEncoder
from models.vad import SileroVad
from sim.scoring import der, wer
from sim.speech_corpus import SENTENCES, Conversation, build_conversation, to_8k_int16
from topics import names
from topics.transcript import TranscriptSegment

__all__ = ["run_conversation", "capacity_trial", "trial_ok", "main"]


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


def run_conversation(conv: Conversation, vad: SileroVad, encoder: SpeakerEncoder, asr: EdgeAsr, *,
                     loss: float = 0.0, seed: int = 1, conversation: str = "bench",
                     config: PipelineConfig | None = None
                     ) -> tuple[list[TranscriptSegment], float, list[Utterance]]:
    """Decode a conversation in process (simulated clock); return its segments, CPU seconds
    and the finished utterances (with their audio)."""
    origin = 1_700_000_000.0
    config = config or PipelineConfig()
    tracker = ConversationTracker(conversation, Diarizer(encoder, config.diarizer), config, clock=lambda: origin)
    streams = {leg: LegStream(conversation, leg, vad, asr, tracker) for leg in conv.legs}
    out = StepOutput()
    t0 = time.process_time()
    for t, leg, data in _packets(conv, loss, seed, origin):
        out.extend(streams[leg].push([(data, origin + t)], origin + t))
    end = origin + conv.duration_s + 1
    for stream in streams.values():
        out.extend(stream.close(end))
    out.segments += tracker.flush(end)
    return sorted(out.segments, key=lambda s: s.start_s), time.process_time() - t0, out.utterances


async def _capacity(n: int, seconds: float, conv: Conversation, vad: SileroVad, encoder: SpeakerEncoder,
                    asr: EdgeAsr, threads: int, pipeline: PipelineConfig | None) -> dict[str, object]:
    sent: list[int] = []

    async def sink(out: StepOutput, topic: str) -> None:
        sent.append(len(out.partials) + len(out.segments))

    warm_up(vad, encoder, asr)  # as the service does at load: no first-call set-up in the figures
    engine = SpeechEngine(vad=vad, encoder=encoder, asr=asr, sink=sink,
                          config=SpeechServiceConfig(worker_threads=threads, idle_close_s=1.0,
                                                     pipeline=pipeline or PipelineConfig()))
    # Each conversation starts at another point of the script, so utterances do not line up.
    legs = []
    total = int(seconds / 0.02)
    for i in range(n):
        c, leg = divmod(i, 2)
        name = list(conv.legs)[leg]
        shift = int((c * 3.7 % conv.duration_s) * 16000)
        audio = np.roll(conv.legs[name], -shift)
        audio = np.tile(audio, int(np.ceil(seconds / conv.duration_s)))  # a trial longer than the call loops it
        pk = packetize(to_8k_int16(audio), rng=random.Random(i), ntp_origin_s=time.time())[:total]
        legs.append((names.audio("bench", f"conv{c}", name), pk))
    t0, cpu0 = time.monotonic(), time.process_time()
    for k in range(total):
        now = time.time()
        for topic, pk in legs:
            engine.submit(topic, pk[k][1], now)
        delay = t0 + (k + 1) * 0.02 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the media clock
    backlog = engine.backlog
    cpu_use = (time.process_time() - cpu0) / (time.monotonic() - t0) / engine.governor.cpus
    drained_at = time.monotonic()
    while engine.backlog and time.monotonic() - drained_at < 10.0:  # how far behind the last packet is
        await asyncio.sleep(0.01)
    drain_s = round(time.monotonic() - drained_at, 3) if not engine.backlog else None  # None: not in 10 s
    c = engine.counters
    batches = asr.final.stats
    partial_p95 = c.p95(c.partial_latency_s)
    final_p95 = c.p95(c.final_latency_s)
    await engine.close()
    return {"streams": n, "partial_latency_p95_ms": round(partial_p95 * 1000, 1),
            "final_latency_p95_ms": round(final_p95 * 1000, 1), "partials": len(c.partial_latency_s),
            "overload_drops": c.packets_overload, "backlog_packets": backlog, "drain_s": drain_s,
            "segments": len(c.final_latency_s), "whisper_mean_batch": round(batches.mean_batch, 2),
            "partials_thinned": c.partials_thinned, "legs_refused": c.legs_refused + c.legs_refused_overload,
            "peak_lag_s": round(engine.governor.peak_lag_s, 3), "cpu_use": round(cpu_use, 3),
            "wall_s": round(time.monotonic() - t0, 2)}


def capacity_trial(n: int, seconds: float, conv: Conversation, vad: SileroVad, encoder: SpeakerEncoder,
                   asr: EdgeAsr, threads: int = 8, pipeline: PipelineConfig | None = None) -> dict[str, object]:
    """N legs in real time for ``seconds``; latency percentiles and drops (``pipeline``: the
    service's default pipeline settings when None)."""
    return asyncio.run(_capacity(n, seconds, conv, vad, encoder, asr, threads, pipeline))


def trial_ok(trial: dict[str, object], max_partial_ms: float = 1000.0, max_final_ms: float = 2000.0) -> bool:
    """A capacity trial keeps up: latency p95s within their bounds, no packet dropped for overload,
    and the packets still queued when the last one arrived (``backlog_packets``: a leg decoding a
    final holds its next packets meanwhile) all handled within the final bound (``drain_s``)."""
    return (float(trial["partial_latency_p95_ms"]) <= max_partial_ms  # type: ignore[arg-type]
            and float(trial["final_latency_p95_ms"]) <= max_final_ms  # type: ignore[arg-type]
            and trial["overload_drops"] == 0
            and trial["drain_s"] is not None and float(trial["drain_s"]) <= max_final_ms / 1000.0)  # type: ignore[arg-type]


def _turn_wer(conv: Conversation, segments: list[TranscriptSegment]) -> float:
    return wer([" ".join(t.text for t in conv.turns)], [" ".join(s.text for s in segments)])


def _der(conv: Conversation, segments: list[TranscriptSegment]) -> float:
    return der([(t.speaker, t.start_s, t.end_s) for t in conv.turns],
               [(s.speaker, s.start_s, s.end_s) for s in segments])


def _dc_revised(segments: list[TranscriptSegment], utterances: list[Utterance], reviser: SpeechReviser,
                mine_below: float) -> tuple[list[str], int, float]:
    """Segment texts after the DC revised the mined ones; (texts, revised, DC seconds)."""
    by_key = {(u.leg, u.utterance): u for u in utterances}
    texts, revised, t0 = [], 0, time.perf_counter()
    for seg in segments:
        utt = by_key.get((seg.leg, seg.utterance))
        if utt is None or seg.confidence >= mine_below:
            texts.append(seg.text)
            continue
        rev = reviser.revise("bench", utt.samples, utt.result)
        revised += 1
        texts.append(rev.result.text)
    return texts, revised, time.perf_counter() - t0


def _confidence_check(segments: list[TranscriptSegment], conv: Conversation) -> dict[str, float]:
    """WER of the less and the more confident half of the segments (is confidence informative?)."""
    refs = {}
    for seg in segments:  # the reference turn each segment overlaps most
        best = max(conv.turns, key=lambda t: min(t.end_s, seg.end_s) - max(t.start_s, seg.start_s))
        refs[seg.seq] = best.text
    ranked = sorted(segments, key=lambda s: s.confidence)
    half = len(ranked) // 2
    low, high = ranked[:half], ranked[half:]
    return {"confidence_wer_low": round(wer([refs[s.seq] for s in low], [s.text for s in low]), 4),
            "confidence_wer_high": round(wer([refs[s.seq] for s in high], [s.text for s in high]), 4)}


def batch_gain(edge: EdgeAsr, conv: Conversation, n: int = 8) -> dict[str, float]:
    """Final-pass utterances per second: one at a time vs all ``n`` in one batched call."""
    from models.whisper_asr import DecodeOptions
    from sim.speech_corpus import telephone

    asr = edge.final.asr
    clips = []
    for turn in conv.turns[:n]:
        audio = conv.legs[turn.leg]
        clips.append(telephone(audio[int(turn.start_s * 16000) - 2400:int(turn.end_s * 16000) + 2400]))
    opts = DecodeOptions(words=True)
    asr.transcribe(clips[:1], opts)  # warm
    t0 = time.perf_counter()
    for c in clips:
        asr.transcribe([c], opts)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    asr.transcribe(clips, opts)
    batched = time.perf_counter() - t0
    return {"utt_per_s_single": round(len(clips) / one, 2), "utt_per_s_batched": round(len(clips) / batched, 2),
            "batch_gain": round(one / batched, 2), "batch_size": len(clips)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.speech", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the only output)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each capacity trial")
    ap.add_argument("--streams", type=str, default="2,4,6,8,12,16", help="capacity trials, ascending")
    ap.add_argument("--max-partial-ms", type=float, default=1000.0)
    ap.add_argument("--max-final-ms", type=float, default=2000.0)
    ap.add_argument("--threads", type=int, default=8, help="speech worker threads (ASR waits in its batcher)")
    service = SpeechServiceConfig()
    ap.add_argument("--asr-threads", type=int, default=service.asr_threads, help="CPU threads of one Whisper call")
    ap.add_argument("--asr-parallel", type=int, default=service.asr_parallel,
                    help="Whisper calls each edge model runs at once")
    ap.add_argument("--final-model", default="whisper_base", choices=["whisper_tiny_en", "whisper_base"])
    ap.add_argument("--partial-model", default="whisper_tiny_en", choices=["whisper_tiny_en", "whisper_base"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--mine-below", type=float, default=0.75, help="segments below this confidence go to the DC")
    ap.add_argument("--quick", action="store_true", help="fewer sentences, capacity trials at 4 streams only")
    ap.add_argument("--no-real", action="store_true", help="skip the real recordings (wer_real_*)")
    add_record_flag(ap)
    args = ap.parse_args(argv)
    run = start("bench.speech", argv) if args.record else None

    import torch

    torch.set_num_threads(1)
    cache = load_settings().cache_dir
    n_held = 12 if args.quick else len(HELDOUT)
    n_field = 8 if args.quick else 16
    vad = SileroVad()
    encoder = SpeakerEncoder("cpu")
    edge = load_edge_asr(cache, args.final_model, args.partial_model, device=args.device,
                         cpu_threads=args.asr_threads, parallel=args.asr_parallel)
    dc_models = [load_whisper(cache, "whisper_base", device=args.device, cpu_threads=args.asr_threads),
                 edge.final.asr if edge.final.name == "whisper-tiny.en" else
                 load_whisper(cache, "whisper_tiny_en", device=args.device, cpu_threads=args.asr_threads)]
    result: dict[str, object] = {}
    if not args.no_real:  # real recordings first (bench.real_speech): dev, then the held-out part
        from bench.real_speech import evaluate

        result.update(evaluate(vad, encoder, edge, SpeechReviser(dc_models), mine_below=args.mine_below))
    result.update({"asr_final": f"{edge.final.name}/{edge.final.version}",
                   "asr_partial": f"{edge.partial.name}" if edge.partial else None,
                   "asr_device": f"{edge.final.asr.device}/{edge.final.asr.compute_type}"})

    # Held-out: natural voice, 10 dB background noise, G.711, 2 % loss.
    held = build_heldout_call(HELDOUT[:n_held], (PIPER, PIPER), snr_db=10.0, noise="background")
    segs, cpu, utts = run_conversation(held, vad, encoder, edge, loss=0.02, seed=3)
    result["wer_heldout_edge"] = round(_turn_wer(held, segs), 4)
    result["der"] = round(_der(held, segs), 4)
    result["rtf"] = round(cpu / (held.duration_s * len(held.legs)), 4)
    result.update(_confidence_check(segs, held))
    reviser = SpeechReviser(dc_models)
    texts, revised, dc_s = _dc_revised(segs, utts, reviser, args.mine_below)
    result["wer_heldout_dc"] = round(wer([" ".join(t.text for t in held.turns)], [" ".join(texts)]), 4)
    result["dc_revised_segments"] = revised
    result["dc_segments"] = len(segs)
    result["dc_seconds_per_revision"] = round(dc_s / max(revised, 1), 3)
    result["heldout_sentences"] = n_held
    result["final_batching"] = batch_gain(edge, held)

    babble = build_heldout_call(HELDOUT[:n_held], (PIPER, PIPER), snr_db=10.0, noise="babble", seed=1)
    segs, _, _ = run_conversation(babble, vad, encoder, edge, loss=0.02, seed=4)
    result["wer_heldout_edge_babble"] = round(_turn_wer(babble, segs), 4)
    result["der_babble"] = round(_der(babble, segs), 4)
    esp = build_heldout_call(HELDOUT[:n_held], (ESPEAK_VOICES[0], ESPEAK_VOICES[1]), snr_db=None)
    segs, _, _ = run_conversation(esp, vad, encoder, edge, loss=0.02, seed=5)
    result["wer_heldout_espeak_edge"] = round(_turn_wer(esp, segs), 4)
    esp2 = build_heldout_call(HELDOUT[:n_held], (ESPEAK_VOICES[2], ESPEAK_VOICES[3]), snr_db=None)
    segs, _, _ = run_conversation(esp2, vad, encoder, edge, loss=0.02, seed=6)
    result["wer_heldout_espeak_edge_2"] = round(_turn_wer(esp2, segs), 4)

    # Field corpus: espeak-ng radio traffic with the net's sentences as the vocabulary prompt
    # (a prompt never built from a held-out sentence).
    check_heldout(SENTENCES[:n_field])
    field_asr = edge.with_vocabulary(AsrVocabulary(version="field", prompt=prompt_from_sentences(
        SENTENCES[:n_field], keep="first")))
    conv = build_conversation(SENTENCES[:n_field])
    segs, _, _ = run_conversation(conv, vad, encoder, field_asr)
    result["wer_field_prompt"] = round(_turn_wer(conv, segs), 4)
    result["der_field"] = round(_der(conv, segs), 4)
    segs, _, _ = run_conversation(conv, vad, encoder, field_asr, loss=0.05, seed=5)
    result["wer_field_prompt_loss5"] = round(_turn_wer(conv, segs), 4)
    result["der_field_loss5"] = round(_der(conv, segs), 4)
    one = build_conversation(SENTENCES[:min(12, n_field)], one_leg=True)
    shared = PipelineConfig(diarizer=DiarizerConfig(shared_legs=["leg1"]))  # two voices: a shared leg
    segs, _, _ = run_conversation(one, vad, encoder, field_asr, config=shared)
    result["der_one_leg"] = round(_der(one, segs), 4)
    result["wer_one_leg"] = round(_turn_wer(one, segs), 4)

    trials = []
    best: dict[str, object] | None = None
    plan = [4] if args.quick else [int(s) for s in args.streams.split(",")]
    failed = False
    for n in plan:  # every N, past the first failure too: the curve of what is given up
        trial = capacity_trial(n, args.seconds, held, vad, encoder, edge, args.threads)
        trial["ok"] = trial_ok(trial, args.max_partial_ms, args.max_final_ms)
        trials.append(trial)
        if not args.json:
            print(json.dumps(trial), file=sys.stderr)
        failed = failed or not trial["ok"]
        if not failed:
            best = trial
    result.update({
        "realtime_streams": best["streams"] if best else 0,
        "partial_latency_p95_ms": best["partial_latency_p95_ms"] if best else None,
        "final_latency_p95_ms": best["final_latency_p95_ms"] if best else None,
        "capacity_trials": trials,
        "trial_seconds": args.seconds,
        "cpus": os.cpu_count(),
        "audio_s_per_leg": round(held.duration_s, 1),
    })
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    edge.close()
    if run is not None:
        finish(run, result, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
