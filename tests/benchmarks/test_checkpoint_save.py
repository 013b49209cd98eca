"""``benchmarks/checkpoint_save.py`` on the tiny model: it runs and its report is consistent.

No timing assertions (timings belong to the benchmark's JSON, not to tests).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType


def test_tiny_run_writes_consistent_json(bench: ModuleType, tmp_path: Path) -> None:
    returned = bench.main(["--size", "tiny", "--repeats", "2", "--threads", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "checkpoint_save.json").read_text())
    assert report == json.loads(json.dumps(returned))
    assert set(report["variants"]) == {"cached", "rehash"}
    for v in report["variants"].values():
        assert len(v["save_times_s"]) == 2 and v["save"]["median_s"] > 0
    assert report["model"]["adapted_base_params_hashed"] > 0
    assert math.isclose(report["ratio_save_cached_vs_rehash"],
                        report["variants"]["cached"]["save"]["median_s"]
                        / report["variants"]["rehash"]["save"]["median_s"])
