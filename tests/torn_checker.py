"""Torn-read checker: writers rewrite whole slots of a shared file with one byte
value each, readers check that every slot they read holds one value only.

Slots are page-unaligned (13,522 bytes: three pages and a bit, starting at odd
offsets), so a write or read that the kernel or the client split at a page
boundary shows up as a slot with two values. Run one role per process:

    python torn_checker.py write PATH SECONDS WRITER_ID   (prints "open" first)
    python torn_checker.py read PATH SECONDS
    python torn_checker.py libread HOST:PORT /NAME SECONDS   (a library client)

Each prints one JSON line: {"ops": N, "torn": T, "example": ...}.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

SLOT = 3 * 4096 + 1234
SLOTS = 8


def prepare(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"\x01" * (SLOT * SLOTS))


def _slot(view: bytes | bytearray | memoryview) -> tuple[bool, str]:
    first = view[0]
    uniform = bytes(view).count(first) == len(view)
    if uniform:
        return True, ""
    values = sorted(set(bytes(view)))
    seam = next(i for i in range(len(view)) if view[i] != first)
    return False, f"values {values[:4]} first change at byte {seam}"


def write(path: str, seconds: float, writer: int) -> dict[str, object]:
    fd = os.open(path, os.O_RDWR)
    print("open", flush=True)
    rng = random.Random(writer)
    ops, deadline = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            value = 2 + (rng.randrange(120) * 2 + writer) % 250  # writers differ
            os.pwrite(fd, bytes([value]) * SLOT, rng.randrange(SLOTS) * SLOT)
            ops += 1
    finally:
        os.close(fd)
    return {"ops": ops, "torn": 0}


def read(path: str, seconds: float) -> dict[str, object]:
    fd = os.open(path, os.O_RDONLY)
    ops, torn, example = 0, 0, ""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            data = os.pread(fd, SLOT, random.randrange(SLOTS) * SLOT)
            ops += 1
            ok, why = _slot(data)
            if not ok:
                torn += 1
                example = example or why
    finally:
        os.close(fd)
    return {"ops": ops, "torn": torn, "example": example}


def libread(address: str, name: str, seconds: float) -> dict[str, object]:
    from pohmelfs import Client

    ops, torn, example = 0, 0, ""
    buf = bytearray(SLOT)
    deadline = time.monotonic() + seconds
    with Client([address]) as client, client.open(name, "rb", buffering=0) as f:
        while time.monotonic() < deadline:
            n = f.preadinto(buf, random.randrange(SLOTS) * SLOT)
            ops += 1
            ok, why = _slot(memoryview(buf)[:n])
            if n != SLOT or not ok:
                torn += 1
                example = example or why or f"short read {n}"
    return {"ops": ops, "torn": torn, "example": example}


def main(argv: list[str]) -> None:
    role = argv[1]
    if role == "write":
        out = write(argv[2], float(argv[3]), int(argv[4]))
    elif role == "read":
        out = read(argv[2], float(argv[3]))
    elif role == "libread":
        out = libread(argv[2], argv[3], float(argv[4]))
    else:
        raise SystemExit(f"unknown role {role!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv)
