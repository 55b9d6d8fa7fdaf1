"""How a session's requests make way for other clients' cached copies.

Before a read of a range, another client that holds it exclusively writes back;
before a change (data, attributes, names), every other holder writes back and
drops its cache; a change of size is told to the other clients that have the
file open (RESIZE) before its reply goes. Whatever has to wait for that waits
where ``waits.Waits`` says, never on the connection's reader.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .. import protocol as p
from ..protocol import Command, Message
from .handles import Handle, HandleTable
from .linux import RENAME_EXCHANGE
from .notifier import Notifier
from .rangelock import END
from .replies import reply_for
from .shared import Shared
from .sizes import EMPTY
from .stamps import Touch, at_path, not_at_hand, of_file, stat_at
from .storage import FileKey, attr_of
from .versions import change_id
from .waits import Waits, Work

# Name changes that move the ctime of the object named (its link count changes).
LINK_COUNTERS = frozenset({Command.UNLINK, Command.LINK, Command.RMDIR})
# Requests that use a name without changing its directory: a client holding the
# directory exclusively (names changed ahead, not yet sent) sends its changes first.
NAME_READERS = frozenset({
    Command.LOOKUP, Command.LEASE, Command.READDIR, Command.OPEN, Command.READLINK,
    Command.TRUNCATE, Command.LINK, Command.CHMOD, Command.CHOWN, Command.UTIMES,
    Command.GETXATTR, Command.SETXATTR, Command.LISTXATTR, Command.REMOVEXATTR,
})  # fmt: skip
# Changes that make the object their reply's ``attr`` names (an OPEN: when it went
# through ``naming``, that is, may have created).
CREATES = frozenset({Command.MKDIR, Command.MAKEDIRS, Command.SYMLINK, Command.MKNOD})


class CachePolicy:
    """``session``: the client session whose requests these are (the ids of its
    changes count in the versions of what they change: ``versions.py``)."""

    def __init__(self, sid: int, shared: Shared, handles: HandleTable, notifier: Notifier,
                 waits: Waits, session: bytes = b"") -> None:  # fmt: skip
        self.sid = sid
        self._session = session
        self._shared = shared
        self._cache = shared.cache
        self._handles = handles
        self._notifier = notifier
        self._waits = waits
        self._told = threading.local()  # .notices: RESIZE a reply waits for (_applied_then_told)

    def answering(self, m: Message) -> bool:
        """Is ``m`` (a READ or WRITE) on a file whose lock this session is being asked to
        give up? Then it is the write-back or a read the answer waits for: it must
        not wait behind the session's queued requests, which may themselves wait for
        another client that waits for this answer. (It overtakes only requests that
        have not been answered yet, since a client answers no write sent behind that
        could still need a revocation.)"""
        if m.cmd not in (Command.READ, Command.WRITE):
            return False
        h = self._handles.get(m.oid)
        # Not past a queued request on the same file: a write sent behind there is
        # older than this one, and its data must not land on top.
        return (h is not None and self._notifier.revoking(h.key)
                and not self._waits.queued_on(h.key))  # fmt: skip

    def check_not_fenced(self, m: Message) -> None:
        """A change through a handle whose lock was taken back unasked is refused:
        checked when it arrives, and again under its range lock just before it is
        applied (it may have waited meanwhile; a later change of another client
        that the lost lock made wait is then ordered after this one by that range
        lock, so the older data never lands on top)."""
        if (self.sid, m.oid) in self._cache.fenced:
            raise OSError(errno.EIO, "cache lock lost (did not answer a revoke in time)")

    # --- names another client may have changed ahead ---------------------------

    def names_ahead_key(self, msg: Message) -> FileKey | None:
        """The directory whose names the request reads, if another client holds it
        exclusively (and so may have changed names ahead of us)."""
        if not self._cache.exclusive_dirs or msg.cmd not in NAME_READERS or not msg["path"]:
            return None
        export = self._shared.export
        try:
            export.act_as(msg["cred"])  # the path is walked with the caller's rights
        except OSError:
            return None  # the request fails the same way when it runs, with a reply
        if msg.cmd != Command.READDIR:
            found = export.parent_of(msg["path"])
            key = None if found is None else found[0]
        else:
            try:
                st = export.stat(msg["path"])
            except OSError:
                return None
            key = st.st_dev, st.st_ino
        if key is None or not self._cache.conflicting(key, self.sid, 0, END):
            return None
        return key

    def settle_names(self, key: FileKey, run: Work) -> Message | None:
        self._cache.settle(key, self.sid, 0, END, self._shared.notifiers.revoke)
        return run()

    # --- reads and changes -------------------------------------------------------

    def plain(self, m: Message, h: Handle | None, key: FileKey, write: bool, start: int,
              end: int, run: Work, touches: Sequence[Touch] | None = None
              ) -> Message | None:  # fmt: skip
        """Run a read or write of a range that the client may hold no cache lock on:
        other clients' cached copies go first (an exclusive holder writes back before
        a read; every holder writes back and drops its cache before a write). A
        read that has to wait for that waits on a thread of its own; a write waits
        here, because the connection's writes must be applied in order."""
        cache = self._cache
        if write:
            return self.change(m, h, (key,), run, start, end, touches)
        if not cache.conflicting(key, self.sid, start, end):
            return run()

        def settled() -> Message | None:
            cache.settle(key, self.sid, start, end, self._shared.notifiers.revoke)
            return run()

        if self._waits.in_queue():  # already behind the session's earlier requests
            return settled()
        self._waits.answer_later(m, None if h is None else self._handles.hold(h), settled)
        return None

    def naming(self, m: Message, paths: tuple[bytes, ...], run: Work) -> Message | None:
        """Create, remove or rename names: other clients that cache names of the
        directories changed give them up first, and take them again only after.
        A directory that moves (rename's first path; with RENAME_EXCHANGE both) is
        given up by its holders too: they know it by its old path."""
        export = self._shared.export
        parents = [found for found in map(export.parent_of, paths) if found is not None]
        keys = [key for key, _path in parents]
        touches = [at_path(export, key, path) for key, path in parents]
        # Objects whose ctime the change moves too (a rename, a link count), found
        # after it at the other name (rename), where they were (link), or nowhere.
        if m.cmd == Command.RENAME or m.cmd in LINK_COUNTERS:
            named = (m["path"], m["new"]) if m.cmd == Command.RENAME else (m["path"],)
            exchange = m.cmd == Command.RENAME and bool(m["flags"] & RENAME_EXCHANGE)
            for i, path in enumerate(named):
                try:
                    st = export.stat(path)
                except OSError:
                    continue  # the change itself fails with the reason, or replaces nothing
                key = st.st_dev, st.st_ino
                moves = m.cmd == Command.RENAME and (i == 0 or exchange)
                if moves and stat.S_ISDIR(st.st_mode):
                    keys.append(key)
                after = None  # removed, or replaced by a rename
                if moves:
                    after = named[1 - i]
                elif m.cmd == Command.LINK:
                    after = path
                touches.append(Touch(key, stat_at(export, key, path), stat_at(export, key, after)))
        if m.cmd == Command.RMTREE:  # what it removes is known only as it goes
            run = _between(self._shared.stamps.changing_everything, run)
        return self.change(m, None, keys, run, touches=touches)

    def change(self, m: Message, h: Handle | None, keys: Sequence[FileKey], run: Work,
               start: int = 0, end: int = END,
               touches: Sequence[Touch] | None = None) -> Message | None:  # fmt: skip
        """Run a change that other sessions' cache locks must make way for
        (``touches``: the objects whose stamps it moves and how to read them, if
        not just the keys through ``h``: see ``stamps.py``). With
        nothing to revoke it runs here. Otherwise it waits on a thread of its own (the
        reader goes on taking the answers to revocations), or, if its client did not
        wait for it (BEHIND), in this session's queue, which every later request of
        the connection then joins, in order."""
        cache, waits = self._cache, self._waits
        run = self._versioned(m, h, keys, touches, run)
        run = self._stamped(h, keys, touches, run)
        # A change that other clients must hear of (RESIZE) waits for their answers:
        # never on the reader, which must go on taking them.
        told = len(keys) == 1 and self._shared.sizes.elsewhere(keys[0], self.sid)
        if not told and cache.try_changing(keys, self.sid, start, end):
            try:
                return run()
            finally:
                cache.changed(keys, self.sid)
        if (
            told
            and self.answering(m)
            and not waits.in_queue()
            and cache.try_changing(keys, self.sid, start, end)
        ):
            return self._applied_then_told(m, keys, run)

        def wait_and_run() -> Message | None:
            with cache.changing(keys, self.sid, self._shared.notifiers.revoke, start, end):
                return run()

        if waits.in_queue():  # queued again, it would overtake nothing but be overtaken
            return wait_and_run()
        held = None if h is None else self._handles.hold(h)
        if self.answering(m):  # a write-back a revocation waits for: ahead of the queue
            waits.to_lane(m, held, wait_and_run)
        elif m.flags & p.FLAG_BEHIND:
            waits.enqueue(m, held, wait_and_run)
        else:
            waits.answer_later(m, held, wait_and_run)
        return None

    def _versioned(self, m: Message, h: Handle | None, keys: Sequence[FileKey],
                   touches: Sequence[Touch] | None, run: Work) -> Work:  # fmt: skip
        """``run`` as a change that counts in the versions of what it changes (unless
        its client asked it not to): busy while it runs, counted once it applied."""
        if m.flags & p.FLAG_UNVERSIONED:
            return run
        versions = self._shared.versions
        changed = [*keys, *(t.key for t in touches or ())]
        creates = m.cmd in CREATES or (m.cmd is Command.OPEN and h is None)
        dev = keys[0][0] if keys else None

        def counted() -> Message | None:
            busy = versions.begin(changed)
            applied = created = None
            try:
                out = run()
                if out is not None and not out.status:
                    applied = change_id(self._session, m.xid)
                    versions.peers.applied(self.sid)
                    if creates and dev is not None:
                        created = dev, out["attr"].ino
                return out
            finally:
                versions.end(busy, applied, created)

        return counted

    def _stamped(self, h: Handle | None, keys: Sequence[FileKey],
                 touches: Sequence[Touch] | None, run: Work) -> Work:  # fmt: skip
        """``run`` as a change of pohmelfs' own to the stamps of what it touches
        that somebody holds (``stamps.Stamps.changing``)."""
        if touches is None:
            touches = [of_file(key, h.file) if h is not None and h.key == key
                       else Touch(key, not_at_hand, not_at_hand) for key in keys]  # fmt: skip
        if not touches:
            return run
        # Marked even if nothing is held yet: a touched object that is not one of the
        # change's keys may be granted to another client while it runs.
        return _between(lambda: self._shared.stamps.changing(touches), run)

    def _applied_then_told(self, m: Message, keys: Sequence[FileKey], run: Work) -> None:
        """A write-back that others must hear the new size of: applied here, before
        the next request of the client is read (which must see it); only its reply
        waits, on the lane, for their answers (they must know the size before it
        returns), as revocations wait for it."""
        try:
            self._waits.park(m, None)  # first: refused (EAGAIN), it must change nothing
        except BaseException:
            self._cache.changed(keys, self.sid)
            raise
        told: list[Any] = []
        self._told.notices = told
        try:
            out = run()
        except OSError as e:
            out = reply_for(m, e)
        finally:
            self._told.notices = None
            self._cache.changed(keys, self.sid)
        self._waits.to_lane(m, None, lambda: self._once_told(told, out), parked=True)

    def _once_told(self, told: list[Any], out: Message | None) -> Message | None:
        self._shared.sizes.wait_for(told)
        return out

    def resized(self, key: FileKey, st: os.stat_result, before: int, last: int) -> None:
        """A change of this session's may have changed the file's size (``st``: its
        stat after): other clients that have it open hear of it (``last``: the
        file's last byte, if it grew)."""
        if st.st_size != before:
            grew = st.st_size > before
            args = key, self.sid, attr_of(st), last if grew else EMPTY
            deferred = getattr(self._told, "notices", None)
            if deferred is not None:  # the reply waits for them (_applied_then_told)
                deferred.extend(self._shared.sizes.announce(*args))
            else:
                self._shared.sizes.resized(*args)


def _between(begin: Callable[[], Callable[[], None]], run: Work) -> Work:
    """``run`` after ``begin()``, and what it returned called after, whatever happens."""

    def wrapped() -> Message | None:
        done = begin()
        try:
            return run()
        finally:
            done()

    return wrapped
