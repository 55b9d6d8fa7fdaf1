"""The thread that reads a kernel notification group (fanotify's, inotify's):
at once after a quiet spell (an editor's save is seen within milliseconds), at
most every ``batch`` seconds in a burst (a burst of writes to one file merges
into one read, one revocation). A failure of a read never ends the watching
(that would be silent staleness): it counts as changes lost."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable

log = logging.getLogger("pohmelfs.server")


class WatchThread:
    def __init__(self, group: int, read_all: Callable[[], None], lost: Callable[[], None],
                 name: str, batch: float) -> None:  # fmt: skip
        self._group = group
        self._read_all = read_all
        self._lost = lost
        self._batch = batch
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> bool:
        """Stop reading; True once the thread has ended (its descriptors, and the
        group, may be closed: closed under a live thread, they could be reused)."""
        if not self.stopping.is_set():
            self.stopping.set()
            os.write(self._wake_w, b"x")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        if self._thread.is_alive():
            log.warning("a watcher of the export did not stop; its descriptors stay open")
            return False
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        return True

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._group, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        last = 0.0
        while not self.stopping.is_set():
            poller.poll()
            if self.stopping.wait(max(0.0, last + self._batch - time.monotonic())):
                return
            last = time.monotonic()
            try:
                self._read_all()
            except Exception:
                log.exception("watching the export for changes failed; revoking everything")
                self._lost()
