"""The handshake (HELLO, AUTH) as two sans-I/O state machines, one per end.

Each is fed the frames it receives as (header, payload) and returns the frames
to send; neither touches a socket. The I/O around them (client/connection.py,
server/admission.py) reads a frame, feeds it, sends the answer and, once the
keys are known, puts them on its reader and writer: ``receive_keys`` before
the next frame is read, ``send_keys`` before the next one is sent. The proofs
and keys are ``handshake.py``'s.

Errors: ``Refused`` (the peer must be told: its ``answer`` is the frame to
send, then the connection ends), ``AuthFailed`` (the client side: the server
did not prove the key, or asks for another authentication than ours),
``Declined`` (the client side: the server refused us, with its errno and
text), ``ProtocolError`` (anything else out of order).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import protocol as p
from ..protocol import Command, Header, Message, ProtocolError
from . import handshake as hs
from .config import ClientSecurity, ServerSecurity
from .handshake import DirectionKeys
from .policy import INSECURE, ClientPolicy

log = logging.getLogger("pohmelfs.server")

ZERO_PROOF = bytes(p.NONCE_SIZE)
Frame = list[Any]  # buffers of one frame, for one writev


class Refused(ProtocolError):
    """The client is turned away; ``answer`` (if any) tells it why."""

    def __init__(self, text: str, answer: Frame | None = None) -> None:
        super().__init__(text)
        self.answer = answer


class AuthFailed(Exception):
    """The server did not prove the key, or asks for what this client lacks."""


class Declined(Exception):
    """The server refused this client: its errno and text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


# --- the client's end -----------------------------------------------------------------------


class Welcomed(NamedTuple):
    """What the server told this client once it was admitted."""

    max_payload: int
    idle: float  # seconds: the server closes a connection silent this long (0: never)
    caps: p.Cap
    fsid: int
    statfs: p.StatFs
    resumed: bool  # the server knew the client session and kept its replies


class ClientHandshake:
    """``hello()``, then ``challenged(...)`` with the server's first answer, then
    ``welcomed(...)`` with its second."""

    def __init__(self, security: ClientSecurity, max_payload: int, keepalive_ms: int,
                 notices: int, name: bytes, session: bytes) -> None:  # fmt: skip
        self._security = security
        self._secret = security.secret
        key = security.key.encode() if security.secret is not None else b""
        self._hello = p.request(Command.HELLO, 0, version=p.VERSION, max_payload=max_payload,
                                keepalive_ms=keepalive_ms, notices=notices, client=name,
                                key=key, nonce=hs.nonce(), session=session)  # fmt: skip
        self._hello_parts = self._hello.encode()
        self._th = b""
        self._proof = ZERO_PROOF
        self._keys: hs.SessionKeys | None = None
        self.receive_keys: DirectionKeys | None = None  # for the server's frames, from the welcome
        self.send_keys: DirectionKeys | None = None  # for ours, after the welcome

    def hello(self) -> Frame:
        return self._hello_parts

    def challenged(self, header: Header, payload: bytes) -> Frame:
        """The server's answer to HELLO; returns AUTH."""
        challenge = self._reply(header, payload, Command.HELLO)
        mismatch = self._security.mismatch(challenge["auth"])
        if mismatch:
            raise AuthFailed(mismatch)
        self._th = hs.transcript(b"".join(bytes(x) for x in self._hello_parts[1:]), payload)
        if self._secret is not None:
            self._proof = hs.client_proof(self._secret, self._th)
            self._keys = hs.session_keys(self._secret, self._th)
            self.receive_keys = self._keys.to_client  # the welcome is tagged
        return p.request(Command.AUTH, 1, proof=self._proof).encode()

    def welcomed(self, header: Header, payload: bytes) -> Welcomed:
        """The server's answer to AUTH: admitted, if it proves the key."""
        if self._keys is not None and not header.tag_len and not header.status:
            raise ProtocolError("an untagged welcome")  # only a refusal comes without keys
        welcome = self._reply(header, payload, Command.AUTH)
        if self._secret is not None and self._keys is not None:
            expected = hs.server_proof(self._secret, self._th, self._proof)
            if not hs.proof_matches(expected, welcome["proof"]):
                raise AuthFailed("the server did not prove the key")
            self.send_keys = self._keys.to_server
        return Welcomed(welcome["max_payload"], welcome["idle_ms"] / 1000, p.Cap(welcome["caps"]),
                        welcome["fsid"], welcome["statfs"], bool(welcome["resumed"]))  # fmt: skip

    @staticmethod
    def _reply(header: Header, payload: bytes, cmd: Command) -> Message:
        reply = p.decode_payload(header, payload)
        if reply.cmd != cmd or not reply.is_reply:
            raise ProtocolError(f"unexpected {reply.cmd.name} in the handshake")
        if reply.status:
            raise Declined(reply.status, bytes(reply["data"]).decode(errors="replace"))
        return reply


# --- the server's end -----------------------------------------------------------------------


