"""A client that speaks the protocol by hand, for tests that send what a real
client never would: it does the handshake (with a secret, or none for an
``--insecure`` server), then sends and reads frames one at a time, tagged
when the session has keys."""

from __future__ import annotations

import os
import socket
from typing import Any

from pohmelfs import protocol as p
from pohmelfs.protocol import Command, Header, Message
from pohmelfs.security import handshake as hs
from pohmelfs.security.tags import Sealer, Verifier


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    for _ in range(n + 1):  # every recv returns at least one byte or ends the loop
        if len(buf) >= n:
            break
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class Refused(PermissionError):
    """The server turned the handshake down; ``reply`` says how."""

    def __init__(self, reply: Message) -> None:
        super().__init__(reply.status, bytes(reply["data"]).decode(errors="replace"))
        self.reply = reply


class RawSession:
    """``secret`` None: the server must be --insecure. ``hello``: extra HELLO fields.
    ``sock``: a connected socket to use instead of connecting to ``address``."""

    def __init__(self, address: str, secret: bytes | None, key: str = "default",
                 timeout: float = 5.0, rcvbuf: int = 0, sock: socket.socket | None = None,
                 **hello: Any) -> None:  # fmt: skip
        if sock is None:
            sock = socket.socket()
            if rcvbuf:  # before connecting: the window is set then
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect(split_address(address))
        self.sock = sock
        self.sealer: Sealer | None = None
        self.verifier: Verifier | None = None
        fields = dict(version=p.VERSION, max_payload=p.DEFAULT_MAX_PAYLOAD, keepalive_ms=1000,
                      notices=0, client=b"raw", key=key.encode() if secret else b"",
                      nonce=hs.nonce(), session=os.urandom(p.SESSION_SIZE))  # fmt: skip
        fields.update(hello)
        parts = p.request(Command.HELLO, 0, **fields).encode()
        self.handshake_sent = [b"".join(bytes(x) for x in parts)]  # for replay tests
        self.sock.sendall(self.handshake_sent[0])
        challenge, challenge_payload = self._recv_plain()
        if challenge.status:
            raise Refused(challenge)
        th = hs.transcript(b"".join(bytes(x) for x in parts[1:]), challenge_payload)
        proof = bytes(p.NONCE_SIZE)
        if secret is not None:
            proof = hs.client_proof(secret, th)
            keys = hs.session_keys(secret, th)
            self.verifier = Verifier(keys.to_client)
        self.handshake_sent.append(p.request(Command.AUTH, 1, proof=proof).to_bytes())
        self.sock.sendall(self.handshake_sent[1])
        self.welcome = self.recv()
        if self.welcome.status:
            raise Refused(self.welcome)
        if secret is not None:
            self.sealer = Sealer(keys.to_server)

    def _recv_plain(self) -> tuple[Message, bytes]:
        header = Header.unpack(recv_exact(self.sock, p.HEADER_SIZE), p.U32_MAX)
        payload = recv_exact(self.sock, header.payload_len)
        return p.decode_payload(header, payload), payload

    def seal(self, frame: bytes) -> bytes:
        """One whole frame's bytes as this session sends them (tagged, with keys)."""
        if self.sealer is None:
            return frame
        return b"".join(bytes(x) for x in self.sealer.seal([frame[: p.HEADER_SIZE],
                                                             frame[p.HEADER_SIZE :]]))  # fmt: skip

    def send(self, msg: Message) -> None:
        self.sock.sendall(self.seal(msg.to_bytes()))

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are: no tag (a frame the server must refuse)."""
        self.sock.sendall(data)

    def recv_frame(self) -> tuple[tuple[int, ...], bytes]:
        """One frame as raw header numbers and payload (an unknown command too), its
        tag checked when the session has keys."""
        raw = recv_exact(self.sock, p.HEADER_SIZE)
        fields = p.HEADER.unpack(raw)
        payload = recv_exact(self.sock, fields[5])
        if self.verifier is not None:
            self.verifier.begin(raw, fields[5])
            self.verifier.update(payload)
            self.verifier.finish(recv_exact(self.sock, p.TAG_SIZE))
        return fields, payload

    def recv(self) -> Message:
        fields, payload = self.recv_frame()
        header = Header.unpack(p.HEADER.pack(*fields[:3], 0, *fields[4:]), p.U32_MAX)
        return p.decode_payload(header, payload)

    def call(self, msg: Message) -> Message:
        """Send, and read frames until the reply to ``msg`` (PENDING skipped)."""
        self.send(msg)
        for _ in range(10_000):
            got = self.recv()
            if got.xid == msg.xid and got.is_reply and not got.flags & p.FLAG_PENDING:
                return got
        raise AssertionError("no reply")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
