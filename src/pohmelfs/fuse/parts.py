"""The parts of a mount that its request handlers share, each with one job."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..client.client import Client
from .attrs import AttrPolicy
from .channel import KernelChannel
from .coherent import CacheState
from .leases import Leases
from .locks import FuseLocks
from .names import NameLocks
from .nodes import NodeTable
from .openfiles import OpenFiles
from .options import Options
from .reads import DirectReads
from .remote import Remote


@dataclass(frozen=True, eq=False)
class MountParts:
    client: Client
    opts: Options
    kernel: KernelChannel  # what INIT agreed; notifications to the kernel
    nodes: NodeTable  # the kernel's node ids and their paths
    files: OpenFiles  # the kernel's file handles, and each node's
    remote: Remote  # requests as the caller, by path or through a handle
    attrs: AttrPolicy  # attributes and time-outs for a node
    reads: DirectReads  # READ answered from the client's receive thread
    locks: FuseLocks  # fcntl and flock locks
    # Coherent mounts only: the files' cache locks, leases on attributes, name locks.
    cache: CacheState | None
    leases: Leases | None
    names: NameLocks | None
    handle_ids: itertools.count[int]  # file and directory handles given to the kernel
