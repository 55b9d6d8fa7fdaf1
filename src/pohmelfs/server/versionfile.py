"""Where a server's versions outlive it: a SQLite file in its state directory,
outside the export (the server's own state, not the export's files)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import sqlite3
import threading
import time

from .storage import FileKey
from .versions import Versions

log = logging.getLogger("pohmelfs.server")


class VersionFile:
    """Versions in a SQLite file (WAL, not synced: see the module's docstring).

    What a server that stopped without closing it (SIGKILL, a crash, a power
    loss) had not yet written is lost, and with it what told the objects it
    changed from their copies elsewhere. So such a file is not believed: its
    versions are dropped, and every object takes a random ``epoch`` until a
    change or a resync sets its own, which matches no other server's: the next
    resync copies everything. A new file for an export that already holds
    something starts the same way (its history is not known). A file that cannot
    be read is set aside (``.corrupt``) and replaced by a new one."""

    def __init__(self, path: str, empty_export: bool = False) -> None:
        self.path = path
        # One server per file: a second one's bumps would be lost to the first's.
        self._owner = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._owner)
            raise OSError(errno.EBUSY, f"another server keeps its versions in {path}") from None
        self._lock = threading.Lock()
        try:
            self._db, self.epoch, self.trusted = self._open(path, empty_export)
        except sqlite3.DatabaseError as e:
            log.warning("the versions file %s cannot be read (%s): set aside, every object "
                        "now looks changed to the other servers", path, e)  # fmt: skip
            os.replace(path, f"{path}.corrupt-{int(time.time())}")
            for tail in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + tail)
            try:
                self._db, self.epoch, self.trusted = self._open(path, False)
            except BaseException:
                os.close(self._owner)
                raise
        except BaseException:
            os.close(self._owner)
            raise

    @staticmethod
    def _open(path: str, empty_export: bool) -> tuple[sqlite3.Connection, int, bool]:
        new = not os.path.exists(path)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # (the start and the clean stop)
            db.execute(
                "CREATE TABLE IF NOT EXISTS versions (dev INTEGER, ino INTEGER,"
                " version INTEGER NOT NULL, PRIMARY KEY (dev, ino)) WITHOUT ROWID"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)")
            db.execute("CREATE TABLE IF NOT EXISTS behind (address BLOB PRIMARY KEY)")
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            trusted = (meta.get("running") == 0) or (new and empty_export)
            epoch = int(meta.get("epoch", 0)) if trusted else secrets.randbits(62) or 1
            db.execute("BEGIN")
            if not trusted:
                db.execute("DELETE FROM versions")
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [("epoch", epoch), ("running", 1)])  # fmt: skip
            db.execute("COMMIT")
            db.execute("PRAGMA synchronous=OFF")
        except BaseException:
            db.close()
            raise
        return db, epoch, trusted

    def read(self, key: FileKey) -> int:
        with self._lock:
            row = self._db.execute("SELECT version FROM versions WHERE dev = ? AND ino = ?",
                                   key).fetchone()  # fmt: skip
        return self.epoch if row is None else int(row[0])

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

    def marks(self) -> set[bytes]:
        """The servers marked behind (``peers.py``): kept through any stop."""
        with self._lock:
            return {bytes(a) for (a,) in self._db.execute("SELECT address FROM behind")}

    def mark(self, address: bytes, behind: bool) -> None:
        """Mark (or unmark) a server behind, written through to the disk."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                if behind:
                    self._db.execute("INSERT OR IGNORE INTO behind VALUES (?)", (address,))
                else:
                    self._db.execute("DELETE FROM behind WHERE address = ?", (address,))
            finally:
                self._db.execute("PRAGMA synchronous=OFF")

    def close(self) -> None:
        """A clean stop (after the last write): the next start believes the file."""
        with self._lock:
            try:
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("UPDATE meta SET value = 0 WHERE name = 'running'")
            finally:
                self._db.close()
                os.close(self._owner)


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


def open_versions(state_dir: str, export_root: str, empty_export: bool = False) -> Versions:
    """The versions of the export at ``export_root``, kept in ``state_dir`` (which
    must not be inside the export: clients would see, and could change, them);
    ``empty_export``: it holds nothing yet (a new versions file is then believed).
    OSError with the reason when they cannot be."""
    real_state, real_root = os.path.realpath(state_dir), os.path.realpath(export_root)
    if os.path.commonpath([real_state, real_root]) == real_root:
        raise OSError(errno.EINVAL, f"the state directory {state_dir} is inside the export")
    try:
        return Versions(VersionFile(state_file(state_dir, export_root), empty_export))
    except sqlite3.Error as e:
        raise OSError(errno.EIO, f"cannot open the versions file in {state_dir}: {e}") from None
