"""A built wheel installed into a fresh venv gives a working ``pohmelfs``: the console
script, the fsspec entry point, ``py.typed``, and the package from the wheel, not
this checkout. (The dependencies are this venv's, seen through a ``.pth`` file: the
test builds and installs offline.)"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import pohmelfs

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parent.parent


def run(*args: str | Path, cwd: Path | None = None) -> str:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=240,
                       cwd=cwd)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_a_wheel_in_a_fresh_venv_works(tmp_path: Path) -> None:
    src = tmp_path / "src"  # (a copy: the build leaves build/ and egg-info behind)
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "src"):
        run("cp", "-r", REPO / name, src / name)
    run("find", src, "-name", "*.egg-info", "-prune", "-exec", "rm", "-rf", "{}", "+")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", tmp_path / "dist", src)  # fmt: skip
    wheel = next((tmp_path / "dist").glob("pohmelfs-*.whl"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    purelib = sysconfig.get_paths()["purelib"]
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(purelib + "\n")
    run(sys.executable, "-m", "pip", "--python", venv / "bin/python", "install", "-q",
        "--no-deps", "--no-index", wheel) if _pip_has_python_option() else \
        run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
            "--target", site, wheel)  # fmt: skip
    script = venv / "bin/pohmelfs"
    if script.exists():
        version = run(script, "--version")
    else:  # (--target puts no scripts in bin: the entry point's module instead)
        version = run(venv / "bin/python", "-m", "pohmelfs.cli", "--version")
    assert (
        version.strip() == f"pohmelfs {pohmelfs.__version__} (protocol {pohmelfs.protocol.VERSION})"
    )
    probe = run(
        venv / "bin/python",
        "-c",
        """
import json, importlib.metadata as md, importlib.resources as res
import fsspec, pohmelfs
eps = [e.value for e in md.entry_points(group="fsspec.specs") if e.name == "pohmelfs"]
scripts = [e.value for e in md.entry_points(group="console_scripts") if e.name == "pohmelfs"]
print(json.dumps({"file": pohmelfs.__file__, "fsspec": eps, "scripts": scripts,
                  "typed": res.files("pohmelfs").joinpath("py.typed").is_file(),
                  "cls": fsspec.get_filesystem_class("pohmelfs").__module__}))
""",
    )
    got = json.loads(probe)
    assert got["file"].startswith(str(venv)), got  # (the wheel's, not this checkout's)
    assert "pohmelfs.fsspec_backend:PohmelfsFileSystem" in got["fsspec"]
    assert "pohmelfs.cli:main" in got["scripts"] and got["typed"] is True
    assert got["cls"] == "pohmelfs.fsspec_backend"


def _pip_has_python_option() -> bool:
    r = subprocess.run([sys.executable, "-m", "pip", "--python", sys.executable, "--version"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    return r.returncode == 0
