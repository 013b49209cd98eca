"""``python -m sam3_lora_plugin.inventory``: what each LoRA preset adapts, and how many parameters.

The entry point only; the code is ``sam3_lora_plugin.cli.inventory``.
"""

import sys

from sam3_lora_plugin.cli.inventory import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
