"""A key for the servers and clients a benchmark starts (made fresh per run)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from pohmelfs.security.keys import write_secret

_DIR = tempfile.mkdtemp(prefix="pohmelfs-bench-key-")
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
SECRET_FILE = os.path.join(_DIR, "secret")
# The servers' versions files (never the machine's /var/lib/pohmelfs).
os.environ.setdefault("POHMELFS_STATE_DIR", os.path.join(_DIR, "state"))
write_secret(SECRET_FILE)
# The benchmark's user is the server's administrator: root is believed, as with the
# embedded default's own mount.
SERVE_ARGS = ("--secret-file", SECRET_FILE, "--squash", "no_root_squash")
MOUNT_OPTION = f"secret_file={SECRET_FILE}"
