"""Fixtures: real brokers on free ports, the model cache, real photos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cli.brokers import MosquittoBroker, SecureMosquitto, TansuBroker
from common.settings import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def cache_dir(settings: Settings) -> Path:
    return settings.cache_dir


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    """One Mosquitto for the session (tests use distinct client ids and device names)."""
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture()
def own_mosquitto() -> Iterator[MosquittoBroker]:
    """A Mosquitto of this test alone, free to stop and restart."""
    with MosquittoBroker() as broker:
        yield broker


# Device ids with a login on the session's secure broker (each logs in with its device id).
SECURE_DEVICES = ("cam-a", "cam-b", "tap-a", "cam-sec-edge", "cam-sec-crops", "cam-sec-local", "cam-sec-auto",
                  "cam-sec-quiet", "cam-sec-other")


@pytest.fixture(scope="session")
def secure_broker() -> Iterator[SecureMosquitto]:
    """The production EventBus for the session: TLS, a password file, the shipped ACL file
    (compose/mosquitto.acl); ``secure_broker.login(user)`` gives a client's settings."""
    with SecureMosquitto(devices=SECURE_DEVICES) as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka() -> Iterator[TansuBroker]:
    with TansuBroker() as broker:
        yield broker


@pytest.fixture()
def own_kafka() -> Iterator[TansuBroker]:
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module's model tests: on a busy 2-core box two threads stall badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
