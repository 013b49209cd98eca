"""What every benchmark shares: the machine record of its JSON, timing summaries, the
report header and JSON/PNG output, one subprocess per configuration, process memory
and machine load."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

__all__ = ["machine_info", "mean_std", "read_tensorboard_scalars", "summarize_seconds",
           "write_json_atomic"]


def machine_info(device: Optional[str] = None) -> dict[str, Any]:
    """Platform, CPU count, RAM, torch threads and library versions; the GPU's name and
    CUDA version when ``device`` is a CUDA device."""
    import importlib.metadata
    import platform

    import psutil
    import torch

    def version(dist: str) -> Optional[str]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "sam3": version("sam3"),
        "sam3_lora_plugin": version("sam3-lora-plugin"), "cuda_available": torch.cuda.is_available(),
    }
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


# ---------------------------------------------------------------- shared harness (train_step,
# mha_lora): a report header, JSON + PNG output, one subprocess per configuration, process
# memory and machine load. Added below machine_info so other additions can go at the end.
__all__ += ["ByteCounter", "OtherLoad", "current_rss_bytes", "get_pyplot", "loadavg_1min",
            "peak_rss_bytes", "report_header", "reset_peak_rss", "run_child", "save_figure",
            "profiler_peak_bytes", "saved_bytes", "wait_for_idle", "write_report"]


def report_header(benchmark: str, args: Any, device: Optional[str] = None,
                  skip: Sequence[str] = ("only", "child_out")) -> dict[str, Any]:
    """The fields every benchmark JSON opens with: name, UTC date, machine, arguments."""
    import datetime
    from pathlib import Path

    return {"benchmark": benchmark,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(device),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                     if k not in skip}}


def write_report(out_dir: Any, stem: str, report: dict[str, Any]) -> Any:
    """Write ``<out_dir>/<stem>.json`` (indented, newline-terminated); returns the path."""
    import json
    from pathlib import Path

    path = Path(out_dir) / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def get_pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (PNG output, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Any, title: str) -> None:
    """Title, tight layout, 120-dpi PNG at ``path``, and close the figure."""
    plt = get_pyplot()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_child(script: str, config: str, argv: Sequence[str], label: str) -> dict[str, Any]:
    """Run ``python SCRIPT --only CONFIG --child-out FILE ARGV`` in a fresh interpreter (so
    one configuration's peak memory is not another's) and return the JSON it wrote.

    Raises:
        RuntimeError: the child failed; the message holds the tail of its output.
    """
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(script).resolve()), "--only", config,
               "--child-out", str(result_file), *argv]
        print(f"[{label}] {config}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0 or not result_file.exists():
            raise RuntimeError(f"configuration {config} failed (exit {proc.returncode}):\n"
                               + proc.stdout[-6000:])
        return json.loads(result_file.read_text())


def profiler_peak_bytes(prof: Any) -> int:
    """Peak of the allocator's live bytes in a ``torch.profiler.profile(profile_memory=True)``:
    its ``[memory]`` alloc/free events replayed in time order, max running sum (bytes live
    before the profile started are not counted)."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _status_bytes(field: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` in bytes (None without procfs)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """Resident set size now."""
    rss = _status_bytes("VmRSS")
    if rss is None:
        import psutil

        rss = psutil.Process().memory_info().rss
    return rss


def peak_rss_bytes() -> int:
    """Peak RSS of this process (since the last :func:`reset_peak_rss`)."""
    import resource
    import sys

    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class ByteCounter:
    """Write-only file object that counts bytes (``torch.save`` target)."""

    def __init__(self) -> None:
        self.nbytes = 0

    def write(self, data: bytes) -> int:
        self.nbytes += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def saved_bytes(obj: Any) -> int:
    """Bytes ``torch.save(obj, f)`` writes."""
    import torch

    counter = ByteCounter()
    torch.save(obj, counter)
    return counter.nbytes


def _cpu_seconds() -> Optional[tuple[float, float]]:
    """Machine-wide (busy, total) CPU seconds from ``/proc/stat`` (None without procfs)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


class OtherLoad:
    """CPU cores used by other processes since construction (machine busy - this process)."""

    def __init__(self) -> None:
        import time

        self.start = _cpu_seconds()
        self.own = time.process_time()
        self.wall = time.perf_counter()

    def stop(self) -> Optional[float]:
        import time

        end = _cpu_seconds()
        if self.start is None or end is None:
            return None
        wall = max(time.perf_counter() - self.wall, 1e-6)
        others = (end[0] - self.start[0]) - (time.process_time() - self.own)
        return max(others, 0.0) / wall


def wait_for_idle(max_wait_s: float, max_cores: float = 0.2, window_s: float = 2.0) -> float:
    """Wait until other processes use < ``max_cores`` cores over ``window_s``, at most
    ``max_wait_s``; returns the seconds waited."""
    import time

    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        meter = OtherLoad()
        time.sleep(window_s)
        used = meter.stop()
        if used is None or used < max_cores:
            break
    return time.perf_counter() - start


def loadavg_1min() -> Optional[float]:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def summarize_seconds(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method), IQR and min of repeated timings in seconds."""
    import statistics

    samples = list(samples)
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    return {"median_s": statistics.median(samples), "q1_s": q1, "q3_s": q3,
            "iqr_s": q3 - q1, "min_s": min(samples)}


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value), n, and the values themselves;
    NaNs and Nones are dropped and counted in ``missing``."""
    import math
    import statistics

    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return {"mean": statistics.fmean(kept) if kept else None,
            "std": statistics.stdev(kept) if len(kept) >= 2 else (0.0 if kept else None),
            "n": len(kept), "missing": len(values) - len(kept), "values": kept}


def read_tensorboard_scalars(log_dir: str, tags: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` from the tensorboard event files under ``log_dir``
    (SAM3's Trainer writes new-style scalars, stored as tensor summaries)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    if not os.path.isdir(log_dir):
        return {}
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in (t for t in acc.Tags().get("tensors", []) if t in tags):
        out[tag] = sorted((int(e.step), float(tensor_util.make_ndarray(e.tensor_proto)))
                          for e in acc.Tensors(tag))
    for tag in (t for t in acc.Tags().get("scalars", []) if t in tags and t not in out):
        out[tag] = sorted((int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return out


def write_json_atomic(path: str, report: Any) -> None:
    """Write ``report`` as indented JSON through a temporary file renamed into place (a
    partial result read while a long benchmark runs is always complete JSON)."""
    import json

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)
