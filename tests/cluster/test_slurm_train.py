"""On a real SLURM cluster (``scripts/slurm_cluster.sh up``): SAM3's own submitit launcher
runs our configs with DDP across SLURM tasks, sweeps with a job array, and resumes from the
LoRA checkpoint after a requeue (``scontrol requeue``, and a time limit handled by
submitit's checkpointing). Skipped without a cluster, failed without one in CI
(``SAM3_LORA_REQUIRE_SLURM=1``); see conftest.py."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from sam3_lora_plugin.adapters.metadata import METADATA_KEY, RNG_STATE_KEY, decode_metadata
from sam3_lora_plugin.testing import max_checkpoint_file_bytes

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
CONFIG = "configs/lora/smoke_cpu.yaml"
# Two SLURM tasks on one node = two DDP ranks (SAM3's launcher: one task per "GPU"); one
# CPU each, so both fit on a 2-CPU node.
TWO_TASKS = ["--num-gpus", "2", "submitit.cpus_per_task=1"]


def _lora_only(path: Path, processes: int = 2) -> dict:
    """Load a Trainer checkpoint and check it holds only the trained weights: LoRA factors
    and the modules the preset trains fully (its recorded modules_to_save), + their AdamW
    state and the adapter metadata; return it."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = dict(ckpt["model"])
    assert METADATA_KEY in model
    saved_modules = decode_metadata(model.pop(METADATA_KEY))["modules_to_save"]
    # RNG states travel only with single-process runs (only rank 0 writes; checkpoint.py).
    assert (model.pop(RNG_STATE_KEY, None) is not None) == (processes == 1)
    factors = [k for k in model if ".lora_A." in k or ".lora_B." in k]
    assert factors, list(model)[:5]
    saved = [k for k in model if k not in factors]
    assert all(any(k.startswith(m + ".") for m in saved_modules) for k in saved), saved[:5]
    assert len(ckpt["optimizer"]["state"]) == len(model)
    assert path.stat().st_size <= max_checkpoint_file_bytes(ckpt)
    return ckpt


def _attempts(log: str) -> list[str]:
    """Split a task's submitit stdout (appended to by every run of a requeued job) into
    one chunk per run."""
    parts = re.split(r"(?=submitit INFO \([^)]*\) - Starting with JobEnvironment)", log)
    return [p for p in parts if "Starting with JobEnvironment" in p]


def _coco_metrics(log_dir: Path) -> dict:
    stats = [json.loads(line) for line in (log_dir / "val_stats.json").read_text().splitlines()]
    assert stats
    last = stats[-1]
    for iou in ("bbox", "segm"):
        assert any(k.endswith(f"coco_eval_{iou}_AP") for k in last), sorted(last)
    return last


def test_failed_job_is_reported_by_accounting_not_hung(slurm, tmp_path):
    """A job that dies before writing its result: sacct (real accounting) reports FAILED,
    and submitit's job.result() raises instead of waiting forever."""
    import submitit
    from submitit.core.utils import UncompletedJobError

    executor = submitit.AutoExecutor(folder=tmp_path / "logs")
    assert executor.cluster == "slurm"
    executor.update_parameters(timeout_min=5, slurm_partition=slurm.partition, cpus_per_task=1,
                               name="sam3-lora-dies")
    job = executor.submit(os._exit, 3)   # exits at once: no result pickle is ever written
    try:
        slurm.wait_until("sacct to report the job's end",
                         lambda: job.get_info(mode="force").get("State", "") in
                         ("FAILED", "COMPLETED", "CANCELLED"), timeout=180, poll=2)
        assert job.state == "FAILED"
        assert job.done()
        with pytest.raises(UncompletedJobError, match="FAILED"):
            job.result()   # bounded: done, so it only waits for the result file (15 s)
    finally:
        slurm.cancel(job.job_id)


def test_smoke_cpu_trains_with_ddp_across_two_slurm_tasks(slurm, tmp_path):
    """`python -m sam3_lora_plugin.train -c configs/lora/smoke_cpu.yaml runtime=slurm_cpu
    --partition P` (the runtime block: use_cluster, 2 tasks, 1 CPU each; the requeue tests
    below give the same with SAM3's flags) submits, runs 2 tasks on one node as 2 DDP ranks,
    and finishes with a LoRA-only checkpoint and the COCO bbox/segm evaluation."""
    exp = tmp_path / "exp"
    (job_id,), out = slurm.launch(
        ["-c", CONFIG, "runtime=slurm_cpu", "--partition", slurm.partition,
         f"launcher.experiment_log_dir={exp}"], cwd=tmp_path)
    assert "'tasks_per_node': 2" in out
    job = slurm.job(exp / "submitit_logs", job_id, tasks=(0, 1))
    assert slurm.results(job, timeout=900) == [None, None]

    assert slurm.final_states(job_id) == ["COMPLETED"]
    steps = slurm.scontrol("show", "job", job_id)
    assert "NumNodes=1 " in steps and "NumTasks=2 " in steps, steps
    logs = [job._sub_jobs[r].stdout() for r in (0, 1)]
    for rank, log in enumerate(logs):
        assert f"global_rank={rank}(2)" in log, log[-2000:]
    # 16 training images, 2 per rank and step, 2 ranks: 4 steps per epoch (8 on one process).
    assert "Train Epoch: [1][3/4]" in logs[0] and "[7/8]" not in logs[0]

    ckpt = _lora_only(exp / "checkpoints" / "checkpoint.pt")
    assert ckpt["epoch"] == 2
    _coco_metrics(exp / "logs")
    assert list((exp / "dumps" / "bbox").rglob("*.json"))


