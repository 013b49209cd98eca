"""Multi-process DDP with a frozen base, through SAM3's own `--num-gpus 2` spawn path (gloo).

* Which DDP settings LoRA needs (`trainer.distributed`), shown on a tiny adapted model in
  two gloo processes: DDP registers only `requires_grad` parameters, so the frozen base
  needs no flag; an adapter left out of a step needs `find_unused_parameters`; and
  `static_graph` breaks as soon as the set of adapters used changes between steps.
* `configs/lora/smoke_cpu.yaml` with 2 ranks x batch 2 against 1 process x batch 4, the
  same global batch, through the stock launcher: after N optimizer steps both ranks hold
  bit-identical adapters (and saw bit-identical synchronized gradients at every step), and
  they equal the 1-process run's within atol 1e-5 (see TOLERANCE).
* `trainer.gradient_accumulation_steps > 1` with SAM3's chunking collator (what sam3
  issue #324 is about): it runs, accumulates K micro-batches per optimizer step, and 4
  micro-batches accumulated in one process give the same adapters as 2 micro-batches
  accumulated on each of 2 DDP ranks (`no_sync` steps).

Per-rank states are read through SAM3's own per-step hook, `optim.gradient_logger` (called
on every rank after backward, DDP's all-reduce and clipping, before the optimizer step):
`AdapterRecorder` below saves each rank's adapters and gradients, and each rank's
state_dict when the Trainer checkpoints (only rank 0 writes checkpoint.pt).

Run as a script (`python tests/test_ddp.py toy`) it prints the toy DDP results as JSON.
"""

from __future__ import annotations

import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from sam3_lora_plugin.adapters.metadata import METADATA_KEY, RNG_STATE_KEY

CONFIG = "configs/lora/smoke_cpu.yaml"
TESTS = Path(__file__).resolve().parent

# Adapters after N steps, DDP vs one process. Float reordering (a batch of 4 against 2
# ranks x 2 averaged by gloo) moves them by ~1e-7 (1.2e-7 measured, the adapters are
# |p| <= 0.18); one AdamW step moves a coordinate by up to lr = 1e-3, so a real mismatch
# (other images, a missed all-reduce, a wrong average) shows up as ~1e-3 (a different
# loss normalization alone gave 1.6e-3 after 2 steps). 1e-5 sits 100x above the noise and
# 100x below a one-step error; the test also checks the adapters moved by > 100x it.
TOLERANCE = dict(rtol=0.0, atol=1e-5)
DETERMINISTIC = [  # no dropout / drop-path: a process's RNG must not matter
    "++trainer.model.model.dropout=0.0", "++trainer.model.model.drop_path_rate=0.0",
    "trainer.mode=train_only", "trainer.max_epochs=1"]


