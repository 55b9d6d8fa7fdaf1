"""The one place a request's failure becomes its reply."""

from __future__ import annotations

import errno
import logging
import os

from .. import protocol as p
from ..protocol import Header, Message

log = logging.getLogger("pohmelfs.server")


def reply_for(m: Message | Header, error: BaseException, peer: str = "") -> Message:
    """The error reply to ``m`` for ``error``: an OSError's errno and its text (never
    the server's own paths), a ProtocolError as EPROTO; anything else is a bug of
    ours, logged with its traceback, that costs the client this request (EIO)."""
    if isinstance(error, OSError):
        code = error.errno or errno.EIO
        text = error.strerror or os.strerror(code)
    elif isinstance(error, p.ProtocolError):
        code, text = errno.EPROTO, str(error)
    else:
        log.error("%s: %s failed", peer, m.cmd.name, exc_info=error)
        code, text = errno.EIO, f"internal server error: {error}"
    return p.reply(m, status=code, data=text.encode(errors="replace"))
