"""Tier 2: random and mutated frames against a live server after a valid handshake
(bounded; ``tools/fuzz_server.py`` runs 100,000). The server stays up, answers a
well-behaved client after each, and a root-only directory stays as it was."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SECRET_FILE, address_of, make_client, start_server
from pohmelfs import protocol as p
from pohmelfs.protocol import Command
from pohmelfs.security.config import ServerSecurity
from pohmelfs.security.keys import load_secret
from pohmelfs.security.policy import ClientPolicy
from pohmelfs.server.service import Server
from rawwire import RawSession


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    export = tmp_path_factory.mktemp("fuzz") / "export"
    export.mkdir()
    os.chmod(export, 0o777)
    guarded = export / "guarded"
    guarded.mkdir(mode=0o700)
    (guarded / "secret").write_bytes(b"root only")
    security = ServerSecurity.from_options(secret_file=SECRET_FILE, policy=ClientPolicy())
    srv = start_server(export, security=security)
    yield srv, export
    srv.stop()
    srv.export.close()


headers = st.builds(
    lambda cmd, flags, status, xid, oid, off, length, payload: (
        p.HEADER.pack(p.MAGIC, cmd, flags, 0, status, len(payload), xid, oid, off, length) + payload
    ),
    st.integers(0, 45),
    st.sampled_from([0, 1, 2, 4, 8, 16, 0x11, 0xFFFF]),
    st.sampled_from([0, 0, 5]),
    st.integers(1, 1 << 40),
    st.integers(0, 16),
    st.integers(0, (1 << 64) - 1),
    st.integers(0, (1 << 64) - 1),
    st.binary(max_size=300),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(frames=st.lists(headers, min_size=1, max_size=6), tagged=st.booleans())
def test_random_frames_after_a_handshake(target: tuple[Server, Path], frames: list[bytes],
                                         tagged: bool) -> None:  # fmt: skip
    srv, export = target
    with RawSession(address_of(srv), load_secret(SECRET_FILE), timeout=5) as s:
        try:
            for frame in frames:
                s.send_raw(s.seal(frame) if tagged else frame)
            s.call(p.request(Command.PING, 1 << 50))  # served after them, or dropped
        except (OSError, p.ProtocolError):
            pass  # the server may drop a connection that sent garbage
    with make_client([address_of(srv)], timeout=5) as c:
        assert "guarded" in c.listdir("/")
    assert os.listdir(export / "guarded") == ["secret"]
    assert (export / "guarded" / "secret").read_bytes() == b"root only"
    assert srv.sessions is not None and not srv._stopping
