"""Keep secret environment values out of SAM3's console output and run logs.

SAM3's ``Trainer.__init__`` calls ``sam3.train.utils.train_utils.log_env_variables``,
which logs every ``NAME=value`` of the environment (``HF_TOKEN``, ``WANDB_API_KEY``,
``AWS_SECRET_ACCESS_KEY`` ...) to the console and to ``<log_dir>/log.txt``. It runs
before the model is built, so the model wrapper is too late. This module lives in the
Hydra plugin package, which every Hydra app imports while composing the config, i.e.
before the Trainer exists, under SAM3's stock launcher and ours; it imports only the
standard library.

``install()`` replaces ``log_env_variables`` by one that logs the same lines with the
value of every secret-looking name (``is_secret_name``) replaced by ``<redacted>``:
in ``train_utils`` if it is imported (and in ``sam3.train.trainer`` if that already
bound the name), else as soon as it is imported (a ``sys.meta_path`` hook). Processes
that SAM3's launcher spawns (``--num-gpus N``) do not compose a config, so it also
wraps the launcher's ``single_proc_run``: each rank installs the redaction before it
builds the Trainer. Neither does a SLURM job (``--use-cluster 1``): the node unpickles the
launcher's ``SubmititRunner`` and builds the Trainer. So the launcher's ``SubmititRunner``
becomes ``sam3_lora_plugin.trainer.submitit_runner.LoraSubmititRunner``, which installs the
redaction when the job starts; submitit pickles it by reference, so the node imports it.
The overrides launcher and its submitit runner call ``install()`` too.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
from typing import Any, Mapping

__all__ = ["REDACTED", "install", "is_secret_name", "log_env_variables", "redact_environ",
           "single_proc_run"]

REDACTED = "<redacted>"
_SECRET = re.compile(r"TOKEN|KEY|SECRET|PASSW|PWD|CREDENTIAL|AUTH|PRIVATE|COOKIE|SESSION|"
                     r"SIGNATURE|DSN|WEBHOOK", re.IGNORECASE)
_NOT_SECRET = {"PWD", "OLDPWD"}  # the working directory
_TRAIN_UTILS = "sam3.train.utils.train_utils"
_LAUNCHER_NAMES = ("sam3.train.train",)


def is_secret_name(name: str) -> bool:
    """True for names that look like they hold a credential (``HF_TOKEN``, ``*_KEY``,
    ``*SECRET*``, ``*PASSWORD*``, ``*CREDENTIAL*``, ``*AUTH*``, ...)."""
    return name.upper() not in _NOT_SECRET and bool(_SECRET.search(name))


def redact_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` with the values of secret-looking names replaced."""
    return {k: (REDACTED if is_secret_name(k) else v) for k, v in environ.items()}


def log_env_variables() -> None:
    """SAM3's ``log_env_variables``, with secret values redacted."""
    env = redact_environ(os.environ)
    logging.info("Logging ENV_VARIABLES")
    logging.info("".join(f"{k}={env[k]}\n" for k in sorted(env)))


def _patch(module: Any) -> None:
    if getattr(module, "log_env_variables", None) is not log_env_variables:
        module.log_env_variables = log_env_variables


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches ``train_utils`` right after it is first imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TRAIN_UTILS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def single_proc_run(local_rank, main_port, cfg, world_size):
    """SAM3's launcher's per-rank entry, with the redaction installed first."""
    install(patch_launcher=False)
    from sam3.train.train import single_proc_run as run

    if run is single_proc_run:  # patched in this very process
        run = _ORIGINAL["single_proc_run"]
    return run(local_rank, main_port, cfg, world_size)


_ORIGINAL: dict[str, Any] = {}


def _launcher_modules() -> list[Any]:
    mods = [sys.modules[n] for n in _LAUNCHER_NAMES if n in sys.modules]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if main is not None and spec is not None and spec.name in _LAUNCHER_NAMES:
        mods.append(main)
    return mods


def install(patch_launcher: bool = True) -> None:
    """Redact secrets in SAM3's environment log from now on, in this process and (with
    ``patch_launcher``) in the ranks its launcher spawns. Idempotent, cheap."""
    for name in (_TRAIN_UTILS, "sam3.train.trainer"):
        if name in sys.modules:
            _patch(sys.modules[name])
    if _TRAIN_UTILS not in sys.modules and not any(
            isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
    if patch_launcher:
        for mod in _launcher_modules():
            run = getattr(mod, "single_proc_run", None)
            if run is not None and run is not single_proc_run:
                _ORIGINAL.setdefault("single_proc_run", run)
                mod.single_proc_run = single_proc_run
            if hasattr(mod, "SubmititRunner"):
                mod.SubmititRunner = _submitit_runner()


def _submitit_runner() -> type:
    """Our ``SubmititRunner`` (imported here, not at the top: Hydra imports this package in
    every Hydra app, and only a SAM3 launcher process, which has sam3 loaded, needs it)."""
    from sam3_lora_plugin.trainer.submitit_runner import LoraSubmititRunner

    return LoraSubmititRunner
