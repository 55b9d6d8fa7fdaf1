"""The mount's open files: the kernel's file handles, and each node's handles.

Reader threads open and release files of one node at once (the kernel may send
an OPEN while the RELEASE of the node's last handle is still being answered),
and revocations look up a node's handles from their own thread: every change
and lookup happens under one lock, so no handle is lost between them.
"""

from __future__ import annotations

import threading

from ..client.file import RemoteFile


class OpenFiles:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[int, RemoteFile] = {}
        self._by_node: dict[int, set[int]] = {}

    def add(self, nodeid: int, fh: int, f: RemoteFile) -> None:
        with self._lock:
            self._files[fh] = f
            self._by_node.setdefault(nodeid, set()).add(fh)

    def get(self, fh: int) -> RemoteFile | None:
        return self._files.get(fh)

    def __contains__(self, fh: int) -> bool:
        return fh in self._files

    def remove(self, nodeid: int, fh: int) -> RemoteFile | None:
        with self._lock:
            f = self._files.pop(fh, None)
            fhs = self._by_node.get(nodeid)
            if fhs is not None:
                fhs.discard(fh)
                if not fhs:
                    del self._by_node[nodeid]
            return f

    def of_node(self, nodeid: int) -> list[RemoteFile]:
        with self._lock:
            return [self._files[fh] for fh in self._by_node.get(nodeid, ()) if fh in self._files]

    def any_of_node(self, nodeid: int) -> RemoteFile | None:
        with self._lock:
            for fh in self._by_node.get(nodeid, ()):
                f = self._files.get(fh)
                if f is not None:
                    return f
        return None

    def node_open(self, nodeid: int) -> bool:
        return nodeid in self._by_node

    def take_all(self) -> list[RemoteFile]:
        """Every open file, forgotten here (the mount is going away)."""
        with self._lock:
            files = list(self._files.values())
            self._files.clear()
            self._by_node.clear()
            return files
