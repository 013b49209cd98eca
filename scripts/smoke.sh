#!/usr/bin/env bash
# The README's first command: set up the environment, then run a LoRA fine-tune of a tiny
# SAM3-architecture model on the embedded synthetic dataset through SAM3's own launcher,
# on CPU (about a minute on 2 cores). Extra arguments are Hydra overrides, passed to
# python -m sam3_lora_plugin.train (e.g. trainer.max_epochs=1).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/env.sh"
WORK="${SMOKE_DIR:-$REPO/experiments/smoke}"
mkdir -p "$WORK"
cd "$WORK"
if [ "$#" -gt 0 ]; then
  python -m sam3_lora_plugin.train -c configs/lora/smoke_cpu.yaml "$@"
else
  python -m sam3.train.train -c configs/lora/smoke_cpu.yaml
fi
EXP="$WORK/sam3_logs/configs/lora/smoke_cpu.yaml"
python -m sam3_lora_plugin.adapters inspect "$EXP/checkpoints/checkpoint.pt"
# The portable adapter (adapter_config.json + adapter_model.safetensors).
python -m sam3_lora_plugin.adapters export "$EXP/checkpoints/checkpoint.pt" "$EXP/adapter"
