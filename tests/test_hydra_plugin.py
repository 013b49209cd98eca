"""Tests for the Hydra search-path plugin and the packaging of ``configs/lora/*.yaml``.

Everything that touches Hydra's global state runs in a fresh subprocess of this
interpreter (the venv's python) with ``cwd=tmp_path``, so neither Hydra's
singletons nor the working directory leak into other tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/lora/smoke_cpu.yaml"
PLUGIN_CLASS = "hydra_plugins.sam3_lora_plugin_searchpath.searchpath:Sam3LoraSearchPathPlugin"


def _run(code: str, cwd: Path, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON object on its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_compose_smoke_cpu_through_sam3_train(tmp_path):
    """SAM3's config module composes ``configs/lora/smoke_cpu.yaml`` only thanks to the plugin.

    With the plugin: compose succeeds, ``trainer.model`` is our wrapper and the search
    path ends with ``pkg://hydra_configs`` from provider ``sam3-lora-plugin``. With the
    plugin's ``manipulate_search_path`` disabled, the same compose fails (negative control).
    """
    out = _run(
        """
        import json
        from hydra import compose, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra
        from hydra.errors import MissingConfigException

        res = {}
        with initialize_config_module("sam3.train", version_base="1.2"):
            cfg = compose(config_name="configs/lora/smoke_cpu.yaml")
            res["target"] = cfg.trainer.model._target_
            res["inner_target"] = cfg.trainer.model.model._target_
            res["keys"] = sorted(cfg.keys())
            loader = GlobalHydra.instance().config_loader()
            res["search_path"] = [[e.provider, e.path] for e in loader.get_search_path().get_path()]

        from hydra_plugins.sam3_lora_plugin_searchpath import searchpath
        searchpath.Sam3LoraSearchPathPlugin.manipulate_search_path = lambda self, sp: None
        GlobalHydra.instance().clear()
        try:
            with initialize_config_module("sam3.train", version_base="1.2"):
                compose(config_name="configs/lora/smoke_cpu.yaml")
            res["without_plugin"] = "composed"
        except MissingConfigException:
            res["without_plugin"] = "missing"
        print(json.dumps(res))
        """,
        tmp_path,
    )
    assert out["target"] == "sam3_lora_plugin.build_lora_sam3"
    assert out["inner_target"] == "sam3_lora_plugin.build_sam3_arch"
    assert {"trainer", "scratch", "launcher", "paths"} <= set(out["keys"])
    assert ["sam3-lora-plugin", "pkg://hydra_configs"] in out["search_path"]
    assert ["main", "pkg://sam3.train"] in out["search_path"]
    assert out["without_plugin"] == "missing"


def test_plugin_discovered_by_hydra_scan_without_torch(tmp_path):
    """Hydra's ``Plugins`` scan finds ``Sam3LoraSearchPathPlugin``, and scanning imports no torch/sam3."""
    out = _run(
        """
        import json, sys
        from hydra.core.plugins import Plugins
        from hydra.plugins.search_path_plugin import SearchPathPlugin

        found = Plugins.instance().discover(SearchPathPlugin)
        print(json.dumps({
            "found": [f"{c.__module__}:{c.__qualname__}" for c in found],
            "torch": "torch" in sys.modules,
            "sam3": "sam3" in sys.modules,
        }))
        """,
        tmp_path,
    )
    assert PLUGIN_CLASS in out["found"]
    assert out["torch"] is False
    assert out["sam3"] is False


def test_searchpath_module_imports_only_hydra(tmp_path):
    """Importing the plugin module alone pulls in neither torch, sam3 nor sam3_lora_plugin."""
    out = _run(
        """
        import json, sys
        import hydra_plugins.sam3_lora_plugin_searchpath.searchpath as m
        print(json.dumps({
            "heavy": sorted(k for k in sys.modules
                            if k.split(".")[0] in {"torch", "sam3", "sam3_lora_plugin", "numpy"}),
            "provider": m.PROVIDER, "path": m.SEARCH_PATH,
        }))
        """,
        tmp_path,
    )
    assert out["heavy"] == []
    assert (out["provider"], out["path"]) == ("sam3-lora-plugin", "pkg://hydra_configs")


