"""The one place where failures become ``OSError`` exceptions for callers."""

from __future__ import annotations

import errno
import os


def remote_error(
    status: int,
    address: str,
    detail: str = "",
    path: str | bytes | None = None,
    path2: str | bytes | None = None,
) -> OSError:
    """An error reply as the matching OSError subclass (FileNotFoundError...).

    The message names the server so that a user of several servers knows
    which one answered.
    """
    text = os.strerror(status)
    if detail and detail != text:
        text = f"{text}: {detail}"
    text = f"{text} [server {address}]"
    if path2 is not None:
        return OSError(status, text, path, None, path2)
    return OSError(status, text, path)


def timeout_error(address: str, seconds: float, path: str | bytes | None = None) -> OSError:
    return OSError(errno.ETIMEDOUT, f"server {address} did not answer within {seconds:g} s", path)


def connection_error(address: str, why: str, path: str | bytes | None = None) -> OSError:
    return OSError(errno.ECONNRESET, f"connection to server {address} lost: {why}", path)


class Rerouted(ConnectionResetError):
    """A request's server left the client's set: it goes again, to another server of
    the same connection (``client/resend.py``)."""


def rerouted_error(address: str, why: str) -> Rerouted:
    return Rerouted(errno.ECONNRESET, f"server {address} left: {why}")


def unreachable_error(address: str, why: str) -> OSError:
    return OSError(errno.ECONNREFUSED, f"cannot reach server {address}: {why}")


def auth_error(address: str, why: str) -> OSError:
    """The handshake failed for a reason retrying will not change."""
    return PermissionError(errno.EACCES, f"server {address}: {why}")


class UserError(Exception):
    """A mistake the user can fix (the CLI's): printed as one line, exit status 2."""
