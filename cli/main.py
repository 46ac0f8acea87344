"""``edge-offload``: one console script, one subcommand per part.

Errors a user can fix (unreachable broker, missing file, bad setting) print one line
``edge-offload: error: ...`` and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from common.logs import setup_logging
from common.settings import ConfigError, load_settings, use_config_file

__all__ = ["main"]


def _fetch_models(args: argparse.Namespace) -> int:
    from models.artifacts import fetch_all

    settings = load_settings()
    for folder in fetch_all(settings.cache_dir):
        print(f"ok {folder}")
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

    port = load_settings().edge.http_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{args.path}", timeout=args.timeout) as resp:
        return 0 if resp.status == 200 else 1


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
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=None)
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
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
    p.set_defaults(func=_fetch_models)
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
                       add_help=False)
    p.add_argument("kind", choices=("camera", "audio"))
    p.set_defaults(func=_device)
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


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # sample stores, outbox, keys, exported clips: readable by this user only
    args = parse_args(argv)
    level = args.log_level or ("INFO" if args.verbose else "WARNING")
    setup_logging(getattr(logging, level), as_json=args.log_json)
    import aiomqtt
    from aiokafka.errors import KafkaError
    from pydantic import ValidationError

    try:
        if args.config is not None:
            use_config_file(args.config)
        return int(args.func(args) or 0)
    except (ConfigError, ValidationError) as exc:
        print(f"edge-offload: error: bad settings: {_one_line(exc)}", file=sys.stderr)
    except (aiomqtt.MqttError, KafkaError, ConnectionRefusedError, TimeoutError) as exc:
        print(f"edge-offload: error: broker: {_one_line(exc)}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"edge-offload: error: {_one_line(exc)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
