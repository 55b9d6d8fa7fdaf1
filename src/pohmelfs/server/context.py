"""What a session's request handlers work with: the server's shared tables and
the parts of this one session, each with one job."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import Message
from ..wire import FrameWriter
from .cachepolicy import CachePolicy
from .guard import RequestGuard
from .handles import HandleTable
from .shared import Shared
from .waits import Waits


@dataclass(frozen=True, eq=False)
class Context:
    sid: int  # owns this client's advisory and cache locks
    peer: str
    shared: Shared
    handles: HandleTable
    waits: Waits
    policy: CachePolicy
    guard: RequestGuard  # what the client's key may ask
    writer: FrameWriter
    max_payload: int  # agreed at HELLO
    notices: int  # the notifications it wants beyond REVOKE (HELLO)

    def send(self, msg: Message) -> None:
        self.writer.send(msg.encode())
