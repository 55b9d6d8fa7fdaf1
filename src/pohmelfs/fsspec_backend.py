"""pohmelfs as an fsspec filesystem: ``fsspec.filesystem("pohmelfs", servers=...)`` and
``pohmelfs://HOST:PORT[,HOST:PORT...]/path`` URLs (registered through the
``fsspec.specs`` entry point, so ``fsspec.open``, pandas and pyarrow take them).

A few primitives on the library (``Client``), the rest inherited from fsspec, as its
sftp and memory implementations do: ``info`` is one lookup (never a listing of the
parent), ``ls`` one streamed listing with attributes, ``cat_file``/``cat_ranges`` read
straight into their result (``RemoteFile.preadinto``), ``rm`` of a tree and
``makedirs`` are one request each, ``mv`` of one path a rename, ``cp_file`` a copy on
the server (COPY), ``checksum`` the object's version. Paths are relative to the export
(``""`` is its root). Errors are the library's: builtin ``OSError``s with an errno.

Without a key option the secret named by ``$POHMELFS_SECRET_FILE``, else the embedded
default's ``/etc/pohmelfs/secret`` if this user can read it, proves the client.
"""

from __future__ import annotations

import datetime
import os
import stat as stat_mod
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fsspec import AbstractFileSystem

from .client.client import Client

T = TypeVar("T")
DEFAULT_SECRET = "/etc/pohmelfs/secret"
KEY_OPTIONS = ("secret_file", "key", "tls_cert", "tls_key", "tls_ca")
CLIENT_OPTIONS = (*KEY_OPTIONS, "tls_server_name", "timeout", "connect_timeout", "majority")


def _kind(mode: int) -> str:
    if stat_mod.S_ISDIR(mode):
        return "directory"
    if stat_mod.S_ISREG(mode):
        return "file"
    return "link" if stat_mod.S_ISLNK(mode) else "other"


class PohmelfsFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """``servers``: ``"HOST:PORT[,HOST:PORT...]"`` or a list (the set's syntax,
    ``client/serverset.py``); the key and time-out options are ``Client``'s."""

    protocol = "pohmelfs"
    root_marker = ""

    def __init__(self, servers: str | list[str] | None = None, auto_mkdir: bool = True,
                 **options: Any) -> None:  # fmt: skip
        """``auto_mkdir``: a file written makes its missing parents (as an object
        store's keys do, and as fsspec's copy, put and pipe expect)."""
        client_options = {k: options.pop(k) for k in CLIENT_OPTIONS if k in options}
        super().__init__(**options)
        self.auto_mkdir = auto_mkdir
        if not servers:
            raise ValueError("pohmelfs needs servers (HOST:PORT, or a pohmelfs://HOST:PORT URL)")
        if not any(client_options.get(k) for k in KEY_OPTIONS):
            secret = os.environ.get("POHMELFS_SECRET_FILE") or (
                DEFAULT_SECRET if os.access(DEFAULT_SECRET, os.R_OK) else None)  # fmt: skip
            if secret:
                client_options["secret_file"] = secret
        self.client = Client(servers, **client_options)

    # --- paths ------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = os.fspath(path)
        if path.startswith("pohmelfs://"):  # (the rest is the path as it is: no ? or #)
            path = path[len("pohmelfs://") :].partition("/")[2]
        return path.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        netloc = path[len("pohmelfs://") :].partition("/")[0] if path.startswith(
            "pohmelfs://") else ""  # fmt: skip
        return {"servers": netloc} if netloc else {}

    def unstrip_protocol(self, name: str) -> str:
        return f"pohmelfs://{','.join(self.client.servers)}/{name}"

    # --- metadata ---------------------------------------------------------------------

    def _entry(self, name: str, st: os.stat_result) -> dict[str, Any]:
        return {"name": name, "size": st.st_size, "type": _kind(st.st_mode),
                "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
                "nlink": st.st_nlink, "ino": st.st_ino, "mtime": st.st_mtime,
                "islink": stat_mod.S_ISLNK(st.st_mode)}  # fmt: skip

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return self._entry(path, self.client.stat(path or "/"))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        try:
            entries = [self._entry(f"{path}/{e.name}" if path else e.name, e.stat())
                       for e in self.client.scandir(path or "/")]  # fmt: skip
        except NotADirectoryError:
            entries = [self.info(path)]
        entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def modified(self, path: str) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], datetime.UTC)

    def checksum(self, path: str) -> int:
        """The object's version on the server: it changes with every change of it."""
        version, _ = self.client.version(self._strip_protocol(path) or "/")
        return version

    # --- data -------------------------------------------------------------------------

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: Any = None,
              **kwargs: Any) -> Any:  # fmt: skip
        if not autocommit:
            raise NotImplementedError("pohmelfs writes in place: no transactions")
        path = self._strip_protocol(path)
        if "r" in mode and "+" not in mode:
            return self.client.open(path, mode, buffering=block_size or -1)
        self.invalidate_cache(self._parent(path))
        return self._writing(path, mode, block_size or -1)

    def _writing(self, path: str, mode: str, buffering: int) -> Any:
        return self._making_parents(path, lambda: self.client.open(path, mode, buffering))

    def _making_parents(self, path: str, make: Callable[[], T]) -> T:
        """``make()``, which writes ``path``; with ``auto_mkdir``, again after its
        missing parents are made (only then: no look beforehand)."""
        try:
            return make()
        except FileNotFoundError:
            parent = self._parent(path)
            if not self.auto_mkdir or not parent or self.exists(parent):
                raise
        self.client.makedirs(parent, exist_ok=True)
        return make()

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:  # fmt: skip
        path = self._strip_protocol(path)
        with self.client.open(path, "rb", buffering=0) as f:
            return self._read_range(f, start, end)

    def cat_ranges(self, paths: list[str], starts: Any, ends: Any, max_gap: Any = None,
                   on_error: str = "return", **kwargs: Any) -> list[Any]:  # fmt: skip
        """Each range straight into its result; one open per file."""
        if not isinstance(starts, list):
            starts = [starts] * len(paths)
        if not isinstance(ends, list):
            ends = [ends] * len(paths)
        if not len(paths) == len(starts) == len(ends):
            raise ValueError("paths, starts and ends must be of one length")
        out: list[Any] = [None] * len(paths)
        by_path: dict[str, list[int]] = {}
        for i, path in enumerate(paths):
            by_path.setdefault(self._strip_protocol(path), []).append(i)
        for path, indexes in by_path.items():
            try:
                with self.client.open(path, "rb", buffering=0) as f:
                    for i in indexes:
                        out[i] = self._read_range(f, starts[i], ends[i])
            except OSError as e:
                if on_error == "raise":
                    raise
                for i in indexes:
                    out[i] = e
        return out

    @staticmethod
    def _read_range(f: Any, start: int | None, end: int | None) -> bytes:
        size = f.stat().st_size  # (an end past it reads, and allocates, no more)
        start = 0 if start is None else (max(0, size + start) if start < 0 else start)
        end = size if end is None else min(size, max(0, size + end) if end < 0 else end)
        buf = bytearray(max(0, end - start))
        got = 0
        while got < len(buf):
            n = f.preadinto(memoryview(buf)[got:], start + got)
            if n == 0:
                break
            got += n
        del buf[got:]
        return bytes(buf)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite",
                  **kwargs: Any) -> None:  # fmt: skip
        with self.open(path, "xb" if mode == "create" else "wb") as f:
            f.write(value)

    # --- namespace --------------------------------------------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if create_parents:
            self.client.makedirs(path)
        else:
            self.client.mkdir(path)
        self.invalidate_cache(self._parent(path))

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if path:
            self.client.makedirs(path, exist_ok=exist_ok)
        self.invalidate_cache(self._parent(path))

    def rmdir(self, path: str) -> None:
        path = self._strip_protocol(path)
        self.client.rmdir(path)
        self.invalidate_cache(self._parent(path))

    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        self.client.unlink(path)
        self.invalidate_cache(self._parent(path))

    def _rm(self, path: str) -> None:
        if self.isdir(path):
            self.rmdir(path)
        else:
            self.rm_file(path)

    def rm(self, path: str | list[str], recursive: bool = False,
           maxdepth: int | None = None) -> None:  # fmt: skip
        """A directory tree goes in one request (``RMTREE``)."""
        if not recursive or maxdepth is not None:
            super().rm(path, recursive=recursive, maxdepth=maxdepth)
            return
        for name in self._expanded(path):
            if not name:
                raise PermissionError("refusing to remove the export's root")
            if self.isdir(name):
                self.client.rmtree(name)
            else:
                self.client.unlink(name)
            self.invalidate_cache(self._parent(name))

    def _expanded(self, path: str | list[str]) -> Iterable[str]:
        names = [path] if isinstance(path, str) else list(path)
        out: list[str] = []
        for name in names:
            name = self._strip_protocol(name)
            if any(c in name for c in "*?["):
                found = self.glob(name)
                if not found:
                    raise FileNotFoundError(name)
                out.extend(found)
            elif not self.exists(name):
                raise FileNotFoundError(name)
            else:
                out.append(name)
        # (a tree before what is under it: an rmtree takes both)
        out.sort(key=len)
        return [n for i, n in enumerate(out)
                if not any(n.startswith(f"{o}/") for o in out[:i])]  # fmt: skip

    def mv(self, path1: Any, path2: Any, recursive: bool = False, maxdepth: Any = None,
           **kwargs: Any) -> None:  # fmt: skip
        """One path onto a name that is not a directory: a rename on the server."""
        if isinstance(path1, str) and isinstance(path2, str) and maxdepth is None:
            src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
            if not any(c in src for c in "*?[") and not self.isdir(dst):
                self.client.rename(src, dst)
                self.invalidate_cache(self._parent(src))
                self.invalidate_cache(self._parent(dst))
                return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(src):
            self.makedirs(dst, exist_ok=True)
            return
        self._making_parents(dst, lambda: self.client.copy_file(src, dst))  # (on the server)
        self.invalidate_cache(self._parent(dst))
