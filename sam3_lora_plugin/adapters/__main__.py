"""``python -m sam3_lora_plugin.adapters {export,merge,inspect}``: adapter files from the
command line. Run with ``--help`` (or ``<command> --help``) for what each does."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Any, Optional, Sequence

from sam3_lora_plugin.models.base_checkpoint import CheckpointError, read_checkpoint

from .io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_adapter, read_adapter
from .merge import merge_adapter_into_checkpoint
from .peft_form import write_peft_adapter
from .transformers_form import write_transformers_adapter
from .metadata import METADATA_KEY, RNG_STATE_KEY, AdapterMismatchError, decode_metadata

__all__ = ["main", "summarize_checkpoint"]

EPILOG = """\
examples:
  # the adapter of a run (Trainer checkpoint -> adapter directory, a few MB)
  python -m sam3_lora_plugin.adapters export \\
      sam3_logs/<config>/checkpoints/checkpoint.pt my_adapter/
  # a full SAM3 checkpoint with the adapter merged in, for stock SAM3 / the video predictor
  python -m sam3_lora_plugin.adapters merge sam3.pt my_adapter/ sam3_merged.pt
  # a PEFT adapter for transformers' Sam3Model (peft.PeftModel.from_pretrained)
  python -m sam3_lora_plugin.adapters export --format transformers my_adapter/ my_adapter_hf/
  # the exact PEFT form (vision-trunk Linear adapters), for peft.PeftModel.from_pretrained
  python -m sam3_lora_plugin.adapters to-peft my_adapter/ my_adapter_peft/
  # what an adapter directory or a Trainer checkpoint holds
  python -m sam3_lora_plugin.adapters inspect my_adapter/
"""


def summarize_checkpoint(path: str) -> dict[str, Any]:
    """Summary of a SAM3 Trainer ``checkpoint.pt`` as a plain dict."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path!r} holds a {type(ckpt).__name__}, not a checkpoint dict: "
                              "it is not a SAM3 Trainer checkpoint or sam3.pt.")
    model = dict(ckpt.get("model", ckpt))
    meta = model.pop(METADATA_KEY, None)
    model.pop(RNG_STATE_KEY, None)
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
        "metadata": decode_metadata(meta) if meta is not None else None,
    }


def _describe(meta: dict[str, Any]) -> list[str]:
    cfg = meta.get("lora_config") or {}
    targets = meta["targets"]
    order = ("q", "k", "v", "out", "all")
    kinds = Counter(f"{t['kind']}[{'/'.join(sorted(t['slices'], key=order.index))}]"
                    for t in targets.values())
    ranks = Counter(t["rank"] for t in targets.values())
    lines = [
        f"lora: rank {cfg.get('rank')}, alpha {cfg.get('alpha')}, init {cfg.get('init')}, "
        f"rslora {cfg.get('use_rslora')}, dora {cfg.get('use_dora', False)}, "
        f"dropout {cfg.get('dropout')}, "
        f"preset {cfg.get('preset')}, qkv_mode {cfg.get('qkv_mode')}",
        f"components: {cfg.get('components')}  roles: {cfg.get('roles')}",
        f"adapted modules: {len(targets)} ("
        + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")",
        f"ranks: {dict(sorted(ranks.items()))}",
        f"modules_to_save: {meta.get('modules_to_save') or []}",
        f"base fingerprint: {meta.get('base_fingerprint')}",
        f"written by sam3-lora-plugin {meta.get('plugin_version')}, sam3 "
        f"{meta.get('sam3_version')}, torch {meta.get('torch_version')}",
    ]
    if "trainer_epoch" in meta:
        lines.append(f"exported after epoch {meta['trainer_epoch']}")
    return lines


