"""A server's Prometheus metrics (server/metrics.py, ``serve --metrics``): what the
clients did is what the scrape says."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    SECRET_FILE,
    held_file,
    make_client,
    start_server,
    stopping,
    terminate,
    wait_until,
)
from conftest import address_of as address
from pohmelfs.server.metrics import Metrics
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(60)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    metrics = Metrics()
    with stopping(start_server(tmp_path, metrics=metrics)) as srv:
        host, port = metrics.serve("127.0.0.1", 0)
        yield srv, f"http://{host}:{port}/metrics"
    metrics.close()


def test_requests_errors_bytes_latency_sessions_locks_and_revocations(
    metered: tuple[Server, str],
) -> None:
    srv, url = metered
    data = b"x" * (1 << 20)
    with make_client([address(srv)]) as a, make_client([address(srv)]) as b:
        with a.open("f", "wb") as f:
            f.write(data)
        with a.open("f", "rb") as f:
            assert f.read() == data
        with pytest.raises(FileNotFoundError):
            a.stat("none")
        held, revoked = held_file(a, "f", exclusive=True)
        during = scrape(url)
        with b.open("f", "r+b", buffering=0) as g:
            g.write(b"y")  # (revokes a's lock)
        assert revoked.wait(10)
        held.close()
        m = scrape(url)
    assert during[("pohmelfs_sessions", ())] == 2
    assert during[("pohmelfs_cache_locks_held", ())] >= 1
    assert m[("pohmelfs_requests_total", (("command", "WRITE"),))] >= 2
    assert m[("pohmelfs_requests_total", (("command", "READ"),))] >= 1
    assert m[("pohmelfs_errors_total", (("errno", "ENOENT"),))] >= 1
    assert m[("pohmelfs_received_bytes_total", ())] >= len(data)
    assert m[("pohmelfs_sent_bytes_total", ())] >= len(data)
    assert m[("pohmelfs_request_seconds_count", (("command", "READ"),))] >= 1
    assert m[("pohmelfs_request_seconds_sum", (("command", "WRITE"),))] > 0
    assert m[("pohmelfs_revocations_total", ())] >= 1
    assert m[("pohmelfs_revocation_wait_seconds_count", ())] >= 1
    wait_until(lambda: scrape(url)[("pohmelfs_sessions", ())] == 0, 10, "sessions ended")


def test_serve_metrics_from_the_command_line(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir(mode=0o777)
    export.chmod(0o777)
    proc = subprocess.Popen([sys.executable, "-m", "pohmelfs.cli", "serve", str(export),
                             "--listen", "127.0.0.1:0", "--secret-file", SECRET_FILE,
                             "--state-dir", str(tmp_path / "state"), "--metrics", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        m = re.search(r" on ([\d.]+:\d+).*metrics on (http://\S+/metrics)", line)
        assert m, line
        with make_client([m.group(1)]) as c:
            c.listdir("/")
        assert scrape(m.group(2))[("pohmelfs_requests_total", (("command", "READDIR"),))] >= 1
    finally:
        terminate(proc, 10)


def test_a_bad_metrics_address_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pohmelfs.cli", "serve", str(tmp_path),
                        "--insecure", "--metrics", "nowhere"], capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--metrics" in r.stderr


def test_a_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    (tmp_path / "e").mkdir()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        r = subprocess.run([sys.executable, "-m", "pohmelfs.cli", "serve", str(tmp_path / "e"),
                            "--insecure", "--state-dir", str(tmp_path / "s"),
                            "--metrics", f"127.0.0.1:{port}"], capture_output=True, text=True,
                           timeout=30)  # fmt: skip
    finally:
        taken.close()
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot serve metrics" in r.stderr and "Traceback" not in r.stderr
