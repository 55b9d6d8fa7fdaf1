"""The shared-secret handshake, as pure functions of the bytes exchanged.

    client -> HELLO  (version, limits, key name, nonce Nc)
    server -> HELLO reply: the challenge (auth method, nonce Ns)
    client -> AUTH   proof Pc = HMAC(K, "client" | T)
    server -> AUTH reply: the welcome (limits, fsid, ...), proof Ps = HMAC(K, "server" | T | Pc)

T is a hash of both HELLO payloads, so every offered setting and both fresh
nonces are bound into both proofs: a recorded handshake replayed to a server
meets a new Ns and fails, a proof from one direction never passes for the
other, and an attacker who changes a setting in flight breaks both proofs.
The session's keys come from K and T (an HKDF), one pair per direction.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import NamedTuple

from ..protocol import NONCE_SIZE

LABEL = b"pohmelfs 6 "


def nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def transcript(hello: bytes | memoryview, challenge: bytes | memoryview) -> bytes:
    h = hashlib.sha256(LABEL + b"transcript")
    for part in (hello, challenge):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


def client_proof(secret: bytes, th: bytes) -> bytes:
    return hmac.digest(secret, LABEL + b"client" + th, "sha256")


def server_proof(secret: bytes, th: bytes, client: bytes) -> bytes:
    return hmac.digest(secret, LABEL + b"server" + th + client, "sha256")


def proof_matches(expected: bytes, got: bytes) -> bool:
    return hmac.compare_digest(expected, got)


class DirectionKeys(NamedTuple):
    small: bytes  # BLAKE2b key for frames with small payloads
    large: bytes  # AES-256 key for GMAC of large ones


class SessionKeys(NamedTuple):
    to_server: DirectionKeys
    to_client: DirectionKeys


def session_keys(secret: bytes, th: bytes) -> SessionKeys:
    """HKDF-SHA256 (RFC 5869) with T as the salt: four independent 32-byte keys."""
    prk = hmac.digest(th, secret, "sha256")

    def expand(label: bytes) -> bytes:
        return hmac.digest(prk, LABEL + label + b"\x01", "sha256")

    return SessionKeys(
        DirectionKeys(expand(b"c2s small"), expand(b"c2s large")),
        DirectionKeys(expand(b"s2c small"), expand(b"s2c large")),
    )
