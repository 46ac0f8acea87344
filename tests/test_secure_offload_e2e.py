"""Every device policy on the production broker: TLS, a password per user, the shipped ACL file.

A real Mosquitto runs compose/mosquitto-secure.conf and compose/mosquitto.acl (the ``secure_broker``
fixture); the edge agent logs in as ``edge-agent``, each camera as its device id, the observer as
``operator``. Mosquitto 2 grants every SUBACK and withholds what the ACL denies, so each test checks
that the messages a policy needs actually arrived: the edge's status at the device, the results at
the operator, the device's own results and the edge's returns at the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from cli.brokers import SecureMosquitto
from common.device_settings import DeviceProfileSettings
from common.mqtt_security import aiomqtt_connection
from common.offload_settings import OffloadSettings
from common.settings import Settings
from devices import camera
from devices.acks import PublishRefused
from devices.audio import LegSource, stream_audio
from devices.camera import CameraStats, photo_frames, run_camera
from devices.placer import DevicePlacer
from tests.edge_helpers import agent_settings, collect, running_agent
from topics import names
from topics.codec import now_ms
from topics.kubeedge import twin_update_topic
from topics.vision import Frame, VisionResult, decode_result, encode_frame

pytestmark = pytest.mark.integration


def _agent(broker: SecureMosquitto, name: str, offload: OffloadSettings | None = None) -> Settings:
    settings = agent_settings(broker.port, name, group=name)
    settings.mqtt = broker.login("edge-agent", client_id=name, share_group=name)
    if offload is not None:
        settings.offload = offload
    return settings


@contextlib.asynccontextmanager
async def _operator(broker: SecureMosquitto, device: str) -> AsyncIterator[aiomqtt.Client]:
    """``edge-offload tail`` as the operator would run it: subscribed to one device's results."""
    login = broker.login("operator", client_id=f"op-{device}")
    async with aiomqtt.Client(**aiomqtt_connection(login), identifier=login.client_id,
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(names.vision_results(device), qos=1)
        yield client


async def _run(broker: SecureMosquitto, device: str, placer: DevicePlacer, n: int, edge: str,
               fps: float = 0.0) -> CameraStats:
    loop = asyncio.get_running_loop()
    images = photo_frames(placer.cache_dir)[:2]  # the astronaut: one face in each
    return await loop.run_in_executor(None, lambda: run_camera(
        "127.0.0.1", broker.port, device, images, fps=fps, count=n, security=broker.login(device),
        placer=placer, edge_node=edge))


async def _measured_edge(broker: SecureMosquitto, device: str, sub: aiomqtt.Client, image: bytes) -> None:
    """The device sends one frame without a deadline, which the edge serves and times: from then on
    the edge predicts each frame's completion (an edge without a measurement admits every frame)."""
    login = broker.login(device, client_id=f"warm-{device}")
    async with aiomqtt.Client(**aiomqtt_connection(login), identifier=login.client_id,
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        frame = Frame(device, 1000, now_ms(), "jpeg", image)
        await client.publish(names.frames(device), encode_frame(frame), qos=1)
    warm = decode_result(bytes((await collect(sub, 1))[0].payload))  # type: ignore[arg-type]
    assert (warm.seq, warm.outcome, warm.served_by) == (1000, "served", "edge")


async def _outcomes(sub: aiomqtt.Client, n: int) -> dict[int, VisionResult]:
    results = [decode_result(bytes(m.payload)) for m in await collect(sub, n)]  # type: ignore[arg-type]
    by_seq = {r.seq: r for r in results}
    assert sorted(by_seq) == list(range(n)), "one outcome per frame"
    return by_seq


@pytest.mark.parametrize("policy", ["edge", "crops"])
async def test_edge_and_crops_devices_get_edge_outcomes(policy: str, secure_broker: SecureMosquitto,
                                                        cache_dir: Path) -> None:
    dev, edge, n = f"cam-sec-{policy}", f"sec-edge-{policy}", 3
    placer = DevicePlacer(policy, DeviceProfileSettings(deadline_ms=30_000), cache_dir, dev)
    async with running_agent(_agent(secure_broker, edge)), _operator(secure_broker, dev) as sub:
        stats = await _run(secure_broker, dev, placer, n, edge)
        results = await _outcomes(sub, n)
    assert stats.frames_sent == n and placer.stats.placements[policy] == n
    assert placer.status_heard, "the device reads the edge's status"
    assert all((r.outcome, r.served_by) == ("served", "edge") for r in results.values())
    assert all(r.faces for r in results.values())


async def test_local_device_publishes_its_own_outcomes(secure_broker: SecureMosquitto, cache_dir: Path) -> None:
    dev, edge, n = "cam-sec-local", "sec-edge-local", 3
    placer = DevicePlacer("local", DeviceProfileSettings(deadline_ms=30_000), cache_dir, dev)
    async with running_agent(_agent(secure_broker, edge)) as agent, _operator(secure_broker, dev) as sub:
        await _run(secure_broker, dev, placer, n, edge)
        results = await _outcomes(sub, n)
    assert placer.status_heard
    assert all((r.outcome, r.served_by, r.node) == ("served", "device", dev) for r in results.values())
    assert agent.metrics.value("edge_request_outcomes_total", stage="vision", outcome="served",
                               served_by="edge") == 0


async def test_auto_device_hears_its_edge_outcomes(secure_broker: SecureMosquitto, cache_dir: Path) -> None:
    """auto sends fallback frames and keeps each until its outcome arrives: every one of them is
    settled only if the device may read its own results."""
    dev, edge, n = "cam-sec-auto", "sec-edge-auto", 4
    profile = DeviceProfileSettings(deadline_ms=30_000, edge_share_start=1.0)
    placer = DevicePlacer("auto", profile, cache_dir, dev)
    async with running_agent(_agent(secure_broker, edge)), _operator(secure_broker, dev) as sub:
        await _run(secure_broker, dev, placer, n, edge)
        results = await _outcomes(sub, n)
    assert placer.status_heard
    assert placer.stats.placements["edge"] + placer.stats.placements["crops"] >= 1
    assert placer.settle(0) == 0, "every fallback frame's outcome reached the device"
    sent = placer.stats.placements["edge"] + placer.stats.placements["crops"]
    assert sum(r.served_by == "edge" for r in results.values()) == sent
    assert all(r.outcome == "served" for r in results.values())


async def test_auto_device_serves_what_the_edge_hands_back(secure_broker: SecureMosquitto,
                                                           cache_dir: Path) -> None:
    """The edge returns every fallback frame (its margin says none would end in time): the return
    passes the ACL to the device, which serves the frame and publishes its outcome itself."""
    dev, edge, n = "cam-sec-auto", "sec-edge-return", 4
    profile = DeviceProfileSettings(deadline_ms=5_000, edge_share_start=1.0)
    placer = DevicePlacer("auto", profile, cache_dir, dev)
    settings = _agent(secure_broker, edge, OffloadSettings(margin_ms=60_000.0))
    async with running_agent(settings) as agent, _operator(secure_broker, dev) as sub:
        await _measured_edge(secure_broker, dev, sub, photo_frames(cache_dir)[0])
        await _run(secure_broker, dev, placer, n, edge, fps=4)
        results = await _outcomes(sub, n)
    returned = agent.metrics.value("edge_frames_returned_total", stage="vision", reason="deadline")
    to_edge = placer.stats.placements["edge"] + placer.stats.placements["crops"]
    assert to_edge >= 1, "the first frame goes to the edge (share 1)"
    assert returned == placer.stats.returned == to_edge, "every frame sent to the edge came back"
    assert all((r.outcome, r.served_by) == ("served", "device") for r in results.values())


async def test_auto_device_without_edge_status_says_so_and_serves_locally(
        secure_broker: SecureMosquitto, cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    dev, n = "cam-sec-quiet", 2
    placer = DevicePlacer("auto", DeviceProfileSettings(deadline_ms=30_000, status_wait_s=0.5), cache_dir, dev)
    with caplog.at_level(logging.WARNING, logger="devices.placer"):
        async with _operator(secure_broker, dev) as sub:
            await _run(secure_broker, dev, placer, n, "sec-edge-absent")
            results = await _outcomes(sub, n)
    assert not placer.status_heard
    assert placer.stats.no_status == n and placer.stats.placements["local"] == n
    assert all((r.outcome, r.served_by) == ("served", "device") for r in results.values())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no edge status on offload/v1/edge/sec-edge-absent/status within 0.5 s" in w for w in warnings)


def test_a_denied_publish_fails_with_one_clear_error(secure_broker: SecureMosquitto, cache_dir: Path) -> None:
    """cam-sec-other may publish only as itself: frames sent as another device are refused (PUBACK 0x87)."""
    with pytest.raises(PublishRefused) as refused:
        run_camera("127.0.0.1", secure_broker.port, "cam-sec-forged", photo_frames(cache_dir)[:1], fps=0, count=2,
                   security=secure_broker.login("cam-sec-other"))
    err = refused.value
    assert err.code == 0x87 and err.username == "cam-sec-other"
    assert err.topic in (twin_update_topic("default", "cam-sec-forged"), names.frames("cam-sec-forged"))
    assert "\n" not in str(err) and "Not authorized (0x87)" in str(err) and err.topic in str(err)


def test_the_camera_cli_reports_a_refused_publish_in_one_line(
        secure_broker: SecureMosquitto, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    login = secure_broker.login("cam-sec-other")
    env = {"HOST": "127.0.0.1", "PORT": str(secure_broker.port), "USERNAME": "cam-sec-other",
           "PASSWORD": secure_broker.users["cam-sec-other"], "CA_FILE": str(login.ca_file)}
    for key, value in env.items():
        monkeypatch.setenv(f"EDGE_OFFLOAD_MQTT__{key}", value)
    rc = camera.main(["--device", "cam-sec-forged", "--count", "2", "--fps", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and err.startswith("edge-offload device camera: error: the broker refused")
    assert "Traceback" not in err and "'cam-sec-other'" in err


def test_a_field_unit_streams_as_itself_and_is_refused_as_another(secure_broker: SecureMosquitto) -> None:
    tone = (3000 * np.sin(np.arange(1600) * 2 * np.pi * 440 / 8000)).astype(np.int16)  # 0.2 s at 8 kHz
    legs = [LegSource(name="caller", samples=tone)]
    own = stream_audio("127.0.0.1", secure_broker.port, device="tap-a", conversation="call-sec", legs=legs,
                       speed=0, security=secure_broker.login("tap-a"))
    assert own.legs["caller"].sent == 10
    with pytest.raises(PublishRefused) as refused:
        stream_audio("127.0.0.1", secure_broker.port, device="tap-forged", conversation="call-sec", legs=legs,
                     speed=0, security=secure_broker.login("tap-a", client_id="tap-a-forger"))
    assert refused.value.topic == names.audio("tap-forged", "call-sec", "caller") and refused.value.code == 0x87