class AdapterRecorder:
    """A SAM3 ``optim.gradient_logger`` that saves, per rank, the trainable parameters and
    their (synchronized, clipped) gradients at every optimizer step to
    ``rank<r>_step<i>.pt``, and the state_dict the Trainer builds for each checkpoint to
    ``rank<r>_state<j>.pt`` (the Trainer builds it on every rank; only rank 0 writes it)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.step = 0
        self.saved_states = 0
        self.hooked = False

    def __call__(self, model: nn.Module, rank: int, where: float) -> None:
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        os.makedirs(self.out_dir, exist_ok=True)
        if not self.hooked:
            module.register_state_dict_post_hook(
                lambda mod, state, prefix, meta: self._save_state(rank, state))
            self.hooked = True
        torch.save({n: (p.detach().clone(), p.grad.detach().clone())
                    for n, p in module.named_parameters() if p.requires_grad},
                   os.path.join(self.out_dir, f"rank{rank}_step{self.step}.pt"))
        self.step += 1

    def _save_state(self, rank: int, state) -> None:
        torch.save({k: v.detach().clone() for k, v in state.items()
                    if k not in (METADATA_KEY, RNG_STATE_KEY)},  # the trained tensors
                   os.path.join(self.out_dir, f"rank{rank}_state{self.saved_states}.pt"))
        self.saved_states += 1


def _launch(tmp_path: Path, name: str, num_gpus: int, overrides: list[str]) -> subprocess.Popen:
    log_dir = tmp_path / name
    cmd = [sys.executable, "-m", "sam3_lora_plugin.train", "-c", CONFIG, "--verbose",
           "--num-gpus", str(num_gpus), f"launcher.experiment_log_dir={log_dir}",
           "+trainer.optim.gradient_logger={_target_: test_ddp.AdapterRecorder, "
           f"out_dir: '{log_dir / 'rec'}'}}", *DETERMINISTIC, *overrides]
    env = dict(os.environ, PYTHONPATH=str(TESTS), SAM3_LORA_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _run_together(tmp_path: Path, runs: dict[str, tuple[int, list[str]]]) -> dict[str, Path]:
    """Start the launcher runs side by side; wait (bounded) for all; return their dirs."""
    (tmp_path / "cache").mkdir(exist_ok=True)
    procs = {name: _launch(tmp_path, name, n, ov) for name, (n, ov) in runs.items()}
    deadline = time.monotonic() + 900
    outs = {}
    try:
        for name, proc in procs.items():
            outs[name] = proc.communicate(timeout=max(1, deadline - time.monotonic()))[0]
            assert proc.returncode == 0, f"{name}:\n{outs[name][-4000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    for name, out in outs.items():
        (tmp_path / name / "launcher.log").write_text(out)
    return {name: tmp_path / name for name in runs}


@functools.lru_cache(maxsize=None)
def _trainable_tensors(preset: str = "default") -> int:
    """Trainable tensors of the tiny SAM3 with ``preset`` (the smoke config trains the
    default): each rank's recorded state must hold exactly these."""
    from sam3_lora_plugin.lora.config import LoraConfig
    from sam3_lora_plugin.lora.inject import inject_lora
    from sam3_lora_plugin.models.arch import build_sam3_arch

    model = build_sam3_arch("tiny")
    inject_lora(model, LoraConfig(preset=preset))
    return sum(p.requires_grad for p in model.parameters())


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _train_stats(run: Path) -> dict:
    return json.loads((run / "logs" / "train_stats.json").read_text().splitlines()[-1])


def _assert_ranks_identical(run: Path, steps: int, preset: str = "default") -> dict:
    """Both ranks: bit-identical adapters and gradients at every step, and bit-identical
    checkpoint state after the last one. Returns rank 0's final state."""
    for i in range(steps):
        r0, r1 = _load(run / "rec" / f"rank0_step{i}.pt"), _load(run / "rec" / f"rank1_step{i}.pt")
        assert r0.keys() == r1.keys()
        for k, (p, g) in r0.items():
            assert torch.equal(p, r1[k][0]) and torch.equal(g, r1[k][1]), (i, k)
    assert not (run / "rec" / f"rank0_step{steps}.pt").exists()
    final0, final1 = _load(run / "rec" / "rank0_state0.pt"), _load(run / "rec" / "rank1_state0.pt")
    assert final0.keys() == final1.keys() and len(final0) == _trainable_tensors(preset)
    for k, v in final0.items():
        assert torch.equal(v, final1[k]), k
    # What rank 0 wrote to disk is that state.
    ckpt = _load(run / "checkpoints" / "checkpoint.pt")["model"]
    assert all(torch.equal(ckpt[k], v) for k, v in final0.items())
    return final0


#: A gradient this much smaller than the step's largest is float noise around an exact zero.
NOISE = 1e-6
#: The adapters whose gradient is zero in exact arithmetic in these runs: the geometry
#: encoder's self-attention sees one token (its CLS) when the prompts are text only, so its
#: softmax is constant and q and k get no gradient; only float noise reaches them.
NO_SIGNAL = re.compile(r"geometry_encoder\.encode\.\d+\.self_attn\.lora_[AB]\.[qk]\.weight")


