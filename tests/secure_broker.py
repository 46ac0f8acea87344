"""A real Mosquitto running the production config (compose/mosquitto-secure.conf + mosquitto.acl).

The config's listener and ``/mosquitto/...`` paths are rewritten to a free loopback port and a
temporary directory; certificates come from :func:`cli.pki.make_pki`, the password
file from the real ``mosquitto_passwd``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from cli.brokers import BrokerError, MosquittoBroker
from cli.pki import Pki, make_pki

COMPOSE = Path(__file__).resolve().parent.parent / "compose"

USERS = {
    "edge-agent": "agent-pw-1",
    "operator": "operator-pw-1",
    "cam-a": "cam-a-pw-1",
    "cam-b": "cam-b-pw-1",
    "tap-a": "tap-a-pw-1",
}


class SecureMosquitto(MosquittoBroker):
    """The production broker config with TLS, a password file and the ACLs, on 127.0.0.1."""

    def __init__(self, users: dict[str, str] = USERS) -> None:
        super().__init__()
        passwd_bin = shutil.which("mosquitto_passwd")
        if passwd_bin is None:
            raise BrokerError("mosquitto_passwd not found (apt-get install -y mosquitto)")
        root = self._workdir
        for folder in ("config", "secrets", "data"):
            (root / folder).mkdir()
        self.pki: Pki = make_pki(root / "certs", ["localhost", "127.0.0.1"])
        passwd = root / "secrets" / "passwd"
        passwd.touch(mode=0o600)
        for user, password in users.items():
            subprocess.run([passwd_bin, "-b", str(passwd), user, password], check=True, capture_output=True)
        shutil.copyfile(COMPOSE / "mosquitto.acl", root / "config" / "acl")
        conf = (COMPOSE / "mosquitto-secure.conf").read_text()
        conf, n = re.subn(r"^listener 8883 0\.0\.0\.0$", f"listener {self.port} 127.0.0.1", conf, flags=re.M)
        if n != 1:
            raise BrokerError("compose/mosquitto-secure.conf has no `listener 8883 0.0.0.0` line")
        conf = conf.replace("/mosquitto/", f"{root}/")
        # The test runs as root: stay root so the broker can read the 0600 files made above.
        self.config_path.write_text(conf + "user root\n")
