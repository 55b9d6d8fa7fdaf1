"""Mutual TLS: the standard ``ssl`` module for the channel, ``cryptography`` to make
a CA and the certificates it signs (``pohmelfs keygen --tls DIR``).

Both sides require TLS 1.3 and a certificate from the CA they were given: the
server knows a client by its certificate's common name (a line of the exports
file with ``tls``, or the server's default policy), the client checks the server's
name against the certificate's subject alternative names.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl

from .keys import SecurityConfigError

DAYS = 3650


def _load(ctx: ssl.SSLContext, cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise SecurityConfigError(f"TLS certificate {cert} / key {key}: {e}") from None
    try:
        ctx.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as e:
        raise SecurityConfigError(f"TLS CA {ca}: {e}") from None
    return ctx


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, ca)


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key, ca)
    ctx.check_hostname = True
    return ctx


def peer_name(sock: ssl.SSLSocket) -> str:
    """The common name of the verified peer certificate."""
    cert = sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def _write(path: str, data: bytes, private: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600 if private else 0o644)
    except FileExistsError:
        raise SecurityConfigError(f"{path}: exists (not overwritten)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certificates(directory: str, server_names: list[str], clients: list[str]) -> list[str]:
    """In ``directory``: a CA (made once: ca.crt, ca.key), a server certificate for
    ``server_names`` (server.crt, server.key) if none is there, and one per client
    name (client-NAME.crt, .key). Returns the files written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, mode=0o700, exist_ok=True)
    written: list[str] = []
    now = datetime.datetime.now(datetime.UTC)

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())  # fmt: skip

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_crt, ca_key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    if os.path.exists(ca_crt):
        with open(ca_key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        with open(ca_crt, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        ca_private = key
    else:
        ca_private = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(name("pohmelfs CA"))
              .issuer_name(name("pohmelfs CA")).public_key(ca_private.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now)
              .not_valid_after(now + datetime.timedelta(days=DAYS))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_private, hashes.SHA256()))  # fmt: skip
        _write(ca_key, pem_key(ca_private), True)
        _write(ca_crt, ca.public_bytes(serialization.Encoding.PEM), False)
        written += [ca_crt, ca_key]

    def issue(cn: str, base: str, server: bool, alt: list[str]) -> None:
        private = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), False))  # fmt: skip
        if alt:
            sans: list[x509.GeneralName] = []
            for a in alt:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(a)))
                except ValueError:
                    sans.append(x509.DNSName(a))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        cert = builder.sign(ca_private, hashes.SHA256())
        _write(base + ".key", pem_key(private), True)
        _write(base + ".crt", cert.public_bytes(serialization.Encoding.PEM), False)
        written.extend([base + ".crt", base + ".key"])

    server_base = os.path.join(directory, "server")
    if not os.path.exists(server_base + ".crt"):
        names = server_names or ["localhost", "127.0.0.1", "::1", socket.gethostname()]
        issue(names[0], server_base, True, names)
    for client in clients:
        if not client or "/" in client:
            raise SecurityConfigError(f"bad client name {client!r}")
        issue(client, os.path.join(directory, f"client-{client}"), False, [])
    return written
