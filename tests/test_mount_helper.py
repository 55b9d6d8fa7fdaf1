"""``mount -t fuse.pohmelfs``, an /etc/fstab line and ``umount``, through mount(8) and
fuse3's mount.fuse3 (which runs ``pohmelfs SOURCE MOUNTPOINT -o OPTIONS``).

Each case runs in a private mount namespace (``unshare -m``) where a tmpfs over
/usr/local/bin holds a ``pohmelfs`` that runs this checkout, and a test fstab is
bound over /etc/fstab: nothing outside the namespace sees the mount or the files.
The daemon's PID is read from its pid file, and it must be gone after ``umount``
(else it is killed by PID and the case fails)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SECRET_FILE, ServerProcess, requires_fuse

pytestmark = [requires_fuse, pytest.mark.timeout(120)]

SCRIPT = r"""
set -eu
mount -t tmpfs tmpfs /usr/local/bin
printf '#!/bin/sh\nexec %s -m pohmelfs.cli "$@"\n' "$PYTHON" > /usr/local/bin/pohmelfs
chmod 755 /usr/local/bin/pohmelfs
pid_of() {
    "$PYTHON" -c 'import sys; from pohmelfs.fuse.mount import pid_file
print(open(pid_file(sys.argv[1])).read().strip())' "$1"
}
gone() {  # the daemon of a mount that was unmounted ends by itself
    n=0
    while kill -0 "$1" 2>/dev/null; do
        n=$((n + 1))
        if [ "$n" -gt 100 ]; then
            kill -9 "$1"; echo "daemon $1 still there after umount"; exit 3
        fi
        sleep 0.1
    done
}
$MOUNT_STEP
grep -q " $MNT fuse.pohmelfs " /proc/mounts
pid=$(pid_of "$MNT")
echo hello > "$MNT/through-the-mount"
cat "$EXPORT/through-the-mount"
ls "$MNT"
umount "$MNT"
gone "$pid"
if grep -q " $MNT " /proc/mounts; then echo "still mounted"; exit 4; fi
echo unmounted
"""


def run_in_namespace(mount_step: str, mnt: Path, export: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHON": sys.executable,
           "MNT": str(mnt), "EXPORT": str(export), "MOUNT_STEP": mount_step,
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}  # fmt: skip
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           SCRIPT.replace("$MOUNT_STEP", mount_step)],
                          env=env, capture_output=True, text=True, timeout=90)  # fmt: skip


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    export = tmp_path / "export"
    export.mkdir()
    server = ServerProcess(export)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield server, export, mnt
    server.stop()


@pytest.mark.skipif(not shutil.which("mount.fuse3") and not shutil.which("mount.fuse"),
                    reason="fuse3's mount.fuse3 is not installed")  # fmt: skip
def test_mount_t_fuse_pohmelfs_and_umount(served) -> None:  # type: ignore[no-untyped-def]
    server, export, mnt = served
    step = (f'mount -t fuse.pohmelfs {server.address} "$MNT" '
            f"-o allow_other,secret_file={SECRET_FILE},_netdev")  # fmt: skip
    r = run_in_namespace(step, mnt, export)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "hello" and "through-the-mount" in r.stdout
    assert r.stdout.strip().endswith("unmounted")


def test_an_fstab_line_mounts_with_mount_and_umount(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, export, mnt = served
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{server.address} {mnt} fuse.pohmelfs "
                     f"allow_other,secret_file={SECRET_FILE},_netdev,noauto,"
                     "x-systemd.automount 0 0\n")  # fmt: skip
    step = f'mount --bind {fstab} /etc/fstab && mount "$MNT"'
    r = run_in_namespace(step, mnt, export)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "hello" and r.stdout.strip().endswith("unmounted")


def test_a_bad_option_from_mount_is_one_line_and_mounts_nothing(served) -> None:  # type: ignore[no-untyped-def]
    server, export, mnt = served
    step = (f'if mount -t fuse.pohmelfs {server.address} "$MNT" -o bogus_option 2>err; '
            'then echo "mounted?"; exit 5; fi; cat err; exit 0')  # fmt: skip
    r = run_in_namespace(step, mnt, export)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bogus_option" in r.stdout and len(r.stdout.strip().splitlines()) == 1, r.stdout
