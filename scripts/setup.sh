#!/usr/bin/env bash
# Install everything and start pohmelfs on its embedded default: a server exporting
# $POHMELFS_EXPORT (default /srv/pohmelfs) on 127.0.0.1:7400, in the background.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

export_dir=${POHMELFS_EXPORT:-/srv/pohmelfs}
listen=${POHMELFS_LISTEN:-127.0.0.1:7400}
run_dir=${POHMELFS_RUN:-/run/pohmelfs}
mkdir -p "$export_dir" "$run_dir"

if [ -f "$run_dir/server.pid" ] && kill -0 "$(cat "$run_dir/server.pid")" 2>/dev/null; then
    echo "pohmelfs: server already running (pid $(cat "$run_dir/server.pid"))"
else
    .venv/bin/pohmelfs serve "$export_dir" --listen "$listen" --daemon \
        --pid-file "$run_dir/server.pid" --log-file "$run_dir/server.log"
fi
cat <<MSG
pohmelfs is running: exporting $export_dir on $listen (log: $run_dir/server.log).
  try it:   pohmelfs ls $listen /      pohmelfs df $listen
  from Python:  import pohmelfs; c = pohmelfs.Client(["$listen"])
  stop it:  kill \$(cat $run_dir/server.pid)
MSG
