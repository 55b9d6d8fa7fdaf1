"""The kernel's node ids mapped to export paths, with lookup counts.

The protocol is path-based (as the original POHMELFS was), the kernel speaks
in node ids. Each node keeps its parent node and name, so a path is computed by
walking up and a rename moves a whole subtree by changing one node. A node
lives while the kernel holds lookups on it; FORGET drops them, so a million
lookups of the same names cost no memory once the kernel lets go.
"""

from __future__ import annotations

import threading

ROOT_ID = 1


class Node:
    __slots__ = ("nodeid", "parent", "name", "lookups", "ino", "linked", "aliases")

    def __init__(self, nodeid: int, parent: Node | None, name: bytes, ino: int) -> None:
        self.nodeid = nodeid
        self.parent = parent
        self.name = name
        self.ino = ino
        self.lookups = 0
        self.linked = True  # false once its last name was removed (it may still be open)
        self.aliases: list[tuple[Node, bytes]] = []  # its other names (hard links)

    def path(self) -> bytes:
        parts = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return b"/" + b"/".join(reversed(parts))


class NodeTable:
    def __init__(self, root_ino: int = 0) -> None:
        self._lock = threading.Lock()
        self.root = Node(ROOT_ID, None, b"", root_ino)
        self.root.lookups = 1
        self._by_id: dict[int, Node] = {ROOT_ID: self.root}
        self._by_name: dict[tuple[int, bytes], Node] = {}
        self._by_ino: dict[int, Node] = {}
        self._next = ROOT_ID + 1

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, nodeid: int) -> Node | None:
        return self._by_id.get(nodeid)

    def child(self, parent: Node, name: bytes) -> Node | None:
        return self._by_name.get((parent.nodeid, name))

    def child_path(self, parent: Node, name: bytes) -> bytes:
        base = parent.path()
        return base + name if base == b"/" else base + b"/" + name

    def remember(self, parent: Node, name: bytes, ino: int, nlink: int) -> Node:
        """Account one kernel lookup of ``parent/name`` (object ``ino``); returns its node.

        The same name with the same inode keeps its node; a hard link of a
        file the kernel already knows gets the same node, so both names show
        one inode to applications.
        """
        with self._lock:
            node = self._by_name.get((parent.nodeid, name))
            if node is None or node.ino != ino:
                linked = self._by_ino.get(ino) if nlink > 1 else None
                if linked is not None and linked.linked:
                    node = linked  # another name of a file the kernel knows
                    if (parent, name) != (node.parent, node.name):
                        node.aliases.append((parent, name))
                else:
                    node = Node(self._next, parent, name, ino)
                    self._next += 1
                    self._by_id[node.nodeid] = node
                    self._by_ino[ino] = node
                self._by_name[(parent.nodeid, name)] = node
            node.lookups += 1
            return node

    def forget(self, nodeid: int, nlookup: int) -> None:
        with self._lock:
            node = self._by_id.get(nodeid)
            if node is None or node is self.root:
                return
            node.lookups -= nlookup
            if node.lookups > 0:
                return
            del self._by_id[nodeid]
            # Every name it had goes, its other names (hard links) too: a later lookup
            # through one must make a new node, never hand back this forgotten id.
            names = [(node.parent, node.name), *node.aliases] if node.parent is not None else []
            for parent, name in names:
                if self._by_name.get((parent.nodeid, name)) is node:
                    del self._by_name[(parent.nodeid, name)]
            node.aliases = []
            if self._by_ino.get(node.ino) is node:
                del self._by_ino[node.ino]

    def unlinked(self, parent: Node, name: bytes) -> None:
        """``parent/name`` was removed."""
        with self._lock:
            node = self._by_name.pop((parent.nodeid, name), None)
            if node is not None:
                self._drop_name(node, parent, name)

    def renamed(self, old_parent: Node, old: bytes, new_parent: Node, new: bytes,
                exchange: bool = False) -> None:  # fmt: skip
        with self._lock:
            moving = self._by_name.pop((old_parent.nodeid, old), None)
            other = self._by_name.pop((new_parent.nodeid, new), None)
            if moving is not None:
                self._rename_name(moving, old_parent, old, new_parent, new)
                self._by_name[(new_parent.nodeid, new)] = moving
            if other is not None:
                if exchange:
                    self._rename_name(other, new_parent, new, old_parent, old)
                    self._by_name[(old_parent.nodeid, old)] = other
                elif other is not moving:
                    self._drop_name(other, new_parent, new)

    @staticmethod
    def _rename_name(node: Node, parent: Node, name: bytes, new_parent: Node, new: bytes) -> None:
        if (node.parent, node.name) == (parent, name):
            node.parent, node.name = new_parent, new
        else:
            node.aliases = [(new_parent, new) if a == (parent, name) else a for a in node.aliases]

    @staticmethod
    def _drop_name(node: Node, parent: Node, name: bytes) -> None:
        """One name of ``node`` is gone: fall back to another, or mark it unlinked."""
        if (node.parent, node.name) == (parent, name):
            if node.aliases:
                node.parent, node.name = node.aliases.pop()
            else:
                node.linked = False
        else:
            node.aliases = [a for a in node.aliases if a != (parent, name)]
