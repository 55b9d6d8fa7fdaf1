"""``pohmelfs cp`` (src/pohmelfs/cli_copy.py): trees both ways, files into
directories, permission bits and symlinks kept, a progress bar only on a terminal,
and mistakes in one line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SECRET_FILE, address_of, make_client
from pohmelfs.cli_copy import Side, copy
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(60)


def cp(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pohmelfs.cli", "cp", address_of(server),
                           "--secret-file", SECRET_FILE, *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def make_tree(top: Path) -> dict[str, object]:
    (top / "a/b/c").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "a/small").write_bytes(b"small\n")
    (top / "a/b/big").write_bytes(os.urandom(3 << 20) + b"end")
    (top / "a/b/c/exec").write_bytes(b"#!/bin/sh\n")
    (top / "a/b/c/exec").chmod(0o750)
    (top / "a/link").symlink_to("small")
    return snapshot(top)


def snapshot(top: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def test_a_tree_goes_up_and_comes_back_the_same(server: Server, export_dir: Path,
                                                tmp_path: Path) -> None:  # fmt: skip
    src = tmp_path / "src"
    src.mkdir()
    want = make_tree(src)
    r = cp(server, "-r", str(src), ":/up")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # (no terminal: no bar)
    assert "copied 4 files" in r.stdout
    assert snapshot(export_dir / "up") == want
    r = cp(server, "-r", "-j", "2", ":/up", str(tmp_path / "down"))
    assert r.returncode == 0, r.stderr
    assert snapshot(tmp_path / "down") == want


def test_files_into_directories_and_by_name(server: Server, export_dir: Path,
                                            tmp_path: Path) -> None:  # fmt: skip
    (tmp_path / "f.txt").write_text("one file\n")
    (export_dir / "dir").mkdir()
    assert cp(server, str(tmp_path / "f.txt"), ":/dir").returncode == 0
    assert (export_dir / "dir/f.txt").read_text() == "one file\n"
    assert cp(server, str(tmp_path / "f.txt"), ":/renamed.txt").returncode == 0
    assert (export_dir / "renamed.txt").read_text() == "one file\n"
    assert cp(server, ":/dir/f.txt", str(tmp_path / "back.txt")).returncode == 0
    assert (tmp_path / "back.txt").read_text() == "one file\n"


@pytest.mark.parametrize("args, why", [
    (["/a", "/b"], "one of SOURCE and DEST must be remote"),
    ([":/", "/tmp/x"], "is a directory (use -r)"),
    (["-j", "0", "/a", ":/b"], "-j must be at least 1"),
    ([":/no-such-file", "/tmp/x"], "No such file"),
])  # fmt: skip
def test_mistakes_are_one_line(server: Server, args: list[str], why: str) -> None:
    r = cp(server, *args)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert why in r.stderr, r.stderr


def test_the_bar_shows_on_a_terminal(server: Server, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    with make_client([address_of(server)]) as c:
        bar = copy(Side(), Side(c), str(src), "/shown", True, 2, shown=True)
    err = capsys.readouterr().err
    assert "copying [##############################] 4/4 files, 3/3 MiB" in err
    assert bar.files == 4 and bar.bytes == (3 << 20) + 3 + len(b"small\n#!/bin/sh\n")


def test_a_copy_makes_no_setuid_file(client, export_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (export_dir / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(export_dir / "tool", 0o6755)
    copy(Side(client), Side(), "tool", str(tmp_path / "tool"), False, 1, shown=False)
    assert stat.S_IMODE(os.stat(tmp_path / "tool").st_mode) == 0o755
