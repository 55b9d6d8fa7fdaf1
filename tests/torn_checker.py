"""Torn-read checker: writers rewrite whole slots of a shared file with one byte
value each, readers check that every slot they read holds one value only.

Slots are page-unaligned (by default 13,522 bytes: three pages and a bit,
starting at odd offsets), so a write or read that the kernel or the client split
at a page boundary shows up as a slot with two values. Run one role per process:

    python torn_checker.py write PATH SECONDS WRITER_ID [SLOT]   (prints "open" first)
    python torn_checker.py read PATH SECONDS [SLOT]
    python torn_checker.py libread HOST:PORT /NAME SECONDS SECRET_FILE [SLOT]   (a library client)

Each prints one JSON line: {"ops": N, "torn": T, "errors": {errno: count},
"worst": seconds, "example": ...}. A failed operation is counted, not fatal.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys
import time
from collections import Counter

SLOT = 3 * 4096 + 1234
SLOTS = 8


def prepare(path: str, slot: int = SLOT) -> None:
    with open(path, "wb") as f:
        f.write(b"\x01" * (slot * SLOTS))


def _slot(view: bytes | bytearray | memoryview) -> tuple[bool, str]:
    first = view[0]
    uniform = bytes(view).count(first) == len(view)
    if uniform:
        return True, ""
    values = sorted(set(bytes(view)))
    seam = next(i for i in range(len(view)) if view[i] != first)
    return False, f"values {values[:4]} first change at byte {seam}"


class Tally:
    def __init__(self) -> None:
        self.ops = self.torn = 0
        self.errors: Counter[str] = Counter()
        self.worst = 0.0
        self.example = ""

    def timed(self, started: float) -> None:
        self.worst = max(self.worst, time.monotonic() - started)

    def failed(self, e: OSError) -> None:
        self.errors[errno.errorcode.get(e.errno or 0, str(e.errno))] += 1

    def check(self, view: bytes | bytearray | memoryview, size: int) -> None:
        ok, why = _slot(view) if len(view) else (False, "empty read")
        if len(view) != size or not ok:
            self.torn += 1
            self.example = self.example or why or f"short read {len(view)}"

    def result(self) -> dict[str, object]:
        return {"ops": self.ops, "torn": self.torn, "errors": dict(self.errors),
                "worst": round(self.worst, 3), "example": self.example}  # fmt: skip


def write(path: str, seconds: float, writer: int, slot: int = SLOT) -> dict[str, object]:
    fd = os.open(path, os.O_RDWR)
    print("open", flush=True)
    rng = random.Random(writer)
    tally, deadline = Tally(), time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            value = 2 + (rng.randrange(120) * 2 + writer) % 250  # writers differ
            started = time.monotonic()
            try:
                os.pwrite(fd, bytes([value]) * slot, rng.randrange(SLOTS) * slot)
                tally.ops += 1
            except OSError as e:
                tally.failed(e)
            tally.timed(started)
    finally:
        os.close(fd)
    return tally.result()


def read(path: str, seconds: float, slot: int = SLOT) -> dict[str, object]:
    fd = os.open(path, os.O_RDONLY)
    tally, deadline = Tally(), time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                data = os.pread(fd, slot, random.randrange(SLOTS) * slot)
                tally.ops += 1
                tally.check(data, slot)
            except OSError as e:
                tally.failed(e)
            tally.timed(started)
    finally:
        os.close(fd)
    return tally.result()


def libread(address: str, name: str, seconds: float, secret_file: str,
            slot: int = SLOT) -> dict[str, object]:  # fmt: skip
    from pohmelfs import Client

    buf = bytearray(slot)
    tally, deadline = Tally(), time.monotonic() + seconds
    with (
        Client([address], secret_file=secret_file) as client,
        client.open(name, "rb", buffering=0) as f,
    ):
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                n = f.preadinto(buf, random.randrange(SLOTS) * slot)
                tally.ops += 1
                tally.check(memoryview(buf)[:n], slot)
            except OSError as e:
                tally.failed(e)
            tally.timed(started)
    return tally.result()


def main(argv: list[str]) -> None:
    role, args = argv[1], argv[2:]
    if role == "write":
        out = write(args[0], float(args[1]), int(args[2]), *map(int, args[3:]))
    elif role == "read":
        out = read(args[0], float(args[1]), *map(int, args[2:]))
    elif role == "libread":
        out = libread(args[0], args[1], float(args[2]), args[3], *map(int, args[4:]))
    else:
        raise SystemExit(f"unknown role {role!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv)
