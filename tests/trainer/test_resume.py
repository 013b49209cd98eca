"""The resume guard (``sam3_lora_plugin.trainer.resume``): never a silent fresh start over
checkpoints, a fallback to the newest intact ``checkpoint_N.pt``, runnable advice, and
one decision for every rank (issues 14 and 18)."""

import os
import time

import pytest
import torch

from sam3_lora_plugin.models.arch import build_sam3_arch
from sam3_lora_plugin.models.base_checkpoint import CheckpointError
from sam3_lora_plugin.testing import assert_unchanged, snapshot_files
from sam3_lora_plugin.trainer.checkpoint_hooks import check_resume_checkpoint
from sam3_lora_plugin.trainer.resume import get_rerun_command
from sam3_lora_plugin.trainer.wrapper import build_lora_sam3


def _save(path, epoch):
    model = build_lora_sam3(build_sam3_arch("tiny", seed=0), {"components": ["decoder"]})
    torch.save({"model": model.state_dict(), "epoch": epoch}, path)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def _epoch(path):
    return torch.load(path, weights_only=False)["epoch"]


def test_truncated_checkpoint_falls_back_to_the_newest_intact_epoch(tmp_path):
    """A kill while writing checkpoint.pt, then a requeue: resume from checkpoint_2.pt
    (checkpoint_3.pt is truncated too), keep the bad file."""
    for n in (1, 2, 3):
        _save(tmp_path / f"checkpoint_{n}.pt", n)
    _save(tmp_path / "checkpoint.pt", 3)
    bad = (tmp_path / "checkpoint.pt").read_bytes()[:1000]
    _truncate(tmp_path / "checkpoint.pt")
    _truncate(tmp_path / "checkpoint_3.pt")
    assert check_resume_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint.pt")
    assert _epoch(tmp_path / "checkpoint.pt") == 2
    kept = [p for p in tmp_path.glob("unreadable-*/checkpoint.pt")]
    assert len(kept) == 1 and kept[0].read_bytes() == bad
    assert (tmp_path / "checkpoint_3.pt").stat().st_size == 1000  # untouched


def test_missing_checkpoint_resumes_from_the_newest_epoch(tmp_path):
    """`+checkpoint.resume_from=...` (a key the Trainer never reads) after moving the
    truncated file aside used to start from scratch over checkpoint_1.pt."""
    _save(tmp_path / "checkpoint_1.pt", 1)
    _save(tmp_path / "checkpoint_10.pt", 10)  # numeric order, not name order
    _save(tmp_path / "checkpoint_9.pt", 9)
    assert check_resume_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint.pt")
    assert _epoch(tmp_path / "checkpoint.pt") == 10


def test_unreadable_checkpoints_stop_the_run_and_name_both_commands(tmp_path, monkeypatch):
    _save(tmp_path / "checkpoint_1.pt", 1)
    _save(tmp_path / "checkpoint.pt", 1)
    _truncate(tmp_path / "checkpoint_1.pt")
    _truncate(tmp_path / "checkpoint.pt")
    monkeypatch.setattr("sys.argv", ["/x/sam3/train/train.py", "-c", "configs/lora/smoke_cpu.yaml"])
    before = snapshot_files(tmp_path)
    with pytest.raises(CheckpointError) as info:
        check_resume_checkpoint(str(tmp_path))
    msg = str(info.value)
    assert "truncated or corrupt" in msg and "nothing was changed" in msg
    assert ("`python -m sam3_lora_plugin.train -c configs/lora/smoke_cpu.yaml "
            "++trainer.checkpoint.resume_from=FILE`") in msg
    assert ("`python -m sam3_lora_plugin.train -c configs/lora/smoke_cpu.yaml "
            "++trainer.model.allow_fresh_start=true`") in msg
    assert_unchanged(before, snapshot_files(tmp_path))
    # the explicit switch: start over, the unreadable files kept
    assert check_resume_checkpoint(str(tmp_path), allow_fresh_start=True) is None
    assert not list(tmp_path.glob("checkpoint*"))
    assert sorted(p.name for p in tmp_path.glob("unreadable-*/*")) == ["checkpoint.pt",
                                                                       "checkpoint_1.pt"]


