"""Unit tier: the handshake's two state machines (security/hello.py) talking to each
other through frames passed by hand, without a socket; what a man in the middle
could change on the way is changed here too."""

from __future__ import annotations

import dataclasses
import errno
import os
import tempfile
from typing import Any

import pytest

from pohmelfs import protocol as p
from pohmelfs.protocol import Header, ProtocolError
from pohmelfs.security.config import ClientSecurity, ServerSecurity
from pohmelfs.security.hello import (
    AuthFailed,
    ClientHandshake,
    Declined,
    Refused,
    ServerHandshake,
    Welcome,
)
from pohmelfs.security.keys import write_secret
from pohmelfs.security.policy import ClientPolicy

STATFS = p.StatFs(4096, 4096, 100, 50, 40, 1000, 900, 255)
RESUMED: list[tuple[str, bytes]] = []  # the sessions the welcome was asked to resume


def resume(key: str, session: bytes) -> bool:
    RESUMED.append((key, session))
    return session == KNOWN_SESSION


KNOWN_SESSION = b"k" * p.SESSION_SIZE
WELCOME = Welcome(max_payload=1 << 20, idle_ms=30_000, caps=int(p.Cap.XATTR), fsid=7,
                  statfs=lambda: STATFS, resume=resume)  # fmt: skip


_KEYS = tempfile.mkdtemp(prefix="pohmelfs-hello-")


def secret_file(name: str) -> str:
    path = os.path.join(_KEYS, name)
    write_secret(path)
    return path


SECRET = secret_file("secret")
OTHER_SECRET = secret_file("other")


def frame(parts: list[Any], tagged: bool = False) -> tuple[Header, bytes]:
    """What the other end's reader makes of a frame (a tag, if sealed, checked)."""
    raw = b"".join(bytes(x) for x in parts)
    header = Header.unpack(raw, 1 << 20)
    if tagged:
        header = dataclasses.replace(header, tag_len=p.TAG_SIZE)
    return header, raw[p.HEADER_SIZE :]


def client(secret: str | None = SECRET, **kw: Any) -> ClientHandshake:
    security = ClientSecurity.from_options(secret_file=secret) if secret else ClientSecurity()
    kw.setdefault("session", b"s" * p.SESSION_SIZE)
    return ClientHandshake(security, 1 << 20, 500, 0, b"test-client", **kw)


def server(secret: str | None = SECRET, read_only: bool = False) -> ServerHandshake:
    if secret is None:
        security = ServerSecurity.from_options(insecure=True)
    else:
        policy = ClientPolicy(read_only=read_only)
        security = ServerSecurity.from_options(secret_file=secret, policy=policy)
    return ServerHandshake(security, WELCOME, "peer")


def shake(c: ClientHandshake, s: ServerHandshake) -> Any:
    challenge = s.hello(*frame(c.hello()))
    answer, admitted = s.auth(*frame(c.challenged(*frame(challenge))))
    return c.welcomed(*frame(answer, tagged=s.send_keys is not None)), admitted


def test_a_client_with_the_key_is_admitted_and_both_ends_share_the_session_keys() -> None:
    c, s = client(), server()
    welcomed, admitted = shake(c, s)
    assert (admitted.key, admitted.client, admitted.keepalive) == ("default", b"test-client", 0.5)
    assert welcomed == (1 << 20, 30.0, p.Cap.XATTR, 7, STATFS, False)
    assert c.send_keys is not None and c.send_keys == s.receive_keys
    assert c.receive_keys is not None and c.receive_keys == s.send_keys
    assert c.send_keys != c.receive_keys  # one key pair per direction


def test_the_session_is_resumed_under_the_proved_key_only_after_the_proof() -> None:
    RESUMED.clear()
    c, s = client(session=KNOWN_SESSION), server()
    s.hello(*frame(c.hello()))
    assert RESUMED == []  # nothing is joined before the key is proved
    welcomed, admitted = shake(c, s)
    assert RESUMED == [("default", KNOWN_SESSION)] and admitted.session == KNOWN_SESSION
    assert welcomed.resumed
    assert not shake(client(), server())[0].resumed  # a session the server does not know


def test_a_client_that_fails_the_proof_resumes_nothing() -> None:
    RESUMED.clear()
    c, s = client(secret=OTHER_SECRET, session=KNOWN_SESSION), server()
    with pytest.raises(Refused):
        s.auth(*frame(c.challenged(*frame(s.hello(*frame(c.hello()))))))
    assert RESUMED == []


def test_a_read_only_key_is_told_so_in_the_welcome() -> None:
    welcomed, admitted = shake(client(), server(read_only=True))
    assert admitted.policy.read_only and welcomed.caps & p.Cap.READ_ONLY


