"""The SAM3 Trainer integration: the model wrapper (``wrapper.build_lora_sam3``), optimizer
param groups (``param_groups``), the adapter-only checkpoint hooks (``checkpoint_hooks``),
CPU fallbacks (``cpu_fallbacks``), the job-array runner (``submitit_runner``), config
composition (``compose``) and checks (``config_check``).

Layer 4: imports ``lora``, ``models``, ``data`` and ``adapters``, never the tools.
Submodules are imported by name, so the launcher's ``--help`` stays cheap.
"""