def _noise_only(run: Path, steps: int) -> set[str]:
    """Tensors whose gradient is at noise level (``NOISE``) at every recorded step."""
    noisy = None
    for i in range(steps):
        rec = _load(run / "rec" / f"rank0_step{i}.pt")
        top = max(g.norm() for _, g in rec.values())
        these = {k for k, (_, g) in rec.items() if g.norm() <= NOISE * top}
        noisy = these if noisy is None else noisy & these
    return noisy or set()


def _assert_close_to(final: dict, reference_run: Path, steps: int = 4) -> None:
    """``final`` equals the reference run's final state, except the adapters that only ever
    got noise: AdamW divides a gradient by its own running RMS, so noise moves them by
    lr-sized steps that differ between any two runs (they are checked to be NO_SIGNAL's)."""
    ref = _load(reference_run / "rec" / "rank0_state0.pt")
    assert ref.keys() == final.keys()
    start = _load(reference_run / "rec" / "rank0_step0.pt")
    moved = max((ref[k] - start[k][0]).abs().max().item() for k in ref)
    assert moved > 100 * TOLERANCE["atol"], moved   # the comparison is not vacuous
    noise = _noise_only(reference_run, steps)
    assert all(NO_SIGNAL.fullmatch(k) for k in noise), sorted(noise)
    for k, v in ref.items():
        if k not in noise:
            torch.testing.assert_close(final[k], v, **TOLERANCE, msg=lambda m, k=k: f"{k}: {m}")


# --------------------------------------------------------------------------------------
# Which DDP settings LoRA needs: a tiny adapted model in 2 gloo processes.
# --------------------------------------------------------------------------------------

class _TinyAdapted(nn.Module):
    """Two frozen Linears, each with a trainable rank-2 adapter (B A x added)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.base1, self.base2 = nn.Linear(8, 8), nn.Linear(8, 8)
        for p in [*self.base1.parameters(), *self.base2.parameters()]:
            p.requires_grad_(False)
        self.a1, self.b1 = nn.Linear(8, 2, bias=False), nn.Linear(2, 8, bias=False)
        self.a2, self.b2 = nn.Linear(8, 2, bias=False), nn.Linear(2, 8, bias=False)

    def forward(self, x: torch.Tensor, second: bool = True) -> torch.Tensor:
        h = self.base1(x) + self.b1(self.a1(x))
        if second:   # like a SAM3 module that only runs for some batches
            h = self.base2(h) + self.b2(self.a2(h))
        return h


# which adapted layers each of 3 steps uses
_PATTERNS = {"every_step": [True, True, True], "never": [False, False, False],
             "varies": [True, False, True]}
_SETTINGS = {"default": {}, "find_unused_parameters": {"find_unused_parameters": True},
             "static_graph": {"static_graph": True}}


def _toy_worker(rank: int, port: int, queue) -> None:
    """Every (pattern, setting) case in turn, each on its own process group."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    for pattern in _PATTERNS:
        for setting in _SETTINGS:
            group = dist.new_group([0, 1])
            torch.manual_seed(rank)
            model = nn.parallel.DistributedDataParallel(_TinyAdapted(), process_group=group,
                                                        **_SETTINGS[setting])
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
            try:
                for second in _PATTERNS[pattern]:
                    opt.zero_grad(set_to_none=True)
                    model(torch.randn(4, 8), second=second).sum().backward()
                    opt.step()
                results[f"{pattern}/{setting}"] = {
                    "ok": True, "params": {n: p.tolist() for n, p in
                                           model.module.named_parameters() if p.requires_grad}}
            except RuntimeError as e:
                results[f"{pattern}/{setting}"] = {"ok": False, "error": str(e).splitlines()[0]}
    queue.put((rank, results))
    dist.destroy_process_group()


