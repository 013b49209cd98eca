"""The report of ``benchmarks/train_step.py``: which memory figure counts, ratios to the
full fine-tune, the goals, the console table and the PNG."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from harness import get_pyplot, save_figure
from train_step_trainer import PHASES

#: The configuration the goals are about, and the goals (ratios to ``full_ft``).
GOAL_CONFIG = "lora_default"
GOALS: dict[str, float] = {"peak_memory_vs_full_max": 0.45, "time_vs_full_max": 0.75,
                           "checkpoint_vs_full_max": 0.015}


def memory_key(results: dict[str, dict[str, Any]]) -> str:
    """The peak-memory figure the goals use: live tensor bytes. ``max_memory_allocated`` on
    CUDA; on CPU the allocator-level tracker's peak (``tensor_memory.py``); peak RSS only
    for runs made with ``--no-tensor-memory`` (RSS counts malloc caching, not tensors)."""
    if all(r.get("cuda_peak_bytes") for r in results.values()):
        return "cuda_peak_bytes"
    if all(r.get("tensor_peak_bytes") for r in results.values()):
        return "tensor_peak_bytes"
    return "peak_rss_bytes"


def ratios_from(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each configuration's figures divided by ``full_ft``'s."""
    if "full_ft" not in results:
        return {}
    full, mem = results["full_ft"], memory_key(results)
    out = {}
    for name, r in results.items():
        ratios = {
            "time_vs_full": r["median_s"] / full["median_s"],
            "time_min_vs_full": r["min_s"] / full["min_s"],
            "cpu_time_vs_full": r["cpu_median_s"] / full["cpu_median_s"],
            "peak_memory_vs_full": r[mem] / full[mem],
            "peak_rss_vs_full": r["peak_rss_bytes"] / full["peak_rss_bytes"],
            "checkpoint_vs_full": r["checkpoint_bytes"] / full["checkpoint_bytes"],
            "trainable_vs_full": r["trainable_params"] / full["trainable_params"],
        }
        if r.get("peak_rss_steps_bytes") and full.get("peak_rss_steps_bytes"):
            ratios["peak_rss_steps_vs_full"] = r["peak_rss_steps_bytes"] / full["peak_rss_steps_bytes"]
        if r.get("profile") and full.get("profile"):
            ratios["flops_vs_full"] = (sum(r["profile"]["total"].values())
                                       / sum(full["profile"]["total"].values()))
        if r.get("cuda_peak_bytes") and full.get("cuda_peak_bytes"):
            ratios["cuda_peak_vs_full"] = r["cuda_peak_bytes"] / full["cuda_peak_bytes"]
        out[name] = ratios
    return out


def goals_from(ratios: dict[str, dict[str, float]]) -> dict[str, Optional[bool]]:
    """Which goals ``lora_default`` meets (None where it or ``full_ft`` was not run)."""
    r = ratios.get(GOAL_CONFIG)
    keys = {"peak_memory_vs_full_max": "peak_memory_vs_full", "time_vs_full_max": "time_vs_full",
            "checkpoint_vs_full_max": "checkpoint_vs_full"}
    return {f"{keys[g]}_le_{limit}": (None if r is None else r[keys[g]] <= limit)
            for g, limit in GOALS.items()}


def _median_or_dash(values: Optional[Sequence[Optional[float]]]) -> str:
    values = [v for v in values or [] if v is not None]
    return f"{statistics.median(values):.2f}" if values else "-"


def gib(n: Optional[int]) -> str:
    """Bytes as GiB with two decimals, ``-`` for None."""
    return "-" if n is None else f"{n / 2**30:.2f}"


