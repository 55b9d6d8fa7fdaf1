"""A debugger or profiler attaching to the mount daemon (ptrace) must not unmount it.

Interrupting the daemon's main thread, which sleeps in ``sigtimedwait`` for the
stop signals, made that call return a siginfo of no signal (seen with py-spy):
the daemon took it for SIGTERM and unmounted.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from pathlib import Path

import pytest

from conftest import Mounted, requires_fuse

pytestmark = requires_fuse

PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
WALL = 0x40000000


def interrupt_repeatedly(pid: int, seconds: float) -> int:
    """Attach to ``pid``'s main thread, stop it and let it go, again and again."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    cycles = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and cycles < 20000:
        if libc.ptrace(PTRACE_SEIZE, pid, None, None) != 0:
            err = ctypes.get_errno()
            if err == errno.ESRCH:
                break  # it exited
            pytest.skip(f"cannot ptrace the daemon: {os.strerror(err)}")
        libc.ptrace(PTRACE_INTERRUPT, pid, None, None)
        os.waitpid(pid, WALL)
        libc.ptrace(PTRACE_DETACH, pid, None, None)
        cycles += 1
    return cycles


def test_a_ptrace_attach_does_not_unmount(tmp_path: Path) -> None:
    m = Mounted(tmp_path)
    try:
        (m.mnt / "before").write_bytes(b"x")
        cycles = interrupt_repeatedly(m.mount.pid, 4.0)
        time.sleep(1.0)  # the daemon's main loop looks every 0.5 s
        assert m.mount.proc.poll() is None, "the daemon exited"
        assert (m.mnt / "before").read_bytes() == b"x"
        assert cycles > 50
    finally:
        m.stop()
