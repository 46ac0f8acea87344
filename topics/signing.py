"""What a model-update signature covers, and how an edge checks it (ed25519).

The DC signs :func:`signed_message` (a fixed context, the model name, version and the
artifact's sha256), so a signature cannot be replayed for another model or version.
Each announcement is signed as well (:func:`announcement_message`: the same plus the action
and a serial number that rises with every announcement of the DC), so an edge can refuse
a replayed old announcement and tell a real rollback from a forged one.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["CONTEXT", "ANNOUNCE_CONTEXT", "signed_message", "announcement_message", "key_id", "verify",
           "verify_message"]

CONTEXT = b"edge-offload/model-update/v1\x00"
ANNOUNCE_CONTEXT = b"edge-offload/model-announcement/v1\x00"


def signed_message(name: str, version: str, sha256_hex: str) -> bytes:
    """The bytes the DC signs for one artifact version."""
    return CONTEXT + b"\x00".join(s.encode() for s in (name, version, sha256_hex))


def announcement_message(name: str, version: str, sha256_hex: str, action: str, serial: int) -> bytes:
    """The bytes the DC signs for one announcement (promote or rollback, serial number)."""
    return ANNOUNCE_CONTEXT + b"\x00".join(s.encode() for s in (name, version, sha256_hex, action, str(serial)))


def key_id(public_key: bytes) -> str:
    """Short fingerprint of a raw 32-byte ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def verify(public_key: bytes, signature: bytes, name: str, version: str, sha256_hex: str) -> bool:
    """True if ``signature`` is the key's signature of this name/version/sha256."""
    return verify_message(public_key, signature, signed_message(name, version, sha256_hex))


def verify_message(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is the key's ed25519 signature of ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
