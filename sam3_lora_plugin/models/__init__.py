"""SAM3 model plumbing: the CPU-buildable SAM3 architecture (``arch``), the BPE vocabulary
(``bpe``) and stock ``sam3.pt`` checkpoints (``base_checkpoint``).

Layer 2: imports only ``sam3_lora_plugin.lora`` (and sam3, torch). Submodules are imported
by name, so ``import sam3_lora_plugin.models`` stays cheap.
"""