def _run_toy() -> dict:
    import torch.multiprocessing as mp

    from sam3_lora_plugin.testing import get_free_port

    ctx = mp.get_context("spawn")
    port = get_free_port()
    queue = ctx.Queue()
    procs = [ctx.Process(target=_toy_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got = {}
    try:
        for _ in procs:
            rank, res = queue.get(timeout=300)
            got[rank] = res
    finally:
        for p in procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
    results = {}
    for case, r0 in got[0].items():
        r1 = got[1][case]
        ok = r0["ok"] and r1["ok"]
        results[case] = {"ok": ok, "error": r0.get("error") or r1.get("error"),
                         "ranks_equal": ok and r0["params"] == r1["params"]}
    return results


@pytest.fixture(scope="module")
def toy_ddp():
    proc = subprocess.run([sys.executable, __file__, "toy"], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_frozen_base_needs_no_ddp_flag(toy_ddp):
    """DDP builds its reducer from requires_grad parameters only: with every adapter used
    in every step, the default settings (find_unused_parameters=False) train a model
    whose base is frozen, and the ranks stay identical."""
    assert toy_ddp["every_step/default"] == {"ok": True, "error": None, "ranks_equal": True}


def test_adapter_left_out_of_a_step_needs_find_unused_parameters(toy_ddp):
    """An adapter that gets no gradient in a step stops DDP's default mode; with
    find_unused_parameters=True it trains, whether the adapter is never or sometimes used."""
    for pattern in ("never", "varies"):
        assert not toy_ddp[f"{pattern}/default"]["ok"]
        assert "Expected to have finished reduction" in toy_ddp[f"{pattern}/default"]["error"]
        assert toy_ddp[f"{pattern}/find_unused_parameters"]["ranks_equal"]


def test_static_graph_fails_when_the_adapters_used_change(toy_ddp):
    """static_graph=True copes with a fixed set of unused adapters but not with one that
    changes from step to step (SAM3's forward depends on the batch): keep it false."""
    assert toy_ddp["every_step/static_graph"]["ranks_equal"]
    assert toy_ddp["never/static_graph"]["ranks_equal"]
    assert not toy_ddp["varies/static_graph"]["ok"]
    assert "Expected to have finished reduction" in toy_ddp["varies/static_graph"]["error"]


def test_smoke_cpu_sets_the_lora_ddp_settings():
    """The settings the tests above argue for, in the configs (composed with their runtime
    blocks: the backend comes from runtime/cpu.yaml or runtime/gpu.yaml)."""
    from omegaconf import OmegaConf

    from sam3_lora_plugin.trainer.compose import compose_config

    dist = compose_config("configs/lora/smoke_cpu.yaml").trainer.distributed
    assert dist.backend == "gloo"
    box = compose_config("configs/lora/coco_box.yaml", ["paths.dataset_root=/d"]).trainer.distributed
    assert box.backend == "nccl"
    assert OmegaConf.to_container(box) == {**OmegaConf.to_container(dist), "backend": "nccl"}
    assert dist.find_unused_parameters is True
    assert dist.get("static_graph", False) is False
    assert dist.gradient_as_bucket_view is True


# --------------------------------------------------------------------------------------
# smoke_cpu.yaml through SAM3's --num-gpus spawn path.
# --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_ranks_equal_each_other_and_one_process_with_the_same_global_batch(tmp_path):
    """2 gloo ranks x batch 2 vs 1 process x batch 4, 1 epoch = 4 optimizer steps on the 16
    training images. SAM3's DistributedSampler gives rank r the images r, r+2, ... of the
    same shuffled order that one process takes in fours, so each step sees the same 4
    images. The losses differ by a constant factor (Sam3LossWrapper's
    scale_by_find_batch_size scales by sqrt(local batch)), which gradient clipping
    (max_norm 0.1, active at every step here) and AdamW cancel."""
    runs = _run_together(tmp_path, {
        "ddp": (2, ["scratch.train_batch_size=2"]),
        "one": (1, ["scratch.train_batch_size=4"]),
    })
    assert _train_stats(runs["ddp"])["Trainer/steps_train"] == 4
    assert _train_stats(runs["one"])["Trainer/steps_train"] == 4
    final = _assert_ranks_identical(runs["ddp"], steps=4)
    _assert_close_to(final, runs["one"])
    assert "Train Epoch: [0][3/4]" in (runs["ddp"] / "launcher.log").read_text()


#: Plain SGD, no gradient clipping, no sqrt(local batch) loss scaling: nothing cancels a
#: scale error, so the recorded gradients must match themselves, not just the adapters.
SGD_NO_CLIP = ["trainer.optim.optimizer._target_=torch.optim.SGD", "trainer.optim.gradient_clip=null",
               "scratch.loss.scale_by_find_batch_size=false"]
#: Relative gradient difference allowed: float reordering gives ~1e-6; summing instead of
#: averaging over 2 ranks gives 1.0 (twice the gradient).
GRAD_RTOL = 1e-4
#: After SGD steps, the ranks' and the single process's parameters differ by float
#: reordering, and the gradients of the next step amplify that: for the default preset,
#: measured at step 1, median 3.8e-6 over 266 tensors, 115 above 1e-5, the largest 1.0e-4
#: (a spread over many tensors, none apart). Bounds for those steps: the median, and the
#: largest, which a bucket left out of the all-reduce (its own rank's gradient: O(1)) or a
#: sqrt(2) scale (0.41) would still exceed a hundredfold.
SGD_STEP_MEDIAN_RTOL, SGD_STEP_MAX_RTOL = 2e-5, 1e-3


def _relative_gradient_differences(run: Path, reference: Path, step: int, factor: float = 1.0,
                                   preset: str = "default") -> dict:
    """Per trainable tensor, |g_run - factor * g_ref| / |factor * g_ref| at ``step`` (rank 0).

    A tensor whose reference gradient is exactly zero (every lora_A at step 0, where
    B = 0) must be exactly zero in the run too; one whose gradient is zero in exact
    arithmetic but float noise (``NO_SIGNAL``) must be noise in both; at least the lora_B
    gradients are neither."""
    got, ref = _load(run / "rec" / f"rank0_step{step}.pt"), _load(reference / "rec" / f"rank0_step{step}.pt")
    assert got.keys() == ref.keys() and len(got) == _trainable_tensors(preset)
    top = max((factor * g).norm() for _, g in ref.values())
    out = {}
    for k, (_, g) in got.items():
        want = factor * ref[k][1]
        if want.norm() == 0:
            assert g.norm() == 0, k
            continue
        if NO_SIGNAL.fullmatch(k):
            assert want.norm() <= NOISE * top and g.norm() <= NOISE * top, k
            continue
        out[k] = ((g - want).norm() / want.norm()).item()
    assert len(out) >= 48, len(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["attention_mlp", "default"])
def test_sgd_no_clipping_ddp_gradients_equal_the_single_process_batch(tmp_path, preset):
    """2 gloo ranks x batch 2 against 1 process x batch 4 with plain SGD and no clipping:
    at every step of the epoch the all-reduced gradient equals the 1-process batch's, so
    DDP averages (a sum would be 2x). Needs the loss's sqrt(local batch) scaling off: with
    it on, the ranks' loss is sqrt(2) smaller, which the AdamW/clipping test above hides.

    Step 0, from identical parameters: every tensor within 1e-4. Steps 1-3 start from
    parameters that differ by float reordering, which the next gradient amplifies: median
    and largest difference bounded (``SGD_STEP_*_RTOL``). ``attention_mlp_heads`` (the
    default for part of 2026-11-30) is not run here: at step 3 its trajectory meets a
    fusion-encoder FFN ReLU whose input is within float noise of zero, which any last-bit
    perturbation flips (one process with 2 threads against one with 1 parts the same way;
    README, "The attention_mlp_heads preset")."""
    lora = [f"lora={preset}"] if preset != "default" else []
    runs = _run_together(tmp_path, {
        "ddp": (2, SGD_NO_CLIP + lora + ["scratch.train_batch_size=2"]),
        "one": (1, SGD_NO_CLIP + lora + ["scratch.train_batch_size=4"])})
    _assert_ranks_identical(runs["ddp"], steps=4, preset=preset)
    for step in range(4):
        diffs = _relative_gradient_differences(runs["ddp"], runs["one"], step, preset=preset)
        largest = max(diffs.items(), key=lambda kv: kv[1])
        if step == 0:
            assert largest[1] < GRAD_RTOL, (step, largest)
        else:
            assert statistics.median(diffs.values()) < SGD_STEP_MEDIAN_RTOL, step
            assert largest[1] < SGD_STEP_MAX_RTOL, (step, largest)


@pytest.mark.slow
def test_sgd_no_clipping_accumulation_sums_the_micro_batch_gradients(tmp_path):
    """SAM3's Trainer sums the K micro-batch losses (it does not divide by K): with plain
    SGD, no clipping and each image normalized by its own boxes, 1 process accumulating
    2 micro-batches of 1 image gets exactly 2x the gradient of 2 DDP ranks with 1 image
    each (DDP averages). The README says so: the gradient of an accumulated step is K
    times a batch's, which AdamW cancels and SGD does not (divide its lr by K)."""
    local = SGD_NO_CLIP + ["+scratch.loss.normalization=local"]
    runs = _run_together(tmp_path, {
        "accum2": (1, local + _accumulation_overrides(steps=2, loader_batch=2)),
        "ddp": (2, local + ["scratch.train_batch_size=1"]),
    })
    diffs = _relative_gradient_differences(runs["accum2"], runs["ddp"], step=0, factor=2.0)
    assert max(diffs.values()) < GRAD_RTOL, max(diffs.items(), key=lambda kv: kv[1])


def _accumulation_overrides(steps: int, loader_batch: int) -> list[str]:
    """gradient_accumulation_steps=K on smoke_cpu.yaml: its train collate_fn
    (sam3_lora_plugin.data.collate_fn_accumulate) turns a loader batch of
    scratch.train_batch_size x K into the K micro-batches SAM3's Trainer expects."""
    return [f"trainer.gradient_accumulation_steps={steps}",
            f"scratch.train_batch_size={loader_batch // steps}"]


@pytest.mark.slow
def test_gradient_accumulation_in_one_process_equals_accumulation_across_ranks(tmp_path):
    """gradient_accumulation_steps > 1 runs (K micro-batches per optimizer step, DDP's
    no_sync on all but the last), and accumulating the 4 images of each step as 4
    micro-batches in one process gives the adapters of 2 ranks accumulating 2 each.

    Both sides normalize each micro-batch by its own box count (loss normalization
    `local`): SAM3 sums the losses of the K micro-batches, each normalized by itself, so
    accumulation equals a K-times-larger batch only under that normalization. With the
    default `global` normalization it is close, not equal (measured: gradient cosine
    0.98-0.999 against batch 4, adapters 3e-3 apart after 4 steps)."""
    local = ["+scratch.loss.normalization=local"]
    runs = _run_together(tmp_path, {
        "accum4": (1, local + _accumulation_overrides(steps=4, loader_batch=4)),
        "ddp_accum2": (2, local + _accumulation_overrides(steps=2, loader_batch=2)),
    })
    # 4 optimizer steps per epoch; SAM3 counts forward passes (micro-batches) in steps.
    assert _train_stats(runs["accum4"])["Trainer/steps_train"] == 16
    assert _train_stats(runs["ddp_accum2"])["Trainer/steps_train"] == 8
    for run in runs.values():
        assert len(list((run / "rec").glob("rank0_step*.pt"))) == 4
        assert re.search(r"Train Epoch: \[0\]\[3/4\]", (run / "launcher.log").read_text())
    final = _assert_ranks_identical(runs["ddp_accum2"], steps=4)
    _assert_close_to(final, runs["accum4"])


if __name__ == "__main__":
    if sys.argv[1:] == ["toy"]:
        print(json.dumps(_run_toy()))
    else:
        sys.exit("usage: python tests/test_ddp.py toy")
