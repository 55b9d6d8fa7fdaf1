#!/usr/bin/env bash
# Install everything and start pohmelfs on its embedded default: a server exporting
# $POHMELFS_EXPORT (default /srv/pohmelfs) on 127.0.0.1:7400, and a mount of it at
# $POHMELFS_MOUNT (default /mnt/pohmelfs), both in the background.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

export_dir=${POHMELFS_EXPORT:-/srv/pohmelfs}
mount_dir=${POHMELFS_MOUNT:-/mnt/pohmelfs}
listen=${POHMELFS_LISTEN:-127.0.0.1:7400}
run_dir=${POHMELFS_RUN:-/run/pohmelfs}
secret=${POHMELFS_SECRET:-/etc/pohmelfs/secret}
mkdir -p "$export_dir" "$mount_dir" "$run_dir"
pohmelfs=.venv/bin/pohmelfs
# The server takes only clients that prove this key; only root can read it, so a
# local user cannot use the port (the mount, run by root, can). Root's requests from
# that mount are root's own (no_root_squash): it is this machine's administrator.
if [ ! -f "$secret" ]; then
    (umask 077 && mkdir -p "$(dirname "$secret")")
    $pohmelfs keygen --secret "$secret" >/dev/null
fi

if [ -f "$run_dir/server.pid" ] && kill -0 "$(cat "$run_dir/server.pid")" 2>/dev/null; then
    echo "pohmelfs: server already running (pid $(cat "$run_dir/server.pid"))"
else
    $pohmelfs serve "$export_dir" --listen "$listen" --daemon \
        --secret-file "$secret" --squash no_root_squash \
        --pid-file "$run_dir/server.pid" --log-file "$run_dir/server.log"
fi
if grep -qs " $mount_dir fuse.pohmelfs " /proc/mounts; then
    echo "pohmelfs: $mount_dir is already mounted"
else
    $pohmelfs mount "$listen" "$mount_dir" -o "allow_other,secret_file=$secret" \
        --log-file "$run_dir/mount.log"
fi
cat <<MSG

pohmelfs is running:
  server: exporting $export_dir on $listen        (log: $run_dir/server.log)
  key:    $secret (root only: clients must prove it)
  mount:  $mount_dir                              (log: $run_dir/mount.log)
Use $mount_dir like any folder, or from Python:
  import pohmelfs; fs = pohmelfs.Client(["$listen"], secret_file="$secret")  # as root
Stop:  pohmelfs umount $mount_dir && kill \$(cat $run_dir/server.pid)
MSG