@pytest.mark.parametrize("stock_runner", [False, True])
def test_a_slurm_job_of_the_stock_launcher_redacts_secrets_on_the_node(tmp_path, stock_runner):
    """``python -m sam3.train.train --use-cluster 1``: the SLURM node composes no config (the
    plugin never runs there); it unpickles the launcher's ``SubmititRunner`` and builds the
    Trainer, which logs the environment. The plugin, imported when the launcher composes,
    makes that runner ours, so the job installs the redaction. Here: the launcher's side
    pickles the runner as submitit does (cloudpickle), a fresh interpreter (the node) loads
    and calls it with the Trainer's environment log in place of ``run_trainer``.
    ``stock_runner`` puts sam3's own runner back (today's behaviour without the fix): the
    planted token reaches the log, so the test can fail."""
    job = tmp_path / "job.pkl"
    _run(f"""
        import json, cloudpickle
        import sam3.train.train as launcher
        stock = launcher.SubmititRunner
        from hydra import compose, initialize_config_module
        with initialize_config_module("sam3.train", version_base="1.2"):
            cfg = compose(config_name="{CONFIG}")
        if {stock_runner}:
            launcher.SubmititRunner = stock
        runner = launcher.SubmititRunner(1234, cfg)  # what sam3's main() submits
        open({str(job)!r}, "wb").write(cloudpickle.dumps(runner))
        print(json.dumps({{}}))
        """, tmp_path)
    out = _run(f"""
        import io, json, logging, os, pickle
        os.environ["HF_TOKEN"] = "hf_PLANTEDtoken0123456789"
        os.environ.update(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID="1",
                          SUBMITIT_LOCAL_GLOBAL_RANK="0", SUBMITIT_LOCAL_LOCAL_RANK="0",
                          SUBMITIT_LOCAL_NTASKS="1", SUBMITIT_LOCAL_NODEID="0",
                          SUBMITIT_LOCAL_JOB_NUM_NODES="1")
        runner = pickle.loads(open({str(job)!r}, "rb").read())
        import sam3.train.train as launcher

        def run_trainer(self):  # the Trainer's first act: SAM3's environment log
            from sam3.train.utils import train_utils
            train_utils.log_env_variables()

        launcher.SubmititRunner.run_trainer = run_trainer
        log = io.StringIO()
        logging.basicConfig(stream=log, level=logging.INFO, force=True)
        runner()
        print(json.dumps({{"runner": type(runner).__module__, "log": log.getvalue()}}))
        """, tmp_path)
    if stock_runner:
        assert "hf_PLANTEDtoken0123456789" in out["log"]
        return
    assert out["runner"] == "sam3_lora_plugin.trainer.submitit_runner"
    assert "HF_TOKEN=<redacted>" in out["log"]
    assert "hf_PLANTEDtoken0123456789" not in out["log"]


def test_manipulate_search_path_appends_package():
    """``manipulate_search_path`` appends exactly ``pkg://hydra_configs`` after existing entries."""
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    from hydra_plugins.sam3_lora_plugin_searchpath.searchpath import Sam3LoraSearchPathPlugin

    sp = ConfigSearchPathImpl()
    sp.append("main", "pkg://sam3.train")
    Sam3LoraSearchPathPlugin().manipulate_search_path(sp)
    assert [(e.provider, e.path) for e in sp.get_path()] == [
        ("main", "pkg://sam3.train"), ("sam3-lora-plugin", "pkg://hydra_configs")]


def test_entry_point_declared_and_loads(tmp_path):
    """The installed distribution declares the ``hydra.plugins`` entry point, and it loads the class."""
    out = _run(
        """
        import json
        from importlib.metadata import entry_points
        from hydra.plugins.search_path_plugin import SearchPathPlugin

        eps = [e for e in entry_points(group="hydra.plugins") if e.dist.name == "sam3-lora-plugin"]
        cls = [e.load() for e in eps]
        print(json.dumps({
            "eps": [[e.name, e.value] for e in eps],
            "loaded": [f"{c.__module__}:{c.__qualname__}" for c in cls],
            "is_plugin": [issubclass(c, SearchPathPlugin) for c in cls],
        }))
        """,
        tmp_path,
    )
    assert out["eps"] == [["sam3_lora_plugin", PLUGIN_CLASS]]
    assert out["loaded"] == [PLUGIN_CLASS]
    assert out["is_plugin"] == [True]


def test_yaml_is_package_data(tmp_path):
    """``importlib.resources`` finds ``configs/lora/smoke_cpu.yaml`` in the installed ``hydra_configs``."""
    out = _run(
        """
        import json
        from importlib.resources import files

        res = files("hydra_configs") / "configs/lora/smoke_cpu.yaml"
        print(json.dumps({"is_file": res.is_file(), "head": res.read_text()[:200]}))
        """,
        tmp_path,
    )
    assert out["is_file"] is True
    assert "@package _global_" in out["head"]


def test_wheel_ships_yaml_entry_point_and_namespace(tmp_path):
    """A wheel built from the sources contains every YAML under ``hydra_configs``, the
    ``hydra.plugins`` entry point, and ``hydra_plugins`` as a namespace (no ``__init__.py``).

    The editable install resolves files from the checkout, so this is the check that
    ``package_data`` really ships the configs. Built from a copy in ``tmp_path``.
    """
    pytest.importorskip("setuptools.build_meta")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for pkg in ("sam3_lora_plugin", "hydra_configs", "hydra_plugins"):
        shutil.copytree(REPO_ROOT / pkg, src / pkg, ignore=ignore)
    dist = tmp_path / "dist"
    out = _run(
        f"""
        import json
        import setuptools.build_meta as backend
        print(json.dumps({{"wheel": backend.build_wheel({str(dist)!r})}}))
        """,
        src,
    )
    with zipfile.ZipFile(dist / out["wheel"]) as whl:
        names = set(whl.namelist())
        (ep_name,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = whl.read(ep_name).decode()
    yamls = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "hydra_configs").rglob("*.yaml")}
    assert "hydra_configs/configs/lora/smoke_cpu.yaml" in yamls
    assert yamls <= names, sorted(yamls - names)
    assert "hydra_plugins/sam3_lora_plugin_searchpath/searchpath.py" in names
    assert "hydra_plugins/__init__.py" not in names
    assert "[hydra.plugins]" in entry_points
    assert f"sam3_lora_plugin = {PLUGIN_CLASS}" in entry_points
