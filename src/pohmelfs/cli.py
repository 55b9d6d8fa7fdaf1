"""The ``pohmelfs`` command line."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import stat
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, logformat
from .cli_servers import add_server_commands
from .errors import UserError
from .protocol import VERSION as PROTOCOL_VERSION

DEFAULT_PORT = 7400
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _server_security(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .security.config import ServerSecurity
    from .security.policy import ClientPolicy

    policy = ClientPolicy(args.read_only_key, args.squash, args.anonuid, args.anongid)
    return ServerSecurity.from_options(secret_file=args.secret_file, exports=args.exports,
                                       policy=policy, insecure=args.insecure,
                                       tls_cert=args.tls_cert, tls_key=args.tls_key,
                                       tls_ca=args.tls_ca)  # fmt: skip


def _serve(args: argparse.Namespace) -> int:
    from .server.export import LocalExport
    from .server.service import Limits, Server
    from .server.versionfile import default_state_dir, open_versions

    if args.dir is None:
        raise UserError("serve needs DIR (or export in the config file's [serve])")
    root = os.path.abspath(args.dir)
    if not os.path.isdir(root):
        raise UserError(f"export folder {args.dir!r} does not exist or is not a directory")
    host, port = parse_hostport(args.listen, "--listen")
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    if not 0.1 <= args.lease <= 3600:
        raise UserError("--lease must be between 0.1 and 3600 seconds")
    if not 1 <= args.max_payload <= 256:
        raise UserError("--max-payload must be between 1 and 256 (MiB)")
    if args.max_connections < 1 or args.max_per_peer < 1 or args.idle_timeout < 1:
        raise UserError("--max-connections, --max-per-peer, --idle-timeout must be positive")
    security = _server_security(args)
    security.check_listen(host)
    metrics = None
    if args.metrics:
        from .server.metrics import Metrics

        metrics_at = parse_hostport(args.metrics, "--metrics")
        metrics = Metrics()
    limits = Limits(
        args.max_connections,
        args.max_per_peer,
        idle_timeout=args.idle_timeout,
        watch="off" if args.no_watch else args.watch,
    )
    report = _daemonize(args) if args.daemon else None
    # Block the stop signals in every thread (threads inherit the mask; the first
    # starts with the versions) and take them synchronously below, so one reaching
    # another thread cannot leave the main thread asleep.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        try:
            versions = open_versions(args.state_dir or default_state_dir(), root,
                                     empty_export=not os.listdir(root))  # fmt: skip
        except OSError as e:
            raise UserError(e.strerror or str(e)) from None
        export = LocalExport(root, read_only=args.read_only, devices=args.allow_devices)
        if metrics is not None:
            try:
                shown = "%s:%d" % metrics.serve(*metrics_at)
            except OSError as e:
                versions.close()
                raise UserError(f"cannot serve metrics on {args.metrics}: {e.strerror}") from None
        try:
            server = Server(export, host, port, max_payload=args.max_payload << 20,
                            workers=args.workers, lease=args.lease, security=security,
                            limits=limits, allow_setuid=args.allow_setuid,
                            versions=versions, metrics=metrics)  # fmt: skip
        except OSError as e:
            versions.close()
            if metrics is not None:
                metrics.close()
            why = "address already in use" if e.errno == errno.EADDRINUSE else e.strerror
            raise UserError(f"cannot listen on {host}:{port}: {why}") from None
    except (UserError, OSError) as e:
        if report is None:
            raise
        os.write(report, f"error {e}".encode())
        _remove_pid_file(args)
        os._exit(2)
    server.start()
    how = ("no authentication, every client squashed" if args.insecure
           else f"{len(security.keys)} client key(s)")  # fmt: skip
    line = (f"pohmelfs: serving {root} on {server.address[0]}:{server.address[1]}"
            f"{' (read-only)' if args.read_only else ''} ({how})"
            f"{f'; metrics on http://{shown}/metrics' if metrics else ''}")  # fmt: skip
    if report is not None:
        os.write(report, f"ok {line}".encode())
        os.close(report)
    print(line, flush=True)
    signal.sigwait(stop_signals)
    server.stop()
    if metrics is not None:
        metrics.close()
    export.close()
    _remove_pid_file(args)
    return 0


def _remove_pid_file(args: argparse.Namespace) -> None:
    if getattr(args, "pid_file", None):
        with contextlib.suppress(OSError):
            os.unlink(args.pid_file)


def _daemonize(args: argparse.Namespace) -> int:
    """Detach into the background; the parent exits once the server listens.

    Returns, in the daemon, the pipe on which to report "ok ..." or "error ...".
    """
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            status = pipe.read().decode(errors="replace")
        if status.startswith("ok "):
            print(status[3:])
            os._exit(0)
        print(f"pohmelfs: error: {status[6:] or 'server failed to start'}", file=sys.stderr)
        os._exit(2)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    log = os.open(args.log_file or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    return w


def mount_target(args: argparse.Namespace) -> tuple[str, str]:
    """The servers and mount point of ``mount``: one argument given with servers in
    the config file is the mount point."""
    servers, mountpoint = args.servers, args.mountpoint
    configured = getattr(args, "config_servers", None)
    if configured and servers not in (None, configured) and not _is_server_set(servers):
        servers, mountpoint = configured, servers
    if servers is None or mountpoint is None:
        raise UserError("mount needs HOST:PORT and MOUNTPOINT (or servers and mountpoint in "
                        "the config file's [mount])")  # fmt: skip
    return servers, mountpoint


def _mount(args: argparse.Namespace) -> int:
    from .fuse import mount as fmount

    args.servers, args.mountpoint = mount_target(args)
    try:
        cfg = fmount.MountConfig.parse(args.servers, args.mountpoint, args.o or [])
    except ValueError as e:
        raise UserError(str(e)) from None
    from .client.serverset import parse_servers

    try:
        parse_servers(cfg.servers)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not os.path.isdir(cfg.mountpoint):
        raise UserError(f"mount point {args.mountpoint!r} does not exist or is not a directory")
    from .fuse import device

    if device.is_mounted(cfg.mountpoint):
        raise UserError(f"{cfg.mountpoint} is already mounted")
    report = None if args.foreground else _daemonize(args)
    try:
        if report is None:
            return fmount.run(cfg, ready=lambda line: print(line, flush=True))

        def ready(line: str) -> None:
            os.write(report, f"ok {line}".encode())
            os.close(report)

        return fmount.run(cfg, ready=ready)
    except OSError as e:
        if report is None:
            raise
        where = f"{e.filename}: " if e.filename else ""
        os.write(report, f"error {where}{e.strerror or e}".encode())
        os._exit(1)


def _umount(args: argparse.Namespace) -> int:
    from .fuse import mount as fmount

    fmount.umount(args.mountpoint)
    return 0


def _client(args: argparse.Namespace, server: str | None = None,  # type: ignore[no-untyped-def]
            **kw: Any):  # fmt: skip
    from .client.client import Client

    return Client(server or args.server, timeout=args.timeout, secret_file=args.secret_file,
                  key=args.key, tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
                  **kw)  # fmt: skip


def _keygen(args: argparse.Namespace) -> int:
    from .security.keys import write_secret
    from .security.tls import make_certificates

    if not args.secret and not args.tls:
        raise UserError("give --secret FILE or --tls DIR")
    if args.secret:
        write_secret(args.secret)
        print(f"pohmelfs: wrote a new secret to {args.secret} (mode 0600)")
    if args.tls:
        for path in make_certificates(args.tls, args.server_name or [], args.client or []):
            print(f"pohmelfs: wrote {path}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    with _client(args) as c:
        for e in sorted(c.scandir(args.path), key=lambda e: e.name):
            st = e.stat()
            print(
                f"{stat.filemode(st.st_mode)} {st.st_nlink:3} {st.st_uid:5} {st.st_gid:5} "
                f"{st.st_size:12} {e.name}"
            )
    return 0


def _cat(args: argparse.Namespace) -> int:
    with _client(args) as c, c.open(args.path, "rb") as f:
        shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
    return 0


def _put(args: argparse.Namespace) -> int:
    from .cli_copy import Side, copy

    with _client(args) as c:
        copy(Side(), Side(c), args.local, args.remote, False, 1)
    return 0


def _get(args: argparse.Namespace) -> int:
    from .cli_copy import Side, copy

    with _client(args) as c:
        copy(Side(c), Side(), args.remote, args.local, False, 1)
    return 0


def _cp(args: argparse.Namespace) -> int:
    from .cli_copy import run_cp

    with _client(args) as c:
        return run_cp(args, c)


def _df(args: argparse.Namespace) -> int:
    with _client(args) as c:
        info = c.server_info()
        s = c.statvfs()
    total, free = s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize
    used = (s.f_blocks - s.f_bfree) * s.f_frsize
    flags = "read-only" if info["read_only"] else "read-write"
    print(f"{'server':24} {'size':>14} {'used':>14} {'avail':>14}  mode")
    print(f"{info['address']:24} {total:14} {used:14} {free:14}  {flags}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pohmelfs",
        description="pohmelfs: a network filesystem with a coherent client cache.",
    )
    version = f"pohmelfs {__version__} (protocol {PROTOCOL_VERSION})"
    parser.add_argument("--version", action="version", version=version)
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines as text (default) or as JSON objects")  # fmt: skip
    parser.add_argument("--config", metavar="FILE",
                        help="options of serve and mount from this TOML file (default: "
                        "$POHMELFS_CONFIG); the command line overrides it")  # fmt: skip
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="how much to log to stderr (default: warning)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="export a directory to clients over TCP",
        description="Export DIR to pohmelfs clients. Every client path "
        "stays beneath DIR; symlinks are stored, never followed.",
    )
    serve.add_argument("dir", metavar="DIR", nargs="?", help="the folder to export")
    serve.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default: {DEFAULT_LISTEN})",
    )
    serve.add_argument("--read-only", action="store_true", help="refuse every change with EROFS")
    serve.add_argument(
        "--allow-devices",
        action="store_true",
        help="let clients create device nodes (for root file systems of containers and "
        "virtual machines, and conformance suites); the server never opens them, but "
        "local users of this machine could, so keep the export's parent closed to them",
    )
    serve.add_argument(
        "--max-payload",
        type=int,
        default=8,
        metavar="MIB",
        help="largest message payload in MiB (default: 8)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=16,
        help="threads for slow requests such as fsync (default: 16)",
    )
    serve.add_argument(
        "--lease",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long a client may take to give back a cache lock before it loses it (default: 5)",
    )
    sec = serve.add_argument_group(
        "security",
        "Clients prove a key before anything else (a shared secret: every frame is then "
        "tagged against tampering). Without --secret-file or --exports the server does "
        "not start, unless --insecure.",
    )
    sec.add_argument("--secret-file", metavar="FILE",
                     help="the shared secret of the client key 'default' (mode 0600; make "
                     "one with 'pohmelfs keygen --secret FILE')")  # fmt: skip
    sec.add_argument("--exports", metavar="FILE",
                     help="client keys, one per line: NAME secret=FILE[,ro|rw]"
                     "[,root_squash|all_squash|no_root_squash][,anonuid=N,anongid=N]")  # fmt: skip
    sec.add_argument("--squash", default="root_squash",
                     choices=["root_squash", "all_squash", "no_root_squash"],
                     help="for the --secret-file key: how claimed identities are mapped "
                     "(default: root_squash, root acts as the anonymous ids)")  # fmt: skip
    sec.add_argument("--anonuid", type=int, default=65534, help="anonymous uid (65534)")
    sec.add_argument("--anongid", type=int, default=65534, help="anonymous gid (65534)")
    sec.add_argument("--read-only-key", action="store_true",
                     help="the --secret-file key may only read")  # fmt: skip
    sec.add_argument("--tls-cert", metavar="FILE", help="mutual TLS: this server's certificate")
    sec.add_argument("--tls-key", metavar="FILE", help="mutual TLS: its private key")
    sec.add_argument("--tls-ca", metavar="FILE",
                     help="mutual TLS: the CA whose client certificates are taken (clients are "
                     "known by common name: 'NAME tls,...' lines of --exports, or else all "
                     "get --squash)")  # fmt: skip
    sec.add_argument(
        "--insecure",
        action="store_true",
        help="no authentication: loopback only, every identity squashed",
    )
    sec.add_argument("--allow-setuid", action="store_true",
                     help="keep setuid and setgid bits that clients set (off: dropped, so "
                     "no client can make a program that gains rights on this host)")  # fmt: skip
    sec.add_argument("--max-connections", type=int, default=256,
                     help="connections at once (default: 256)")  # fmt: skip
    sec.add_argument("--max-per-peer", type=int, default=64,
                     help="connections at once from one address (default: 64)")  # fmt: skip
    sec.add_argument(
        "--idle-timeout",
        type=float,
        default=600,
        metavar="SECONDS",
        help="close a connection silent this long (clients ping; default 600)",
    )
    serve.add_argument(
        "--watch",
        choices=("filesystem", "held", "off"),
        default="filesystem",
        help="how changes made to the export outside pohmelfs are seen (they revoke what "
        "clients cache): 'filesystem' watches the export's whole filesystem (fanotify, as "
        "root; else 'held'), 'held' only the objects clients cache (inotify), 'off' none "
        "(a change is then found when the object is next used). Default: filesystem",
    )
    serve.add_argument(
        "--no-watch",
        action="store_true",
        help="the same as --watch off",
    )
    serve.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the server keeps the versions of the export's objects, which tell a "
        "server that missed changes (outside the export; default: $POHMELFS_STATE_DIR, "
        "else /var/lib/pohmelfs as root, else ~/.local/state/pohmelfs)",
    )
    serve.add_argument(
        "--daemon",
        action="store_true",
        help="run in the background; returns once the server listens",
    )
    serve.add_argument("--pid-file", metavar="FILE", help="write the server's PID here")
    serve.add_argument("--metrics", metavar="HOST:PORT",
                       help="serve Prometheus metrics over HTTP here (/metrics; no key: "
                       "keep it on loopback or a trusted network)")  # fmt: skip
    serve.add_argument(
        "--log-file", metavar="FILE", help="with --daemon, append the log here (default: discard)"
    )
    serve.set_defaults(func=_serve)

    def client_cmd(name: str, help: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help, description=help)
        cmd.add_argument("server", metavar="HOST:PORT[,HOST:PORT...]", help="the server(s)")
        cmd.add_argument(
            "--timeout", type=float, default=5.0, help="seconds to wait for an answer (default: 5)"
        )
        cmd.add_argument("--secret-file", metavar="FILE", help="the key's shared secret")
        cmd.add_argument("--key", help="the key's name in the server's exports (default)")
        cmd.add_argument("--tls-cert", metavar="FILE", help="mutual TLS: the client certificate")
        cmd.add_argument("--tls-key", metavar="FILE", help="mutual TLS: its private key")
        cmd.add_argument("--tls-ca", metavar="FILE", help="mutual TLS: the server's CA")
        return cmd

    add_server_commands(sub, client_cmd, _client)
    mount = sub.add_parser(
        "mount",
        help="mount an export as a local filesystem (FUSE)",
        description="Mount the export served at HOST:PORT on MOUNTPOINT. Returns once the "
        "mount is ready and keeps serving it in the background; stop with "
        "'pohmelfs umount MOUNTPOINT'. Options (-o, comma-separated): allow_other, "
        "no_default_permissions, timeout=S (network), threads=N, readahead_kib=N, "
        "dirty_timeout=S (small writes kept back at most S seconds, default 3), "
        "async_close (close does not wait for the file's writes), majority (with several "
        "servers, a change needs more than half of them; without, EROFS), "
        "secret_file=F and key=NAME (the server's key), or tls_cert=F, tls_key=F, tls_ca=F "
        "[tls_server_name=N] (mutual TLS), "
        "nocoherent (close-to-open caching instead of cached locks; then attr_timeout=S, "
        "entry_timeout=S).",
    )
    mount.add_argument("servers", metavar="HOST:PORT[,HOST:PORT...]", nargs="?")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?")
    mount.add_argument("-o", action="append", metavar="OPTIONS", help="mount options")
    mount.add_argument(
        "-f", "--foreground", action="store_true", help="stay attached (for systemd and debugging)"
    )
    mount.add_argument(
        "--log-file",
        metavar="FILE",
        help="in the background, append the log here (default: discard)",
    )
    mount.set_defaults(func=_mount, pid_file=None)
    umount = sub.add_parser(
        "umount",
        help="write back and unmount a pohmelfs mount",
        description="Write back everything, unmount and stop the daemon.",
    )
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount.set_defaults(func=_umount)

    ls = client_cmd("ls", "list a remote directory")
    ls.add_argument("path", nargs="?", default="/")
    ls.set_defaults(func=_ls)
    cat = client_cmd("cat", "print a remote file")
    cat.add_argument("path")
    cat.set_defaults(func=_cat)
    put = client_cmd("put", "copy a local file to the export")
    put.add_argument("local")
    put.add_argument("remote")
    put.set_defaults(func=_put)
    get = client_cmd("get", "copy a file from the export")
    get.add_argument("remote")
    get.add_argument("local")
    get.set_defaults(func=_get)
    cp = client_cmd("cp", "copy files or trees to or from the export (remote paths start "
                    "with ':'), with a progress bar on a terminal")  # fmt: skip
    cp.add_argument("source", metavar="SOURCE", help="a local path, or :REMOTE")
    cp.add_argument("dest", metavar="DEST", help="a local path, or :REMOTE")
    cp.add_argument("-r", "--recursive", action="store_true", help="copy directory trees")
    cp.add_argument("-j", "--jobs", type=int, default=4, help="files copied at once (default 4)")
    cp.set_defaults(func=_cp)
    df = client_cmd("df", "show the export's size, use and free space")
    df.set_defaults(func=_df)
    keygen = sub.add_parser("keygen", help="make a key", description="Make a new key.")
    keygen.add_argument(
        "--secret",
        metavar="FILE",
        help="write a new shared secret here (mode 0600, never overwritten)",
    )
    keygen.add_argument("--tls", metavar="DIR",
                        help="make a CA (once), a server certificate and client certificates "
                        "in DIR")  # fmt: skip
    keygen.add_argument("--server-name", action="append", metavar="NAME",
                        help="a name or address of the server (repeat; default: localhost, "
                        "127.0.0.1, ::1 and this host's name)")  # fmt: skip
    keygen.add_argument(
        "--client",
        action="append",
        metavar="NAME",
        help="make a client certificate with this common name (repeat)",
    )
    keygen.set_defaults(func=_keygen)
    return parser


def _configure(commands: Any, argv: list[str]) -> None:
    """The config file's options as the commands' defaults (``config.py``)."""
    from . import config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("rest", nargs=argparse.REMAINDER)
    known = pre.parse_known_args(argv)[0]
    path = known.config or os.environ.get("POHMELFS_CONFIG")
    command = next((a for a in known.rest if a in commands.choices), None)
    if not path or command not in config.COMMANDS:  # (only serve and mount read it)
        return
    for command, table in config.load(path).items():
        defaults = config.defaults_for(command, commands.choices[command], table, path)
        if command == "mount" and "servers" in defaults:
            defaults["config_servers"] = defaults["servers"]
        commands.choices[command].set_defaults(**defaults)


def _is_server_set(text: str) -> bool:
    from .client.serverset import parse_servers

    try:
        parse_servers(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if len(argv) >= 2 and argv[0] not in commands.choices and _is_server_set(argv[0]):
        # mount(8) -t fuse.pohmelfs runs mount.fuse3, which runs "pohmelfs SOURCE
        # MOUNTPOINT -o OPTIONS": a mount.
        argv.insert(0, "mount")
    try:
        _configure(commands, argv)
    except ValueError as e:
        print(f"pohmelfs: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logformat.configure(args.log_level, args.log_format)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (UserError, ValueError) as e:
        print(f"pohmelfs: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"pohmelfs: error{where}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