def test_job_array_sweeps_lora_ranks_one_result_per_task(slurm, tmp_path):
    """configs/lora/smoke_cpu_sweep.yaml: one command submits a SLURM job array (SAM3's
    submitit.job_array); each task trains its own LoRA rank into its own directory."""
    sweep = tmp_path / "sweep"
    ids, _ = slurm.launch(
        ["-c", "configs/lora/smoke_cpu_sweep.yaml", "--partition", slurm.partition,
         f"paths.sweep_dir={sweep}", "trainer.max_epochs=1"], cwd=tmp_path)
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1, ids  # one array
    assert [i.split("_")[1] for i in ids] == ["0", "1"]
    for job_id in ids:
        assert slurm.results(slurm.job(sweep / "submitit_logs", job_id), timeout=900) == [None]
        assert slurm.final_states(job_id) == ["COMPLETED"]

    # Each task's adapter follows its swept rank: the ViT trunk's factors at the rank itself,
    # and every other module's (the default's per-component scale: text encoder rank/2,
    # detector parts 2 x rank) scaled with it, so rank 8's are exactly twice rank 4's.
    ranks = {}
    for rank in (4, 8):
        task_dir = sweep / f"rank_{rank}"
        ckpt = _lora_only(task_dir / "checkpoints" / "checkpoint.pt", processes=1)
        ranks[rank] = {k: v.shape[0] for k, v in ckpt["model"].items() if ".lora_A." in k}
        trunk = {r for k, r in ranks[rank].items() if ".trunk." in k}
        assert trunk == {rank}, (rank, trunk)
        _coco_metrics(task_dir / "logs")
    assert ranks[4].keys() == ranks[8].keys()
    assert all(ranks[8][k] == 2 * r for k, r in ranks[4].items()), ranks
    assert len(set(ranks[4].values())) > 1   # the scale applies in a sweep too
    # SAM3's launcher keeps each task's config.
    assert len(list((sweep / "job_array_configs").glob("*.config.yaml"))) == 2


SECRETS = {"HF_TOKEN": "hf_PLANTEDtoken0123456789", "WANDB_API_KEY": "PLANTEDwandb0123456789"}


def test_stock_launcher_job_keeps_secrets_out_of_the_console_and_every_file(slurm, tmp_path):
    """`python -m sam3.train.train -c configs/lora/smoke_cpu.yaml --use-cluster 1` with
    tokens in the environment (sbatch exports it to the job): the node composes no config,
    yet the Trainer's environment log there shows them redacted, and no output of the
    submission, the job or the run holds a value."""
    exp = tmp_path / "runs" / "smoke"   # the config's own run dir (SAM3's launcher takes
    (job_id,), out = slurm.launch(      # no overrides), relative to where it is launched
        ["-c", CONFIG, "--use-cluster", "1", "--partition", slurm.partition],
        cwd=tmp_path, launcher="sam3.train.train", env=dict(slurm.env, **SECRETS))
    job = slurm.job(exp / "submitit_logs", job_id)
    assert slurm.results(job, timeout=900) == [None]
    node_log = (job.stdout() or "") + (job.stderr() or "")
    assert "HF_TOKEN=<redacted>" in node_log, node_log[-3000:]  # the Trainer logged the env
    hits = [f"console: {k}" for k, v in SECRETS.items() if v in out + node_log]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {k}" for k, v in SECRETS.items() if v.encode() in data]
    assert hits == []


def _wait_for_first_checkpoint(slurm, exp: Path, job_id: str) -> None:
    slurm.wait_until("the epoch-1 checkpoint", (exp / "checkpoints" / "checkpoint_1.pt").exists,
                     timeout=600, job_id=job_id)


def _release_when_pending(slurm, job_id: str, *fields: str) -> None:
    """Once the requeued job is pending again, start it now. A requeued job is held for
    about 2 minutes (Slurm's BeginTime after a requeue); a test needs no such wait."""
    slurm.wait_until("the job to be requeued (PENDING)",
                     lambda: slurm.squeue_state(job_id) == "PENDING", timeout=180)
    slurm.scontrol("update", f"JobId={job_id}", "StartTime=now", *fields)


