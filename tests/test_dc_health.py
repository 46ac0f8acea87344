"""/metrics, /healthz and /readyz of the DC processes, over HTTP: the dc-worker against a real
Kafka-protocol broker, the trainer's endpoint on its own loop progress (a stepped clock)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cli.brokers import TansuBroker
from cloud_trainer.dc_inference import run_dc_worker
from cloud_trainer.health import Progress, health_server
from cloud_trainer.service import Trainer, trainer_collector
from common.settings import KafkaSettings, Settings
from common.trainer_settings import TrainerSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def _aget(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, port, path)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.integration
async def test_dc_worker_serves_probes_and_metrics_that_follow_its_poll_loop(own_kafka: TansuBroker) -> None:
    settings = Settings()
    settings.kafka.bootstrap_servers = own_kafka.bootstrap_servers
    settings.offload.dc_group = "dc-health-test"
    settings.offload.dc_partitions = 1
    settings.offload.dc_http_host = "127.0.0.1"
    settings.offload.dc_http_port = port = _free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(run_dc_worker(settings, "dc-health-1", stop))
    try:
        deadline = time.monotonic() + 120
        status = 0
        while status != 200:  # up before the model is loaded; ready once joined to Kafka
            assert time.monotonic() < deadline and not task.done(), "dc worker never became ready"
            try:
                status, _ = await _aget(port, "/readyz")
            except OSError:
                status = 0
            if status != 200:
                await asyncio.wait({task}, timeout=0.2)
        assert (await _aget(port, "/healthz"))[0] == 200
        first = _metric((await _aget(port, "/metrics"))[1], "edge_offload_dc_worker_loop_steps_total")
        seen = first
        while seen <= first:  # idle polls are steps: the counter moves while the loop turns
            assert time.monotonic() < deadline, "the poll loop made no progress"
            await asyncio.wait({task}, timeout=0.2)
            metrics = (await _aget(port, "/metrics"))[1]
            seen = _metric(metrics, "edge_offload_dc_worker_loop_steps_total")
        assert 'worker="dc-health-1"' in metrics
        assert _metric(metrics, "edge_offload_dc_worker_served_total") == 0
        assert (await _aget(port, "/nope"))[0] == 404
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, 60)
    assert stats.restarts == 0
    with pytest.raises(OSError):
        _get(port, "/healthz")  # the endpoint stops with the worker


async def test_trainer_health_follows_loop_passes_not_a_flag(tmp_path: Path) -> None:
    trainer_settings = TrainerSettings(registry_dir=tmp_path / "registry", keys_dir=tmp_path / "keys",
                                       work_dir=tmp_path / "work", liveness_stall_s=30.0)
    trainer = Trainer(trainer_settings, KafkaSettings(), tmp_path / "cache")
    clock = _Clock()
    trainer.progress = Progress(clock)
    server = health_server("127.0.0.1", 0, trainer_collector(trainer), trainer.progress,
                           trainer_settings.liveness_stall_s, lambda: trainer.progress.steps > 0)
    await server.start()
    try:
        port = server.port
        assert (await _aget(port, "/readyz"))[0] == 503  # no pass yet: models may still be loading
        assert (await _aget(port, "/healthz"))[0] == 200
        trainer.progress.step()  # one pass of the main loop
        assert (await _aget(port, "/readyz"))[0] == 200
        metrics = (await _aget(port, "/metrics"))[1]
        assert _metric(metrics, "edge_offload_trainer_loop_steps_total") == 1
        assert _metric(metrics, "edge_offload_trainer_rounds_total") == 0
        clock.now += 29.0
        assert (await _aget(port, "/healthz"))[0] == 200
        assert _metric((await _aget(port, "/metrics"))[1], "edge_offload_trainer_last_step_age_seconds") == 29.0
        clock.now += 2.0  # 31 s without a finished pass: wedged
        status, body = await _aget(port, "/healthz")
        assert status == 503 and "no progress" in body
        trainer.progress.step()  # the loop moves again
        assert (await _aget(port, "/healthz"))[0] == 200
    finally:
        await server.stop()
        trainer.registry.close()


def test_dc_health_ports_are_settings() -> None:
    s = Settings()
    assert (s.trainer.http_port, s.offload.dc_http_port) == (9109, 9110)
    assert s.trainer.liveness_stall_s > s.offload.dc_liveness_stall_s  # a round may run long