@dataclass(frozen=True)
class Admitted:
    key: str  # the client key's name ("" without authentication)
    policy: ClientPolicy
    client: bytes  # the name the client gave itself
    max_payload: int
    keepalive: float  # seconds between PENDING frames of a waiting request
    notices: int
    session: bytes  # the client session (with ``key``: whose replies it may see again)


@dataclass(frozen=True)
class Welcome:
    """What the server tells an admitted client."""

    max_payload: int
    idle_ms: int
    caps: int
    fsid: int
    statfs: Callable[[], p.StatFs]
    # Joins the connection to the client session (key, id) it names, once the key is
    # proved; True if the server knew it (its replies are kept).
    resume: Callable[[str, bytes], bool]


class ServerHandshake:
    """``hello(...)`` with the client's HELLO (returns the challenge), then
    ``auth(...)`` with its AUTH (returns the welcome and who was admitted).
    A wrong key, an unknown key name and a wrong proof are refused alike (an
    unknown name is checked against a random secret, so it takes as long)."""

    def __init__(self, security: ServerSecurity, welcome: Welcome, peer: str,
                 certificate: str = "") -> None:  # fmt: skip
        self._security = security
        self._welcome = welcome
        self._peer = peer
        self._certificate = certificate  # a TLS client's verified common name
        self._hello: Message | None = None
        self._th = b""
        self.receive_keys: DirectionKeys | None = None  # for the client's frames, after AUTH
        self.send_keys: DirectionKeys | None = None  # for ours, from the welcome

    def hello(self, header: Header, payload: bytes) -> Frame:
        hello = self._hello = _expect(header, payload, Command.HELLO)
        if hello["version"] != p.VERSION:
            raise _refuse(hello, errno.EPROTONOSUPPORT,
                          f"protocol version {hello['version']} not supported "
                          f"(server speaks {p.VERSION})")  # fmt: skip
        if self._security.method == p.AUTH_SECRET and not hello["key"]:
            raise _refuse(hello, errno.EACCES,
                          "this server requires a key: give the client a secret file "
                          "(secret_file=)")  # fmt: skip
        parts = p.reply(hello, version=p.VERSION, auth=self._security.method,
                        nonce=hs.nonce()).encode()  # fmt: skip
        self._th = hs.transcript(payload, b"".join(bytes(x) for x in parts[1:]))
        return parts

    def auth(self, header: Header, payload: bytes) -> tuple[Frame, Admitted]:
        hello = self._hello
        if hello is None:
            raise ProtocolError("AUTH before HELLO")
        auth = _expect(header, payload, Command.AUTH)
        name = bytes(hello["key"]).decode(errors="replace")
        security, method = self._security, self._security.method
        if method == p.AUTH_SECRET:
            entry = security.key(name)
            secret = entry.secret if entry is not None and entry.secret else hs.nonce()
            proof = hs.client_proof(secret, self._th)
            if not hs.proof_matches(proof, auth["proof"]) or entry is None:
                log.warning("%s: authentication failed (key %r)", self._peer, name)
                raise _refuse(auth, errno.EACCES, "authentication failed")
            policy = entry.policy
            keys = hs.session_keys(secret, self._th)
            self.receive_keys, self.send_keys = keys.to_server, keys.to_client
            server_proof = hs.server_proof(secret, self._th, proof)
        elif method == p.AUTH_TLS:
            entry = security.certificate_key(self._certificate)
            if entry is None:
                log.warning("%s: authentication failed (certificate %r not exported)",
                            self._peer, self._certificate)  # fmt: skip
                raise _refuse(auth, errno.EACCES, "authentication failed")
            policy, name, server_proof = entry.policy, self._certificate, ZERO_PROOF
        else:
            policy, name, server_proof = INSECURE, "", ZERO_PROOF
        welcome = self._welcome
        max_payload = max(64 << 10, min(welcome.max_payload, hello["max_payload"]))
        caps = welcome.caps | (p.Cap.READ_ONLY if policy.read_only else 0)
        resumed = welcome.resume(name, bytes(hello["session"]))
        answer = p.reply(auth, max_payload=max_payload, idle_ms=welcome.idle_ms, caps=int(caps),
                         fsid=welcome.fsid, statfs=welcome.statfs(), proof=server_proof,
                         resumed=int(resumed)).encode()  # fmt: skip
        log.debug("%s: %r admitted with key %r", self._peer, hello["client"], name)
        admitted = Admitted(
            key=name,
            policy=policy,
            client=bytes(hello["client"]),
            max_payload=max_payload,
            keepalive=min(max(hello["keepalive_ms"], 50), 10_000) / 1000,
            notices=hello["notices"],
            session=bytes(hello["session"]),
        )
        return answer, admitted


def _expect(header: Header, payload: bytes, want: Command) -> Message:
    if header.cmd != want or header.flags:
        raise ProtocolError(f"expected {want.name}, got {header.cmd.name}")
    return p.decode_payload(header, payload)


def _refuse(m: Message, code: int, text: str) -> Refused:
    return Refused(text, p.reply(m, status=code, data=text.encode()).encode())