def _check_resumed(slurm, job, exp: Path, max_epochs: int) -> str:
    """The requeued run resumed from the LoRA checkpoint of an epoch >= 1, trained the
    remaining epochs only, and finished with a LoRA-only checkpoint."""
    assert slurm.results(job, timeout=900) == [None, None]
    states = slurm.final_states(job.job_id)
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states
    assert "Restarts=1 " in slurm.scontrol("show", "job", job.job_id)

    runs = _attempts(job._sub_jobs[0].stdout())
    assert len(runs) == 2, [r[:200] for r in runs]
    first, second = runs
    assert "Train Epoch: [0]" in first
    match = re.search(r"Resuming training from epoch: (\d+)", second)
    assert match, second[-3000:]
    resumed = int(match.group(1))
    assert 1 <= resumed < max_epochs, resumed
    epochs = {int(e) for e in re.findall(r"Train Epoch: \[(\d+)\]", second)}
    assert epochs == set(range(resumed, max_epochs)), epochs   # no epoch 0: not started over
    ckpt = _lora_only(exp / "checkpoints" / "checkpoint.pt")
    assert ckpt["epoch"] == max_epochs
    _coco_metrics(exp / "logs")
    return second


def test_scontrol_requeue_resumes_from_the_lora_checkpoint(slurm, tmp_path):
    """`scontrol requeue` (what preemption with PreemptMode=REQUEUE does) after the first
    checkpoint: the job runs again, resumes from the LoRA-only checkpoint at epoch >= 1
    instead of starting over, and finishes."""
    # The job keeps training through KillWait (10 s; submitit bypasses SIGTERM): on an idle
    # 2-CPU node an epoch of smoke_cpu takes under a second, so 12 epochs were all done
    # before SIGKILL and nothing was left to resume. 60 leave most of the run for the
    # requeued attempt, at ~1 min per test on an idle node.
    exp, max_epochs = tmp_path / "exp", 60
    (job_id,), _ = slurm.launch(
        ["-c", CONFIG, "--use-cluster", "1", "--partition", slurm.partition, *TWO_TASKS,
         f"trainer.max_epochs={max_epochs}", "trainer.val_epoch_freq=100",
         f"launcher.experiment_log_dir={exp}"], cwd=tmp_path)
    _wait_for_first_checkpoint(slurm, exp, job_id)
    slurm.scontrol("requeue", job_id)
    _release_when_pending(slurm, job_id)
    _check_resumed(slurm, slurm.job(exp / "submitit_logs", job_id, tasks=(0, 1)), exp,
                   max_epochs)


def _elapsed_s(text: str) -> int:
    """squeue's %M: [D-][H:]M:SS."""
    days, _, hms = text.strip().rpartition("-")
    parts = [int(p) for p in hms.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def test_time_limit_requeue_through_submitit_checkpointing_resumes(slurm, tmp_path):
    """A job reaching its time limit: SAM3's launcher submits with `--signal=USR2@90`;
    SLURM signals the job 90 s before its limit, submitit's handler calls
    SubmititRunner.checkpoint() (it is a submitit.helpers.Checkpointable) and requeues the
    job, and the new run resumes from the LoRA checkpoint.

    SAM3's launcher only takes whole hours (submitit.timeout_hour; submitit requires an int
    number of minutes), so the running job's limit is lowered with `scontrol update` to
    leave it 30-90 s: the signal is then due at once, and slurmctld sends it at its next
    time-limit check (every ~30 s), so the run gets 100 short epochs (under a second each on
    an idle node: 20 were all done before the signal came, and the signal then found a job
    on its way out) to still be training then. After the requeue the limit is put back to
    an hour."""
    exp, max_epochs = tmp_path / "exp", 100
    (job_id,), _ = slurm.launch(
        ["-c", CONFIG, "--use-cluster", "1", "--partition", slurm.partition, *TWO_TASKS,
         f"trainer.max_epochs={max_epochs}", "trainer.val_epoch_freq=100",
         f"launcher.experiment_log_dir={exp}"], cwd=tmp_path)
    _wait_for_first_checkpoint(slurm, exp, job_id)
    elapsed = _elapsed_s(slurm.scontrol("show", "job", job_id).split("RunTime=")[1].split()[0])
    limit_min = (elapsed + 90) // 60          # leaves (30, 90] s: inside the 90 s warning
    slurm.scontrol("update", f"JobId={job_id}", f"TimeLimit={limit_min}")
    _release_when_pending(slurm, job_id, "TimeLimit=60")
    job = slurm.job(exp / "submitit_logs", job_id, tasks=(0, 1))
    _check_resumed(slurm, job, exp, max_epochs)
    first = _attempts(job._sub_jobs[0].stdout())[0]
    assert "Caught signal SIGUSR2" in first and f"Requeued job {job_id}" in first, first[-2000:]
