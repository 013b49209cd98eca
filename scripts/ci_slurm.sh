#!/usr/bin/env bash
# CI stage "SLURM": bring up the single-node SLURM cluster (scripts/slurm_cluster.sh: Debian
# packages, installed if missing; munged, MariaDB + slurmdbd, slurmctld, slurmd on loopback),
# run the tests marked `slurm` (tests/cluster/) with the cluster required
# (SAM3_LORA_REQUIRE_SLURM=1: an unreachable cluster fails them instead of skipping), print
# the cluster's state and logs if anything failed, and tear it down. Needs root.
# Extra arguments go to pytest (e.g. -k requeue). Prints the time each part took.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/env.sh
source "$REPO/scripts/env.sh"   # the project's .venv (already set up by scripts/test.sh in CI)
STATE_DIR="${SAM3_LORA_SLURM_DIR:-/tmp/sam3-lora-slurm}"

rc=1
t0=$SECONDS
finish() {
  if [ "$rc" -ne 0 ]; then
    echo "[ci_slurm] the cluster stage failed (rc=$rc); cluster state and log tails:" >&2
    bash scripts/slurm_cluster.sh status >&2 || true
    for f in slurmctld slurmd slurmdbd; do
      echo "--- $STATE_DIR/log/$f.log (tail)" >&2
      tail -n 40 "$STATE_DIR/log/$f.log" >&2 2>/dev/null || true
    done
  fi
  local t=$SECONDS
  bash scripts/slurm_cluster.sh down || true
  echo "[ci_slurm] cluster up ${up_s:-?}s, tests ${tests_s:-?}s, down $((SECONDS - t))s," \
    "stage total $((SECONDS - t0))s" >&2
}
trap finish EXIT

up_out="$(bash scripts/slurm_cluster.sh up)"   # fails the stage (set -e) if it cannot
eval "$(tail -n 1 <<<"$up_out")"               # export SLURM_CONF=...
up_s=$((SECONDS - t0))
export SAM3_LORA_REQUIRE_SLURM=1
t1=$SECONDS
set +e
timeout 2700 python -m pytest -m slurm tests/cluster -v -ra --durations=0 "$@"
rc=$?
set -e
tests_s=$((SECONDS - t1))
if [ "$rc" -eq 5 ]; then
  echo "[ci_slurm] pytest collected no cluster tests: failing on purpose" >&2
  rc=1
fi
exit "$rc"
