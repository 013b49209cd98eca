"""The individual checks of ``python -m sam3_lora_plugin.doctor``.

Each ``check_*`` function returns ``Check`` results (status OK, WARN or FAIL, what was
found, and the fix) and never raises: a check that cannot run reports FAIL with the
reason. Network access (the HF hub) runs in a daemon thread with a hard timeout, so a
dead DNS server cannot hang the doctor.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from sam3_lora_plugin.trainer.config_check import LORA_WRAPPER_TARGETS

# Modules that pull in torch, sam3 or Hydra are imported inside the functions that need
# them, so that `--help` and a bad argument answer at once.

__all__ = ["EXPECTED_SAM3", "HF_REPO", "Check", "check_bpe", "check_checkpoint", "check_cuda",
           "check_datasets", "check_hf_hub", "check_install", "check_resolution", "find_dataset_paths"]

EXPECTED_SAM3 = "0.1.4"
HF_REPO, HF_FILE = "facebook/sam3", "sam3.pt"
_STOCK_BUILDER = "sam3.model_builder.build_sam3_image_model"
_ARCH_BUILDERS = ("sam3_lora_plugin.build_sam3_arch", "sam3_lora_plugin.models.arch.build_sam3_arch")
_CHECKED_PATH = "sam3_lora_plugin.data.preflight.checked_path"
_REINDEX = "sam3.eval.coco_reindex.reindex_coco_to_temp"
_PATH_KEYS = ("img_folder", "ann_file", "gt_path")


@dataclass
class Check:
    """One line of the doctor's report."""

    status: str  # "OK" | "WARN" | "FAIL"
    name: str
    detail: str
    fix: str = ""

    def format(self) -> str:
        """``STATUS name: detail -> fix: ...`` on one line."""
        return f"{self.status:<4}  {self.name}: {self.detail}" + (f"  -> fix: {self.fix}" if self.fix else "")


