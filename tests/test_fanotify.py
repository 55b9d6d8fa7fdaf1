"""Unit tier: fanotify's event format, parsed from bytes made here (server/fanotify.py)."""

from __future__ import annotations

import struct

import pytest

from pohmelfs.server import fanotify as fa


def record(kind: int, handle: bytes, name: bytes = b"", handle_type: int = 1) -> bytes:
    body = bytes(fa.FSID) + fa.HANDLE_HEAD.pack(len(handle), handle_type) + handle
    if kind not in (fa.INFO_FID, fa.INFO_DFID):
        body += name + b"\0"
    body += bytes(-(fa.INFO_HEADER.size + len(body)) % 4)  # records are padded
    return fa.INFO_HEADER.pack(kind, 0, fa.INFO_HEADER.size + len(body)) + body


def event(mask: int, pid: int, *records: bytes) -> bytes:
    rest = b"".join(records)
    size = fa.METADATA.size + len(rest)
    return fa.METADATA.pack(size, fa.METADATA_VERSION, 0, fa.METADATA.size, mask, -1, pid) + rest


def test_events_with_their_objects_directories_and_names() -> None:
    buf = event(fa.FAN_CREATE, 42, record(fa.INFO_DFID_NAME, b"dir-handle", b"new"),
                record(fa.INFO_FID, b"file-handle")) + event(fa.FAN_Q_OVERFLOW, 0)  # fmt: skip
    created, overflow = fa.parse(buf)
    assert (created.mask, created.pid) == (fa.FAN_CREATE, 42)
    (d, f) = created.records
    assert (d.kind, d.name) == (fa.INFO_DFID_NAME, b"new")
    assert d.handle == fa.HANDLE_HEAD.pack(10, 1) + b"dir-handle"  # as open_by_handle_at takes it
    assert (f.kind, f.name, f.handle[fa.HANDLE_HEAD.size :]) == (fa.INFO_FID, b"", b"file-handle")
    assert overflow.mask == fa.FAN_Q_OVERFLOW and overflow.records == ()


def test_a_rename_names_both_directories() -> None:
    (e,) = fa.parse(event(fa.FAN_RENAME, 7, record(fa.INFO_OLD_DFID_NAME, b"a", b"old"),
                          record(fa.INFO_NEW_DFID_NAME, b"b", b"new")))  # fmt: skip
    assert [(r.kind, r.name) for r in e.records] == [(fa.INFO_OLD_DFID_NAME, b"old"),
                                                     (fa.INFO_NEW_DFID_NAME, b"new")]  # fmt: skip


def test_a_record_of_another_kind_is_skipped() -> None:
    pidfd = fa.INFO_HEADER.pack(4, 0, 8) + struct.pack("=i", 5)
    (e,) = fa.parse(event(fa.FAN_MODIFY, 1, pidfd, record(fa.INFO_FID, b"h")))
    assert [r.kind for r in e.records] == [fa.INFO_FID]


@pytest.mark.parametrize("broken", [
    event(fa.FAN_MODIFY, 1)[:10],  # truncated metadata
    event(fa.FAN_MODIFY, 1, record(fa.INFO_FID, b"h"))[:-4],  # event_len past the end
    fa.METADATA.pack(24, 2, 0, 24, fa.FAN_MODIFY, -1, 1),  # another version
    event(fa.FAN_MODIFY, 1, fa.INFO_HEADER.pack(fa.INFO_FID, 0, 2)),  # shorter than its header
    event(fa.FAN_MODIFY, 1, fa.INFO_HEADER.pack(fa.INFO_FID, 0, 16) + bytes(fa.FSID)
          + fa.HANDLE_HEAD.pack(500, 1)[:4]),  # a handle longer than its record
])  # fmt: skip
def test_what_does_not_add_up_is_refused(broken: bytes) -> None:
    with pytest.raises(ValueError):
        fa.parse(broken)


def test_one_process_s_events_are_skipped_but_never_an_overflow() -> None:
    buf = (event(fa.FAN_MODIFY, 42, record(fa.INFO_FID, b"own")) + event(fa.FAN_MODIFY, 7,
           record(fa.INFO_FID, b"other")) + event(fa.FAN_Q_OVERFLOW, 42))  # fmt: skip
    assert [(e.pid, e.mask) for e in fa.parse(buf, skip_pid=42)] == [
        (7, fa.FAN_MODIFY), (42, fa.FAN_Q_OVERFLOW)]  # fmt: skip
