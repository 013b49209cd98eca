"""SAM3 model plumbing: the CPU-buildable SAM3 architecture (``arch``), the BPE vocabulary
(``bpe``), stock ``sam3.pt`` checkpoints (``base_checkpoint``, ``errors``) and the rules
every tool follows where it writes files (``output_files``).

Layer 2: imports only ``sam3_lora_plugin.lora`` (and sam3, torch). Submodules are imported
by name, so ``import sam3_lora_plugin.models`` stays cheap.
"""