def _run_with_timeout(fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # reported, never raised
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return False, TimeoutError(f"no answer within {timeout:g} s")
    return ("error" not in box), box.get("value", box.get("error"))


def check_install() -> list[Check]:
    """sam3's version and the imports its trainer needs."""
    out = []
    try:
        version = importlib.metadata.version("sam3")
    except importlib.metadata.PackageNotFoundError:
        return [Check("FAIL", "sam3", "not installed", f"pip install sam3=={EXPECTED_SAM3}")]
    if version == EXPECTED_SAM3:
        out.append(Check("OK", "sam3", f"version {version}"))
    else:
        out.append(Check("FAIL", "sam3", f"version {version}; this plugin is built and tested for "
                         f"{EXPECTED_SAM3} (it relies on its trainer internals)", f"pip install sam3=={EXPECTED_SAM3}"))
    try:
        importlib.import_module("sam3.train.trainer")
        importlib.import_module("sam3.eval.coco_writer")
        out.append(Check("OK", "sam3 trainer", "sam3.train.trainer and its dependencies import"))
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        out.append(Check("FAIL", "sam3 trainer", f"import failed: {exc}",
                         f"pip install {missing}  (the sam3 wheel omits some of its dependencies; "
                         "pip install -e . in this repository installs them)"))
    return out


def check_bpe(bpe_path: Optional[str] = None) -> Check:
    """The BPE vocabulary the text encoder will read."""
    from sam3_lora_plugin.models.bpe import BpeNotFoundError, get_bpe_path

    try:
        return Check("OK", "bpe vocabulary", get_bpe_path(bpe_path))
    except BpeNotFoundError as exc:
        return Check("FAIL", "bpe vocabulary", str(exc).split(". ")[0],
                     "pip install open_clip_torch, or set paths.bpe_path to bpe_simple_vocab_16e6.txt.gz")


def check_cuda(needs_cuda: bool = False, needs_bf16: bool = False) -> list[Check]:
    """CUDA and bf16; FAIL only when the config needs what is missing."""
    import torch

    if not torch.cuda.is_available():
        status = "FAIL" if needs_cuda else "WARN"
        why = "this config runs on cuda (trainer.accelerator)" if needs_cuda else "CPU only"
        return [Check(status, "cuda", f"not available (torch {torch.__version__}, built for CUDA "
                      f"{torch.version.cuda}); {why}",
                      "run real SAM3 on a machine with an NVIDIA GPU and a CUDA build of torch "
                      "(on CPU, run the configs/lora/*_cpu.yaml configs)"),
                Check("WARN", "bf16", "not checked: no CUDA GPU", "bf16 AMP needs an Ampere or newer GPU")]
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    out = [Check("OK", "cuda", f"{torch.cuda.device_count()} GPU(s): {', '.join(names)}; CUDA {torch.version.cuda}")]
    if torch.cuda.is_bf16_supported():
        out.append(Check("OK", "bf16", "supported"))
    else:
        out.append(Check("FAIL" if needs_bf16 else "WARN", "bf16", "not supported by this GPU",
                         "set trainer.optim.amp.amp_dtype=float16"))
    return out


def check_hf_hub(timeout: float = 5.0) -> Check:
    """Whether ``facebook/sam3``'s checkpoint is cached or the hub answers within ``timeout``."""
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        return Check("FAIL", "checkpoint", "huggingface_hub not installed", "pip install huggingface_hub")
    cached = huggingface_hub.try_to_load_from_cache(HF_REPO, HF_FILE)
    if isinstance(cached, str):
        return Check("OK", "checkpoint", f"{HF_REPO}/{HF_FILE} in the HF cache: {cached}")
    if constants.HF_HUB_OFFLINE:
        return Check("FAIL", "checkpoint", f"{HF_REPO} is not cached and HF_HUB_OFFLINE is set",
                     "download sam3.pt and set paths.checkpoint_path=/path/to/sam3.pt")
    url = f"{constants.ENDPOINT.rstrip('/')}/api/models/{HF_REPO}"

    def probe() -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as exc:  # an HTTP answer: reachable
            return exc.code

    ok, value = _run_with_timeout(probe, timeout + 1.0)
    if not ok:
        reason = value if isinstance(value, TimeoutError) else f"{type(value).__name__}: {value}"
        return Check("FAIL", "checkpoint", f"HF hub not reachable ({url}: {reason})",
                     "download sam3.pt on a machine with access and set paths.checkpoint_path=/path/to/sam3.pt")
    if not huggingface_hub.get_token():
        return Check("WARN", "checkpoint", f"HF hub reachable (HTTP {value}); {HF_REPO} will be downloaded "
                     "on first run, but no HF token is set and the repo is gated",
                     f"request access at https://huggingface.co/{HF_REPO}, then `hf auth login`")
    return Check("OK", "checkpoint", f"HF hub reachable (HTTP {value}); {HF_REPO} downloads on first run")


def _get(node: Any, key: str, default: Any = None) -> Any:
    return node.get(key, default) if isinstance(node, dict) else default


def check_checkpoint(model_cfg: dict[str, Any], *, network: bool = True, timeout: float = 5.0) -> list[Check]:
    """The base weights (and adapter) a resolved ``trainer.model`` config will load."""
    out = []
    builder = model_cfg
    if _get(model_cfg, "_target_") in LORA_WRAPPER_TARGETS:
        builder = _get(model_cfg, "model", {})
        adapter = _get(model_cfg, "adapter_path")
        if adapter:
            ok = (Path(adapter) / "adapter_config.json").is_file()
            out.append(Check("OK" if ok else "FAIL", "adapter", adapter + ("" if ok else " has no adapter_config.json"),
                             "" if ok else "point trainer.model.adapter_path at an exported adapter directory"))
    target, ckpt = _get(builder, "_target_"), _get(builder, "checkpoint_path")
    if _get(ckpt, "_target_"):  # a path computed by a function, e.g. get_tiny_base_path
        try:
            from hydra.utils import instantiate

            ckpt = str(instantiate(ckpt))
        except Exception as e:  # noqa: BLE001 - reported as the check's result
            return out + [Check("FAIL", "checkpoint", f"checkpoint_path {ckpt['_target_']} failed: {e}",
                                "set paths.checkpoint_path=/path/to/sam3.pt")]
    if ckpt:
        if os.path.isfile(ckpt):
            out.append(Check("OK", "checkpoint", f"{ckpt} ({os.path.getsize(ckpt) / 1e9:.2f} GB)"))
        else:
            out.append(Check("FAIL", "checkpoint", f"{ckpt} does not exist",
                             "fix paths.checkpoint_path, or set it to null to download facebook/sam3"))
    elif target == _STOCK_BUILDER and _get(builder, "load_from_HF", True):
        out.append(check_hf_hub(timeout) if network else
                   Check("WARN", "checkpoint", "HF hub not checked (--no-network)"))
    elif target == _STOCK_BUILDER:
        out.append(Check("FAIL", "checkpoint", "no checkpoint_path and load_from_HF is false: SAM3 would "
                         "start from random weights", "set paths.checkpoint_path=/path/to/sam3.pt"))
    elif target in _ARCH_BUILDERS:
        out.append(Check("OK", "checkpoint", f"none needed: random init of the {_get(builder, 'size', 'tiny')} "
                         f"test architecture (seed {_get(builder, 'seed', 0)})"))
    else:
        out.append(Check("WARN", "checkpoint", f"unknown model builder {target!r}; not checked"))
    return out


def check_resolution(model_cfg: dict[str, Any], resolution: Any) -> Optional[Check]:
    """Stock SAM3 is built for 1008 px; the data transforms must match it."""
    builder = _get(model_cfg, "model", {}) if _get(model_cfg, "_target_") in LORA_WRAPPER_TARGETS else model_cfg
    if _get(builder, "_target_") != _STOCK_BUILDER or resolution is None:
        return None
    if resolution == 1008:
        return Check("OK", "resolution", "1008 px (SAM3's)")
    return Check("FAIL", "resolution", f"scratch.resolution={resolution}, but stock SAM3 is built for 1008 px",
                 "set scratch.resolution=1008")


def _path_of(node: Any) -> Optional[str]:
    """The filesystem path a dataset value points at (without side effects where possible)."""
    if isinstance(node, str):
        return node
    target = _get(node, "_target_")
    if target == _CHECKED_PATH:
        return _path_of(node.get("path"))
    if target == _REINDEX:
        return _path_of(node.get("input_json_path"))
    if target is not None:  # e.g. sam3_lora_plugin.data.get_smoke_split_path: cheap resolvers
        from hydra.utils import instantiate

        return str(instantiate(node))
    return None


def find_dataset_paths(cfg: Any, where: str = "") -> list[tuple[str, str, Optional[str]]]:
    """``(dotted key, path, image folder)`` of every ``img_folder``/``ann_file``/``gt_path``
    in a resolved config (plain containers), in document order."""
    out: list[tuple[str, str, Optional[str]]] = []
    if isinstance(cfg, dict):
        folder = _path_of(cfg["img_folder"]) if "img_folder" in cfg else None
        for key, value in cfg.items():
            name = f"{where}.{key}" if where else str(key)
            if key in _PATH_KEYS and value is not None:
                path = _path_of(value)
                if path is not None:
                    given = _get(value, "image_dir")
                    image_dir = _path_of(given) if given is not None else (
                        folder if key == "ann_file" else None)
                    out.append((name, path, image_dir))
            else:
                out += find_dataset_paths(value, name)
    elif isinstance(cfg, list):
        for i, item in enumerate(cfg):
            out += find_dataset_paths(item, f"{where}[{i}]")
    return out


def check_datasets(paths: list[tuple[str, str, Optional[str]]], *, check_images: bool = True) -> list[Check]:
    """Existence of every dataset path, then the dataset checker on every annotation file."""
    from sam3_lora_plugin.data.preflight import get_report

    out: list[Check] = []
    seen: dict[str, str] = {}
    jsons: dict[str, Optional[str]] = {}
    for key, path, image_dir in paths:
        if path in seen:
            continue
        seen[path] = key
        exists = os.path.isfile(path) if path.lower().endswith(".json") else os.path.isdir(path)
        if exists:
            out.append(Check("OK", "dataset path", f"{path}  ({key})"))
            if path.lower().endswith(".json"):
                jsons.setdefault(path, image_dir)
        else:
            out.append(Check("FAIL", "dataset path", f"{path} does not exist ({key})",
                             "set paths.dataset_root (or the config's dataset paths) to your COCO dataset: "
                             "<root>/{train,valid,test}/_annotations.coco.json beside the images"))
    for path, image_dir in jsons.items():
        try:
            report = get_report(path, image_dir if image_dir and os.path.isdir(image_dir) else None,
                                check_images=check_images)
        except Exception as exc:  # never let one file stop the report
            out.append(Check("FAIL", "dataset check", f"{path}: {type(exc).__name__}: {exc}"))
            continue
        summary = f"{path}: {report.images} images, {report.annotations} annotations, " \
                  f"{len(report.category_names)} categories"
        if report.errors:
            first = report.errors[0]
            out.append(Check("FAIL", "dataset check", f"{summary}; {len(report.errors)} error(s), first: "
                             f"{first.describe()}", f"{first.fix} (all: python -m sam3_lora_plugin.data.check {path})"))
        elif report.warnings:
            titles = "; ".join(w.title for w in report.warnings[:2])
            out.append(Check("WARN", "dataset check", f"{summary}; {len(report.warnings)} warning(s): {titles}",
                             f"details: python -m sam3_lora_plugin.data.check {path}"))
        else:
            out.append(Check("OK", "dataset check", summary))
    return out
