"""Shared fixtures: servers on 127.0.0.1 (in-process or as a child process) and clients."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pohmelfs import Client
from pohmelfs.server.export import LocalExport
from pohmelfs.server.service import Server


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    d = tmp_path / "export"
    d.mkdir()
    os.chmod(d, 0o777)
    return d


def start_server(root: Path, read_only: bool = False, **kw: object) -> Server:
    export = LocalExport(str(root), read_only=read_only)
    return Server(export, "127.0.0.1", 0, **kw).start()  # type: ignore[arg-type]


def address_of(server: Server) -> str:
    return "%s:%d" % server.address


@pytest.fixture
def server(export_dir: Path) -> Iterator[Server]:
    srv = start_server(export_dir)
    yield srv
    srv.stop()
    srv.export.close()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    c = Client([address_of(server)], timeout=10, umask=0o022)
    yield c
    c.close()


class ServerProcess:
    """``pohmelfs serve`` as a child process, stopped by PID."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pohmelfs.cli",
                "serve",
                str(root),
                "--listen",
                "127.0.0.1:0",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r" on ([\d.]+:\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()!r}")
        self.address = m.group(1)
        self.pid = self.proc.pid

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def server_proc(export_dir: Path) -> Iterator[ServerProcess]:
    sp = ServerProcess(export_dir)
    yield sp
    sp.stop()
