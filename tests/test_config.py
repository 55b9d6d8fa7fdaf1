"""Options of serve and mount from a TOML file (src/pohmelfs/config.py): the file's
values are the defaults, the command line overrides them, and every mistake is one
line naming the key and the file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SECRET_FILE, make_client, requires_fuse, terminate
from pohmelfs.cli import _configure, build_parser, mount_target

pytestmark = pytest.mark.timeout(60)


def parsed(config: Path, *argv: str):  # type: ignore[no-untyped-def]
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    args = ["--config", str(config), *argv]
    _configure(commands, args)
    return parser.parse_args(args)


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pohmelfs.cli", *argv], capture_output=True,
                          text=True, timeout=30, env=env)  # fmt: skip


def test_the_files_values_are_the_commands_defaults(tmp_path: Path) -> None:
    config = tmp_path / "pohmelfs.toml"
    config.write_text(f"""
[serve]
export = "/srv/data"
listen = "0.0.0.0:7401"
secret_file = "{SECRET_FILE}"
max-connections = 32
read_only = true
lease = 2.5
watch = "held"

[mount]
servers = ["h1:7400", "h2:7400/prio=1"]
mountpoint = "/mnt/data"
options = {{ allow_other = true, timeout = 7, nocoherent = false, secret_file = "/k" }}
""")
    args = parsed(config, "serve")
    assert (args.dir, args.listen, args.secret_file) == ("/srv/data", "0.0.0.0:7401", SECRET_FILE)
    assert (args.max_connections, args.read_only, args.lease, args.watch) == (32, True, 2.5,
                                                                              "held")  # fmt: skip
    args = parsed(config, "serve", "/elsewhere", "--listen", "127.0.0.1:9", "--lease", "1")
    assert (args.dir, args.listen, args.lease, args.max_connections) == (
        "/elsewhere",
        "127.0.0.1:9",
        1.0,
        32,
    )  # (the command line first, the file for the rest)
    args = parsed(config, "mount")
    assert (args.servers, args.mountpoint) == ("h1:7400,h2:7400/prio=1", "/mnt/data")
    assert args.o == ["allow_other,timeout=7,secret_file=/k"]
    args = parsed(config, "mount", "-o", "timeout=2")
    assert args.o == ["allow_other,timeout=7,secret_file=/k", "timeout=2"]  # (later wins)
    assert mount_target(parsed(config, "mount", "/mnt/b")) == ("h1:7400,h2:7400/prio=1",
                                                               "/mnt/b")  # fmt: skip
    assert mount_target(parsed(config, "mount", "h3:1", "/mnt/c")) == ("h3:1", "/mnt/c")


@pytest.mark.parametrize("text, why", [
    ("[serve]\nlease = 'long'\n", "[serve] lease: must be a number, got 'long'"),
    ("[serve]\nmax_connections = 1.5\n", "[serve] max_connections: must be an integer"),
    ("[serve]\nread_only = 'yes'\n", "[serve] read_only: must be true or false"),
    ("[serve]\nwatch = 'sometimes'\n", "[serve] watch: must be one of filesystem, held, off"),
    ("[serve]\nlisten = 7400\n", "[serve] listen: must be a string"),
    ("[serve]\nfrobnicate = 1\n", "unknown key 'frobnicate' in [serve]"),
    ("[serve]\nfunc = 'x'\n", "unknown key 'func' in [serve]"),
    ("[mount]\ndir = 'x'\n", "unknown key 'dir' in [mount]"),
    ("[mount]\noptions = { bogus = true }\n", "[mount] options: unknown mount option 'bogus'"),
    ("[mount]\noptions = 'allow_other'\n", "[mount] options: must be a table"),
    ("[mount]\noptions = { timeout = 'a,b' }\n", "[mount] options.timeout: must be true"),
    ("[server]\nlisten = 'x'\n", "unknown table [server]"),
    ("serve = 1\n", "serve must be a table"),
    ("[serve\n", "not TOML"),
])  # fmt: skip
def test_a_mistake_is_one_line_naming_the_key_and_the_file(tmp_path: Path, text: str,
                                                           why: str) -> None:  # fmt: skip
    config = tmp_path / "bad.toml"
    config.write_text(text)
    r = run("--config", str(config), "serve", str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{config}: " in r.stderr and why in r.stderr, r.stderr


def test_a_missing_file_and_the_environment(tmp_path: Path) -> None:
    r = run("--config", str(tmp_path / "none.toml"), "serve", str(tmp_path))
    assert r.returncode == 2 and "none.toml: No such file or directory" in r.stderr
    config = tmp_path / "env.toml"
    config.write_text("[serve]\nlease = 'x'\n")
    r = run("serve", str(tmp_path), env={**os.environ, "POHMELFS_CONFIG": str(config)})
    assert r.returncode == 2 and "env.toml: [serve] lease" in r.stderr


def test_a_server_started_from_the_file_serves(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "hello").write_text("from the config\n")
    config = tmp_path / "server.toml"
    state = tmp_path / "state"
    config.write_text(
        f'[serve]\nexport = "{export}"\nlisten = "127.0.0.1:0"\n'
        f'secret_file = "{SECRET_FILE}"\nstate_dir = "{state}"\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "pohmelfs.cli", "--config", str(config),
                             "serve"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        m = re.search(r" on ([\d.]+:\d+)", line)
        assert m, line
        with make_client([m.group(1)]) as c, c.open("hello") as f:
            assert f.read() == "from the config\n"
    finally:
        terminate(proc, 10)


@requires_fuse
@pytest.mark.timeout(90)
def test_a_mount_from_the_file(tmp_path: Path) -> None:
    from conftest import ServerProcess
    from pohmelfs.fuse import device

    export, mnt = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mnt.mkdir()
    server = ServerProcess(export)
    config = tmp_path / "mount.toml"
    options = f'{{ secret_file = "{SECRET_FILE}", allow_other = true }}'
    config.write_text(
        f'[mount]\nservers = ["{server.address}"]\nmountpoint = "{mnt}"\noptions = {options}\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "pohmelfs.cli", "--config", str(config),
                             "mount", "--foreground"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert "mounted" in proc.stdout.readline()  # type: ignore[union-attr]
        (mnt / "f").write_text("through a mount from the file\n")
        assert (export / "f").read_text() == "through a mount from the file\n"
    finally:
        terminate(proc, 15)
        if device.is_mounted(str(mnt)):
            device.unmount(str(mnt), lazy=True)
        server.stop()


def test_only_serve_and_mount_read_the_file(tmp_path: Path) -> None:
    env = {**os.environ, "POHMELFS_CONFIG": str(tmp_path / "none.toml")}
    assert run("--version", env=env).returncode == 0
    r = run("ls", "127.0.0.1:1", "--timeout", "1", env=env)
    assert "none.toml" not in r.stderr, r.stderr
