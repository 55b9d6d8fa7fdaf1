"""The README's quick starts, run as they are written, so the docs cannot drift from
the code: the "Mount it" shell block, then every Python block of "Use it from
Python", against the server and mount that block started; the config file, the
fstab line and the systemd units checked with what reads them.

Everything runs in a private network and mount namespace (``unshare -n -m``): its
own 127.0.0.1:7400, /etc and /var/lib as overlays (what the blocks write there stays
in the test's directory), tmpfs on /srv, /mnt, /run, and a ``pohmelfs`` on
/usr/local/bin that runs this checkout. The server and mount the block starts are
stopped by the commands the README gives, and then by PID."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import requires_fuse

pytestmark = [requires_fuse, pytest.mark.timeout(180)]

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(title: str, language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(section(title)) if lang == language]


DRIVER = r"""
set -eu
ip link set lo up
for d in etc var/lib; do
    mkdir -p "$TOP/upper/$d" "$TOP/work/$d"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$TOP/upper/$d,workdir=$TOP/work/$d" "/$d"
done
for d in /srv /mnt /run /usr/local/bin; do mount -t tmpfs tmpfs "$d"; done
printf '#!/bin/sh\nexec %s -m pohmelfs.cli "$@"\n' "$PYTHON" > /usr/local/bin/pohmelfs
chmod 755 /usr/local/bin/pohmelfs
cleanup() {
    pohmelfs umount /mnt/pohmelfs 2>/dev/null || umount -l /mnt/pohmelfs 2>/dev/null || true
    if [ -f /run/pohmelfs/server.pid ]; then kill "$(cat /run/pohmelfs/server.pid)" || true; fi
}
trap cleanup EXIT
echo "== shell"
sh -e "$TOP/mount-it.sh"
for f in "$TOP"/python-*.py; do
    echo "== $f"
    "$PYTHON" "$f"
done
echo "== units"
systemd-analyze verify "$TOP/units/pohmelfs-server.service" "$TOP/units/mnt-pohmelfs.mount"
echo "== stop"
pohmelfs umount /mnt/pohmelfs
pid=$(cat /run/pohmelfs/server.pid)
kill "$pid"
n=0
while kill -0 "$pid" 2>/dev/null; do
    n=$((n + 1)); if [ "$n" -gt 100 ]; then kill -9 "$pid"; echo "server still there"; exit 3; fi
    sleep 0.1
done
echo "== done"
"""


def test_the_quick_starts_run_as_written(tmp_path: Path) -> None:
    (shell,) = blocks("Mount it", "sh")
    (tmp_path / "mount-it.sh").write_text(shell)
    python = blocks("Use it from Python", "python")
    assert len(python) >= 2
    for i, body in enumerate(python):
        (tmp_path / f"python-{i}.py").write_text(body)
    units = tmp_path / "units"
    units.mkdir()
    for body in blocks("Command line", "ini"):
        name = body.splitlines()[0].removeprefix("# ").strip()
        (units / name).write_text(body)
    assert sorted(p.name for p in units.iterdir()) == ["mnt-pohmelfs.mount",
                                                       "pohmelfs-server.service"]  # fmt: skip
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is needed to check the README's units")
    r = subprocess.run(["unshare", "-n", "-m", "--propagation", "private", "sh", "-c", DRIVER],
                       env={"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "PYTHON": sys.executable, "TOP": str(tmp_path), "HOME": str(tmp_path),
                            "SYSTEMD_LOG_LEVEL": "warning"},
                       capture_output=True, text=True, timeout=150)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "== done" in r.stdout, out
    shell_out = r.stdout.split("== shell", 1)[1].split("==", 1)[0]
    assert "?? hostname" in shell_out and "?? os-release" in shell_out, out  # git status
    assert re.search(r"-rw.* os-release\n", shell_out), out  # ls -l
    assert "['hello.txt']" in r.stdout and "hello over the network" not in r.stdout, out
    assert "['projects/table.csv'] 13" in r.stdout, out


def test_the_config_file_and_the_fstab_line_read_as_written(tmp_path: Path) -> None:
    from pohmelfs import config
    from pohmelfs.cli import build_parser
    from pohmelfs.fuse.mount import MountConfig

    (toml,) = blocks("Command line", "toml")
    path = tmp_path / "pohmelfs.toml"
    path.write_text(toml)
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    tables = config.load(str(path))
    assert set(tables) == {"serve", "mount"}
    for command, table in tables.items():
        assert config.defaults_for(command, commands.choices[command], table, str(path))
    fstab = [b for b in blocks("Command line", "") if "fuse.pohmelfs" in b]
    assert fstab, "the fstab line"
    what, where, kind, options, dump, passno = fstab[0].split()
    assert kind == "fuse.pohmelfs" and (dump, passno) == ("0", "0")
    MountConfig.parse(what, where, [options])
