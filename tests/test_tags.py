"""Tier 1: the handshake's proofs and the tag on every frame, without a server."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from pohmelfs import protocol as p
from pohmelfs.protocol import Command
from pohmelfs.security import handshake as hs
from pohmelfs.security.tags import LARGE, Sealer, TagError, Verifier
from pohmelfs.wire import SocketReader

SECRET = b"s" * 64


def keys(secret: bytes = SECRET, hello: bytes = b"hello", challenge: bytes = b"chal"):  # type: ignore[no-untyped-def]
    return hs.session_keys(secret, hs.transcript(hello, challenge))


def frames(sizes: list[int]) -> list[bytes]:
    return [p.request(Command.WRITE, i + 1, data=os.urandom(n)).to_bytes()
            for i, n in enumerate(sizes)]  # fmt: skip


def seal_all(sealer: Sealer, raw: list[bytes]) -> list[bytes]:
    return [b"".join(bytes(x) for x in sealer.seal([f[:48], f[48:]])) for f in raw]


def check(verifier: Verifier, frame: bytes) -> None:
    h = p.Header.unpack(frame[:48], 1 << 30)
    verifier.begin(frame[:48], h.payload_len)
    verifier.update(frame[48 : 48 + h.payload_len])
    verifier.finish(frame[48 + h.payload_len :])


SIZES = [0, 100, LARGE - 1, LARGE, 1 << 20]


def test_every_size_round_trips_and_says_its_tag_length() -> None:
    k = keys()
    sealer, verifier = Sealer(k.to_server), Verifier(k.to_server)
    for f in seal_all(sealer, frames(SIZES)):
        assert p.Header.unpack(f[:48], 1 << 30).tag_len == p.TAG_SIZE
        check(verifier, f)


@pytest.mark.parametrize(
    ("size", "where"),
    [(n, w) for n in SIZES for w in ("header", "payload", "tag") if n or w != "payload"],
)
def test_a_changed_byte_anywhere_fails(size: int, where: str) -> None:
    k = keys()
    (f,) = seal_all(Sealer(k.to_server), frames([size]))
    pos = {"header": 20, "payload": 48 + size // 2, "tag": len(f) - 1}[where]
    bad = bytearray(f)
    bad[pos] ^= 0x01
    with pytest.raises(TagError):
        check(Verifier(k.to_server), bytes(bad))


def test_replayed_dropped_and_reordered_frames_fail() -> None:
    k = keys()
    one, two, three = seal_all(Sealer(k.to_server), frames([10, 20000, 30]))
    v = Verifier(k.to_server)
    check(v, one)
    with pytest.raises(TagError):
        check(v, one)  # replayed: the sequence number moved on
    v = Verifier(k.to_server)
    check(v, one)
    with pytest.raises(TagError):
        check(v, three)  # two was dropped
    v = Verifier(k.to_server)
    with pytest.raises(TagError):
        check(v, two)  # reordered


def test_keys_differ_by_direction_secret_and_transcript() -> None:
    k = keys()
    (f,) = seal_all(Sealer(k.to_server), frames([50]))
    for other in (Verifier(k.to_client), Verifier(keys(b"t" * 64).to_server),
                  Verifier(keys(challenge=b"other").to_server)):  # fmt: skip
        with pytest.raises(TagError):
            check(other, f)


def test_proofs_bind_the_secret_the_transcript_and_the_direction() -> None:
    th = hs.transcript(b"hello", b"challenge")
    pc = hs.client_proof(SECRET, th)
    assert hs.proof_matches(pc, hs.client_proof(SECRET, th))
    assert not hs.proof_matches(pc, hs.client_proof(b"x" * 64, th))
    assert not hs.proof_matches(pc, hs.client_proof(SECRET, hs.transcript(b"hello", b"other")))
    assert not hs.proof_matches(pc, hs.server_proof(SECRET, th, pc))
    # The two messages cannot be shifted into each other: lengths are bound too.
    assert hs.transcript(b"ab", b"c") != hs.transcript(b"a", b"bc")


def test_a_view_of_the_payload_survives_the_tag_check() -> None:
    """The payload a reader hands out is a view of its buffer; checking the tag must
    not move the buffer under it (a server once applied writes whose data had been
    overwritten by the next frame, received while the tag was read)."""
    k = keys()
    size = 4096 - p.HEADER_SIZE - 8  # the payload ends 8 bytes before the buffer does
    first, second = seal_all(Sealer(k.to_server), frames([size, 200]))
    a, b = socket.socketpair()
    try:
        reader = SocketReader(b, bufsize=4096)
        reader.verifier = Verifier(k.to_server)
        a.sendall(first[: -p.TAG_SIZE])  # the tag comes later, with the next frame

        def rest() -> None:
            time.sleep(0.2)
            a.sendall(first[-p.TAG_SIZE :] + second)

        t = threading.Thread(target=rest)
        t.start()
        for f in (first, second):
            h = reader.read_header(1 << 20)
            view = reader.read_view(h.payload_len)
            reader.end_frame()
            assert bytes(view) == f[48 : 48 + h.payload_len]
        t.join(10)
    finally:
        a.close()
        b.close()


def test_a_frame_sealed_in_one_buffer_is_tagged_as_one_sealed_in_parts() -> None:
    """``seal_frame`` (the server's READ replies) and ``seal`` put the same frame on
    the wire: receivers cannot tell, and the sequence numbers stay in step."""
    k = keys()
    in_parts, in_place = Sealer(k.to_client), Sealer(k.to_client)
    verifier = Verifier(k.to_client)
    for f in frames([*SIZES, 0, LARGE]):
        expected = b"".join(bytes(x) for x in in_parts.seal([f[:48], f[48:]]))
        frame = memoryview(bytearray(len(f) + p.TAG_SIZE))
        frame[: len(f)] = f
        frame[len(f) :] = in_place.seal_frame(frame[: len(f)])
        assert bytes(frame) == expected
        check(verifier, bytes(frame))


@pytest.mark.parametrize("size", [100, LARGE, 1 << 20])
def test_a_payload_checked_later_is_checked_against_its_own_tag(size: int) -> None:
    """Placed with ``check=False``, a payload is checked by whoever uses it while the
    reader goes on to the next frames: a changed byte still fails, and only that
    frame's check."""
    k = keys()
    sent = seal_all(Sealer(k.to_client), frames([size, size, 30]))
    altered = bytearray(sent[1])
    altered[48 + size // 2] ^= 0x80
    a, b = socket.socketpair()
    try:
        reader = SocketReader(b)
        reader.verifier = Verifier(k.to_client)
        threading.Thread(target=a.sendall, args=(sent[0] + bytes(altered) + sent[2],)).start()
        checks = []
        for _ in range(2):
            h = reader.read_header(1 << 30)
            dest = memoryview(bytearray(h.payload_len))
            reader.read_into(dest, check=False)
            checks.append(reader.end_frame_later(dest))
        h = reader.read_header(1 << 30)  # the frame after them is read (and its own)
        reader.read_view(h.payload_len)
        reader.end_frame()
        first, second = checks
        assert first is not None and second is not None
        first()
        with pytest.raises(TagError):
            second()
    finally:
        a.close()
        b.close()
