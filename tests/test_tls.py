"""Tier 2: mutual TLS (issue 12): certificates from ``pohmelfs keygen --tls``, the
server knowing clients by common name, and every mismatch a one-line refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SECRET_FILE, MountProcess, address_of, requires_fuse, start_server, stopping
from pohmelfs import Client, Cred
from pohmelfs.security.config import ServerSecurity
from pohmelfs.security.policy import ClientPolicy
from pohmelfs.security.tls import make_certificates
from pohmelfs.server.service import Server
from tamper_proxy import TamperProxy


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_certificates(str(d), [], ["laptop", "backup"])
    return d


def tls_server(export_dir: Path, pki: Path, **kw: object) -> Server:
    security = ServerSecurity.from_options(
        tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"),
        tls_ca=str(pki / "ca.crt"), **kw)  # type: ignore[arg-type]  # fmt: skip
    return start_server(export_dir, security=security)


def tls_client(server: Server, pki: Path, name: str = "laptop", ca: Path | None = None,
               **kw: object) -> Client:  # fmt: skip
    return Client([address_of(server)], tls_cert=str(pki / f"client-{name}.crt"),
                  tls_key=str(pki / f"client-{name}.key"), tls_ca=str(ca or pki / "ca.crt"),
                  **kw)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture
def served(export_dir: Path, pki: Path) -> Iterator[Server]:
    with stopping(tls_server(export_dir, pki, policy=ClientPolicy(squash="no_root_squash"))) as srv:
        yield srv


def test_a_client_with_a_certificate_of_the_ca_reads_and_writes(
    served: Server, pki: Path, export_dir: Path
) -> None:
    data = os.urandom(3 << 20)
    with tls_client(served, pki) as c:
        with c.open("/f", "wb") as f:
            f.write(data)
        buf = bytearray(len(data))
        with c.open("/f", "rb", buffering=0) as f:
            assert f.readinto(buf) == len(data)
    assert bytes(buf) == data == (export_dir / "f").read_bytes()


def test_a_certificate_of_another_ca_is_refused(served: Server, tmp_path: Path,
                                               pki: Path) -> None:  # fmt: skip
    other = tmp_path / "other"
    make_certificates(str(other), [], ["laptop"])
    with pytest.raises(PermissionError, match=r"authentication failed|refused"):
        tls_client(served, other, ca=pki / "ca.crt")  # the server's CA did not sign it
    with pytest.raises(PermissionError, match="TLS"):
        tls_client(served, pki, ca=other / "ca.crt")  # nor did ours sign the server's


def test_plain_and_secret_clients_are_told_what_they_lack(served: Server) -> None:
    with pytest.raises(PermissionError, match="requires TLS"):
        Client([address_of(served)])
    with pytest.raises(PermissionError, match="TLS"):
        Client([address_of(served)], secret_file=SECRET_FILE)


def test_a_tls_client_does_not_fall_back_to_a_plain_server(server: Server, pki: Path) -> None:
    with pytest.raises(PermissionError, match="TLS handshake failed"):
        tls_client(server, pki)


def test_clients_known_by_certificate_name_in_the_exports_file(export_dir: Path, pki: Path,
                                                               tmp_path: Path) -> None:  # fmt: skip
    exports = tmp_path / "exports"
    exports.write_text("laptop tls,rw,no_root_squash\nbackup tls,ro,all_squash\n")
    (export_dir / "f").write_bytes(b"data")
    with stopping(tls_server(export_dir, pki, exports=str(exports))) as srv:
        with tls_client(srv, pki, "backup", cred=Cred(0, 0, ())) as c:
            assert c.open("/f", "rb").read() == b"data"
            with pytest.raises(OSError, match="Read-only"):
                c.open("/g", "wb")
        with tls_client(srv, pki, "laptop", cred=Cred(0, 0, ())) as c:
            c.mkdir("/d")
        assert os.stat(export_dir / "d").st_uid == 0
        make_certificates(str(pki), [], ["stranger"])  # the same CA, not in the exports
        with pytest.raises(PermissionError, match="authentication failed"):
            tls_client(srv, pki, "stranger")


@pytest.mark.parametrize("how", ["alter", "replay", "drop"])
def test_tls_records_tampered_with_are_never_taken(served: Server, pki: Path,
                                                   export_dir: Path, how: str) -> None:  # fmt: skip
    """TLS records are not our frames: the proxy changes the 4th chunk it can cut.
    Whatever happens, no call returns data that is not the file's."""
    data = os.urandom(256 << 10)
    (export_dir / "f").write_bytes(data)
    proxy = TamperProxy(served.address, "s2c", 6, how, raw=True)
    try:
        try:
            c = tls_client(served, pki, timeout=3, tls_server_name="localhost")
        except OSError:
            return  # the handshake itself was hit: refused, nothing taken
        with c:
            for _ in range(4):
                try:
                    with c.open("/f", "rb", buffering=0) as f:
                        buf = bytearray(len(data))
                        n = f.readinto(buf)
                        assert bytes(buf[:n]) == data[:n]
                except OSError:
                    pass
    finally:
        proxy.close()


def test_keygen_tls_makes_a_ca_and_certificates(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    argv = [sys.executable, "-m", "pohmelfs.cli", "keygen", "--tls", str(d), "--client", "laptop"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in d.iterdir())
    assert names == ["ca.crt", "ca.key", "client-laptop.crt", "client-laptop.key",
                     "server.crt", "server.key"]  # fmt: skip
    assert (d / "ca.key").stat().st_mode & 0o777 == 0o600
    again = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "exists" in again.stderr


@requires_fuse
def test_a_mount_over_tls(tmp_path: Path, pki: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    srv = tls_server(export, pki, policy=ClientPolicy(squash="no_root_squash"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    m = MountProcess(address_of(srv), mnt, f"tls_cert={pki / 'client-laptop.crt'}",
                     f"tls_key={pki / 'client-laptop.key'}", f"tls_ca={pki / 'ca.crt'}",
                     "tls_server_name=localhost")  # fmt: skip
    try:
        (mnt / "hello").write_bytes(b"over TLS")
        assert (export / "hello").read_bytes() == b"over TLS"
        assert (mnt / "hello").read_bytes() == b"over TLS"
    finally:
        m.stop()
        srv.stop()
        srv.export.close()
