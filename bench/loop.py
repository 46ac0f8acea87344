"""Benchmark of the DC loop: ``python -m bench.loop --json``.

Starts a Tansu broker, runs the edge and the trainer in one process (:mod:`bench.dc_harness`),
drives the shifted camera domain and domain speech through it, and reports quality before
and after, the time from the first hard example to the new FER version serving, requests
dropped while versions were swapped under live traffic, and the outbox's throughput to Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.dc_harness import DcLoop, Traffic
from bench.domain_speech import domain_sentences
from bench.shifted_domain import make_frames
from cli.brokers import TansuBroker
from common.dc_settings import OutboxSettings
from common.settings import KafkaSettings, load_settings
from edge_agent.outbox import KafkaForwarder, Outbox
from topics.names import KAFKA_HARD_EXAMPLES

__all__ = ["run", "outbox_throughput", "main"]


async def outbox_throughput(bootstrap: str, workdir: Path, n: int = 5000, size: int = 4096) -> float:
    """Messages per second from ``put`` (one SQLite commit each) to acknowledged by Kafka."""
    box = Outbox(OutboxSettings(path=workdir / "bench-outbox.sqlite3"))
    fw = KafkaForwarder(box, KafkaSettings(bootstrap_servers=bootstrap), box.settings)
    stop = asyncio.Event()
    task = asyncio.create_task(fw.run(stop))
    payload = bytes(size)
    t0 = time.perf_counter()
    for i in range(n):
        box.put(f"bench|{i}", KAFKA_HARD_EXAMPLES + "-bench", payload, b"bench")
        if i % 256 == 0:
            await asyncio.sleep(0)  # let the forwarder run alongside, as on a live edge
    await fw.wait_until(lambda: box.pending == 0)
    seconds = time.perf_counter() - t0
    stop.set()
    await task
    box.close()
    return n / seconds


async def run(cache_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    sentences = domain_sentences()
    train_speech, eval_speech = sentences[:18], sentences[18:24]
    with TansuBroker() as broker, tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        work = Path(tmp)
        async with DcLoop.running(work, broker.bootstrap_servers, cache_dir) as loop:
            eval_frames = make_frames(loop.sources, 90, seed=100, device="eval-cam")
            fer_before, n_eval, _ = await loop.fer_agreement(eval_frames)
            wer_before, _ = await loop.asr_wer(eval_speech)
            traffic, traffic_stop = Traffic(), asyncio.Event()
            traffic_task = asyncio.create_task(
                loop.run_traffic(make_frames(loop.sources, 8, seed=200, device="live-cam"), traffic_stop, traffic))
            sent_faces = await loop.feed_frames(make_frames(loop.sources, 400, seed=1, device="shifted-cam"))
            truth = await loop.feed_speech(train_speech)
            consumer = loop.trainer.consumer
            assert consumer is not None and loop.updater is not None
            await asyncio.wait_for(consumer.wait_until(lambda: consumer.stats.stored >= sent_faces + len(truth)), 120)
            labelled_at = time.monotonic()
            await loop.label_speech(truth)
            updater = loop.updater
            await asyncio.wait_for(updater.wait_until(lambda: updater.stats.applied >= 2), 300)
            traffic_stop.set()
            await traffic_task
            fer_after, _, _ = await loop.fer_agreement(eval_frames)
            wer_after, _ = await loop.asr_wer(eval_speech)
            reg = loop.trainer.registry
            fer, asr = reg.current("fer-mini-xception"), reg.current("whisper-vocab")
            assert fer is not None and asr is not None and loop.first_hard_at is not None
            result = {
                "fer_agreement_before": round(fer_before, 4),
                "fer_agreement_after": round(fer_after, 4),
                "fer_eval_faces": n_eval,
                "wer_before": round(wer_before, 4),
                "wer_after": round(wer_after, 4),
                "asr_eval_utterances": len(eval_speech),
                "seconds_to_deploy": round(loop.applied_at["fer-mini-xception"] - loop.first_hard_at, 2),
                "asr_seconds_label_to_deploy": round(loop.applied_at["whisper-vocab"] - labelled_at, 2),
                "dropped_during_swap": traffic.dropped,
                "served_during_loop": traffic.answered,
                "hard_examples": {"faces": sent_faces, "speech": len(truth)},
                "fer_version": fer.version,
                "fer_train_seconds": fer.lineage.get("train_seconds"),
                "fer_gate": fer.metrics,
                "asr_version": asr.version,
                "asr_gate": asr.metrics,
                "asr_new_words": asr.lineage.get("new_words"),
                "refused_updates": len(loop.refusals),
            }
        result["outbox_msgs_per_s"] = round(await outbox_throughput(broker.bootstrap_servers, work), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loop", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(load_settings().cache_dir))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")


if __name__ == "__main__":
    main()
