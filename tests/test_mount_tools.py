"""Real tools on a pohmelfs mount: cp, tar, rsync, git, sqlite3, compileall, fio.

Every tool runs as a child process with a timeout; its result is checked
against the source it copied from, against the export on the server's disk,
and where the tool has one, by its own verification (``diff -r``, ``tar -d``,
``rsync --checksum``, ``git fsck``, ``PRAGMA integrity_check``, fio's verify).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import requires_fuse

pytestmark = requires_fuse

TIMEOUT = 60
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# A few hundred files, byte code included, about 6 MB.
STDLIB_PACKAGES = ("json", "email", "http", "xml", "urllib", "logging")


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a tool; unless ``check`` is false, a non-zero status fails with its output."""
    r = subprocess.run(
        [os.fspath(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    if check:
        assert r.returncode == 0, (
            f"{' '.join(map(str, args))} exited {r.returncode}\n"
            f"stdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
        )
    return r


def shell(script: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """A pipeline under ``bash -o pipefail``: any stage failing fails the test."""
    return run(["bash", "-o", "pipefail", "-c", script], timeout=timeout)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path, *, times: bool = True, owners: bool = True) -> dict[str, tuple]:
    """Everything a faithful copy keeps, per path relative to ``root`` (root itself is ".")."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [".", *dirnames, *sorted(filenames)]:
            path = Path(dirpath) / name if name != "." else Path(dirpath)
            if name == "." and path != root:
                continue
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            fields: list[object] = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)]
            if owners:
                fields += [st.st_uid, st.st_gid]
            if stat.S_ISLNK(st.st_mode):
                fields.append(os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                fields += [st.st_size, sha256(path)]
            if times and not stat.S_ISLNK(st.st_mode):
                fields.append(st.st_mtime_ns)
            out[rel] = tuple(fields)
    return out


def assert_same_tree(expected: dict[str, tuple], actual: dict[str, tuple], what: str) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = {k: (expected[k], actual[k]) for k in sorted(expected) if k in actual
              and expected[k] != actual[k]}  # fmt: skip
    assert not missing and not extra and not differ, (
        f"{what}: missing={missing[:10]} extra={extra[:10]} "
        f"differ={dict(list(differ.items())[:10])} (of {len(differ)})"
    )


def file_hashes(root: Path) -> dict[str, str]:
    return {
        os.path.relpath(Path(d) / f, root): sha256(Path(d) / f)
        for d, _, files in os.walk(root)
        for f in files
        if not os.path.islink(Path(d) / f)
    }


def stdlib_hashes() -> dict[str, str]:
    out: dict[str, str] = {}
    for pkg in STDLIB_PACKAGES:
        out.update({f"{pkg}/{k}": v for k, v in file_hashes(STDLIB / pkg).items()})
    return out


# --- cp -a ------------------------------------------------------------------------


def make_cp_tree(src: Path) -> None:
    """Modes (setuid, sticky, private), owners, symlinks, a hard link, nested dirs, mtimes."""
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "emptydir").mkdir()
    (src / "shared").mkdir()
    files = {
        "a.txt": (b"hello, pohmelfs\n", 0o644),
        "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "secret": (b"private\n", 0o600),
        "setuid-bin": (b"\x7fELF-ish", 0o4755),
        "empty": (b"", 0o644),
        "big.bin": (hashlib.sha256(b"x").digest() * 31250 + b"abc", 0o640),  # 1 MB + 3
        "sub/b.txt": (b"in a subdirectory\n" * 100, 0o664),
        "sub/deeper/c.dat": (bytes(range(256)) * 300, 0o400),
        "sub/owned": (b"belongs to someone else\n", 0o644),
    }
    for rel, (data, mode) in files.items():
        (src / rel).write_bytes(data)
        os.chmod(src / rel, mode)
    os.chown(src / "sub" / "owned", 1234, 5678)
    os.setxattr(src / "a.txt", "user.comment", b"an extended attribute")
    os.setxattr(src / "sub", "user.empty", b"")
    os.setxattr(src / "big.bin", "user.binary", bytes(range(256)) * 4)
    with open(src / "sparse", "wb") as f:  # holes, data in the middle, a hole at the end
        f.seek(3 << 20)
        f.write(b"data in the middle of nothing")
        f.truncate(5 << 20)
    os.link(src / "a.txt", src / "sub" / "hard-a")
    os.symlink("a.txt", src / "link-rel")
    os.symlink("sub/deeper", src / "link-dir")
    os.symlink("no/such/target", src / "link-dangling")
    os.symlink("../run.sh", src / "sub" / "link-up")
    os.symlink("/etc/hostname", src / "link-abs")
    os.chmod(src / "sub" / "deeper", 0o700)
    os.chmod(src / "sub", 0o750)
    os.chmod(src / "shared", 0o1777)
    os.chmod(src / "emptydir", 0o755)
    stamp_times(src, 1_600_000_000_123_456_789)


def stamp_times(root: Path, t: int) -> None:
    """Distinct, nanosecond-precise, past times on everything; directories last, deepest first.

    (rsync 3.5 leaves a directory's time alone when it is within the same second
    as the source's, so a tree made just now would not test that.)
    """
    everything = sorted(root.rglob("*"), key=lambda p: (p.is_dir(), -len(p.parts)))
    for i, p in enumerate(everything):
        stamp = t + i * 1_000_003_001
        os.utime(p, ns=(stamp - 7, stamp), follow_symlinks=False)
    os.utime(root, ns=(t, t - 86_400_000_000_000))


def test_cp_a_tree(mnt: tuple[Path, Path], tmp_path: Path) -> None:
    m, e = mnt
    src = tmp_path / "src"
    src.mkdir()
    make_cp_tree(src)
    expected = snapshot(src)

    run(["cp", "-a", src, m / "dst"])

    run(["diff", "-r", "--no-dereference", src, m / "dst"])
    assert_same_tree(expected, snapshot(m / "dst"), "through the mount")
    assert_same_tree(expected, snapshot(e / "dst"), "in the export")

    for root in (m / "dst", e / "dst"):
        a, h = os.lstat(root / "a.txt"), os.lstat(root / "sub" / "hard-a")
        assert a.st_ino == h.st_ino, f"{root}: hard link split into two files"
        assert a.st_nlink == h.st_nlink == 2
        assert os.stat(root / "link-dir" / "c.dat").st_size == 256 * 300
        assert (root / "sub" / "link-up").read_bytes() == b"#!/bin/sh\necho hi\n"
        assert stat.S_IMODE(os.stat(root / "setuid-bin").st_mode) == 0o4755

    # cp -a does not complain when it cannot keep extended attributes: look.
    for root in (m / "dst", e / "dst"):
        assert os.getxattr(root / "a.txt", "user.comment") == b"an extended attribute"
        assert os.getxattr(root / "sub" / "hard-a", "user.comment") == b"an extended attribute"
        assert os.getxattr(root / "sub", "user.empty") == b""
        assert os.getxattr(root / "big.bin", "user.binary") == bytes(range(256)) * 4
        assert sorted(os.listxattr(root / "a.txt")) == ["user.comment"]

    # Symlinks carry their own times (cp -a sets them with AT_SYMLINK_NOFOLLOW).
    for name in ("link-rel", "link-dangling", "sub/link-up"):
        want = os.lstat(src / name).st_mtime_ns
        assert os.lstat(m / "dst" / name).st_mtime_ns == want, name
        assert os.lstat(e / "dst" / name).st_mtime_ns == want, name

    # Within the mount (copy_file_range, SEEK_DATA where the kernel offers them),
    # and back out again: a copy of the copy is still the same tree.
    run(["cp", "-a", m / "dst", m / "dst2"])
    assert_same_tree(expected, snapshot(e / "dst2"), "copied within the mount, in the export")
    run(["cp", "-a", m / "dst2", tmp_path / "back"])
    assert_same_tree(expected, snapshot(tmp_path / "back"), "copied back out of the mount")


# --- tar ---------------------------------------------------------------------------


def test_tar_in_and_out(mnt: tuple[Path, Path], tmp_path: Path) -> None:
    m, e = mnt
    pkgs = " ".join(STDLIB_PACKAGES)
    original = stdlib_hashes()
    assert 200 <= len(original) <= 1000, len(original)

    shell(f"tar -C {STDLIB} -cf - {pkgs} | tar -C {m} -xf -")

    assert file_hashes(m) == original
    assert file_hashes(e) == original
    # tar's own check: contents, sizes, modes and mtimes against the archive.
    archive = tmp_path / "src.tar"
    run(["tar", "-C", STDLIB, "-cf", archive, *STDLIB_PACKAGES])
    r = run(["tar", "-C", m, "--compare", "-f", archive])
    assert r.stdout == "" and r.stderr == ""

    out_archive = tmp_path / "out.tar"
    run(["tar", "-C", m, "-cf", out_archive, *STDLIB_PACKAGES])
    names_in = sorted(run(["tar", "-tf", archive]).stdout.splitlines())
    names_out = sorted(run(["tar", "-tf", out_archive]).stdout.splitlines())
    assert names_out == names_in
    listing_in = sorted(run(["tar", "-tvf", archive]).stdout.splitlines())
    listing_out = sorted(run(["tar", "-tvf", out_archive]).stdout.splitlines())
    assert listing_out == listing_in  # modes, owners, sizes and mtimes too

    (tmp_path / "out").mkdir()
    shell(f"tar -C {m} -cf - {pkgs} | tar -C {tmp_path / 'out'} -xf -")
    assert file_hashes(tmp_path / "out") == original


# --- rsync --------------------------------------------------------------------------


def make_rsync_tree(src: Path) -> list[Path]:
    files = []
    for d in range(4):
        (src / f"d{d}" / "inner").mkdir(parents=True)
        for i in range(12):
            sub = "inner/" if i % 3 == 0 else ""
            p = src / f"d{d}" / f"{sub}f{i}.bin"
            seed = hashlib.sha256(f"{d}/{i}".encode()).digest()
            p.write_bytes(seed * ((d * 12 + i) * 97 % 2000))
            os.chmod(p, 0o644 if i % 2 else 0o600)
            files.append(p)
    os.symlink("d0/f1.bin", src / "link")
    stamp_times(src, 1_500_000_000_987_654_321)
    return files


def test_rsync(mnt: tuple[Path, Path], tmp_path: Path) -> None:
    m, e = mnt
    src = tmp_path / "src"
    src.mkdir()
    files = make_rsync_tree(src)
    dst = m / "dst"

    run(["rsync", "-a", f"{src}/", f"{dst}/"])
    assert_same_tree(snapshot(src), snapshot(dst), "rsync into the mount")
    assert_same_tree(snapshot(src), snapshot(e / "dst"), "rsync, in the export")

    def pending(*extra: str) -> list[str]:
        r = run(["rsync", "-a", "--dry-run", "--itemize-changes", *extra, f"{src}/", f"{dst}/"])
        return r.stdout.splitlines()

    assert pending("--checksum") == []
    assert pending() == []  # size and mtime agree too

    # Same size, same mtime, different bytes: only --checksum sees it.
    victim = files[7]
    st = os.stat(victim)
    data = bytearray(victim.read_bytes())
    assert len(data) > 100
    data[50:60] = b"CHANGED!!!"
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    rel = str(victim.relative_to(src))
    assert pending() == []
    changed = pending("--checksum")
    assert len(changed) == 1 and changed[0].endswith(rel) and changed[0].startswith(">fc"), changed

    r = run(["rsync", "-a", "--checksum", "--itemize-changes", f"{src}/", f"{dst}/"])
    assert [line.split()[-1] for line in r.stdout.splitlines()] == [rel], r.stdout
    assert (e / "dst" / rel).read_bytes() == bytes(data)
    assert pending("--checksum") == []

    # A new file, a grown file and a deleted one, with --delete.
    (src / "d1" / "new.txt").write_text("new\n")
    with open(files[3], "ab") as f:
        f.write(b"appended" * 1000)
    gone = files[20]
    gone.unlink()
    os.utime(src / "d1", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_001))
    r = run(["rsync", "-a", "--delete", "--itemize-changes", f"{src}/", f"{dst}/"])
    assert f"*deleting   {gone.relative_to(src)}" in r.stdout, r.stdout
    assert not (e / "dst" / gone.relative_to(src)).exists()
    assert pending("--checksum", "--delete") == []
    assert_same_tree(snapshot(src), snapshot(e / "dst"), "after the second rsync, in the export")

    # The delta algorithm rewriting a big file in place: reads and writes at
    # offsets all over the file on the mount.
    big = src / "d2" / "big.bin"
    blob = bytearray(hashlib.sha256(b"big").digest() * (3 << 15))  # 3 MiB
    big.write_bytes(blob)
    os.utime(src / "d2", ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_002))
    run(["rsync", "-a", f"{src}/", f"{dst}/"])
    for off in (0, 1 << 20, (3 << 20) - 10):
        blob[off : off + 7] = b"patched"
    blob[2 << 20 : 2 << 20] = b"inserted bytes shift the rest"
    big.write_bytes(blob)
    r = run(["rsync", "-a", "--inplace", "--no-whole-file", "--stats", f"{src}/", f"{dst}/"])
    assert "Matched data: 0 bytes" not in r.stdout, r.stdout  # the delta was used
    assert (e / "dst" / "d2" / "big.bin").read_bytes() == bytes(blob)
    assert pending("--checksum") == []

    # And back out of the mount.
    run(["rsync", "-a", f"{dst}/", f"{tmp_path / 'back'}/"])
    assert_same_tree(snapshot(src), snapshot(tmp_path / "back"), "rsync out of the mount")


# --- git -----------------------------------------------------------------------------


def git_env(home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Test Author",
        "GIT_AUTHOR_EMAIL": "author@example.com",
        "GIT_COMMITTER_NAME": "Test Committer",
        "GIT_COMMITTER_EMAIL": "committer@example.com",
        "GIT_TERMINAL_PROMPT": "0",
    }


def test_git(mnt: tuple[Path, Path], tmp_path: Path) -> None:
    m, e = mnt
    env = git_env(tmp_path / "home")
    origin = tmp_path / "origin"
    origin.mkdir()

    def git(repo: Path, *args: str) -> str:
        return run(["git", "-C", repo, *args], env=env).stdout

    git(origin, "init", "-q", "-b", "main")
    (origin / "README").write_text("pohmelfs test repository\n")
    (origin / "tool.sh").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(origin / "tool.sh", 0o755)
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "first")
    (origin / "src" / "pkg").mkdir(parents=True)
    for i in range(30):
        (origin / "src" / "pkg" / f"mod{i}.py").write_text(f"VALUE = {i}\n" * (i + 1))
    os.symlink("src/pkg/mod1.py", origin / "link")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "second")
    (origin / "README").write_text("pohmelfs test repository\nmore text\n")
    (origin / "src" / "pkg" / "mod3.py").unlink()
    git(origin, "commit", "-q", "-a", "-m", "third")

    clone = m / "clone"
    run(["git", "clone", "-q", origin, clone], env=env)
    assert git(clone, "status", "--porcelain") == ""
    assert git(clone, "log", "--format=%s").split() == ["third", "second", "first"]
    assert (clone / "link").is_symlink() and os.readlink(clone / "link") == "src/pkg/mod1.py"
    assert os.stat(clone / "tool.sh").st_mode & 0o111
    git(clone, "fsck", "--full", "--strict", "--no-progress")

    (clone / "README").write_text("edited on the mount\n")
    (clone / "src" / "pkg" / "mod7.py").write_text("VALUE = 'seven'\n")
    assert sorted(git(clone, "status", "--porcelain").splitlines()) == [
        " M README",
        " M src/pkg/mod7.py",
    ]
    git(clone, "commit", "-q", "-a", "-m", "edit on the mount")
    assert git(clone, "status", "--porcelain") == ""
    assert git(clone, "log", "--format=%s").split("\n")[0] == "edit on the mount"
    assert git(clone, "diff", "--name-only", "HEAD~1").split() == ["README", "src/pkg/mod7.py"]
    git(clone, "fsck", "--full", "--strict", "--no-progress")

    git(clone, "gc", "--quiet", "--prune=now")
    counts = dict(line.split(": ") for line in git(clone, "count-objects", "-v").splitlines())
    assert counts["count"] == "0" and int(counts["packs"]) >= 1, counts
    git(clone, "fsck", "--full", "--strict", "--no-progress")
    assert git(clone, "status", "--porcelain") == ""
    assert len(git(clone, "rev-list", "--all").split()) == 4

    # The export on disk is a complete repository by itself (read-only commands only).
    assert git(e / "clone", "log", "-1", "--format=%s").strip() == "edit on the mount"
    git(e / "clone", "fsck", "--full", "--strict", "--no-progress")
    assert git(e / "clone", "show", "HEAD:README") == "edited on the mount\n"


# --- sqlite3 ---------------------------------------------------------------------------

SQLITE_SCRIPT = r"""
import hashlib, sqlite3, sys
path, mode = sys.argv[1], sys.argv[2]
db = sqlite3.connect(path, isolation_level=None, timeout=10)
got = db.execute(f"PRAGMA journal_mode={mode}").fetchone()[0]
assert got == mode, got
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)")
db.execute("CREATE INDEX t_v ON t (v)")
for batch in range(20):
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO t (k, v) VALUES (?, ?)",
        [(f"k{batch}-{i}", hashlib.sha256(f"{batch}/{i}".encode()).digest() * 8)
         for i in range(100)],
    )
    db.execute("COMMIT")
db.execute("BEGIN")
db.executemany("INSERT INTO t (k, v) VALUES (?, ?)", [(f"gone{i}", b"x") for i in range(500)])
db.execute("ROLLBACK")
db.execute("BEGIN")
db.execute("UPDATE t SET v = zeroblob(300) WHERE id % 7 = 0")
db.execute("DELETE FROM t WHERE id % 10 = 0")
db.execute("INSERT INTO t (k, v) SELECT 'again' || id, v FROM t WHERE id % 10 = 1 LIMIT 200")
db.execute("COMMIT")
print(db.execute("SELECT count(*) FROM t").fetchone()[0])
print(db.execute("PRAGMA integrity_check").fetchone()[0])
db.close()
"""


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite(mnt: tuple[Path, Path], journal: str) -> None:
    m, e = mnt
    db = m / "test.db"
    r = run([sys.executable, "-c", SQLITE_SCRIPT, db, journal])
    assert r.stdout.split() == ["2000", "ok"], r.stdout

    query = (
        "PRAGMA integrity_check; SELECT count(*) FROM t; SELECT count(DISTINCT k) FROM t;"
        " SELECT count(*) FROM t WHERE k LIKE 'gone%';"
        " SELECT count(*) FROM t WHERE k LIKE 'k%' AND id % 10 = 0;"
    )
    want = ["ok", "2000", "2000", "0", "0"]
    assert run(["sqlite3", db, query]).stdout.split() == want
    assert run(["sqlite3", "-readonly", e / "test.db", query]).stdout.split() == want
    # The sqlite3 tool writing too, then the file on disk agrees.
    run(["sqlite3", db, "BEGIN; INSERT INTO t (k, v) VALUES ('cli', x'00ff'); COMMIT;"])
    assert run(["sqlite3", "-readonly", e / "test.db", "SELECT count(*) FROM t"]).stdout == (
        "2001\n"
    )
    assert not (m / "test.db-journal").exists()


# --- compileall and import --------------------------------------------------------------

IMPORT_SCRIPT = r"""
import sys
lib = sys.argv[1]
sys.path.insert(0, lib)
import json, email.parser, email.policy, http.client, http.cookies
for mod in (json, json.decoder, email.parser, email.policy, http.client, http.cookies):
    assert mod.__file__.startswith(lib + "/"), (mod.__name__, mod.__file__)
    assert mod.__cached__.startswith(lib + "/"), (mod.__name__, mod.__cached__)
data = {"a": [1, 2.5, None, True], "b": {"c": "\u00e9"}}
assert json.loads(json.dumps(data)) == data
msg = email.parser.Parser(policy=email.policy.default).parsestr(
    "From: a@example.com\nSubject: hi\n\nbody\n")
assert msg["subject"] == "hi" and msg.get_content() == "body\n"
cookie = http.cookies.SimpleCookie("x=1; y=2")
assert cookie["y"].value == "2"
print("imported", len([m for m in sys.modules if m.split(".")[0] in ("json", "email", "http")]))
"""


def test_compileall_and_import(mnt: tuple[Path, Path]) -> None:
    m, e = mnt
    for pkg in ("json", "email", "http"):
        shutil.copytree(STDLIB / pkg, m / "lib" / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    sources = sorted((e / "lib").rglob("*.py"))
    assert len(sources) >= 30

    r = run([sys.executable, "-m", "compileall", "-q", m / "lib"])
    assert r.stdout == "" and r.stderr == ""
    tag = sys.implementation.cache_tag
    pycs = [s.parent / "__pycache__" / f"{s.stem}.{tag}.pyc" for s in sources]
    missing = [str(p) for p in pycs if not p.is_file()]
    assert not missing, missing
    stamps = {p: os.stat(p).st_mtime_ns for p in pycs}

    r = run([sys.executable, "-S", "-c", IMPORT_SCRIPT, m / "lib"])
    assert r.stdout.startswith("imported "), r.stdout
    # Byte code compiled on the mount was valid for the sources' mtimes and sizes
    # as the mount reports them, so neither the import nor a second compileall
    # wrote it again.
    run([sys.executable, "-m", "compileall", "-q", m / "lib"])
    rewritten = [str(p) for p in pycs if os.stat(p).st_mtime_ns != stamps[p]]
    assert not rewritten, rewritten

    # Byte code the interpreter checks by hash instead of mtime.
    run([sys.executable, "-m", "compileall", "-q", "-f", "--invalidation-mode", "checked-hash",
         m / "lib" / "json"])  # fmt: skip
    r = run([sys.executable, "-S", "-c", IMPORT_SCRIPT, m / "lib"])
    assert r.stdout.startswith("imported ")


# --- fio ----------------------------------------------------------------------------------


def fio(directory: Path, tmp_path: Path, name: str, *args: str, timeout: float = 40) -> dict:
    """Run one fio job; a verify error (or any error) fails the test with fio's own words."""
    out = tmp_path / f"{name}.json"
    # fio saves its verify state in its working directory: keep that in tmp_path.
    r = run(["fio", f"--name={name}", f"--directory={directory}", "--ioengine=psync",
             "--verify_fatal=1", "--output-format=json", f"--output={out}", *args],
            cwd=tmp_path, timeout=timeout, check=False)  # fmt: skip
    assert r.returncode == 0, f"fio exited {r.returncode}\nstderr: {r.stderr[-3000:]}"
    assert "verify failed" not in r.stderr and "bad magic" not in r.stderr, r.stderr
    result = json.loads(out.read_text())
    for job in result["jobs"]:
        assert job["error"] == 0, job
    return result


def test_fio_random_read_write_verify(mnt: tuple[Path, Path], tmp_path: Path) -> None:
    m, e = mnt
    # verify_backlog checks written blocks while the job runs (a time-based job
    # has no verify phase at the end).
    job = ["--size=16m", "--bs=4k", "--rw=randrw", "--numjobs=2", "--runtime=4", "--time_based"]
    result = fio(m, tmp_path, "rand", *job, "--verify=crc32c", "--verify_backlog=64")
    assert len(result["jobs"]) == 2
    for job in result["jobs"]:
        assert job["write"]["io_bytes"] > 0 and job["read"]["io_bytes"] > 0, job
    for i in range(2):
        assert os.path.getsize(e / f"rand.{i}.0") == 16 << 20


@pytest.mark.parametrize(
    "engine", ["psync", "psync-direct", "mmap"], ids=["psync", "o_direct", "shared-mmap"]
)
def test_fio_sequential_write_verify(mnt: tuple[Path, Path], tmp_path: Path, engine: str) -> None:
    m, e = mnt
    job = ["--size=32m", "--bs=1m", "--rw=write", "--verify=crc32c"]
    how = [f"--ioengine={engine.split('-')[0]}", f"--direct={int(engine.endswith('direct'))}"]
    result = fio(m, tmp_path, "seq", *job, *how, "--end_fsync=1")
    (only,) = result["jobs"]
    assert only["job options"]["ioengine"] == how[0].split("=")[1]
    assert only["write"]["io_bytes"] == 32 << 20
    assert only["read"]["io_bytes"] == 32 << 20  # the verify phase read it all back
    # fio checks the file the server wrote, on the export's own disk.
    result = fio(e, tmp_path, "seq", *job, "--verify_only")
    assert result["jobs"][0]["read"]["io_bytes"] == 32 << 20