def format_table(results: dict[str, dict[str, Any]], ratios: dict[str, dict[str, float]],
                 goals: dict[str, Optional[bool]]) -> str:
    """Human-readable table, ratios to full fine-tune and goal verdicts."""
    mem = memory_key(results)
    lines = [f"{'config':<20}{'median s':>9}{'min s':>8}{'IQR s':>7}{'fwd s':>7}{'bwd s':>7}{'opt s':>7}{'CPU s':>8}{'others':>7}"
             f"{'RSS0 GiB':>9}{'RSS GiB':>9}{'tensor GiB':>11}{'CUDA GiB':>9}{'trainable':>13}{'ckpt MiB':>10}"]
    for name, r in results.items():
        ph = r["phases_median_s"]
        lines.append(
            f"{name:<20}{r['median_s']:>9.2f}{r['min_s']:>8.2f}{r['iqr_s']:>7.2f}{ph['forward_loss']:>7.2f}"
            f"{ph['backward']:>7.2f}{ph['optimizer']:>7.2f}{r['cpu_median_s']:>8.2f}"
            f"{_median_or_dash(r.get('others_cores')):>7}"
            f"{gib(r['rss_after_build_bytes']):>9}"
            f"{gib(r['peak_rss_bytes']):>9}{gib(r.get('tensor_peak_bytes')):>11}"
            f"{gib(r.get('cuda_peak_bytes')):>9}"
            f"{r['trainable_params']:>13,}{r['checkpoint_bytes'] / 2**20:>10.1f}")
    if ratios:
        lines += ["", f"ratios to full_ft ({'peak memory = ' + mem})",
                  f"{'config':<20}{'time':>8}{'min time':>9}{'CPU time':>9}{'FLOPs':>8}{'memory':>8}"
                  f"{'ckpt':>9}{'trainable':>11}"]
        for name, q in ratios.items():
            flops = f"{q['flops_vs_full']:>8.3f}" if "flops_vs_full" in q else f"{'-':>8}"
            lines.append(f"{name:<20}{q['time_vs_full']:>8.3f}{q['time_min_vs_full']:>9.3f}"
                         f"{q['cpu_time_vs_full']:>9.3f}{flops}{q['peak_memory_vs_full']:>8.3f}"
                         f"{q['checkpoint_vs_full']:>9.4f}{q['trainable_vs_full']:>11.4f}")
    lines.append("")
    lines += [f"goal {GOAL_CONFIG} {k:<32}{'-' if ok is None else ('MET' if ok else 'NOT MET')}"
              for k, ok in goals.items()]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], ratios: dict[str, dict[str, float]],
         path: Path, title: str) -> None:
    """Bar charts relative to full fine-tune: step time (by phase), peak memory, checkpoint."""
    plt = get_pyplot()
    names = list(results)
    base = results.get("full_ft")
    mem = memory_key(results)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    ax_t, ax_m, ax_c = axes
    bottom = [0.0] * len(names)
    colors = {"forward_loss": "#2a7ab9", "backward": "#d9822b", "optimizer": "#5a9e4b"}
    for phase in PHASES:
        vals = [results[n]["phases_median_s"][phase] / (base["median_s"] if base else 1.0) for n in names]
        ax_t.bar(names, vals, bottom=bottom, color=colors[phase], label=phase)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, n in enumerate(names):
        ax_t.annotate(f"{results[n]['median_s']:.2f} s", (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax_t.set_ylim(0, max(bottom) * 1.3)  # room for the legend above the bars
    ax_t.legend(fontsize=7, loc="upper right", ncol=3)
    ax_t.set_ylabel("median step time" + (" / full_ft" if base else " (s)"))

    def bars(ax, key, label, fmt, goal):
        vals = [results[n][key] / (base[key] if base else 1.0) for n in names]
        ax.bar(names, vals, color="#888888")
        for i, n in enumerate(names):
            ax.annotate(fmt(results[n][key]), (i, vals[i]), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(label + (" / full_ft" if base else ""))
        if base and goal is not None:
            ax.axhline(goal, color="#c0392b", linestyle="--", linewidth=1)
            ax.annotate(f"{GOAL_CONFIG} goal {goal:g}x", (len(names) - 0.5, goal), ha="right",
                        va="bottom", fontsize=7, color="#c0392b")

    if base:
        goal = GOALS["time_vs_full_max"]
        ax_t.axhline(goal, color="#c0392b", linestyle="--", linewidth=1)
        ax_t.annotate(f"{GOAL_CONFIG} goal {goal:g}x", (-0.4, goal), ha="left", va="bottom",
                      fontsize=7, color="#c0392b")
    bars(ax_m, mem, {"cuda_peak_bytes": "CUDA peak memory", "tensor_peak_bytes": "peak tensor memory"}
         .get(mem, "peak RSS"),
         lambda b: f"{b / 2**30:.2f} GiB", GOALS["peak_memory_vs_full_max"])
    bars(ax_c, "checkpoint_bytes", "checkpoint bytes", lambda b: f"{b / 2**20:.1f} MiB",
         GOALS["checkpoint_vs_full_max"])
    if base:
        ax_c.set_yscale("log")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    save_figure(fig, path, title)
