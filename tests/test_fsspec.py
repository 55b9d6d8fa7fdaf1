"""pohmelfs as an fsspec filesystem (src/pohmelfs/fsspec_backend.py): fsspec's own
abstract suites (copy, get, put, open, pipe) against a live server, mv as fsspec's
mv tests do it, the primitives one by one, and pandas and pyarrow through
pohmelfs:// URLs."""

from __future__ import annotations

import datetime
import posixpath
from collections.abc import Iterator
from pathlib import Path

import fsspec
import fsspec.tests.abstract as abstract
import pytest

from conftest import SECRET_FILE, address_of, start_server, stopping
from pohmelfs.fsspec_backend import PohmelfsFileSystem
from pohmelfs.server.service import Server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("fsspec-export")
    with stopping(start_server(root)) as srv:
        yield srv, root


@pytest.fixture(scope="module")
def pfs(live: tuple[Server, Path]) -> Iterator[PohmelfsFileSystem]:
    fs = fsspec.filesystem("pohmelfs", servers=address_of(live[0]), secret_file=SECRET_FILE,
                           skip_instance_cache=True)  # fmt: skip
    yield fs
    fs.client.close()


class PohmelfsFixtures(abstract.AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, pfs: PohmelfsFileSystem) -> PohmelfsFileSystem:
        return pfs

    @pytest.fixture
    def fs_join(self) -> object:
        return posixpath.join

    @pytest.fixture
    def fs_path(self, pfs: PohmelfsFileSystem, request: pytest.FixtureRequest) -> Iterator[str]:
        top = f"t-{abs(hash(request.node.nodeid)) % 10**8}"
        pfs.makedirs(top, exist_ok=True)
        yield top
        pfs.rm(top, recursive=True)


class TestCopy(abstract.AbstractCopyTests, PohmelfsFixtures):  # type: ignore[misc]
    pass


class TestGet(abstract.AbstractGetTests, PohmelfsFixtures):  # type: ignore[misc]
    pass


class TestPut(abstract.AbstractPutTests, PohmelfsFixtures):  # type: ignore[misc]
    pass


class TestOpen(abstract.AbstractOpenTests, PohmelfsFixtures):  # type: ignore[misc]
    pass


class TestPipe(abstract.AbstractPipeTests, PohmelfsFixtures):  # type: ignore[misc]
    pass


# --- mv, as fsspec's own mv tests (fsspec/tests/abstract/mv.py) do on a local disk ---


def test_mv_into_a_missing_directory_is_file_not_found(pfs: PohmelfsFileSystem) -> None:
    pfs.pipe("mv-src", b"content")
    with pytest.raises(FileNotFoundError):
        pfs.mv("mv-src", "no-such-dir/dst")
    assert pfs.cat("mv-src") == b"content"
    pfs.rm("mv-src")


@pytest.mark.parametrize("recursive", [True, False])
def test_mv_into_a_directory_one_may_not_write_is_refused(
    live: tuple[Server, Path], recursive: bool
) -> None:
    # (as a user other than root: root may write anywhere)
    from pohmelfs import Cred

    _, root = live
    (root / "protected").mkdir(mode=0o555, exist_ok=True)
    (root / "protected").chmod(0o555)
    (root / "mine").write_bytes(b"content")
    (root / "mine").chmod(0o666)
    fs = PohmelfsFileSystem(servers=address_of(live[0]), secret_file=SECRET_FILE,
                            skip_instance_cache=True)  # fmt: skip
    fs.client.close()
    fs.client = type(fs.client)(fs.client.servers, secret_file=SECRET_FILE,
                                cred=Cred(1000, 1000, ()))  # fmt: skip
    try:
        with pytest.raises(PermissionError):
            fs.mv("mine", "protected/dst", recursive=recursive)
        assert not (root / "protected/dst").exists()
    finally:
        fs.client.close()


def test_mv_renames_files_and_trees(pfs: PohmelfsFileSystem, live: tuple[Server, Path]) -> None:
    _, root = live
    pfs.pipe({"mv/a/f": b"1", "mv/a/g/h": b"2"})
    pfs.mv("mv/a", "mv/b", recursive=True)
    assert pfs.cat("mv/b/g/h") == b"2" and not pfs.exists("mv/a")
    ino = (root / "mv/b/f").stat().st_ino
    pfs.mv("mv/b/f", "mv/f2")
    assert (root / "mv/f2").stat().st_ino == ino  # (a rename, not a copy)
    pfs.mkdir("mv/into")
    pfs.mv("mv/f2", "mv/into")
    assert pfs.cat("mv/into/f2") == b"1"
    pfs.rm("mv", recursive=True)


# --- the primitives --------------------------------------------------------------------


def test_info_ls_and_times(pfs: PohmelfsFileSystem, live: tuple[Server, Path]) -> None:
    _, root = live
    pfs.pipe("p/data.bin", b"x" * 1000)
    pfs.mkdir("p/sub")
    info = pfs.info("p/data.bin")
    assert info["name"] == "p/data.bin" and info["size"] == 1000 and info["type"] == "file"
    assert pfs.info("p")["type"] == "directory" and pfs.info("")["type"] == "directory"
    assert pfs.ls("p", detail=False) == ["p/data.bin", "p/sub"]
    assert [e["type"] for e in pfs.ls("p")] == ["file", "directory"]
    assert pfs.ls("p/data.bin", detail=False) == ["p/data.bin"]
    stamp = pfs.modified("p/data.bin")
    assert isinstance(stamp, datetime.datetime) and stamp.tzinfo is not None
    assert abs(stamp.timestamp() - (root / "p/data.bin").stat().st_mtime) < 1e-3
    with pytest.raises(FileNotFoundError):
        pfs.info("p/none")
    pfs.rm("p", recursive=True)


