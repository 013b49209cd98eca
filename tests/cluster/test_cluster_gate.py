"""The cluster tests skip, with the reason, where no SLURM cluster is reachable, and fail
instead where one is required (SAM3_LORA_REQUIRE_SLURM=1, as in CI). Needs no cluster."""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Every test of the cluster module, so adding one does not break this gate.
N_CLUSTER_TESTS = (HERE / "test_slurm_train.py").read_text().count("\ndef test_")


def _pytest_without_cluster(**env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("SLURM_CONF", "SAM3_LORA_REQUIRE_SLURM")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "test_slurm_train.py"), "-q", "-rsE",
         "-p", "no:cacheprovider"],
        cwd=HERE.parents[1], env={**base, **env}, capture_output=True, text=True, timeout=300)


def test_cluster_tests_skip_with_the_reason_without_a_cluster():
    proc = _pytest_without_cluster()
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert N_CLUSTER_TESTS >= 6 and f"{N_CLUSTER_TESTS} skipped" in proc.stdout
    assert "no SLURM cluster: SLURM_CONF is not set" in proc.stdout


def test_cluster_tests_fail_without_a_cluster_when_required():
    proc = _pytest_without_cluster(SAM3_LORA_REQUIRE_SLURM="1")
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert f"{N_CLUSTER_TESTS} errors" in proc.stdout
    assert "SAM3_LORA_REQUIRE_SLURM=1 but no usable SLURM cluster" in proc.stdout
