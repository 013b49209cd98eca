"""A train collate function that works for any ``trainer.gradient_accumulation_steps``.

SAM3's Trainer expects a list of micro-batches when accumulating gradients, but its
default ``collate_fn_api`` returns one batch, and ``collate_fn_api_with_chunking``
returns a list even for one chunk (sam3 issue #324). This picks the right one, so
``trainer.gradient_accumulation_steps=K`` alone switches accumulation on. The name
keeps ``collate_fn`` in it: SAM3's ``collect_dict_keys`` finds the val dict keys by
that substring.
"""

from __future__ import annotations

from typing import Any

__all__ = ["collate_fn_accumulate"]


def collate_fn_accumulate(batch: list, num_chunks: int = 1, **kwargs: Any) -> Any:
    """``collate_fn_api(batch, **kwargs)`` for ``num_chunks == 1``, else
    ``collate_fn_api_with_chunking(batch, num_chunks, **kwargs)`` (a list of
    ``num_chunks`` micro-batches).

    Raises:
        ValueError: ``num_chunks`` < 1 or not dividing the batch.
    """
    from sam3.train.data.collator import collate_fn_api, collate_fn_api_with_chunking

    if num_chunks < 1 or len(batch) % num_chunks:
        raise ValueError(
            f"gradient_accumulation_steps={num_chunks} must be >= 1 and divide the loader "
            f"batch of {len(batch)}; the loader batch is scratch.train_batch_size × "
            "gradient_accumulation_steps in configs/lora.")
    if num_chunks == 1:
        return collate_fn_api(batch, **kwargs)
    return collate_fn_api_with_chunking(batch, num_chunks, **kwargs)