def test_ranges_are_read_straight_into_their_results(pfs: PohmelfsFileSystem) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    pfs.pipe("r.bin", data)
    assert pfs.cat_file("r.bin") == data
    assert pfs.cat_file("r.bin", 10, 20) == data[10:20]
    assert pfs.cat_file("r.bin", -5) == data[-5:]
    assert pfs.cat_file("r.bin", 1 << 30, None) == b""
    got = pfs.cat_ranges(["r.bin", "r.bin", "none"], [0, 1000, 0], [3, 1 << 21, 1])
    assert got[0] == data[:3] and got[1] == data[1000:] and isinstance(got[2], OSError)
    with pytest.raises(FileNotFoundError):
        pfs.cat_ranges(["none"], [0], [1], on_error="raise")
    pfs.rm("r.bin")


def test_a_tree_goes_in_one_request_and_a_checksum_follows_changes(
    pfs: PohmelfsFileSystem, live: tuple[Server, Path]
) -> None:
    _, root = live
    pfs.makedirs("tree/a/b/c")
    assert (root / "tree/a/b/c").is_dir()
    with pytest.raises(FileExistsError):
        pfs.makedirs("tree/a/b/c")
    pfs.makedirs("tree/a/b/c", exist_ok=True)
    pfs.pipe("tree/a/b/c/f", b"1")
    before = pfs.checksum("tree/a/b/c/f")
    assert pfs.checksum("tree/a/b/c/f") == before
    pfs.pipe("tree/a/b/c/f", b"2")
    assert pfs.checksum("tree/a/b/c/f") != before
    stats = {s["address"]: s["requests"] for s in pfs.client.server_stats()}
    pfs.rm("tree", recursive=True)
    after = {s["address"]: s["requests"] for s in pfs.client.server_stats()}
    assert not (root / "tree").exists()
    assert sum(after.values()) - sum(stats.values()) <= 3  # (a lookup and one RMTREE)


def test_urls_name_the_servers(live: tuple[Server, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, root = live
    (root / "url.txt").write_text("through a URL\n")
    monkeypatch.setenv("POHMELFS_SECRET_FILE", SECRET_FILE)
    url = f"pohmelfs://{address_of(live[0])}/url.txt"
    with fsspec.open(url, "rt") as f:
        assert f.read() == "through a URL\n"
    with fsspec.open(url.replace("url.txt", "written.txt"), "wb") as f:
        f.write(b"written through a URL")
    assert (root / "written.txt").read_bytes() == b"written through a URL"
    fs, path = fsspec.core.url_to_fs(url)
    assert isinstance(fs, PohmelfsFileSystem) and path == "url.txt"
    assert fs.unstrip_protocol(path) == url


def test_a_url_without_servers_says_so() -> None:
    with pytest.raises(ValueError, match="needs servers"):
        PohmelfsFileSystem(skip_instance_cache=True)


def test_pandas_and_pyarrow_through_urls(live: tuple[Server, Path]) -> None:
    pd = pytest.importorskip("pandas")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow.dataset as ds

    _, root = live
    opts = {"secret_file": SECRET_FILE}
    base = f"pohmelfs://{address_of(live[0])}"
    frame = pd.DataFrame({"n": range(1000), "sq": [i * i for i in range(1000)],
                          "name": [f"row{i}" for i in range(1000)]})  # fmt: skip
    frame.to_csv(f"{base}/table.csv", index=False, storage_options=opts)
    assert (root / "table.csv").read_text().startswith("n,sq,name\n0,0,row0\n")
    assert pd.read_csv(f"{base}/table.csv", storage_options=opts).equals(frame)
    frame.to_parquet(f"{base}/table.parquet", storage_options=opts)
    assert pd.read_parquet(f"{base}/table.parquet", storage_options=opts).equals(frame)
    assert pq.read_table(root / "table.parquet").num_rows == 1000  # (a real Parquet file)
    fs = fsspec.filesystem("pohmelfs", servers=address_of(live[0]), secret_file=SECRET_FILE)
    fs.makedirs("ds", exist_ok=True)
    for part in range(3):
        frame.iloc[part::3].to_parquet(f"{base}/ds/part{part}.parquet", storage_options=opts)
    table = ds.dataset("ds", filesystem=fs, format="parquet").to_table()
    assert table.num_rows == 1000 and sorted(table.column("n").to_pylist()) == list(range(1000))


def test_the_root_is_not_removed(pfs: PohmelfsFileSystem, live: tuple[Server, Path]) -> None:
    _, root = live
    (root / "stays").write_bytes(b"x")
    for name in ("", "/", "pohmelfs://h:1/"):
        with pytest.raises(PermissionError, match="root"):
            pfs.rm(name, recursive=True)
    assert (root / "stays").exists()
    pfs.rm("stays")


def test_a_url_path_is_taken_as_it_is(pfs: PohmelfsFileSystem, live: tuple[Server, Path]) -> None:
    _, root = live
    (root / "report").write_bytes(b"keep me")
    url = f"pohmelfs://{address_of(live[0])}"
    pfs.pipe_file(f"{url}/report#2.csv", b"new")
    pfs.pipe_file(f"{url}/what?.txt", b"q")
    assert (root / "report").read_bytes() == b"keep me"
    assert (root / "report#2.csv").read_bytes() == b"new" and (root / "what?.txt").exists()
    assert pfs.cat_file("report", 1, 1 << 40) == b"eep me"  # (an end past it: no more)
    with pytest.raises(FileNotFoundError):
        pfs.rm("no-match-*", recursive=True)
    pfs.rm(["report", "report#2.csv", "what?.txt"])
