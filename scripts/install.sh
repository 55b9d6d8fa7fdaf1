#!/usr/bin/env bash
# Install what pohmelfs needs on Debian 12 (run as root): system packages through apt,
# Python packages into ./.venv through pip, and the `pohmelfs` command on the PATH.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

packages=(python3 python3-venv python3-pip fuse3 attr procps rsync fio sqlite3 git tar)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "pohmelfs: installing ${missing[*]} with apt" >&2
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.pohmelfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
# The command on the PATH: ours unless another checkout's is there (several copies may
# be installed side by side); POHMELFS_LINK=force takes it over.
link=/usr/local/bin/pohmelfs
ours="$PWD/.venv/bin/pohmelfs"
if [ -w /usr/local/bin ]; then
    current=$(readlink "$link" 2>/dev/null || true)
    if [ ! -e "$link" ] && [ ! -L "$link" ] || [ "$current" = "$ours" ] \
            || [ "${POHMELFS_LINK:-}" = force ]; then
        ln -sfn "$ours" "$link"
    else
        echo "pohmelfs: $link belongs to ${current:-another install}; left alone" \
             "(POHMELFS_LINK=force to take it over; this one is $ours)" >&2
    fi
fi
