"""A local process group for tests and benchmarks that run SAM3's loss or DDP without the
Trainer."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from sam3_lora_plugin.trainer.recipe import get_free_port

__all__ = ["get_free_port", "single_process_group"]


@contextlib.contextmanager
def single_process_group(backend: Optional[str] = None) -> Iterator[None]:
    """A 1-rank ``torch.distributed`` process group on a free local port.

    Does nothing if a process group is already initialised.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default ``"nccl"`` where CUDA is
            available, else ``"gloo"``.
    """
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{get_free_port()}", rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


