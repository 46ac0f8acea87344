"""Fault-suite helpers: frame publishing, result tallies, agent processes, RSS from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from topics import names
from topics.status import decode_status
from topics.vision import Frame, decode_result, encode_frame

REPO = Path(__file__).resolve().parents[2]


def rss_mib(pid: int | None = None) -> float:
    """Resident set size of ``pid`` (default: this process), from /proc."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def frame_payload(device: str, seq: int, image: bytes) -> bytes:
    return encode_frame(Frame(device=device, seq=seq, captured_at_ms=1_700_000_000_000 + seq,
                              encoding="jpeg", data=image))


async def publish_frames(port: int, device: str, images: list[bytes], seqs: Iterable[int], qos: int = 1) -> None:
    """Publish one frame per seq (images cycled), each confirmed by the broker for QoS 1."""
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, timeout=60) as client:
        for seq in seqs:
            await client.publish(names.frames(device), frame_payload(device, seq, images[seq % len(images)]), qos=qos)


@dataclass
class Tally:
    """Results seen per seq: answered, missing and duplicates against the seqs expected."""

    seen: Counter[int] = field(default_factory=Counter)

    def add(self, payload: bytes) -> None:
        self.seen[decode_result(payload).seq] += 1

    def answered(self, expected: Iterable[int]) -> int:
        return sum(1 for s in expected if self.seen[s] > 0)

    def missing(self, expected: Iterable[int]) -> list[int]:
        return [s for s in expected if self.seen[s] == 0]

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.seen.values() if n > 1)


@contextlib.asynccontextmanager
async def following(port: int, topic: str, on_payload: Callable[[bytes], None]) -> AsyncIterator[asyncio.Event]:
    """Subscribe to ``topic`` before anything is sent; each payload goes to ``on_payload``, then the
    returned event is set."""
    changed = asyncio.Event()
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, timeout=60) as client:
        await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for message in client.messages:
                on_payload(bytes(message.payload))  # type: ignore[arg-type]
                changed.set()

        task = asyncio.create_task(read())
        try:
            yield changed
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@contextlib.asynccontextmanager
async def results_tally(port: int, device: str) -> AsyncIterator[tuple[Tally, asyncio.Event]]:
    """Subscribe to ``device``'s results before anything is sent; ``changed`` is set on every result."""
    tally = Tally()
    async with following(port, names.vision_results(device), tally.add) as changed:
        yield tally, changed


async def wait_answered(tally: Tally, changed: asyncio.Event, expected: list[int], timeout_s: float) -> None:
    """Wait until every expected seq has a result, or ``timeout_s`` passes (the caller asserts)."""
    async def until() -> None:
        while tally.missing(expected):
            changed.clear()
            await changed.wait()

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until(), timeout_s)


async def wait_results(tally: Tally, changed: asyncio.Event, n: int, timeout_s: float) -> None:
    async def until() -> None:
        while sum(tally.seen.values()) < n:
            changed.clear()
            await changed.wait()

    await asyncio.wait_for(until(), timeout_s)


class AgentProcess:
    """``python -m cli.main edge`` (vision only) as a child process that a test may kill -9."""

    def __init__(self, port: int, node: str, *, receive_maximum: int = 64, log_path: Path | None = None,
                 http_port: int = 0, extra_env: dict[str, str] | None = None) -> None:
        self.http_port = http_port
        self.port = port
        self.node = node
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "EDGE_OFFLOAD_MQTT__HOST": "127.0.0.1",
            "EDGE_OFFLOAD_MQTT__PORT": str(port),
            "EDGE_OFFLOAD_MQTT__CLIENT_ID": node,
            "EDGE_OFFLOAD_MQTT__SHARE_GROUP": node,
            "EDGE_OFFLOAD_MQTT__RECEIVE_MAXIMUM": str(receive_maximum),
            "EDGE_OFFLOAD_EDGE__NODE_NAME": node,
            "EDGE_OFFLOAD_EDGE__HTTP_HOST": "127.0.0.1",
            "EDGE_OFFLOAD_EDGE__HTTP_PORT": str(http_port),
            "EDGE_OFFLOAD_EDGE__SPEECH": "false",
            "EDGE_OFFLOAD_MINING__ENABLED": "false",
            "EDGE_OFFLOAD_UPDATES__ENABLED": "false",
            "EDGE_OFFLOAD_VISION__TORCH_THREADS": "1",
            **(extra_env or {}),
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout_s: float = 90.0) -> None:
        """Start and wait for the agent's retained status to say online (it is subscribed then)."""
        async with aiomqtt.Client("127.0.0.1", self.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(names.edge_status(self.node), qos=1)
            log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
            self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "edge"], env=self.env,
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

            async def online() -> None:
                async for message in client.messages:
                    status = decode_status(bytes(message.payload))  # type: ignore[arg-type]
                    if status.online and message.retain is False:
                        return

            await asyncio.wait_for(online(), timeout_s)

    def http_get(self, path: str) -> tuple[int, str]:
        """GET ``path`` from the agent's health endpoint (needs a fixed ``http_port``)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str) -> float:
        """One unlabelled sample from /metrics (0 if absent)."""
        _, text = self.http_get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def shipped_persistence() -> str:
    """The persistence lines of the shipped ``compose/mosquitto.conf``."""
    conf = (REPO / "compose" / "mosquitto.conf").read_text()
    return "\n".join(line for line in conf.splitlines() if line.startswith(("persistence", "autosave")))


def autosave_interval_s(persistence: str) -> float:
    for line in persistence.splitlines():
        if line.startswith("autosave_interval"):
            return float(line.split()[1])
    raise ValueError("no autosave_interval")


@contextlib.asynccontextmanager
async def persistent_tally(port: int, device: str, client_id: str) -> AsyncIterator[tuple[Tally, asyncio.Event]]:
    """Like :func:`results_tally`, but a persistent session that reconnects across broker restarts."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    tally = Tally()
    changed = asyncio.Event()
    subscribed = asyncio.Event()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600

    async def run() -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                                          clean_start=False, properties=props, timeout=30) as client:
                    await client.subscribe(names.vision_results(device), qos=1)
                    subscribed.set()
                    async for message in client.messages:
                        tally.add(bytes(message.payload))  # type: ignore[arg-type]
                        changed.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)  # reconnect backoff while the broker restarts

    task = asyncio.create_task(run())
    try:
        await asyncio.wait_for(subscribed.wait(), 30)
        yield tally, changed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
