"""The server's side of the handshake: who the client is, before anything else.

A connection's first frames are HELLO and AUTH, each at most PREAUTH_PAYLOAD
bytes, within HANDSHAKE_TIMEOUT; anything else ends it. With a secret the
client proves its key (``security/handshake.py``), the server proves it back,
and from the welcome on every frame in both directions carries a tag. A
wrong key, an unknown key name and a wrong proof all get the same "authentication
failed" (an unknown name is checked against a random secret, so it takes the
same time); the server logs the peer and the name.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .. import protocol as p
from ..protocol import Command, Message, ProtocolError
from ..security import handshake as hs
from ..security.config import ServerSecurity
from ..security.policy import INSECURE, ClientPolicy
from ..security.tags import Sealer, Verifier
from ..wire import FrameWriter, SocketReader

log = logging.getLogger("pohmelfs.server")

PREAUTH_PAYLOAD = 8 << 10  # HELLO: a name of at most 4 KiB, a nonce, a few numbers
HANDSHAKE_TIMEOUT = 10.0
ZERO_PROOF = bytes(p.NONCE_SIZE)


class Refused(ProtocolError):
    """The client was turned away (and told why)."""


@dataclass(frozen=True)
class Admitted:
    key: str  # the client key's name ("" without authentication)
    policy: ClientPolicy
    client: bytes  # the name the client gave itself
    max_payload: int
    keepalive: float  # seconds between PENDING frames of a waiting request
    notices: int


@dataclass(frozen=True)
class Welcome:
    """What the server tells an admitted client."""

    max_payload: int
    idle_ms: int
    caps: int
    fsid: int
    statfs: Callable[[], p.StatFs]


def _read(reader: SocketReader, want: Command) -> tuple[Message, bytes]:
    header = reader.read_header(PREAUTH_PAYLOAD)
    if header.cmd != want or header.flags:
        raise ProtocolError(f"expected {want.name}, got {header.cmd.name}")
    payload = bytes(reader.read_view(header.payload_len))
    return p.decode_payload(header, payload), payload


def _refuse(writer: FrameWriter, m: Message, code: int, text: str) -> Refused:
    try:
        writer.send(p.reply(m, status=code, data=text.encode()).encode())
    except OSError:
        pass
    return Refused(text)


def admit(reader: SocketReader, writer: FrameWriter, security: ServerSecurity,
          welcome: Welcome, peer: str, certificate: str = "") -> Admitted:  # fmt: skip
    """Run the handshake; raises ProtocolError (Refused: the client was told why).
    ``certificate``: the common name of a TLS client's verified certificate."""
    hello, hello_payload = _read(reader, Command.HELLO)
    if hello["version"] != p.VERSION:
        raise _refuse(writer, hello, errno.EPROTONOSUPPORT,
                      f"protocol version {hello['version']} not supported "
                      f"(server speaks {p.VERSION})")  # fmt: skip
    name = bytes(hello["key"]).decode(errors="replace")
    method = security.method
    if method == p.AUTH_SECRET and not name:
        raise _refuse(writer, hello, errno.EACCES,
                      "this server requires a key: give the client a secret file "
                      "(secret_file=)")  # fmt: skip
    challenge = p.reply(hello, version=p.VERSION, auth=method, nonce=hs.nonce())
    parts = challenge.encode()
    writer.send(parts)
    th = hs.transcript(hello_payload, b"".join(bytes(x) for x in parts[1:]))
    auth, _ = _read(reader, Command.AUTH)
    if method == p.AUTH_SECRET:
        entry = security.key(name)
        secret = entry.secret if entry is not None and entry.secret else hs.nonce()
        proof = hs.client_proof(secret, th)
        if not hs.proof_matches(proof, auth["proof"]) or entry is None:
            log.warning("%s: authentication failed (key %r)", peer, name)
            raise _refuse(writer, auth, errno.EACCES, "authentication failed")
        policy = entry.policy
        keys = hs.session_keys(secret, th)
        reader.verifier = Verifier(keys.to_server)
        writer.sealer = Sealer(keys.to_client)
        server_proof = hs.server_proof(secret, th, proof)
    elif method == p.AUTH_TLS:
        entry = security.certificate_key(certificate)
        if entry is None:
            log.warning("%s: authentication failed (certificate %r not exported)", peer,
                        certificate)  # fmt: skip
            raise _refuse(writer, auth, errno.EACCES, "authentication failed")
        policy, name, server_proof = entry.policy, certificate, ZERO_PROOF
    else:
        policy, name, server_proof = INSECURE, "", ZERO_PROOF
    max_payload = max(64 << 10, min(welcome.max_payload, hello["max_payload"]))
    caps = welcome.caps | (p.Cap.READ_ONLY if policy.read_only else 0)
    writer.send(p.reply(auth, max_payload=max_payload, idle_ms=welcome.idle_ms, caps=int(caps),
                        fsid=welcome.fsid, statfs=welcome.statfs(),
                        proof=server_proof).encode())  # fmt: skip
    log.debug("%s: %r admitted with key %r", peer, hello["client"], name)
    return Admitted(
        key=name,
        policy=policy,
        client=bytes(hello["client"]),
        max_payload=max_payload,
        keepalive=min(max(hello["keepalive_ms"], 50), 10_000) / 1000,
        notices=hello["notices"],
    )