def test_an_insecure_server_admits_a_client_without_a_key() -> None:
    c, s = client(secret=None), server(secret=None)
    welcomed, admitted = shake(c, s)
    assert admitted.key == "" and welcomed.fsid == 7
    assert c.send_keys is None and s.send_keys is None


@pytest.mark.parametrize("wrong", ["key", "key name"])
def test_a_wrong_key_and_an_unknown_key_name_are_refused_alike(wrong: str) -> None:
    if wrong == "key name":
        security = ClientSecurity.from_options(secret_file=SECRET, key="nobody")
        c = ClientHandshake(security, 1 << 20, 500, 0, b"x", bytes(p.SESSION_SIZE))
    else:
        c = client(secret=OTHER_SECRET)
    s = server()
    auth = c.challenged(*frame(s.hello(*frame(c.hello()))))
    with pytest.raises(Refused) as refused:
        s.auth(*frame(auth))
    assert refused.value.answer is not None
    with pytest.raises(Declined) as declined:
        c.welcomed(*frame(refused.value.answer))  # a refusal comes untagged
    assert (declined.value.status, declined.value.text) == (errno.EACCES, "authentication failed")
    assert s.send_keys is None  # nothing sealed for a client that did not prove the key


def test_a_server_that_does_not_prove_the_key_is_not_believed() -> None:
    """An impostor can send a challenge (nothing proves one) and a welcome of its own
    making, but not the proof in it, which needs the key."""
    c = client()
    impostor = server(secret=OTHER_SECRET)
    c.challenged(*frame(impostor.hello(*frame(c.hello()))))
    forged = p.reply(
        p.request(p.Command.AUTH, 1, proof=bytes(32)),
        max_payload=1 << 20,
        idle_ms=0,
        caps=0,
        fsid=1,
        statfs=STATFS,
        proof=bytes(32),
        resumed=1,
    )
    with pytest.raises(AuthFailed, match="did not prove the key"):
        c.welcomed(*frame(forged.encode(), tagged=True))
    assert c.send_keys is None  # nothing of ours is sealed for it


def test_a_hello_changed_in_flight_breaks_the_proofs() -> None:
    c, s = client(), server()
    header, payload = frame(c.hello())
    hello = p.decode_payload(header, payload)
    changed = p.request(p.Command.HELLO, 0, **{**hello.fields, "max_payload": 64 << 10})
    auth = c.challenged(*frame(s.hello(*frame(changed.encode()))))
    with pytest.raises(Refused):
        s.auth(*frame(auth))


def test_a_welcome_without_a_tag_is_refused_once_keys_exist() -> None:
    c, s = client(), server()
    answer, _ = s.auth(*frame(c.challenged(*frame(s.hello(*frame(c.hello()))))))
    with pytest.raises(ProtocolError, match="untagged"):
        c.welcomed(*frame(answer, tagged=False))


def test_a_client_never_falls_back_to_less_than_it_was_given() -> None:
    c, s = client(), server(secret=None)
    with pytest.raises(AuthFailed, match="does not authenticate"):
        c.challenged(*frame(s.hello(*frame(c.hello()))))
    c, s = client(secret=None), server()
    with pytest.raises(Refused) as refused:
        s.hello(*frame(c.hello()))
    assert refused.value.answer is not None
    with pytest.raises(Declined) as declined:
        c.challenged(*frame(refused.value.answer))
    assert declined.value.status == errno.EACCES and "requires a key" in declined.value.text


def test_another_protocol_version_is_refused_with_the_servers() -> None:
    c, s = client(), server()
    header, payload = frame(c.hello())
    hello = p.decode_payload(header, payload)
    older = p.request(p.Command.HELLO, 0, **{**hello.fields, "version": p.VERSION - 1})
    with pytest.raises(Refused) as refused:
        s.hello(*frame(older.encode()))
    assert refused.value.answer is not None
    with pytest.raises(Declined) as declined:
        c.challenged(*frame(refused.value.answer))
    assert declined.value.status == errno.EPROTONOSUPPORT
    assert f"server speaks {p.VERSION}" in declined.value.text


def test_frames_out_of_order_end_the_handshake() -> None:
    c, s = client(), server()
    with pytest.raises(ProtocolError, match="expected HELLO"):
        s.hello(*frame(p.request(p.Command.PING, 0).encode()))
    with pytest.raises(ProtocolError, match="AUTH before HELLO"):
        server().auth(*frame(p.request(p.Command.AUTH, 1, proof=bytes(32)).encode()))
    challenge = s.hello(*frame(c.hello()))
    with pytest.raises(ProtocolError, match="unexpected"):
        c.welcomed(*frame(challenge, tagged=True))  # the challenge where the welcome goes
