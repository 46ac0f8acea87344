"""What a model-update signature covers, and how an edge checks it (ed25519).

The DC signs :func:`signed_message` (a fixed context, the model name, version and the
artifact's sha256), so a signature cannot be replayed for another model or version.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["CONTEXT", "signed_message", "key_id", "verify"]

CONTEXT = b"edge-offload/model-update/v1\x00"


def signed_message(name: str, version: str, sha256_hex: str) -> bytes:
    """The bytes the DC signs for one artifact version."""
    return CONTEXT + b"\x00".join(s.encode() for s in (name, version, sha256_hex))


def key_id(public_key: bytes) -> str:
    """Short fingerprint of a raw 32-byte ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def verify(public_key: bytes, signature: bytes, name: str, version: str, sha256_hex: str) -> bool:
    """True if ``signature`` is the key's signature of this name/version/sha256."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, signed_message(name, version, sha256_hex))
    except (InvalidSignature, ValueError):
        return False
    return True
