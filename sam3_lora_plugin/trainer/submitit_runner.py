"""SAM3's ``SubmititRunner`` with one fix for job arrays.

sam3 0.1.4's ``SubmititRunner.__call__`` reads ``cfg.launcher.experiment_log_dir``
(in ``setup_job_info``) before ``run_trainer`` registers SAM3's OmegaConf resolvers,
so a per-task directory written with ``${string:...}`` (SAM3's own job-array recipe,
used by ``configs/lora/rf100vl.yaml``) fails on the node with
``UnsupportedInterpolationType: string``. The subclass reads it without resolving
failures; everything else is SAM3's. ``python -m sam3_lora_plugin.train`` installs it
before calling SAM3's ``main``; under SAM3's stock launcher the Hydra plugin's
``env_redaction.install()`` puts it in the launcher's place. On the node it also installs
the redaction of secret environment values before SAM3's Trainer logs the environment
(``hydra_plugins.sam3_lora_plugin_searchpath.env_redaction``): a SLURM job composes no
config, so nothing else of ours runs there before the Trainer.
"""

from __future__ import annotations

from hydra_plugins.sam3_lora_plugin_searchpath import env_redaction
from omegaconf import OmegaConf
from sam3.train.train import SubmititRunner

__all__ = ["LoraSubmititRunner"]


class LoraSubmititRunner(SubmititRunner):
    """``SubmititRunner`` whose job info tolerates not-yet-registered resolvers."""

    def __call__(self):
        env_redaction.install()
        return super().__call__()

    def setup_job_info(self, job_id, rank):
        self.job_info = {
            "job_id": job_id,
            "rank": rank,
            "cluster": self.cfg.get("cluster", None),
            "experiment_log_dir": OmegaConf.select(
                self.cfg, "launcher.experiment_log_dir", throw_on_resolution_failure=False),
        }
        self.has_setup = True
