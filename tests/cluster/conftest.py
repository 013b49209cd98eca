"""Fixtures for the tests that run on a real SLURM cluster (``@pytest.mark.slurm``).

A cluster is "reachable" when ``SLURM_CONF`` is set (``scripts/slurm_cluster.sh up`` prints
it), ``sinfo`` answers within 20 s, and the partition (``SAM3_LORA_SLURM_PARTITION``, else
the cluster's default partition) is up with a node of at least 2 CPUs that is idle or mixed.
Otherwise the tests are skipped with the reason, unless ``SAM3_LORA_REQUIRE_SLURM=1``
(CI), where the same reason fails them.

Every wait is bounded: subprocesses have timeouts, and jobs are polled through submitit's
own ``SlurmJob`` (``sacct`` via its watcher) against a deadline, after which the job is
cancelled and the test fails with the job's state and log tails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
# States in which a job will not run again by itself (sacct / squeue spelling).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: needs a reachable SLURM cluster (scripts/slurm_cluster.sh up); "
        "skipped without one unless SAM3_LORA_REQUIRE_SLURM=1")


def _run(cmd: Sequence[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)


def _cluster_problem() -> tuple[Optional[str], Optional[str]]:
    """(reason the cluster cannot be used, partition)."""
    if not os.environ.get("SLURM_CONF"):
        return ("SLURM_CONF is not set: no cluster to submit to (bring one up with "
                "`bash scripts/slurm_cluster.sh up` and export the SLURM_CONF it prints)"), None
    for tool in ("sbatch", "sinfo", "sacct", "scontrol", "squeue", "scancel"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (install slurm-client)", None
    try:
        out = _run(["sinfo", "-h", "-N", "-o", "%P|%a|%c|%T"], timeout=20)
    except subprocess.TimeoutExpired:
        return f"`sinfo` did not answer in 20 s (SLURM_CONF={os.environ['SLURM_CONF']})", None
    if out.returncode != 0:
        return (f"`sinfo` failed (SLURM_CONF={os.environ['SLURM_CONF']}): "
                f"{out.stderr.strip()[-300:]}"), None
    rows = [line.split("|") for line in out.stdout.split() if line.count("|") == 3]
    wanted = os.environ.get("SAM3_LORA_SLURM_PARTITION")
    if wanted is None:
        defaults = [p for p, *_ in rows if p.endswith("*")]
        if not defaults:
            return "the cluster has no default partition; set SAM3_LORA_SLURM_PARTITION", None
        wanted = defaults[0]
    partition = wanted.rstrip("*")
    usable = [r for r in rows if r[0].rstrip("*") == partition and r[1] == "up"
              and int(r[2]) >= 2 and r[3].rstrip("*~#") in ("idle", "mixed")]
    if not usable:
        return (f"partition {partition!r} has no up, idle node with >= 2 CPUs "
                f"(sinfo: {out.stdout.strip()!r})"), None
    return None, partition


@dataclass
class Slurm:
    """What the cluster tests need: the partition, an environment for subprocesses, and
    bounded helpers around submitit, sacct and scontrol."""

    partition: str
    env: dict

    def launch(self, args: Sequence[str], cwd: Path, timeout: float = 180,
               launcher: str = "sam3_lora_plugin.train",
               env: Optional[dict] = None) -> tuple[list[str], str]:
        """Run ``python -m <launcher> ARGS`` (ours by default, or SAM3's ``sam3.train.train``;
        it submits and returns); give the submitted job ids and its output."""
        proc = subprocess.run([sys.executable, "-m", launcher, *args],
                              cwd=cwd, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        ids = re.findall(r"Submitit Job ID: (\S+)", out)
        assert ids, out[-4000:]
        return ids, out

    def job(self, folder: Path, job_id: str, tasks: Sequence[int] = (0,)):
        import submitit

        return submitit.SlurmJob(folder=folder, job_id=job_id, tasks=tuple(tasks))

    def sacct_states(self, job_id: str) -> list[str]:
        """The job's allocation states, one per run (a requeued job has several)."""
        out = _run(["sacct", "-X", "-n", "-P", "-D", "-j", job_id, "-o", "State"],
                   timeout=30, env=self.env)
        return [s.split()[0] for s in out.stdout.split("\n") if s.strip()]

    def final_states(self, job_id: str, timeout: float = 120) -> list[str]:
        """``sacct_states`` once the last run has ended: a task writes its result a moment
        before SLURM (and accounting) see the job end."""
        return self.wait_until(
            f"accounting to record the end of job {job_id}",
            lambda: (lambda s: s if s and s[-1] in FINAL_STATES else None)(
                self.sacct_states(job_id)), timeout=timeout)

    def squeue_state(self, job_id: str) -> str:
        out = _run(["squeue", "-h", "-j", job_id, "-o", "%T"], timeout=30, env=self.env)
        return out.stdout.strip()

    def scontrol(self, *args: str) -> str:
        out = _run(["scontrol", *args], timeout=60, env=self.env)
        assert out.returncode == 0, f"scontrol {' '.join(args)}: {out.stderr}"
        return out.stdout

    def cancel(self, job_id: str) -> None:
        _run(["scancel", job_id], timeout=30, env=self.env)

    def wait_until(self, what: str, predicate, timeout: float, job_id: Optional[str] = None,
                   poll: float = 1.0):
        """Poll ``predicate()`` until it returns a true value; fail after ``timeout`` s
        (cancelling ``job_id``)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if job_id is not None:
                states = self.sacct_states(job_id)
                if states and states[-1] in FINAL_STATES:
                    pytest.fail(f"job {job_id} ended ({states}) while waiting for {what}")
            if time.monotonic() > deadline:
                if job_id is not None:
                    self.cancel(job_id)
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}"
                            + (f" (job {job_id}: {self.sacct_states(job_id)})" if job_id else ""))
            time.sleep(poll)

    def results(self, job, timeout: float, poll: float = 2.0) -> list:
        """Bounded ``job.results()``: poll until done (forcing a sacct refresh each time,
        so a job that died without a result is seen at once), then read the results.
        On timeout the job is cancelled and the test fails with its state and logs."""
        deadline = time.monotonic() + timeout
        jobs = [job, *job._sub_jobs]
        while True:
            job.get_info(mode="force")   # one sacct call, shared by the sub-jobs' watcher
            if all(j.done() for j in jobs if not j._sub_jobs):
                break
            if time.monotonic() > deadline:
                self.cancel(job.job_id)
                pytest.fail(f"job {job.job_id} not done after {timeout:.0f} s "
                            f"(sacct: {self.sacct_states(job.job_id)})\n" + self.logs(job))
            time.sleep(poll)
        try:
            return job.results()
        except Exception as e:  # the job's own exception, or submitit's UncompletedJobError
            pytest.fail(f"job {job.job_id} failed: {type(e).__name__}: {str(e)[-2000:]}\n"
                        + self.logs(job))

    @staticmethod
    def logs(job, chars: int = 3000) -> str:
        parts = []
        for j in (job._sub_jobs or [job]):
            for name in ("stdout", "stderr"):
                text = getattr(j, name)() or ""
                parts.append(f"--- task {j.task_id} {name} (tail) ---\n{text[-chars:]}")
        return "\n".join(parts)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Slurm:
    """The reachable cluster, or a skip (a failure under SAM3_LORA_REQUIRE_SLURM=1)."""
    problem, partition = _cluster_problem()
    if problem:
        if os.environ.get("SAM3_LORA_REQUIRE_SLURM") == "1":
            pytest.fail(f"SAM3_LORA_REQUIRE_SLURM=1 but no usable SLURM cluster: {problem}")
        pytest.skip(f"no SLURM cluster: {problem}")
    cache = tmp_path_factory.mktemp("slurm_cache")
    env = dict(os.environ, PYTHONPATH="",
               # The jobs inherit this environment (sbatch --export=ALL): the smoke dataset
               # is generated once into a directory every task sees, and one intra-op
               # thread per task keeps 2 tasks on 2 CPUs from oversubscribing them.
               SAM3_LORA_CACHE=str(cache), OMP_NUM_THREADS="1")
    return Slurm(partition=partition, env=env)
