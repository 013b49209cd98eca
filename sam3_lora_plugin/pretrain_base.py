"""``python -m sam3_lora_plugin.pretrain_base``: rebuild the shipped pretrained tiny SAM3 base.

The entry point only; the code is ``sam3_lora_plugin.cli.pretrain_base``.
"""

import sys

from sam3_lora_plugin.cli.pretrain_base import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
