"""The ``pohmelfs`` command line: help, version, one-line errors, client commands."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pohmelfs
from conftest import SECRET_FILE, SERVE_KEY, ServerProcess

TIMEOUT = 20
CLIENT_COMMANDS = ("ls", "cat", "put", "get", "df")
OWN_SECURITY = ("--secret-file", "--exports", "--insecure", "--help")


def with_key(args: tuple[str, ...]) -> list[str]:
    """The test key added, as a user would give it, unless the test names its own."""
    if not args or set(args) & set(OWN_SECURITY):
        return list(args)
    if args[0] == "serve":
        return [*args, *SERVE_KEY]
    if args[0] in CLIENT_COMMANDS:
        return [*args, "--secret-file", SECRET_FILE]
    return list(args)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pohmelfs.cli", *with_key(args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
    )


def assert_one_line_error(r: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert r.returncode != 0, f"expected failure, got 0; stdout={r.stdout!r}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {r.stderr!r}"
    assert lines[0].startswith("pohmelfs: error:"), lines[0]
    for frag in fragments:
        assert frag in lines[0], f"{frag!r} not in {lines[0]!r}"
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- help and version ----------------------------------------------------------


def test_help() -> None:
    r = cli("--help")
    assert r.returncode == 0
    assert r.stderr == ""
    out = r.stdout
    assert out.startswith("usage: pohmelfs")
    for word in ("serve", "ls", "cat", "put", "get", "df", "--version", "--log-level"):
        assert word in out, word


def test_serve_help() -> None:
    r = cli("serve", "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: pohmelfs serve")
    for word in ("DIR", "--listen", "HOST:PORT", "--read-only", "--max-payload", "--workers"):
        assert word in r.stdout, word


@pytest.mark.parametrize("command", ["ls", "cat", "put", "get", "df"])
def test_client_command_help(command: str) -> None:
    r = cli(command, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith(f"usage: pohmelfs {command}")
    assert "HOST:PORT" in r.stdout
    assert "--timeout" in r.stdout


def test_version() -> None:
    r = cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"pohmelfs 0.1.0 (protocol {pohmelfs.protocol.VERSION})"
    assert pohmelfs.__version__ == "0.1.0"


def test_no_command_prints_usage_and_fails() -> None:
    r = cli()
    assert r.returncode != 0
    assert "usage: pohmelfs" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_command_is_a_usage_error() -> None:
    r = cli("frobnicate")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr
    assert "Traceback" not in r.stderr


# --- serve: one-line errors -------------------------------------------------------


def test_serve_missing_directory() -> None:
    r = cli("serve", "/nonexistent", "--listen", "127.0.0.1:0")
    assert_one_line_error(r, "/nonexistent")
    assert r.stdout == ""


def test_serve_a_file_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    r = cli("serve", str(f), "--listen", "127.0.0.1:0")
    assert_one_line_error(r, "not a directory")


def test_serve_port_in_use(export_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = cli("serve", str(export_dir), "--listen", f"127.0.0.1:{port}")
    assert_one_line_error(r, str(port), "in use")
    assert "serving" not in r.stdout


@pytest.mark.parametrize(
    "listen",
    ["nonsense", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:http", "127.0.0.1:-1"],
)
def test_serve_bad_listen_value(export_dir: Path, listen: str) -> None:
    r = cli("serve", str(export_dir), "--listen", listen)
    assert_one_line_error(r, "--listen")
    assert "serving" not in r.stdout


def test_serve_unassignable_address(export_dir: Path) -> None:
    # 192.0.2.0/24 is reserved for documentation: binding fails, nothing is sent.
    r = cli("serve", str(export_dir), "--listen", "192.0.2.1:7400")
    assert_one_line_error(r, "cannot listen")


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_serve_bad_worker_count(export_dir: Path, workers: str) -> None:
    r = cli("serve", str(export_dir), "--listen", "127.0.0.1:0", "--workers", workers)
    assert r.returncode != 0
    assert "serving" not in r.stdout
    assert_one_line_error(r, "workers")


def test_serve_prints_address_and_stops_on_sigterm(export_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pohmelfs.cli",
            "serve",
            str(export_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--read-only",
            *SERVE_KEY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == (
            f"pohmelfs: serving {export_dir} on 127.0.0.1:{port} (read-only) (1 client key(s))"
        )
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0


# --- client commands ------------------------------------------------------------------


def test_ls(server_proc: ServerProcess, export_dir: Path) -> None:
    (export_dir / "b.txt").write_bytes(b"12345")
    (export_dir / "a-dir").mkdir()
    os.symlink("b.txt", export_dir / "c-link")
    r = cli("ls", server_proc.address)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[-1] for ln in lines] == ["a-dir", "b.txt", "c-link"]
    assert lines[0].startswith("d")
    assert lines[1].startswith("-") and lines[1].split()[-2] == "5"
    assert lines[2].startswith("l")
    r = cli("ls", server_proc.address, "/a-dir")
    assert (r.returncode, r.stdout) == (0, "")


def test_put_get_cat_roundtrip(
    server_proc: ServerProcess, export_dir: Path, tmp_path: Path
) -> None:
    data = os.urandom(5 << 20) + b"tail"
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    r = cli("put", server_proc.address, str(local), "/remote.bin")
    assert r.returncode == 0, r.stderr
    assert (export_dir / "remote.bin").read_bytes() == data
    back = tmp_path / "back.bin"
    r = cli("get", server_proc.address, "/remote.bin", str(back))
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == data
    (export_dir / "hello.txt").write_bytes(b"hello\nworld\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pohmelfs.cli",
            "cat",
            server_proc.address,
            "/hello.txt",
            "--secret-file",
            SECRET_FILE,
        ],
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello\nworld\n"
    # put replaces an existing file completely.
    small = tmp_path / "small"
    small.write_bytes(b"short")
    assert cli("put", server_proc.address, str(small), "/remote.bin").returncode == 0
    assert (export_dir / "remote.bin").read_bytes() == b"short"


def test_df(server_proc: ServerProcess, export_dir: Path) -> None:
    r = cli("df", server_proc.address)
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()
    assert header.split() == ["server", "size", "used", "avail", "mode"]
    fields = row.split()
    assert fields[0] == server_proc.address
    st = os.statvfs(export_dir)
    assert int(fields[1]) == st.f_blocks * st.f_frsize
    assert int(fields[3]) > 0
    assert fields[4] == "read-write"


def test_df_read_only(export_dir: Path) -> None:
    sp = ServerProcess(export_dir, "--read-only")
    try:
        r = cli("df", sp.address)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[1].split()[-1] == "read-only"
        local = export_dir.parent / "x"
        local.write_bytes(b"x")
        r = cli("put", sp.address, str(local), "/x")
        assert_one_line_error(r, "Read-only")
        assert not (export_dir / "x").exists()
    finally:
        sp.stop()


def test_remote_errors_are_one_line(server_proc: ServerProcess, tmp_path: Path) -> None:
    r = cli("cat", server_proc.address, "/missing")
    assert_one_line_error(r, "/missing", "No such file")
    assert r.stdout == ""
    dest = tmp_path / "dest"
    r = cli("get", server_proc.address, "/missing", str(dest))
    assert_one_line_error(r, "/missing")
    assert not dest.exists(), "a failed get must not leave an empty local file"
    r = cli("ls", server_proc.address, "/missing")
    assert_one_line_error(r, "/missing")
    r = cli("put", server_proc.address, str(tmp_path / "no-such-local"), "/x")
    assert_one_line_error(r, "no-such-local")


@pytest.mark.parametrize(
    "args",
    [
        ("ls", "{addr}"),
        ("ls", "{addr}", "/"),
        ("cat", "{addr}", "/f"),
        ("get", "{addr}", "/f", "{tmp}/out"),
        ("put", "{addr}", "{tmp}/in", "/f"),
        ("df", "{addr}"),
    ],
    ids=lambda a: "-".join(x for x in a if "{" not in x),
)
def test_client_command_against_closed_port(tmp_path: Path, args: tuple[str, ...]) -> None:
    (tmp_path / "in").write_bytes(b"data")
    addr = f"127.0.0.1:{free_port()}"
    argv = [a.format(addr=addr, tmp=tmp_path) for a in args]
    r = cli(*argv, "--timeout", "2")
    line = assert_one_line_error(r, addr)
    assert "refused" in line.lower() or "reach" in line.lower()
    assert r.returncode != 0


@pytest.mark.parametrize("server", ["nocolon", "127.0.0.1:notaport", ""])
def test_client_command_with_malformed_server_address(server: str) -> None:
    r = cli("ls", server, "--timeout", "2")
    assert_one_line_error(r)


# --- serve --daemon -------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.01)
    return not _pid_alive(pid)


def test_serve_daemon_pid_file_and_sigterm(export_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "server.pid"
    log_file = tmp_path / "server.log"
    r = cli(
        "serve",
        str(export_dir),
        "--listen",
        f"127.0.0.1:{port}",
        "--daemon",
        "--pid-file",
        str(pid_file),
        "--log-file",
        str(log_file),
    )
    pid = int(pid_file.read_text()) if pid_file.exists() else 0
    try:
        assert r.returncode == 0, r.stderr
        assert f"127.0.0.1:{port}" in r.stdout
        assert pid > 0 and _pid_alive(pid)
        (export_dir / "f").write_bytes(b"daemon")
        got = cli("cat", f"127.0.0.1:{port}", "/f")
        assert (got.returncode, got.stdout) == (0, "daemon")
    finally:
        if pid > 0 and _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, 5):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the daemon did not exit within 5 s of SIGTERM")
    assert not pid_file.exists(), "the daemon should remove its pid file on exit"


def test_serve_daemon_reports_startup_error(export_dir: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = cli(
            "serve",
            str(export_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--daemon",
            "--pid-file",
            str(pid_file),
        )
    pid = int(pid_file.read_text()) if pid_file.exists() else 0
    exited = pid == 0 or _wait_gone(pid, 5)
    if not exited:  # must not happen; never leave it running
        os.kill(pid, signal.SIGKILL)
    assert_one_line_error(r, "in use")
    assert r.returncode == 2
    assert exited, "the daemon that failed to start is still running"


def test_serve_daemon_failed_start_leaves_no_pid_file(export_dir: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = cli(
            "serve", str(export_dir), "--listen", f"127.0.0.1:{port}", "--daemon",
            "--pid-file", str(pid_file),
        )  # fmt: skip
    assert r.returncode == 2
    assert not pid_file.exists(), "a server that never started left a stale pid file"


# --- security: one-line errors that name the missing piece ------------------------------


def test_serve_needs_a_key_or_insecure(export_dir: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pohmelfs.cli", "serve", str(export_dir),
                        "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                       timeout=TIMEOUT)  # fmt: skip
    assert_one_line_error(r, "no client key", "--secret-file", "--insecure")
    assert r.returncode == 2


def test_insecure_serves_loopback_only(export_dir: Path) -> None:
    r = cli("serve", str(export_dir), "--listen", "0.0.0.0:0", "--insecure")
    assert_one_line_error(r, "loopback only", "0.0.0.0")


def test_secret_file_readable_by_others_is_refused(export_dir: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose.secret"
    loose.write_text("x" * 64)
    loose.chmod(0o644)
    r = cli("serve", str(export_dir), "--listen", "127.0.0.1:0", "--secret-file", str(loose))
    assert_one_line_error(r, "readable by others", "chmod 600")


def test_keygen_writes_a_private_secret_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k.secret"
    r = cli("keygen", "--secret", str(path))
    assert r.returncode == 0, r.stderr
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().strip()) == 64
    before = path.read_text()
    assert_one_line_error(cli("keygen", "--secret", str(path)), "exists")
    assert path.read_text() == before


def test_client_without_the_key_and_with_a_wrong_one(
    server_proc: ServerProcess, tmp_path: Path
) -> None:
    r = subprocess.run([sys.executable, "-m", "pohmelfs.cli", "ls", server_proc.address],
                       capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert_one_line_error(r, "requires a key", "secret_file")
    wrong = tmp_path / "wrong.secret"
    assert cli("keygen", "--secret", str(wrong)).returncode == 0
    r = cli("ls", server_proc.address, "--secret-file", str(wrong))
    line = assert_one_line_error(r, "authentication failed")
    assert SECRET_FILE not in line and "wrong.secret" not in line


def test_mount_refuses_a_bad_server_set_in_one_line(tmp_path: Path) -> None:
    r = cli("mount", "127.0.0.1:7400/prio=2,127.0.0.1:7400", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "server given twice: 127.0.0.1:7400" in r.stderr


def test_mount_refuses_a_set_of_read_only_servers_before_it_daemonizes(
    tmp_path: Path,
) -> None:
    r = cli("mount", "127.0.0.1:7400/r,127.0.0.1:7401/prio=3/r", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "at least one must take changes" in r.stderr


def test_log_lines_as_json(tmp_path: Path) -> None:
    import json
    import signal as sig

    (tmp_path / "export").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pohmelfs.cli", "--log-format", "json",
                             "--log-level", "info", "serve", str(tmp_path / "export"), "--insecure",
                             "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "st")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "serving" in proc.stdout.readline()  # type: ignore[union-attr]
        proc.send_signal(sig.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["message"].startswith("serving ") and r["level"] == "info" for r in records)
