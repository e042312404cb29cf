#!/usr/bin/env bash
# Point Slurm's default config path at DIR/etc/slurm.conf (slurm-up.sh's config).
#
#   bash tests/cluster/claim-conf.sh DIR
#
# The default path is /etc/slurm/slurm.conf ($FEWSTEP_SLURM_DEFAULT_CONF overrides it,
# for tests). Refused, leaving the path as it is: a regular file (a real Slurm's
# config), a link to a config slurm-up.sh did not write, or a link to another
# throwaway Slurm whose slurmctld still runs. Replaced, saying so on stderr: a link
# whose config is gone, or whose throwaway Slurm no longer runs (a test run that was
# killed before its slurm-down.sh leaves one behind).
set -euo pipefail
DIR=$(realpath -m "${1:?usage: claim-conf.sh DIR}")
LINK=${FEWSTEP_SLURM_DEFAULT_CONF:-/etc/slurm/slurm.conf}
OURS="$DIR/etc/slurm.conf"
refuse() { echo "claim-conf.sh: $LINK $1" >&2; exit 1; }

if [ -L "$LINK" ]; then
  target=$(readlink "$LINK")
  if [ "$target" != "$OURS" ]; then
    if [ -e "$target" ]; then
      grep -qx "ClusterName=fewstep-ci" "$target" \
        || refuse "links to $target, which slurm-up.sh did not write; move it away to run this one"
      other=$(dirname "$(dirname "$target")")
      pidfile="$other/run/slurmctld.pid"
      if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        refuse "belongs to the Slurm in $other, still running; stop it: bash tests/cluster/slurm-down.sh $other"
      fi
    fi
    echo "claim-conf.sh: $LINK linked to $target, whose Slurm is not running; relinking it" >&2
  fi
elif [ -e "$LINK" ]; then
  refuse "exists (another Slurm?); move it away to run this one"
fi
mkdir -p "$(dirname "$LINK")"
ln -sfn "$OURS" "$LINK"
