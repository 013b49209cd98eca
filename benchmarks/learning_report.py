"""The report of ``benchmarks/learning.py``: per shift and row, mean ± std over seeds of
the metrics on the shift and of retention on the base domain, and the PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import get_pyplot, mean_std, save_figure
from learning_phase import METRICS


def summarize(runs: dict[str, dict[str, Any]], base_own: dict[str, float],
              base_shift: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per shift and row: mean ± std over seeds of each metric, retention, cost."""
    table: dict[str, dict[str, Any]] = {}
    for key, rec in runs.items():
        row, shift, _ = key.split("@")
        table.setdefault(shift, {}).setdefault(row, []).append(rec)
    out: dict[str, Any] = {}
    for shift, rows in table.items():
        out[shift] = {"base": base_shift.get(shift)}
        for row, recs in rows.items():
            out[shift][row] = {
                "seeds": len(recs),
                **{m: mean_std([r["shift"][m] for r in recs]) for m in METRICS},
                **{f"retention_{m}": mean_std([r["retention"][m] for r in recs])
                   for m in ("bbox_AP", "segm_AP")},
                "trainable_params": recs[0]["trainable_params"],
                "adapter_bytes": recs[0]["adapter_bytes"],
                "wall_s": mean_std([r["wall_s"] for r in recs]),
                "adapter_disabled_equals_base": (
                    all(r["adapter_disabled"] == base_own for r in recs)
                    if recs[0]["adapter_disabled"] is not None else None),
                "base_bit_identical": (all(r["base_bit_identical"] for r in recs)
                                       if recs[0]["base_bit_identical"] is not None else None),
            }
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Per shift: bbox AP on the shift and retained bbox AP on the base domain, mean ± std."""
    plt = get_pyplot()
    table = report["results"]
    fig, axes = plt.subplots(1, max(len(table), 1), figsize=(7 * max(len(table), 1), 5),
                             squeeze=False)
    for ax, (shift, rows) in zip(axes[0], table.items()):
        names = [r for r in rows if r != "base"]
        xs = range(len(names))
        for off, key, label in ((-0.2, "bbox_AP", f"bbox AP on {shift}"),
                                (0.2, "retention_bbox_AP", "bbox AP on base (retention)")):
            ax.bar([x + off for x in xs], [rows[n][key]["mean"] or 0 for n in names], 0.4,
                   yerr=[rows[n][key]["std"] or 0 for n in names], capsize=3, label=label)
        if rows.get("base"):
            ax.axhline(rows["base"]["bbox_AP"], color="grey", ls="--", label="base on shift")
        ax.axhline(report["base_own_domain"]["bbox_AP"], color="black", ls=":",
                   label="base on base")
        ax.set_xticks(list(xs), names, rotation=20, ha="right", fontsize=8)
        ax.set(ylim=(0, 1), title=f"shift: {shift} (mean ± std over seeds)")
        ax.legend(fontsize=8)
    save_figure(fig, path, f"tiny SAM3 through SAM3's Trainer ({report['date']})", dpi=90,
                title_size="large")
