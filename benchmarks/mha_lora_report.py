"""The report of ``benchmarks/mha_lora.py``: ratios of the activation path to the two
others (of medians, and paired per round), the goals, the console table and the PNG."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from harness import get_pyplot, save_figure

#: Goal: activation-path median time <= this x merge-in-forward's.
GOAL_TIME_VS_MERGE = 0.8
#: Goal: activation-path median time <= this x the frozen base's.
GOAL_TIME_VS_FROZEN = 1.15


def ratios_from(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Time and peak-memory ratios of the activation path against the two others."""
    act, merge, base = (results[v] for v in ("lora_activation", "lora_merge_in_forward", "frozen_base"))
    return {
        "time_activation_vs_merge": act["median_s"] / merge["median_s"],
        "memory_activation_vs_merge": act["peak_bytes"] / merge["peak_bytes"],
        "time_activation_vs_frozen": act["median_s"] / base["median_s"],
        "memory_activation_vs_frozen": act["peak_bytes"] / base["peak_bytes"],
        "time_merge_vs_frozen": merge["median_s"] / base["median_s"],
        "memory_merge_vs_frozen": merge["peak_bytes"] / base["peak_bytes"],
    }


def paired_time_ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """Median over rounds of the per-round time ratios (robust to slow drifts in load).

    Reported next to the ratios of medians, which the goals use.
    """
    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    return {
        "time_activation_vs_merge": paired("lora_activation", "lora_merge_in_forward"),
        "time_activation_vs_frozen": paired("lora_activation", "frozen_base"),
        "time_merge_vs_frozen": paired("lora_merge_in_forward", "frozen_base"),
    }


def goals_from(ratios: dict[str, float]) -> dict[str, bool]:
    """Which of the issue's goals the ratios meet."""
    return {
        f"time_activation_vs_merge_le_{GOAL_TIME_VS_MERGE}": ratios["time_activation_vs_merge"] <= GOAL_TIME_VS_MERGE,
        "memory_activation_lt_merge": ratios["memory_activation_vs_merge"] < 1.0,
        f"time_activation_vs_frozen_le_{GOAL_TIME_VS_FROZEN}": ratios["time_activation_vs_frozen"] <= GOAL_TIME_VS_FROZEN,
    }


def format_table(
    results: dict[str, dict[str, Any]], ratios: dict[str, float], paired: dict[str, float],
    goals: dict[str, bool],
) -> str:
    """Human-readable table, ratios (of medians; paired in brackets) and goal verdicts."""
    lines = [
        f"{'variant':<24}{'median ms':>11}{'IQR ms':>9}{'peak MiB':>10}{'saved MiB':>11}{'trainable':>11}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<24}{r['median_s'] * 1e3:>11.1f}{r['iqr_s'] * 1e3:>9.1f}"
            f"{r['peak_bytes'] / 2**20:>10.1f}{r['saved_bytes'] / 2**20:>11.1f}{r['trainable_params']:>11,}"
        )
    lines.append("")
    lines += [
        f"{k:<32}{v:.3f}" + (f"  (paired per round: {paired[k]:.3f})" if k in paired else "")
        for k, v in ratios.items()
    ]
    lines.append("")
    lines += [f"goal {k:<40}{'MET' if ok else 'NOT MET'}" for k, ok in goals.items()]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Bar chart: median step time (IQR whiskers) and peak memory per variant."""
    plt = get_pyplot()
    names = list(results)
    colors = ["#888888", "#2a7ab9", "#d9822b"][: len(names)]
    medians = [results[n]["median_s"] * 1e3 for n in names]
    errors = [
        [(results[n]["median_s"] - results[n]["q1_s"]) * 1e3 for n in names],
        [(results[n]["q3_s"] - results[n]["median_s"]) * 1e3 for n in names],
    ]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    ax_t.bar(names, medians, yerr=errors, capsize=4, color=colors)
    ax_t.set_ylabel("median forward+backward (ms)")
    ax_m.bar(names, [results[n]["peak_bytes"] / 2**20 for n in names], color=colors)
    ax_m.set_ylabel("peak memory above start (MiB)")
    for ax in (ax_t, ax_m):
        ax.tick_params(axis="x", labelrotation=15)
    save_figure(fig, path, title)
