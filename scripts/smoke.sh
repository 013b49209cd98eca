#!/usr/bin/env bash
# README command 1: set up the environment, then LoRA-adapt the shipped pretrained tiny SAM3 to a
# new synthetic domain on CPU (configs/lora/first_run_cpu.yaml, through SAM3's own launcher and
# Trainer), evaluate base vs adapter on the held-out split with SAM3's COCO evaluator, and print
# the table and where the pictures are. Extra arguments are Hydra overrides for both steps
# (e.g. trainer.max_epochs=4). Rerunning it trains nothing more and says so.
#   SMOKE_DIR=path      where the run goes (default: <repo>/experiments/first_run)
#   OMP_NUM_THREADS=N   torch threads (default: torch's own, one per core)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/env.sh"
WORK="${SMOKE_DIR:-$REPO/experiments/first_run}"
mkdir -p "$WORK"
cd "$WORK"
CONFIG=configs/lora/first_run_cpu.yaml
python -m sam3_lora_plugin.train -c "$CONFIG" "$@"
python -m sam3_lora_plugin.evaluate -c "$CONFIG" --adapter runs/first_run/adapter \
  --out runs/first_run/eval --brief "$@"
echo "The run: $WORK/runs/first_run (checkpoints/, logs/, adapter/, eval/)"
