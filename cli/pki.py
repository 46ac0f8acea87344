"""A small private PKI for a deployment or a test: one CA, a broker certificate, client certificates.

``edge-offload pki init DIR --host mosquitto`` writes ``ca.crt``/``ca.key``,
``server.crt``/``server.key`` (SANs: the given hosts) and one ``NAME.crt``/``NAME.key`` per
``--client NAME``. Keys are EC P-256 and written 0600; the CA key should leave the machine
that signs and never reach an edge node. For a real deployment an organisation's CA is better.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.files import write_private

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True)
class Pki:
    """Paths of what :func:`make_pki` wrote."""

    dir: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) of client ``name``."""
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-offload"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, common_name: str, days: int,
           *, server_hosts: list[str] | None = None) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_hosts is not None else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if server_hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(server_hosts)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_pki(out_dir: Path, hosts: list[str], clients: list[str] | None = None, days: int = 825) -> Pki:
    """Write a CA, a server certificate for ``hosts`` and client certificates into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("edge-offload CA")
    now = dt.datetime.now(dt.UTC)
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    (out_dir / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    write_private(out_dir / "ca.key", _key_pem(ca_key))
    cert, key = _issue(ca_key, ca_name, hosts[0], days, server_hosts=hosts)
    (out_dir / "server.crt").write_bytes(cert)
    write_private(out_dir / "server.key", key)
    for name in clients or []:
        cert, key = _issue(ca_key, ca_name, name, days)
        (out_dir / f"{name}.crt").write_bytes(cert)
        write_private(out_dir / f"{name}.key", key)
    return Pki(out_dir, out_dir / "ca.crt", out_dir / "server.crt", out_dir / "server.key")
