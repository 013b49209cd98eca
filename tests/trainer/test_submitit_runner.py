"""The job-array fix: SAM3's runner reads experiment_log_dir before its resolvers exist."""

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import UnsupportedInterpolationType
from sam3.train.train import SubmititRunner

from sam3_lora_plugin.trainer.submitit_runner import LoraSubmititRunner


def test_job_info_tolerates_unregistered_resolvers():
    cfg = OmegaConf.create({"launcher": {"experiment_log_dir": "${no_such_resolver:a,b}"}})
    with pytest.raises(UnsupportedInterpolationType):
        SubmititRunner(port=1, cfg=cfg).setup_job_info(job_id="1", rank=0)  # sam3's bug
    runner = LoraSubmititRunner(port=1, cfg=cfg)
    runner.setup_job_info(job_id="1", rank=0)
    assert runner.has_setup and runner.job_info["experiment_log_dir"] is None


def test_plain_values_are_kept():
    runner = LoraSubmititRunner(port=1, cfg=OmegaConf.create(
        {"launcher": {"experiment_log_dir": "/runs/x"}}))
    runner.setup_job_info(job_id="7", rank=1)
    assert runner.job_info == {"job_id": "7", "rank": 1, "cluster": None,
                               "experiment_log_dir": "/runs/x"}
