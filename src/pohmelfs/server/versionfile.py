"""Where a server's versions outlive it: a SQLite file in its state directory,
outside the export (the server's own state, not the export's files)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import sqlite3
import threading

from .storage import FileKey
from .versions import Versions


class VersionFile:
    """Versions in a SQLite file (WAL, not synced: see the module's docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        # One server per file: a second one's bumps would be lost to the first's.
        self._owner = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._owner)
            raise OSError(errno.EBUSY, f"another server keeps its versions in {path}") from None
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except BaseException:
            os.close(self._owner)
            raise
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS versions (dev INTEGER, ino INTEGER,"
            " version INTEGER NOT NULL, PRIMARY KEY (dev, ino)) WITHOUT ROWID"
        )

    def read(self, key: FileKey) -> int:
        with self._lock:
            row = self._db.execute("SELECT version FROM versions WHERE dev = ? AND ino = ?",
                                   key).fetchone()  # fmt: skip
        return 0 if row is None else int(row[0])

    def write(self, values: dict[FileKey, int]) -> None:
        rows = [(dev, ino, v) for (dev, ino), v in values.items()]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO versions VALUES (?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._owner)


def open_versions(state_dir: str, export_root: str) -> Versions:
    """The versions of the export at ``export_root``, kept in ``state_dir`` (which
    must not be inside the export: clients would see, and could change, them).
    OSError with the reason when they cannot be."""
    real_state, real_root = os.path.realpath(state_dir), os.path.realpath(export_root)
    if os.path.commonpath([real_state, real_root]) == real_root:
        raise OSError(errno.EINVAL, f"the state directory {state_dir} is inside the export")
    try:
        return Versions(VersionFile(state_file(state_dir, export_root)))
    except sqlite3.Error as e:
        raise OSError(errno.EIO, f"cannot open the versions file in {state_dir}: {e}") from None


def state_file(state_dir: str, export_root: str) -> str:
    """The versions file of the export at ``export_root`` in ``state_dir`` (made if need
    be): one per exported directory (its path and identity), never inside it."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    st = os.stat(export_root)
    real = os.path.realpath(export_root)
    name = hashlib.sha256(f"{real}\0{st.st_dev}\0{st.st_ino}".encode()).hexdigest()[:20]
    return os.path.join(state_dir, f"versions-{name}.sqlite")


def default_state_dir() -> str:
    """Where a server keeps its state unless told: $POHMELFS_STATE_DIR, else
    /var/lib/pohmelfs as root, else the user's XDG state directory."""
    if os.environ.get("POHMELFS_STATE_DIR"):
        return os.environ["POHMELFS_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/pohmelfs"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "pohmelfs")
