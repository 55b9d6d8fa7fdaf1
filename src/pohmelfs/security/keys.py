"""Shared secrets: made, written and read with the care an SSH private key gets."""

from __future__ import annotations

import os
import secrets
import stat

MIN_SECRET = 32  # bytes of a secret file's text (the secrets we write have 64)


class SecurityConfigError(ValueError):
    """A security setting cannot be used as given; the message says what to fix."""


def new_secret() -> bytes:
    """A fresh secret: 256 random bits, as hex text."""
    return secrets.token_hex(32).encode()


def write_secret(path: str) -> None:
    """Create ``path`` (mode 0600, never over an existing file) holding a new secret;
    missing parent directories are made, mode 0700 (a key's directory is its owner's)."""
    try:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise SecurityConfigError(f"{path}: exists (not overwritten)") from None
    except OSError as e:
        raise SecurityConfigError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(new_secret() + b"\n")


def load_secret(path: str) -> bytes:
    """The secret in ``path``: its text without surrounding white space. Refused if
    others than its owner may read it, or if it is too short to be a key."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise SecurityConfigError(f"secret file {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SecurityConfigError(f"secret file {path}: not a regular file")
        if st.st_mode & 0o077:
            raise SecurityConfigError(
                f"secret file {path}: readable by others (mode {st.st_mode & 0o777:o});"
                f" chmod 600 {path}"
            )
        data = f.read(1 << 16).strip()
    if len(data) < MIN_SECRET:
        raise SecurityConfigError(
            f"secret file {path}: {len(data)} bytes, a secret needs at least {MIN_SECRET}"
            " (make one with: pohmelfs keygen --secret FILE)"
        )
    return data
