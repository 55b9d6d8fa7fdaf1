"""The server's side of the handshake: who the client is, before anything else.

A connection's first frames are HELLO and AUTH, each at most PREAUTH_PAYLOAD
bytes, within HANDSHAKE_TIMEOUT; anything else ends it. With a secret the
client proves its key (``security/hello.py``, ``handshake.py``), the server proves it back,
and from the welcome on every frame in both directions carries a tag. A
wrong key, an unknown key name and a wrong proof all get the same "authentication
failed" (an unknown name is checked against a random secret, so it takes the
same time); the server logs the peer and the name.
"""

from __future__ import annotations

from ..protocol import Header
from ..security.config import ServerSecurity
from ..security.hello import Admitted, Frame, Refused, ServerHandshake, Welcome
from ..security.tags import Sealer, Verifier
from ..wire import FrameWriter, SocketReader

PREAUTH_PAYLOAD = 8 << 10  # HELLO: a name of at most 4 KiB, a nonce, a few numbers
HANDSHAKE_TIMEOUT = 10.0


def _read(reader: SocketReader) -> tuple[Header, bytes]:
    header = reader.read_header(PREAUTH_PAYLOAD)
    return header, bytes(reader.read_view(header.payload_len))


def _tell(writer: FrameWriter, answer: Frame | None) -> None:
    if answer is not None:
        try:
            writer.send(answer)
        except OSError:
            pass


def admit(reader: SocketReader, writer: FrameWriter, security: ServerSecurity,
          welcome: Welcome, peer: str, certificate: str = "") -> Admitted:  # fmt: skip
    """Run the handshake (``security/hello.py``) on the connection; raises
    ProtocolError (Refused: the client was told why). ``certificate``: the common
    name of a TLS client's verified certificate."""
    shake = ServerHandshake(security, welcome, peer, certificate)
    try:
        writer.send(shake.hello(*_read(reader)))
        answer, admitted = shake.auth(*_read(reader))
    except Refused as e:
        _tell(writer, e.answer)
        raise
    if shake.receive_keys is not None and shake.send_keys is not None:
        reader.verifier = Verifier(shake.receive_keys)
        writer.sealer = Sealer(shake.send_keys)
    writer.send(answer)
    return admitted
