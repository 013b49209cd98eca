"""Shared fixture of the benchmark tests: the script under test, imported by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# ``benchmarks/`` is not a package: its scripts import their parts (``train_step_model``, ...)
# and the shared ``harness`` package from their own folder, as ``python benchmarks/x.py``
# does; the tests import them the same way.
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


def load_benchmark(name: str) -> ModuleType:
    """Import the script ``benchmarks/<name>.py`` (as ``benchmarks_<name>``: the scripts
    themselves are not importable by plain name, ``learning`` and others being too common)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench(request: pytest.FixtureRequest) -> ModuleType:
    """The script a ``tests/benchmarks/test_<name>.py`` module tests: ``benchmarks/<name>.py``."""
    return load_benchmark(Path(request.module.__file__).stem.removeprefix("test_"))
