"""collate_fn_accumulate: one batch for K=1, K micro-batches otherwise, as SAM3's
Trainer expects (tests/test_ddp.py runs it through the Trainer)."""

import pytest

from sam3_lora_plugin.data.collate import collate_fn_accumulate


def test_one_batch_or_k_micro_batches(tmp_path, monkeypatch):
    import sam3.train.data.collator as collator

    monkeypatch.setattr(collator, "collate_fn_api", lambda b, **k: ("one", len(b), k))
    monkeypatch.setattr(collator, "collate_fn_api_with_chunking",
                        lambda b, n, **k: [("chunk", len(b) // n)] * n)
    assert collate_fn_accumulate([1, 2, 3, 4], dict_key="all") == ("one", 4, {"dict_key": "all"})
    assert collate_fn_accumulate([1, 2, 3, 4], num_chunks=2, dict_key="all") == [("chunk", 2)] * 2
    with pytest.raises(ValueError, match="gradient_accumulation_steps=3 must be >= 1 and divide"):
        collate_fn_accumulate([1, 2, 3, 4], num_chunks=3)
