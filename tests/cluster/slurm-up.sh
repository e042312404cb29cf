#!/usr/bin/env bash
# Start a throwaway single-node Slurm on this machine: munged, slurmctld, slurmd.
#
#   eval "$(bash tests/cluster/slurm-up.sh /tmp/fewstep-slurm)"   # exports SLURM_CONF
#   ... sbatch / snakemake --workflow-profile profiles/slurm ...
#   bash tests/cluster/slurm-down.sh /tmp/fewstep-slurm
#
# Needs root and Debian's packages (`apt-get install -y slurm-wlm munge`). Everything
# (munge key and socket, slurm.conf, state, logs, pid files) lives under DIR and the
# daemons listen on free ports. One thing cannot: inside a job, the plugin's nested
# `srun` runs with every SLURM_* variable but a few removed (SLURM_CONF too), so it
# reads the default /etc/slurm/slurm.conf. That path becomes a symlink to
# DIR/etc/slurm.conf (claim-conf.sh: refused if a real or running Slurm is there, a
# stale link left by a killed run is replaced; slurm-down.sh removes it).
#
# Accounting is off (no slurmdbd): job status comes from squeue, which keeps
# finished jobs for MinJobAge (3600 s here, so a test can read them back). The node
# claims at least 4 CPUs and has two fake GPUs (gres `gpu:h100`, devices /dev/null
# and /dev/zero) in partitions `cpu` (default) and `gpu`, the names profiles/slurm
# uses. Prints only the export line on stdout.
set -euo pipefail
DIR=$(realpath -m "${1:?usage: slurm-up.sh DIR}")
[ "$(id -u)" = 0 ] || { echo "slurm-up.sh: needs root (slurmd runs jobs as their users)" >&2; exit 1; }
for tool in munged slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] \
    || { echo "slurm-up.sh: $tool missing: apt-get install -y slurm-wlm munge" >&2; exit 1; }
done
PATH=/usr/sbin:$PATH
export SLURM_CONF="$DIR/etc/slurm.conf"

mkdir -p "$DIR"/{etc,state,spool,log,run}
bash "$(dirname "$0")/claim-conf.sh" "$DIR"
runuser -u munge -- test -x "$DIR" \
  || { echo "slurm-up.sh: user munge cannot enter $DIR; use a folder whose parents are world-executable" >&2; exit 1; }
install -d -m 700 -o munge -g munge "$DIR/munge"

# munge: a private key and socket, run as its own user.
if [ ! -f "$DIR/munge/munge.key" ]; then
  mungekey --create --keyfile="$DIR/munge/munge.key" --bits=1024
  chown munge:munge "$DIR/munge/munge.key"
  chmod 400 "$DIR/munge/munge.key"
fi
SOCKET="$DIR/munge/munge.socket"
runuser -u munge -- munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" \
  --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
  --seed-file="$DIR/munge/munged.seed"
munge --socket="$SOCKET" -n | unmunge --socket="$SOCKET" >/dev/null \
  || { echo "slurm-up.sh: munge does not round-trip; see $DIR/munge/munged.log" >&2; exit 1; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
while [ "$SLURMD_PORT" = "$CTLD_PORT" ]; do SLURMD_PORT=$(free_port); done
HOST=$(hostname -s)
# At least 4 CPUs (config_overrides: slurmd believes slurm.conf, not the hardware) so
# two GPU jobs of 2 CPUs each can run side by side on a 2-core machine.
CPUS=$(( $(nproc) > 4 ? $(nproc) : 4 ))
MEM=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))

cat > "$DIR/etc/slurm.conf" <<CONF
ClusterName=fewstep-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
SwitchType=switch/none
GresTypes=gpu
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:h100:2 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
CONF
# gres.conf sits next to slurm.conf; without File= the node goes INVAL.
cat > "$DIR/etc/gres.conf" <<CONF
Name=gpu Type=h100 File=/dev/null
Name=gpu Type=h100 File=/dev/zero
CONF

slurmctld
slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -o %t 2>/dev/null | head -1 || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  echo "slurm-up.sh: node state '${state:-none}', not idle; logs in $DIR/log" >&2
  sinfo -R >&2 || true
  exit 1
fi
echo "export SLURM_CONF=$SLURM_CONF"