def _inspect(path: str) -> None:
    if os.path.isdir(path):
        adapter = read_adapter(path)
        size = sum(os.path.getsize(os.path.join(path, f))
                   for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS))
        n = sum(v.numel() for v in adapter.tensors.values())
        print(f"adapter: {os.path.abspath(path)}")
        print(f"size: {size / 1e6:.2f} MB ({size:,} bytes), {len(adapter.tensors)} tensors, "
              f"{n:,} parameters")
        print("\n".join(_describe(adapter.metadata)))
        return
    s = summarize_checkpoint(path)
    print(f"checkpoint: {s['path']}")
    print(f"size: {s['bytes'] / 1e6:.2f} MB ({s['bytes']:,} bytes)")
    print(f"epoch: {s['epoch']}  steps: {s['steps']}")
    print(f"model tensors: {s['tensors']} ({s['lora_tensors']} LoRA factors, "
          f"{s['other_tensors']} other), {s['parameters']:,} parameters")
    print(f"optimizer state entries: {s['optimizer_states']}")
    if s["metadata"]:
        print("\n".join(_describe(s["metadata"])))
    else:
        print("no LoRA adapter metadata (not an adapter-only checkpoint)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sam3_lora_plugin.adapters",
        description="Export, merge and inspect SAM3 LoRA adapters. An adapter is a "
                    f"directory with {ADAPTER_CONFIG} (PEFT-style fields plus the SAM3 "
                    f"targets and a base-weight fingerprint) and {ADAPTER_WEIGHTS}.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write the adapter of a Trainer checkpoint.pt "
                       "(or, --format transformers, a PEFT adapter for transformers' Sam3Model)",
                       description="--format sam3 (the default): write the adapter held by "
                       "an adapter-only Trainer checkpoint (checkpoint.pt / checkpoint_N.pt) "
                       "as an adapter directory of this plugin. --format transformers: "
                       "write SOURCE (that checkpoint, or an adapter directory) as a PEFT "
                       "LoRA adapter with the module names of transformers' Sam3Model, for "
                       "peft.PeftModel.from_pretrained(Sam3Model, OUT_DIR): q/k/v slices of "
                       "sam3's fused projections become adapters on q_proj/k_proj/v_proj, "
                       "out becomes o_proj; DoRA, PiSSA/OLoRA and modules_to_save carry "
                       "over; adapters on layers Sam3Model lacks (point prompts) are "
                       "refused. Needs no base weights. OUT_DIR must be new, empty or an "
                       "earlier export of the same format (replaced only once the new one "
                       "is complete); anything else is refused.")
    p.add_argument("checkpoint", metavar="SOURCE",
                   help="Trainer checkpoint written by a build_lora_sam3 run (with "
                        "--format transformers also an adapter directory)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write")
    p.add_argument("--format", choices=("sam3", "transformers"), default="sam3",
                   help="sam3: this plugin's adapter directory (default); transformers: "
                        "a PEFT adapter for transformers.Sam3Model")
    p = sub.add_parser("merge", help="merge an adapter into a stock SAM3 checkpoint",
                       description="Write OUT: the base checkpoint (stock sam3.pt layout, "
                       "detector.* and tracker.* keys) with the adapter folded into the "
                       "adapted detector.* weights; every other entry is copied unchanged, "
                       "so build_sam3_image_model(checkpoint_path=OUT) and the video "
                       "predictor load it. The base must be the one the adapter was "
                       "trained on (checked by fingerprint).")
    p.add_argument("base", help="base checkpoint, e.g. sam3.pt")
    p.add_argument("adapter", help="adapter directory")
    p.add_argument("out", help="merged checkpoint to write (not the base file)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it exists (never the base file)")
    p.add_argument("--no-check-base", action="store_true",
                   help="merge even if the base fingerprint differs")
    p = sub.add_parser("to-peft", help="write the exact PEFT form of an adapter",
                       description="Write ADAPTER as a PEFT LoRA directory that "
                       "peft.PeftModel.from_pretrained(<SAM3 image model>, OUT_DIR) loads to the "
                       "same outputs: per-slice q/k/v adapters become one fused adapter of "
                       "the summed rank with a block-diagonal B. Adapters on "
                       "nn.MultiheadAttention (PEFT misloads them, huggingface/peft #3774) "
                       "and modules_to_save are refused.")
    p.add_argument("adapter", help="adapter directory")
    p.add_argument("out_dir", help="PEFT adapter directory to write (new or empty)")
    p = sub.add_parser("inspect", help="print an adapter's or checkpoint's contents",
                       description="Print the LoRA settings, targets, sizes, versions and "
                       "base fingerprint of an adapter directory, or the epoch, sizes and "
                       "adapter metadata of a Trainer checkpoint.")
    p.add_argument("path", help="adapter directory or checkpoint.pt")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "export" and args.format == "transformers":
            out = write_transformers_adapter(args.checkpoint, args.out_dir)
            print(f"wrote PEFT adapter for transformers' Sam3Model {out}")
        elif args.command == "export":
            out = export_adapter(args.checkpoint, args.out_dir)
            print(f"wrote adapter {out}")
            _inspect(out)
        elif args.command == "merge":
            out = merge_adapter_into_checkpoint(args.base, args.adapter, args.out,
                                                check_base=not args.no_check_base,
                                                overwrite=args.overwrite)
            print(f"wrote merged checkpoint {out} ({os.path.getsize(out):,} bytes)")
        elif args.command == "to-peft":
            print(f"wrote PEFT adapter {write_peft_adapter(args.adapter, args.out_dir)}")
        else:
            _inspect(args.path)
    except (CheckpointError, AdapterMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
