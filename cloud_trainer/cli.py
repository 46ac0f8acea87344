"""CLI of the DC loop: ``trainer``, ``label`` and ``models`` subcommands.

The project's ``edge-offload`` parser calls :func:`add_trainer_commands` to register them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import wave
from pathlib import Path

from aiokafka.errors import KafkaError

from cloud_trainer.publish import announce_once, publish_labels
from cloud_trainer.registry import Registry, RegistryError, Signer
from cloud_trainer.store import open_store
from common.logs import bind_context
from common.settings import Settings, load_settings
from common.trainer_settings import TrainerSettings
from topics.codec import now_ms
from topics.dc import Label

__all__ = ["add_trainer_commands"]


def _settings() -> tuple[Settings, TrainerSettings]:
    settings = load_settings()
    return settings, settings.trainer


def _registry(trainer: TrainerSettings) -> Registry:
    return Registry(trainer.registry_dir, Signer.load_or_create(trainer.keys_dir))


# --- trainer ---------------------------------------------------------------------------------

def _cmd_trainer(args: argparse.Namespace) -> int:
    from cloud_trainer.service import run_trainer

    settings, _ = _settings()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_trainer(settings, stop)

    asyncio.run(main())
    return 0


def _cmd_dc_worker(args: argparse.Namespace) -> int:
    from cloud_trainer.dc_inference import run_dc_worker

    settings, _ = _settings()
    bind_context(node=args.worker_id)  # every log line of this worker names it

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_dc_worker(settings, args.worker_id, stop)

    asyncio.run(main())
    return 0


# --- label -----------------------------------------------------------------------------------

def _missing_sqlite(url: str) -> Path | None:
    """The SQLite file of a store URL when it does not exist (a read-only command then makes none)."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    path = Path(url.removeprefix("sqlite:///"))
    return None if path.is_file() else path


def _cmd_label_list(args: argparse.Namespace) -> int:
    _, trainer = _settings()
    missing = _missing_sqlite(trainer.store_url)
    if missing is not None:
        print(f"edge-offload: no sample store at {missing} yet (the trainer makes it)", file=sys.stderr)
        return 0

    async def main() -> None:
        store = await open_store(trainer.store_url, trainer.holdout_percent)
        try:
            rows = await store.samples(args.model or trainer.asr.model, labelled=False, limit=args.limit)
        finally:
            await store.close()
        for r in rows:
            conf = sum(r.confidences) / len(r.confidences) if r.confidences else 0.0
            seconds = len(r.data) / 2 / (r.sample_rate or 16000)
            print(f"{r.key}\t{seconds:.1f}s\tconf={conf:.2f}\tedge: {r.edge_result}")

    asyncio.run(main())
    return 0


