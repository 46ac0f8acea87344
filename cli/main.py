"""``edge-offload``: one console script, one subcommand per part.

Errors a user can fix (unreachable broker, missing file or model, bad setting) print one line
``edge-offload: error: ...`` and exit 1; usage errors exit 2 (see docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from common.errors import BrokerUnreachable
from common.logs import setup_logging
from common.settings import ConfigError, LogSettings, load_settings, use_config_file

__all__ = ["main", "EXIT_RUNTIME", "EXIT_USAGE", "EXIT_BROKEN_PIPE"]

EXIT_RUNTIME = 1  # something at run time failed: broker, file, model, settings
EXIT_USAGE = 2  # the command line is wrong (argparse's own code)
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (`... | head`): what a shell shows for SIGPIPE

log = logging.getLogger("edge_offload.cli")


def _fetch_models(args: argparse.Namespace) -> int:
    from cli.progress import ByteBars
    from models.artifacts import fetch_all

    settings = load_settings()
    with ByteBars(enabled=not args.no_progress) as bars:
        for folder in fetch_all(settings.cache_dir, progress=bars.update):
            print(f"ok {folder}", flush=True)
    return 0


def _kafka_init(args: argparse.Namespace) -> int:
    from common.kafka_admin import init_topics, topic_plan

    settings = load_settings()
    plan = topic_plan(settings)
    if args.dry_run:
        for spec in plan:
            print(spec.describe())
        return 0
    for spec, created in asyncio.run(init_topics(settings.kafka, plan)):
        print(f"{'created' if created else 'exists '} {spec.describe()}")
    return 0


def _edge(args: argparse.Namespace) -> int:
    from edge_agent.app import EdgeNode

    settings = load_settings()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await EdgeNode(settings).run(stop)

    asyncio.run(run())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo

    summary = asyncio.run(run_demo(load_settings(), seconds=args.seconds, fps=args.fps,
                                   secure=not args.insecure_broker))
    print(summary.as_json(), flush=True)
    return 0


def _device(args: argparse.Namespace) -> int:
    if args.kind is None:  # `device --help` (no kind): the list of kinds
        if any(a in ("-h", "--help") for a in args.rest):
            args.device_parser.print_help()
            return 0
        args.device_parser.error("choose a device: camera or audio (`device camera --help`)")
    if args.kind == "camera":
        from devices.camera import main as camera_main

        return camera_main(args.rest)
    from devices.audio import main as audio_main

    return audio_main(args.rest)


def _tail(args: argparse.Namespace) -> int:
    from cli.tail import main as tail_main

    return tail_main(args.rest)


def _config_reference(args: argparse.Namespace) -> int:
    """The settings reference page, docs/settings.md: how settings are read and every setting."""
    from common.settings_reference import render_page

    sys.stdout.write(render_page())
    return 0


def _health(args: argparse.Namespace) -> int:
    """Exit 0 if the local edge agent answers /healthz (a container HEALTHCHECK)."""
    import urllib.request

    url = f"http://127.0.0.1:{load_settings().edge.http_port}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:  # refused, timed out, HTTP 503 (not ready)
        raise OSError(f"{url}: {getattr(exc, 'reason', None) or exc}") from None


def _config_show(args: argparse.Namespace) -> int:
    """Print the effective settings as JSON; secrets show as ``**********``."""
    print(load_settings().model_dump_json(indent=2))
    return 0


def _pki_init(args: argparse.Namespace) -> int:
    from cli.pki import make_pki

    if (args.dir / "ca.crt").exists() and not args.force:
        print(f"ok {args.dir} (exists; --force makes a new CA)")
        return 0
    pki = make_pki(args.dir, args.host, args.client)
    print(f"ok {pki.dir}: ca.crt, server.crt/.key for {', '.join(args.host)}"
          f"{', clients: ' + ', '.join(args.client) if args.client else ''}")
    return 0


# Long-running subcommands: they retry, and log every broker failure as it happens.
_SERVICES = ("edge", "trainer", "dc-worker", "demo")

# Subcommands whose own parser reads the rest of the command line (they have options of their own).
_PASS_THROUGH = ("tail", "device")


def _version() -> str:
    from cli.tail import _version as version

    return version()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-offload", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-offload {_version()}")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file (EDGE_OFFLOAD_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (--log-level INFO)")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=None,
                        help="overrides the setting log.level (EDGE_OFFLOAD_LOG__LEVEL, default WARNING)")
    parser.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="overrides the setting log.format (EDGE_OFFLOAD_LOG__FORMAT, default text)")
    parser.add_argument("--log-json", action="store_true", help="same as --log-format json")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="settings: `config show` prints the effective settings, secrets masked")
    csub = p.add_subparsers(dest="config_command", required=True)
    csub.add_parser("show", help="effective settings as JSON (env > --config file > defaults)").set_defaults(
        func=_config_show)
    csub.add_parser("reference", help="the settings reference page, docs/settings.md (Markdown)").set_defaults(
        func=_config_reference)
    p = sub.add_parser("health", help="exit 0 if the local edge agent's /healthz answers (container healthcheck)")
    p.add_argument("--path", default="/healthz", choices=("/healthz", "/readyz"))
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=_health)
    p = sub.add_parser("pki", help="`pki init DIR --host H`: a CA and broker/client certificates (keys 0600)")
    psub = p.add_subparsers(dest="pki_command", required=True)
    p = psub.add_parser("init", help="write ca.crt, server.crt/.key (SANs: --host) and client certificates")
    p.add_argument("dir", type=Path)
    p.add_argument("--host", action="append", required=True, help="broker host name or IP (repeatable)")
    p.add_argument("--client", action="append", default=[], help="client certificate name (repeatable)")
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.set_defaults(func=_pki_init)
    p = sub.add_parser("fetch-models", help="download and sha256-check the pinned model artifacts")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they go to stderr)")
    p.set_defaults(func=_fetch_models)
    p = sub.add_parser("kafka-init", help="create the Kafka topics with their partitions, replication and "
                       "configs (run once per cluster, before any edge or DC part)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, create nothing")
    p.set_defaults(func=_kafka_init)
    p = sub.add_parser("edge", help="run the edge agent: vision + speech "
                                    "(settings from EDGE_OFFLOAD_* / EDGE_OFFLOAD_CONFIG)")
    p.set_defaults(func=_edge)
    p = sub.add_parser("demo", help="run the whole pipeline locally and print a JSON summary")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--insecure-broker", action="store_true",
                   help="an anonymous plain-TCP Mosquitto instead of the production one (TLS, passwords, ACL)")
    p.set_defaults(func=_demo)
    p = sub.add_parser("device", help="device simulators: camera | audio (see `device KIND --help`)",
                       add_help=False, description="Device simulators; `device KIND --help` lists the "
                       "options of each.")
    p.add_argument("kind", nargs="?", choices=("camera", "audio"), help="camera: JPEG frames; audio: RTP legs")
    p.set_defaults(func=_device, device_parser=p)
    p = sub.add_parser("tail", help="follow results, dead letters and status like mosquitto_sub "
                       "(see `tail --help`)", add_help=False)
    p.set_defaults(func=_tail)
    from archive.cli import add_archive_commands
    from cloud_trainer.cli import add_trainer_commands

    add_trainer_commands(sub)
    add_archive_commands(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``tail`` and ``device`` get the rest of it in ``args.rest``,
    options included (``tail --json -h HOST FILTER``), for their own parsers."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in _PASS_THROUGH:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    return args


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _log_settings(args: argparse.Namespace) -> tuple[str, bool]:
    """(level, as_json): the command line over the settings (log.level, log.format) over the defaults."""
    try:
        configured = load_settings().log
    except Exception:  # bad settings are reported by the command itself, with logging at its defaults
        configured = LogSettings()
    level = args.log_level or ("INFO" if args.verbose else configured.level)
    fmt = "json" if args.log_json else (args.log_format or configured.format)
    return level, fmt == "json"


def _broker_line(exc: BaseException) -> str:
    """The broker error with the endpoint it concerns (from the settings when the error does not say)."""
    from aiokafka.errors import KafkaError

    text = _one_line(exc)
    if isinstance(exc, BrokerUnreachable):
        return text
    try:
        settings = load_settings()
        endpoint = (f"kafka {settings.kafka.bootstrap_servers}" if isinstance(exc, KafkaError)
                    else f"mqtt {settings.mqtt.host}:{settings.mqtt.port}")
    except Exception:
        return text
    return f"{endpoint}: {text}"


def _run(args: argparse.Namespace) -> int:
    import aiomqtt
    from aiokafka.errors import KafkaError
    from pydantic import ValidationError

    from cli.brokers import BrokerError
    from models.artifacts import ArtifactError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        raise
    except (ConfigError, ValidationError) as exc:
        print(f"edge-offload: error: bad settings: {_one_line(exc)}", file=sys.stderr)
    except (BrokerUnreachable, aiomqtt.MqttError, KafkaError, ConnectionRefusedError, TimeoutError) as exc:
        print(f"edge-offload: error: broker: {_broker_line(exc)}", file=sys.stderr)
    except (ArtifactError, BrokerError, OSError, ValueError) as exc:
        print(f"edge-offload: error: {_one_line(exc)}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line; --log-level DEBUG shows the traceback
        log.debug("unexpected error", exc_info=True)
        print(f"edge-offload: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
    return EXIT_RUNTIME


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # sample stores, outbox, keys, exported clips: readable by this user only
    args = parse_args(argv)
    try:
        if args.config is not None:
            use_config_file(args.config)
    except ConfigError as exc:
        print(f"edge-offload: error: bad settings: {_one_line(exc)}", file=sys.stderr)
        return EXIT_RUNTIME
    level, as_json = _log_settings(args)
    setup_logging(level, as_json=as_json)
    if args.command not in _SERVICES and level != "DEBUG":
        # A one-shot command reports a broker failure as its one error line; aiokafka's own
        # connection-error lines would only repeat it (a service keeps them: it retries).
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        code = _run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader left (`config reference | head`): no traceback, and none at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
