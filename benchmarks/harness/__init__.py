"""What every benchmark under ``benchmarks/`` shares (``from harness import ...``; the
scripts find this package beside them, as ``python benchmarks/<script>.py`` puts their
folder first on ``sys.path``):

* :mod:`harness.machine`: the machine record of a JSON, other processes' load, device sync;
* :mod:`harness.memory`: process RSS (now, peak, reset), profiler peaks, ``torch.save`` bytes;
* :mod:`harness.process`: one fresh interpreter per configuration or phase;
* :mod:`harness.report`: the JSON header, atomic JSON writes, PNG figures;
* :mod:`harness.stats`: timing medians and quartiles, mean and std over seeds, tensorboard.
"""

from .machine import OtherLoad, loadavg_1min, machine_info, synchronize, wait_for_idle
from .memory import (ByteCounter, current_rss_bytes, peak_rss_bytes, profiler_peak_bytes,
                     reset_peak_rss, saved_bytes)
from .process import run_child, run_script
from .report import get_pyplot, report_header, save_figure, write_json, write_report
from .stats import mean_std, read_tensorboard_scalars, summarize_seconds

__all__ = [
    "ByteCounter", "OtherLoad", "current_rss_bytes", "get_pyplot", "loadavg_1min",
    "machine_info", "mean_std", "peak_rss_bytes", "profiler_peak_bytes",
    "read_tensorboard_scalars", "report_header", "reset_peak_rss", "run_child", "run_script",
    "save_figure", "saved_bytes", "summarize_seconds", "synchronize", "wait_for_idle",
    "write_json", "write_report",
]
