"""What a mount may be told to do differently (``-o`` options)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Options:
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    max_write: int = 1 << 20
    splice: bool = False  # READ data socket -> pipe -> /dev/fuse, no copy in Python
    writeback: bool = False  # the kernel buffers writes in its page cache (experimental)
    coherent: bool = False  # kernel caching under the server's cache locks
    locked_attr_timeout: float = 60.0  # how long attributes are kept while a lock is held
    # The kernel checks permissions itself (default_permissions), before a request
    # reaches us: a removal may then be answered before the server has done it.
    kernel_checks: bool = False
    # close(2) sends the file's writes without waiting for them (coherent only: others
    # still see them, since a revocation waits); their failures are only logged.
    async_close: bool = False
