"""The CLI's commands for several servers: ``pohmelfs resync`` (by hand, between two
servers), ``pohmelfs ctl`` and ``pohmelfs stats`` (a mount's server set, through its
control socket: ``control.py``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from .errors import UserError

ClientMaker = Callable[..., Any]


def add_server_commands(sub: Any, client_cmd: Callable[[str, str], argparse.ArgumentParser],
                        make_client: ClientMaker) -> None:  # fmt: skip
    """Add ``ctl``, ``stats`` and ``resync`` to the subcommands ``sub``."""
    ctl = sub.add_parser("ctl", help="list, add, remove or re-prioritize a mount's servers",
                         description="Change a mounted filesystem's server set while it "
                         "is used: 'list'; 'add HOST:PORT' (a writable one is resynced "
                         "before it is read from); 'remove HOST:PORT' (for good); "
                         "'modify HOST:PORT --prio N' (reads follow at once, the lock "
                         "server at the next connection) or '--perm r|w|rw' (it leaves "
                         "and joins again).")  # fmt: skip
    ctl.add_argument("mountpoint", metavar="MOUNTPOINT")
    ctl.add_argument("op", choices=("list", "add", "remove", "modify"))
    ctl.add_argument("server", metavar="HOST:PORT", nargs="?")
    ctl.add_argument("--prio", type=int, help="priority, 0-255 (higher is read first)")
    ctl.add_argument("--perm", choices=("r", "w", "rw"),
                     help="what the server is used for: r (read only: it gets no "
                     "changes), w (written, never read) or rw (the default)")  # fmt: skip
    ctl.set_defaults(func=_ctl)
    stats = sub.add_parser("stats", help="what a mount saw of each of its servers",
                           description="Each server of a mount: its state (live, "
                           "resyncing, gone), role, requests, errors, bytes and "
                           "latency.")  # fmt: skip
    stats.add_argument("mountpoint", metavar="MOUNTPOINT")
    stats.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    stats.set_defaults(func=_stats)

    resync = client_cmd("resync", "make a server that missed changes (TARGET) the same as a "
                        "current one (SERVER), while clients go on working")  # fmt: skip
    resync.add_argument("target", metavar="TARGET", help="HOST:PORT of the server to mend")
    resync.add_argument("--passes", type=int, default=10,
                        help="at most this many passes over the tree (default: 10)")  # fmt: skip
    resync.set_defaults(func=lambda args: _resync(args, make_client))


def _control(mountpoint: str, request: dict[str, Any], whole: bool = False) -> Any:
    from .control import ask
    from .fuse.mount import control_path

    path = control_path(mountpoint)
    try:
        reply = ask(path, request)
    except (FileNotFoundError, ConnectionRefusedError):
        raise UserError(f"{mountpoint} is not a pohmelfs mount served here (no control "
                        f"socket at {path})") from None  # fmt: skip
    except OSError as e:
        raise UserError(f"{mountpoint}: {e}") from None
    if not reply.get("ok"):
        raise UserError(f"{mountpoint}: {reply.get('error', 'refused')}")
    return reply if whole else list(reply.get("servers", []))


def _ctl(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"op": args.op}
    if args.op != "list":
        if not args.server:
            raise UserError(f"ctl {args.op} needs HOST:PORT")
        server = args.server
        if args.op == "add":
            server += f"/prio={args.prio or 0}/{args.perm or 'rw'}"
        request["server"] = server
    if args.op == "modify":
        if args.prio is None and args.perm is None:
            raise UserError("ctl modify needs --prio N or --perm r|w|rw")
        request["prio"], request["perm"] = args.prio, args.perm
    servers = _control(args.mountpoint, request)
    print(f"{'server':24} {'prio':>4} {'perm':4} {'state':10} {'role':12}")
    for s in servers:
        role = s["role"].replace(" ", "-")
        print(f"{s['address']:24} {s['priority']:4} {s.get('permission', 'rw'):4} "
              f"{s['state']:10} {role:12}")  # fmt: skip
    return 0


def _stats(args: argparse.Namespace) -> int:
    reply = _control(args.mountpoint, {"op": "stats"}, whole=True)
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    mount, servers = reply.get("mount") or {}, reply["servers"]
    if mount:
        ops = ", ".join(f"{op.lower()} {n}" for op, n in
                        list(mount["kernel_requests_by_op"].items())[:6])  # fmt: skip
        print(f"mount: {mount['kernel_requests']} kernel requests ({ops}), "
              f"{mount['network_requests']} network requests, {mount['in_flight']} in "
              f"flight, {mount['held_bytes']} bytes of writes held, {mount['cached_files']} "
              f"files under cache locks")  # fmt: skip
    print(f"{'server':24} {'state':10} {'role':12} {'requests':>9} {'errors':>7} "
          f"{'MiB out':>8} {'MiB in':>8} {'mean ms':>8} {'max ms':>8}")  # fmt: skip
    for s in servers:
        role = s["role"].replace(" ", "-")
        print(f"{s['address']:24} {s['state']:10} {role:12} {s['requests']:9} "
              f"{s['failed']:7} {s['bytes_out'] / 2**20:8.1f} {s['bytes_in'] / 2**20:8.1f} "
              f"{s['latency_mean_ms']:8.3f} {s['latency_max_ms']:8.3f}")  # fmt: skip
    return 0


def _resync(args: argparse.Namespace, make_client: ClientMaker) -> int:
    from .client.resync import Progress, Resync, count_objects

    if args.passes < 1:
        raise UserError("--passes must be at least 1")
    with make_client(args) as source, make_client(args, args.target, unversioned=True) as target:
        bar = sys.stderr.isatty()
        total = count_objects(source) if bar else 0
        shown = [0.0]

        def progress(s: Progress) -> None:
            now = time.monotonic()
            if bar and now - shown[0] >= 0.1:
                shown[0] = now
                done = min(s.seen, total) * 30 // max(total, 1)
                print(f"\rpass {s.passes} [{'#' * done}{'.' * (30 - done)}] {s.seen}/{total} "
                      f"objects, {s.copied} copied, {s.bytes >> 20} MiB ", end="",
                      file=sys.stderr, flush=True)  # fmt: skip

        result = Resync(source, target, max_passes=args.passes, progress=progress).run()
    if bar:
        print(file=sys.stderr)
    took = time.monotonic() - result.started
    if not result.clean:
        raise UserError(f"{args.target} is not yet the same as {args.server}: objects "
                        f"still changed in pass {result.passes} (run it again)")  # fmt: skip
    print(f"pohmelfs: {args.target} is the same as {args.server} ({result.passes} passes, "
          f"{result.seen} objects, {result.bytes >> 20} MiB copied, {took:.1f} s)")  # fmt: skip
    return 0
