"""``trainer.compose``: composing configs the way SAM3's launcher does."""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import pytest
from hydra.core.global_hydra import GlobalHydra

from sam3_lora_plugin.trainer import compose

PRESETS = ["default", "qv", "attention", "low_memory"]


def _compose_in_threads() -> tuple[dict[str, str], list[BaseException]]:
    """Compose ``smoke_cpu.yaml`` with a different preset in each of four threads that
    start together; what each composed, and what they raised."""
    start = threading.Barrier(len(PRESETS))
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def work(preset: str) -> None:
        start.wait()
        try:
            for _ in range(3):
                cfg = compose.compose_config("configs/lora/smoke_cpu.yaml", [f"lora={preset}"])
                got[preset] = cfg.trainer.model.lora.preset
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in PRESETS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got, errors


@pytest.fixture
def slow_hydra_init(monkeypatch):
    """Hydra's global initialization made slow, so that threads starting together overlap
    in it every time rather than by chance."""
    initialize = GlobalHydra.initialize

    def slow(self, hydra):
        time.sleep(0.2)
        initialize(self, hydra)

    GlobalHydra.instance().clear()
    monkeypatch.setattr(GlobalHydra, "initialize", slow)


def test_compose_from_threads(slow_hydra_init):
    """Threads composing at once each get their own config (Hydra's global state is
    initialized by one at a time)."""
    got, errors = _compose_in_threads()
    assert not errors
    assert got == {p: p for p in PRESETS}


def test_threads_race_without_the_lock(slow_hydra_init, monkeypatch):
    """The lock is what makes that work: without it, threads that start together race to
    initialize Hydra's global state (the learning study's ``--jobs 2`` failed so)."""
    monkeypatch.setattr(compose, "_COMPOSE_LOCK", nullcontext())
    _, errors = _compose_in_threads()
    assert any("GlobalHydra is already initialized" in str(e) for e in errors)