def test_allow_fresh_start_never_discards_a_readable_checkpoint(tmp_path):
    """Left set on a requeue, it still resumes."""
    _save(tmp_path / "checkpoint.pt", 4)
    assert check_resume_checkpoint(str(tmp_path), allow_fresh_start=True) == str(
        tmp_path / "checkpoint.pt")
    assert _epoch(tmp_path / "checkpoint.pt") == 4


def test_resume_from_is_checked_and_wins_over_the_fallback(tmp_path):
    _save(tmp_path / "checkpoint_1.pt", 1)
    other = tmp_path / "other.pt"
    _save(other, 7)
    _truncate(other)
    with pytest.raises(CheckpointError, match="resume_from.*other.pt.*truncated or corrupt"):
        check_resume_checkpoint(str(tmp_path), resume_from=str(other))
    _save(other, 7)
    _save(tmp_path / "checkpoint.pt", 2)
    _truncate(tmp_path / "checkpoint.pt")
    # the Trainer copies resume_from into the (now free) checkpoint.pt
    assert check_resume_checkpoint(str(tmp_path), resume_from=str(other)) is None
    assert not (tmp_path / "checkpoint.pt").exists()
    assert len(list(tmp_path.glob("unreadable-*/checkpoint.pt"))) == 1


def test_tmp_recovery_and_fresh_directories(tmp_path):
    """A kill between the Trainer's rm(checkpoint.pt) and mv(.tmp) leaves only the .tmp."""
    _save(tmp_path / "checkpoint.pt.tmp", 2)
    assert check_resume_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint.pt")
    assert not (tmp_path / "checkpoint.pt.tmp").exists() and _epoch(tmp_path / "checkpoint.pt") == 2
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "checkpoint.pt.tmp").write_bytes(b"PK\x03\x04partial")  # the first save, killed
    assert check_resume_checkpoint(str(fresh)) is None
    assert check_resume_checkpoint(str(tmp_path / "nothing")) is None


def test_rerun_command_drops_an_earlier_value_of_the_key(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/s/sam3_lora_plugin/train.py", "-c", "c.yaml",
                                     "++trainer.model.allow_fresh_start=false", "a=1"])
    assert get_rerun_command("++trainer.model.allow_fresh_start=true") == (
        "python -m sam3_lora_plugin.train -c c.yaml a=1 ++trainer.model.allow_fresh_start=true")
    monkeypatch.setattr("sys.argv", ["pytest"])
    assert "-c <your config>" in get_rerun_command("x=1")


def _race_worker(rank, port, directory, queue):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        if rank == 0:
            time.sleep(1.0)  # rank 1 gets there first, while rank 0 has not renamed yet
        try:
            got = check_resume_checkpoint(directory)
        except Exception as e:  # noqa: BLE001 - reported to the test
            got = f"{type(e).__name__}: {e}"
        queue.put((rank, got))
    finally:
        dist.destroy_process_group()


def _run_two_ranks(directory):
    import torch.multiprocessing as mp

    from sam3_lora_plugin.testing import get_free_port

    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), get_free_port()
    procs = [ctx.Process(target=_race_worker, args=(r, port, directory, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        return dict(queue.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def test_two_ranks_wait_for_rank_0(tmp_path):
    """Rank 1 must not decide on a directory rank 0 is still repairing: both ranks
    resume from the checkpoint.pt rank 0 recovered from the .tmp."""
    _save(tmp_path / "checkpoint.pt.tmp", 2)
    path = str(tmp_path / "checkpoint.pt")
    assert _run_two_ranks(str(tmp_path)) == {0: path, 1: path}
    assert _epoch(tmp_path / "checkpoint.pt") == 2 and not (tmp_path / "checkpoint.pt.tmp").exists()
    # and an error on rank 0 reaches rank 1 instead of leaving it waiting
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint_1.pt").write_bytes(b"PK\x03\x04cut")
    got = _run_two_ranks(str(bad))
    assert all(v.startswith("CheckpointError: Cannot resume") for v in got.values()), got
