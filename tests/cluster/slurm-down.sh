#!/usr/bin/env bash
# Stop the Slurm that slurm-up.sh DIR started: slurmd, slurmctld, munged, by their pid
# files; remove the /etc/slurm/slurm.conf symlink that points into DIR.
set -uo pipefail
DIR=$(realpath -m "${1:?usage: slurm-down.sh DIR}")
for pidfile in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/munge/munged.pid"; do
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
done
LINK=${FEWSTEP_SLURM_DEFAULT_CONF:-/etc/slurm/slurm.conf}
if [ "$(readlink "$LINK" 2>/dev/null)" = "$DIR/etc/slurm.conf" ]; then
  rm -f "$LINK"
fi
exit 0