def _cmd_label_export(args: argparse.Namespace) -> int:
    _, trainer = _settings()
    missing = _missing_sqlite(trainer.store_url)
    if missing is not None:
        print(f"edge-offload: error: no sample store at {missing}", file=sys.stderr)
        return 1

    async def main() -> int:
        store = await open_store(trainer.store_url, trainer.holdout_percent)
        try:
            sample = await store.get(args.key)
        finally:
            await store.close()
        if sample is None or sample.encoding != "pcm_s16le":
            print(f"edge-offload: error: no audio sample {args.key!r}", file=sys.stderr)
            return 1
        with wave.open(str(args.wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample.sample_rate or 16000)
            w.writeframes(sample.data)
        print(f"wrote {args.wav}")
        return 0

    return asyncio.run(main())


def _cmd_label_set(args: argparse.Namespace) -> int:
    settings, _ = _settings()
    label = Label(key=args.key, text=args.text, source=f"operator:{args.operator}",
                  labelled_at_ms=now_ms())
    if args.key.count("|") != 4:
        print(f"edge-offload: error: {args.key!r} is not a sample key (see `edge-offload label list`)",
              file=sys.stderr)
        return 2
    try:
        asyncio.run(publish_labels(settings.kafka, [label]))
    except (KafkaError, OSError) as exc:
        print(f"edge-offload: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"labelled {args.key}")
    return 0


# --- models ----------------------------------------------------------------------------------

def _cmd_models_list(args: argparse.Namespace) -> int:
    _, trainer = _settings()
    registry = Registry.reader(trainer.registry_dir)  # read-only: no key made, no file created
    if registry is None:
        print(f"edge-offload: no model registry at {trainer.registry_dir} yet (the trainer makes it)",
              file=sys.stderr)
        if args.json:
            print("[]")
        return 0
    try:
        records = registry.versions(args.model)
        if args.json:
            print(json.dumps([{"name": r.name, "version": r.version, "parent": r.parent, "status": r.status,
                               "sha256": r.sha256, "key_id": r.key_id, "size": r.size, "metrics": r.metrics,
                               "lineage": r.lineage,
                               "serving": (registry.current(r.name) or r).version == r.version}
                              for r in records], indent=2))
            return 0
        for r in records:
            current = registry.current(r.name)
            mark = "*" if current is not None and current.version == r.version else " "
            figures = " ".join(f"{k}={v:.3f}" for k, v in sorted(r.metrics.items()))
            print(f"{mark} {r.name} {r.version:<12} {r.status:<11} parent={r.parent or '-':<12} "
                  f"sha256={r.sha256[:12]} {figures}")
        for d in registry.decisions(args.model):
            print(f"  {d.name} {d.version} {d.action}: {d.reason}")
    finally:
        registry.close()
    return 0


def _announce(settings: Settings, trainer: TrainerSettings, registry: Registry, name: str, version: str,
              action: str) -> None:
    rec = registry.get(name, version)
    update = registry.announcement(rec, action, inline_max_bytes=trainer.inline_artifact_max_bytes,
                                   base_url=trainer.artifact_base_url)
    asyncio.run(announce_once(settings.kafka, update))


def _cmd_models_promote(args: argparse.Namespace) -> int:
    settings, trainer = _settings()
    registry = _registry(trainer)
    try:
        registry.verify_artifact(registry.get(args.model, args.version))
        _announce(settings, trainer, registry, args.model, args.version, "promote")
        registry.promote(args.model, args.version, reason=f"operator: {args.reason}")
        print(f"{args.model} {args.version} promoted and announced")
        return 0
    except (RegistryError, KafkaError, OSError) as exc:
        print(f"edge-offload: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    finally:
        registry.close()


def _cmd_models_rollback(args: argparse.Namespace) -> int:
    settings, trainer = _settings()
    registry = _registry(trainer)
    try:
        target = registry.rollback_target(args.model)
        registry.verify_artifact(target)
        _announce(settings, trainer, registry, args.model, target.version, "rollback")
        registry.rollback(args.model, reason=f"operator: {args.reason}")
        print(f"{args.model} rolled back to {target.version} and announced")
        return 0
    except (RegistryError, KafkaError, OSError) as exc:
        print(f"edge-offload: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    finally:
        registry.close()


def add_trainer_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``trainer``, ``label`` and ``models`` on the ``edge-offload`` parser."""
    p = subparsers.add_parser("trainer", help="run the DC loop: consume hard examples, retrain, push models")
    p.set_defaults(func=_cmd_trainer)
    p = subparsers.add_parser("dc-worker", help="DC inference worker: serve frames spilled by overloaded edges "
                              "(a Kafka consumer group member; run more to scale)")
    p.add_argument("--worker-id", default="dc-worker-1", help="name in results' node field and Kafka client id")
    p.set_defaults(func=_cmd_dc_worker)

    label = subparsers.add_parser("label", help="operator labels for audio hard examples")
    lsub = label.add_subparsers(dest="label_command", required=True)
    p = lsub.add_parser("list", help="audio samples waiting for a transcript")
    p.add_argument("--model", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=_cmd_label_list)
    p = lsub.add_parser("export", help="write one audio sample to a WAV file to listen to")
    p.add_argument("key")
    p.add_argument("wav", type=Path)
    p.set_defaults(func=_cmd_label_export)
    p = lsub.add_parser("set", help="send the corrected transcript of one sample")
    p.add_argument("key")
    p.add_argument("text")
    p.add_argument("--operator", default="cli")
    p.set_defaults(func=_cmd_label_set)

    models = subparsers.add_parser("models", help="the model registry: list, promote, rollback")
    msub = models.add_subparsers(dest="models_command", required=True)
    p = msub.add_parser("list", help="versions with metrics, status and gate decisions")
    p.add_argument("--model", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models_list)
    p = msub.add_parser("promote", help="serve a version and announce it to the edges")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--reason", default="manual promote")
    p.set_defaults(func=_cmd_models_promote)
    p = msub.add_parser("rollback", help="serve the previous version again and announce it")
    p.add_argument("model")
    p.add_argument("--reason", default="manual rollback")
    p.set_defaults(func=_cmd_models_rollback)
