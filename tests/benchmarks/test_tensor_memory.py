"""``benchmarks/tensor_memory.py``: live tensor bytes, checked by hand and against the CPU
allocator's own events (torch.profiler ``profile_memory``)."""

from __future__ import annotations

from types import ModuleType

import harness  # benchmarks/harness/ (tests/benchmarks/conftest.py puts benchmarks/ on sys.path)
import pytest
import torch


def test_hand_computed_sequence(bench: ModuleType) -> None:
    x = torch.ones(1000)  # 4,000 B before the step
    tracker = bench.TensorMemoryTracker()
    assert tracker.register_existing([x, x.view(10, 100)], "batch") == 4000  # one storage
    with tracker:
        tracker.phase = "forward"
        a = x * 2                # +4,000 -> 8,000
        b = a + 1                # +4,000 -> 12,000
        del a                    # 8,000
        c = b.view(10, 100)      # a view allocates nothing
        c.add_(1)                # in place: nothing
        d = torch.cat([b, b])    # +8,000 -> 16,000 (the peak)
        del d, c, b              # 4,000
        tracker.phase = "backward"
        e = torch.zeros(500)     # +2,000
    report = tracker.report()
    assert report["peak_bytes"] == 16000
    assert report["baseline_bytes"] == {"batch": 4000}
    assert report["at_peak"] == {"activations/other": 12000, "batch": 4000}
    assert report["peak_by_phase"]["backward"] == 6000
    top = report["top_allocations"][0]
    assert (top["op"], top["shape"], top["bytes"]) == ("cat", [2000], 8000)
    del e


@pytest.mark.parametrize("amp", [False, True])
def test_peak_equals_the_cpu_allocator_events(bench: ModuleType, amp: bool) -> None:
    """Forward + backward of an MLP (fp32, and bf16 autocast): the tracker's peak is the
    peak of the allocator's own alloc/free events, byte for byte."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    x = torch.randn(512, 64)
    tracker = bench.TensorMemoryTracker({"mlp": mlp})
    tracker.track_gradients(mlp)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        with tracker, torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            tracker.phase = "forward"
            loss = mlp(x).float().square().mean()
            tracker.phase = "backward"
            loss.backward()
            del loss
    tracker.close()
    report = tracker.report()
    assert report["peak_bytes"] == harness.profiler_peak_bytes(prof) > 0
    assert set(report["at_peak"]) <= {"activations/mlp", "activations/other", "backward/other", "gradients"}


def test_breakdown_names_weights_gradients_and_optimizer_state(bench: ModuleType) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 256)  # 263,168 B of parameters
    tracker = bench.TensorMemoryTracker({"lin": lin})
    tracker.register_existing(lin.parameters(), "weights (trainable)")
    tracker.track_gradients(lin)
    opt = torch.optim.AdamW(lin.parameters(), foreach=False)
    with tracker:
        tracker.phase = "forward"
        loss = lin(torch.randn(8, 256)).square().sum()
        tracker.phase = "backward"
        loss.backward()
        del loss
        tracker.phase = "optimizer"
        opt.step()
    tracker.close()
    at_peak = tracker.report()["at_peak"]
    assert at_peak["weights (trainable)"] == at_peak["gradients"] == 263168
    assert at_peak["optimizer state"] >= 2 * 263168  # exp_avg and exp_avg_sq (+ step counters)
