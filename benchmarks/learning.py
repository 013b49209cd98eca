#!/usr/bin/env python
"""Does LoRA learn, and what does it forget? Pretrain, then adapt to shifted domains, several seeds.

Every training and evaluation is a run of SAM3's official Trainer on a config composed from
``configs/lora/smoke_cpu.yaml`` as SAM3's launcher composes it, each in its own process.

Phases
    1. ``pretrain`` the tiny SAM3 (``build_sam3_arch(size="tiny")``) fully on the ``base``
       synthetic style and write it as a stock-layout ``sam3.pt`` (or take
       ``--base-checkpoint``); ``base_own``: the base on the base domain's held-out split.
    2. per ``--shift-style`` (any key of ``sam3_lora_plugin.data.synthetic.STYLES``):
       ``base@<shift>``, the base on that shift's held-out split.
    3. per seed, shift and row (``--rows``, see ``ROWS``): adapt with the same step budget,
       evaluate on the shift's held-out split, then evaluate the adapted model on the base
       domain's held-out split (retention). For LoRA rows the retention run is repeated with
       the adapters disabled, which must give the base's own AP exactly, and the frozen
       weights are compared bit for bit with the base file. The seed sets the Trainer's seed:
       the LoRA init and the data order; the base stays the same.

Outputs (``--out``): ``learning.json`` (rewritten after every row, ``complete`` false until
the end) and ``learning.png``; working files under ``--work-dir``.

Usage (from the repository root)::

    python benchmarks/learning.py --jobs 2                      # the study
    python benchmarks/learning.py --jobs 2 \\
        --base-checkpoint sam3_lora_plugin/models/assets/tiny_base.safetensors  # shipped base
    python benchmarks/learning.py --base-checkpoint experiments/learning/base_sam3.pt \\
        --rows full_ft,attention_mlp --seeds 0,1,2 --shift-style shifted
    python benchmarks/learning.py --jobs 2 --reuse benchmarks/results/learning.json ...
        # only the runs the earlier report does not already hold with the same settings
    python benchmarks/learning.py --quick --out /tmp/learning   # the test suite's run

The parts: ``learning_phase`` (one Trainer run in its process), ``learning_rows`` (the rows,
their phases, ``--reuse``), ``learning_report`` (mean ± std over seeds, PNG); ``harness``
(what every benchmark shares).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

from harness import report_header, write_json
from learning_phase import REPO, PhaseSpec, run_phase, run_phase_in_process
from learning_report import plot, summarize
from learning_rows import DEFAULT_ROWS, ROWS, make_datasets, plan_row, reusable_runs, run_row
from sam3_lora_plugin.trainer.recipe import CONFIG_NAME


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (``--help``)."""
    from sam3_lora_plugin.data.synthetic import STYLES

    p = argparse.ArgumentParser(
        prog="python benchmarks/learning.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Pretrain a tiny SAM3 on a synthetic domain, then compare LoRA variants and "
        "full fine-tuning (same step budget, several seeds) on shifted domains, with retention "
        "on the base domain; all through SAM3's Trainer. Writes learning.json and learning.png.")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--work-dir", default=None, help="datasets, Trainer logs, checkpoints "
                   "(default: experiments/learning; a temporary directory with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one epoch (test suite)")
    p.add_argument("--seed", type=int, default=0, help="dataset and pretrain seed (fixed base)")
    p.add_argument("--seeds", default=None,
                   help="adaptation seeds: LoRA init and data order (default 0,1,2; 0,1 with --quick)")
    p.add_argument("--shift-style", action="append", default=None, metavar="NAME",
                   help="a shifted domain, repeatable; any key of "
                   "sam3_lora_plugin.data.synthetic.STYLES (default: shifted, small_clutter; "
                   "small_clutter with --quick)")
    p.add_argument("--rows", default=None, help=f"comma-separated rows of ROWS ({', '.join(ROWS)}); "
                   f"default {DEFAULT_ROWS}")
    p.add_argument("--base-checkpoint", default=None,
                   help="a pretrained base (a stock-layout sam3.pt or .safetensors, e.g. the "
                        "shipped sam3_lora_plugin/models/assets/tiny_base.safetensors) "
                        "instead of pretraining one")
    p.add_argument("--jobs", type=int, default=1, help="rows run in parallel")
    p.add_argument("--resolution", type=int, default=112, help="image side (multiple of 14)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per phase process")
    p.add_argument("--base-train", type=int, default=2048)
    p.add_argument("--base-test", type=int, default=48)
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--pretrain-lr", type=float, default=4e-3)
    p.add_argument("--pretrain-batch", type=int, default=8)
    p.add_argument("--backbone-lr-mult", type=float, default=0.1,
                   help="lr factor of backbone.* and transformer.encoder.* for full-model phases")
    p.add_argument("--shift-train", type=int, default=256)
    p.add_argument("--shift-test", type=int, default=48)
    p.add_argument("--adapt-epochs", type=int, default=8)
    p.add_argument("--adapt-batch", type=int, default=8)
    p.add_argument("--full-lr", type=float, default=1e-2)
    p.add_argument("--lora-lr", type=float, default=1e-2)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--keep-work", action="store_true", help="keep --quick's temporary work dir")
    p.add_argument("--reuse", action="append", default=[], metavar="LEARNING_JSON",
                   help="take the records of (row, shift, seed) runs that an earlier "
                        "learning.json already holds with the same settings, row, base and "
                        "data order, instead of running them again (repeatable: a later "
                        "file's record of the same run wins)")
    p.add_argument("--phase-spec", default=None, help=argparse.SUPPRESS)  # internal
    args = p.parse_args(argv)
    if args.resolution % 14:
        p.error(f"--resolution must be a multiple of 14, got {args.resolution}")
    args.shift_style = args.shift_style or (
        ["small_clutter"] if args.quick else ["shifted", "small_clutter"])
    args.seeds = args.seeds or ("0,1" if args.quick else "0,1,2")
    unknown = [s for s in args.shift_style if s not in STYLES or s == "base"]
    if unknown:
        p.error(f"unknown --shift-style {unknown}; choose from "
                f"{sorted(s for s in STYLES if s != 'base')} (or add one to STYLES)")
    args.rows = args.rows or (("full_ft,attn_mlp_image" if args.quick else DEFAULT_ROWS))
    bad = [r for r in _split(args.rows) if r not in ROWS]
    if bad:
        p.error(f"unknown --rows {bad}; choose from {list(ROWS)}")
    try:
        args.seed_list = [int(s) for s in _split(args.seeds)]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.base_checkpoint and not Path(args.base_checkpoint).is_file():
        p.error(f"--base-checkpoint {args.base_checkpoint} is not a file; pass a stock sam3.pt "
                "or .safetensors (e.g. sam3_lora_plugin/models/assets/tiny_base.safetensors, "
                "the shipped base) or omit it")
    for path in args.reuse:
        if not Path(path).is_file():
            p.error(f"--reuse {path} is not a file; pass an earlier learning.json "
                    "(e.g. benchmarks/results/learning.json) or omit it")
    if args.quick:
        args.base_train, args.base_test, args.shift_train, args.shift_test = 4, 2, 4, 2
        args.pretrain_epochs = args.adapt_epochs = 1
        args.pretrain_batch = args.adapt_batch = 2
    return args


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run the study and write ``learning.json`` and ``learning.png``; return the report."""
    args = parse_args(argv)
    if args.phase_spec:
        run_phase_in_process(args.phase_spec)
        return {}
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    if args.work_dir:
        work, temporary = Path(args.work_dir).absolute(), False
    elif args.quick:
        work = Path(tempfile.mkdtemp(prefix="learning_work_", dir=out))
        temporary = not args.keep_work
    else:
        work, temporary = REPO / "experiments" / "learning", False
    started = time.perf_counter()
    report: dict[str, Any] = {
        **report_header("learning", args, skip=("phase_spec",)), "complete": False,
        "command": "python benchmarks/learning.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "config": CONFIG_NAME, "rows": {r: ROWS[r] for r in _split(args.rows)},
    }
    report["machine"]["load_avg_at_start"] = list(os.getloadavg())
    try:
        data = make_datasets(args, work)
        base_ckpt = str(Path(args.base_checkpoint).absolute()) if args.base_checkpoint else str(
            work / "base_sam3.pt")
        common = {"resolution": args.resolution, "seed": 123 + args.seed, "threads": args.threads}
        if not args.base_checkpoint:
            steps = max(args.base_train // args.pretrain_batch, 1)
            pre = run_phase(PhaseSpec(
                name="pretrain", data_root=str(data["base"]), eval_split="test",
                log_dir=str(work / "runs" / "pretrain"), epochs=args.pretrain_epochs,
                steps_per_epoch=steps, lr=args.pretrain_lr, batch_size=args.pretrain_batch,
                warmup_steps=min(50, steps), backbone_lr_mult=args.backbone_lr_mult,
                save_base_to=base_ckpt, **common))
            report["pretrain"] = {"wall_s": pre["seconds"], "final": pre["final"],
                                  "trainable_params": pre["trainable_params"]}
        report["base_checkpoint"] = base_ckpt
        report["base_sha256"] = hashlib.sha256(Path(base_ckpt).read_bytes()).hexdigest()

        def evaluate(name: str, domain: str) -> dict[str, float]:
            return run_phase(PhaseSpec(name=name, data_root=str(data[domain]), eval_split="test",
                                       mode="val", base_checkpoint=base_ckpt,
                                       log_dir=str(work / "runs" / name), **common))["final"]

        report["base_own_domain"] = evaluate("base_own", "base")
        base_shift = {s: evaluate(f"base_on_{s}", s) for s in args.shift_style}
        jobs = {f"{row}@{shift}@s{seed}": plan_row(args, work, data, base_ckpt, row, shift, seed)
                for seed in args.seed_list for shift in args.shift_style
                for row in _split(args.rows)}
        runs: dict[str, dict[str, Any]] = {}
        for path in args.reuse:
            taken = reusable_runs(json.loads(Path(path).read_text()), args, report["base_sha256"], jobs)
            runs.update(taken)
            print(f"[learning] --reuse: {len(taken)} of {len(jobs)} runs taken from "
                  f"{path}: {', '.join(sorted(taken)) or 'none'}", flush=True)

        def finished(key: str, rec: dict[str, Any]) -> None:
            runs[key] = rec
            report.update(runs={k: {kk: vv for kk, vv in v.items() if kk != "loss"}
                                for k, v in runs.items()},
                          results=summarize(runs, report["base_own_domain"], base_shift),
                          wall_s=round(time.perf_counter() - started, 1))
            write_json(out / "learning.json", report, indent=1)

        for key in list(runs):
            finished(key, runs[key])

        with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
            futures = {k: pool.submit(run_row, *specs) for k, specs in jobs.items()
                       if k not in runs}
            for key, fut in futures.items():
                finished(key, fut.result())
        report["complete"] = True
        report["losses"] = {k: v["loss"] for k, v in runs.items()}
        report["wall_s"] = round(time.perf_counter() - started, 1)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    report = json.loads(json.dumps(report))
    write_json(out / "learning.json", report, indent=1)
    plot(report, out / "learning.png")
    print(json.dumps({"results": report["results"], "base_own_domain": report["base_own_domain"],
                      "wall_s": report["wall_s"]}, indent=1, default=str)[:6000])
    return report


if __name__ == "__main__":
    main()
