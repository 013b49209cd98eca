"""``python -m sam3_lora_plugin.inspect_checkpoint PATH``: what a Trainer checkpoint holds.

Prints the file size, the epoch and steps, how many weight tensors and parameters the
model state holds, how many of them are LoRA factors, and the optimizer state count.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Optional, Sequence

from sam3_lora_plugin.base_checkpoint import CheckpointError, read_checkpoint

__all__ = ["summarize_checkpoint", "main"]


def summarize_checkpoint(path: str) -> dict:
    """Summary of a SAM3 Trainer ``checkpoint.pt`` as a plain dict."""
    ckpt = read_checkpoint(path, weights_only=False)
    model = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else {}
    kinds = Counter("lora" if ".lora_" in k else "other" for k in model)
    return {
        "path": os.path.abspath(path),
        "bytes": os.path.getsize(path),
        "epoch": ckpt.get("epoch") if isinstance(ckpt, dict) else None,
        "steps": ckpt.get("steps") if isinstance(ckpt, dict) else None,
        "tensors": len(model),
        "lora_tensors": kinds["lora"],
        "other_tensors": kinds["other"],
        "parameters": int(sum(v.numel() for v in model.values() if hasattr(v, "numel"))),
        "optimizer_states": len(ckpt.get("optimizer", {}).get("state", {}))
        if isinstance(ckpt, dict) else 0,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.inspect_checkpoint",
        description="Summarise a SAM3 Trainer checkpoint (checkpoint.pt): size, epoch, "
        "how many tensors are LoRA factors, optimizer state entries.",
    )
    parser.add_argument("path", help="path to checkpoint.pt")
    args = parser.parse_args(argv)
    try:
        s = summarize_checkpoint(args.path)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint: {s['path']}")
    print(f"size: {s['bytes'] / 1e6:.2f} MB ({s['bytes']:,} bytes)")
    print(f"epoch: {s['epoch']}  steps: {s['steps']}")
    print(f"model tensors: {s['tensors']} ({s['lora_tensors']} LoRA factors, "
          f"{s['other_tensors']} other), {s['parameters']:,} parameters")
    print(f"optimizer state entries: {s['optimizer_states']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
